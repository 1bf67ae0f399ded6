//! Wiring of the identity service: the CA from the flags, and token review with Kubernetes.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

use super::cli::ServeArgs;
use crate::identity::{
    Ca, ReviewFuture, Reviewed, TokenError, TokenReviewer, UncheckedTokens,
    service_account_of_username,
};

/// How long a TokenReview may take before the proxy is told to retry.
const TOKEN_REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The CA the flags describe: the issuer files, or a demo CA generated now (its trust
/// anchor written to `--identity-trust-anchors-out`).
pub fn load_ca(args: &ServeArgs) -> Result<Ca> {
    let now = std::time::SystemTime::now();
    if let (Some(cert), Some(key), Some(anchors)) = (
        &args.identity_issuer_cert,
        &args.identity_issuer_key,
        &args.identity_trust_anchors,
    ) {
        let ca = Ca::from_pem(
            &read(cert, "--identity-issuer-cert")?,
            &read(key, "--identity-issuer-key")?,
            &read(anchors, "--identity-trust-anchors")?,
            args.identity_cert_lifetime,
            now,
        )
        .with_context(|| format!("invalid identity issuer {}", cert.display()))?;
        info!(
            issuer = ca.subject(),
            issuer_expires = %humantime::format_rfc3339_seconds(ca.issuer_not_after()),
            lifetime = ?ca.lifetime(),
            "identity: certifying proxies with the given issuer"
        );
        return Ok(ca);
    }
    let demo = Ca::generate_demo(
        &args.control_plane_namespace,
        &args.trust_domain,
        args.identity_cert_lifetime,
        now,
    )
    .context("cannot generate a demo identity CA")?;
    match &args.identity_trust_anchors_out {
        Some(path) => {
            std::fs::write(path, &demo.trust_anchors_pem).with_context(|| {
                format!(
                    "cannot write --identity-trust-anchors-out {}",
                    path.display()
                )
            })?;
            warn!(
                trust_anchors = %path.display(),
                "identity: no --identity-issuer-cert, so a demo CA was generated for this run only; \
                 give proxies the trust anchor written here"
            );
        }
        None => warn!(
            "identity: no --identity-issuer-cert, so a demo CA was generated for this run only, and \
             no proxy can trust it: pass --identity-trust-anchors-out FILE to write its trust anchor"
        ),
    }
    Ok(demo.ca)
}

fn read(path: &Path, flag: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// The token reviewer of a mode: a TokenReview with Kubernetes, none with manifests.
pub fn token_reviewer(client: Option<kube::Client>, audience: &str) -> Arc<dyn TokenReviewer> {
    match client {
        Some(client) => Arc::new(KubeTokenReviewer {
            client,
            audience: audience.to_string(),
            timeout: TOKEN_REVIEW_TIMEOUT,
        }),
        None => {
            warn!(
                "identity: with --manifests there is no API server to review tokens: any non-empty \
                 token is accepted for an identity of this control plane"
            );
            Arc::new(UncheckedTokens)
        }
    }
}

/// Reviews tokens with the API server (`authentication.k8s.io/v1` TokenReview).
pub struct KubeTokenReviewer {
    client: kube::Client,
    audience: String,
    timeout: Duration,
}

impl KubeTokenReviewer {
    async fn review_token(&self, token: &[u8]) -> Result<Reviewed, TokenError> {
        let token = std::str::from_utf8(token).map_err(|_| TokenError::NotText)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                // Token files may end with a newline; the token itself never does.
                token: token.trim().to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    TokenError::Unavailable(format!(
                        "the API server did not answer the TokenReview within {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|e| TokenError::Unavailable(format!("the TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".into());
            return Err(TokenError::NotAuthenticated(why));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of_username(&username)
            .map(Reviewed::ServiceAccount)
            .ok_or(TokenError::NotServiceAccount(username))
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a [u8]) -> ReviewFuture<'a> {
        Box::pin(self.review_token(token))
    }
}
