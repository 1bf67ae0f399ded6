//! `Identity/Certify`: a proxy's CSR signed once its token says it is who it asks to be.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use tonic::Status;
use tracing::{debug, info};

use super::calls::{self, CallLimits};
use crate::{
    identity::{Ca, CsrError, IdentityDomain, Reviewed, TokenError, TokenReviewer, check_csr},
    model::quote_prefix,
    proto::identity as pb,
};

/// The identity service's gRPC name.
pub const IDENTITY_SERVICE_NAME: &str = "io.linkerd.proxy.identity.Identity";

const CERTIFY_PATH: &str = "/io.linkerd.proxy.identity.Identity/Certify";

/// The largest `CertifyRequest` read: a projected service account token (about 1 KiB, more
/// with long names) and a CSR (a few hundred bytes), with room to spare.
pub const MAX_CERTIFY_REQUEST: usize = 16 * 1024;

/// Certifications in progress at once; more are refused (RESOURCE_EXHAUSTED, the proxy
/// retries), so a flood of requests cannot turn into a flood of TokenReviews.
pub const MAX_CONCURRENT_CERTIFY: usize = 64;

/// Signs proxies' certificates.
#[derive(Clone)]
pub struct IdentityService {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Ca,
    reviewer: Arc<dyn TokenReviewer>,
    domain: IdentityDomain,
    limits: CallLimits,
    in_progress: tokio::sync::Semaphore,
}

impl IdentityService {
    /// Certifies identities of `domain` with `ca`, once `reviewer` vouches for the token.
    pub fn new(
        ca: Ca,
        reviewer: Arc<dyn TokenReviewer>,
        domain: IdentityDomain,
        limits: CallLimits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca,
                reviewer,
                domain,
                limits,
                in_progress: tokio::sync::Semaphore::new(MAX_CONCURRENT_CERTIFY),
            }),
        }
    }

    async fn route(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if req.uri().path() != CERTIFY_PATH {
            return Status::unimplemented(format!(
                "{} is not a method of {IDENTITY_SERVICE_NAME}",
                quote_prefix(req.uri().path())
            ))
            .into_http();
        }
        let (msg, call) = match self
            .inner
            .limits
            .read::<pb::CertifyRequest>(req, MAX_CERTIFY_REQUEST)
            .await
        {
            Ok(read) => read,
            Err(status) => return status.into_http(),
        };
        let result = tokio::select! {
            result = self.certify(msg) => result,
            _ = calls::Call::deadline_passed(call.deadline) => Err(calls::deadline_exceeded()),
        };
        match result {
            Ok(response) => calls::unary(&response),
            Err(status) => status.into_http(),
        }
    }

    async fn certify(&self, req: pb::CertifyRequest) -> Result<pb::CertifyResponse, Status> {
        let identity = req.identity.as_str();
        if identity.is_empty() {
            return Err(Status::invalid_argument("the request names no identity"));
        }
        if req.token.is_empty() {
            return Err(Status::invalid_argument("the request carries no token"));
        }
        if req.certificate_signing_request.is_empty() {
            return Err(Status::invalid_argument(
                "the request carries no certificate signing request",
            ));
        }
        let _permit = self.inner.in_progress.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_CONCURRENT_CERTIFY} certifications are in progress; retry shortly"
            ))
        })?;
        let csr = check_csr(&req.certificate_signing_request, identity).map_err(|e| {
            debug!(identity = %quote_prefix(identity), error = %e, "refused a CSR");
            csr_status(&e)
        })?;
        let reviewed = self.inner.reviewer.review(&req.token).await.map_err(|e| {
            info!(identity = %quote_prefix(identity), error = %e, "refused a token");
            token_status(e)
        })?;
        self.check_identity(identity, &reviewed)?;
        let issued = self
            .inner
            .ca
            .issue(&csr, SystemTime::now())
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(
            identity,
            valid_until = %humantime::format_rfc3339_seconds(issued.valid_until),
            "certified"
        );
        Ok(pb::CertifyResponse {
            leaf_certificate: issued.leaf,
            intermediate_certificates: issued.intermediates,
            valid_until: Some(issued.valid_until.into()),
        })
    }

    /// The token's service account must be the one the identity names.
    fn check_identity(&self, identity: &str, reviewed: &Reviewed) -> Result<(), Status> {
        let domain = &self.inner.domain;
        match reviewed {
            Reviewed::ServiceAccount(sa) => {
                let expected = domain.identity_of(sa);
                if expected != identity {
                    info!(identity = %quote_prefix(identity), token_identity = %expected, "refused: identity and token differ");
                    return Err(Status::failed_precondition(format!(
                        "the token is service account {}/{}'s, whose identity is {expected}, not the requested {}",
                        sa.namespace,
                        sa.name,
                        quote_prefix(identity)
                    )));
                }
            }
            Reviewed::Unchecked => {
                if domain.service_account(identity).is_none() {
                    return Err(Status::failed_precondition(format!(
                        "{} is not an identity of this control plane (<serviceaccount>.<namespace>.serviceaccount.identity.{}.{})",
                        quote_prefix(identity),
                        domain.control_plane_ns,
                        domain.trust_domain
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A CSR that cannot be read is an invalid argument; one asking for the wrong thing is
/// refused as Linkerd does, with FAILED_PRECONDITION.
fn csr_status(e: &CsrError) -> Status {
    if e.is_malformed() {
        Status::invalid_argument(e.to_string())
    } else {
        Status::failed_precondition(e.to_string())
    }
}

fn token_status(e: TokenError) -> Status {
    match e {
        TokenError::NotAuthenticated(_) | TokenError::NotServiceAccount(_) => {
            Status::failed_precondition(e.to_string())
        }
        TokenError::NotText => Status::invalid_argument(e.to_string()),
        TokenError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for IdentityService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

impl tonic::server::NamedService for IdentityService {
    const NAME: &'static str = IDENTITY_SERVICE_NAME;
}
