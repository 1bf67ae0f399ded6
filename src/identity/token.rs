//! Who a token says its bearer is, and which identity that makes it.

use std::{future::Future, pin::Pin};

/// A Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// What a reviewer concluded about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reviewed {
    /// The token is authentic and names this service account.
    ServiceAccount(ServiceAccount),
    /// Nothing can check tokens here (manifest mode): any non-empty token is accepted.
    Unchecked,
}

/// Why a token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not valid: expired, signed by someone else, for another audience.
    #[error("the token was not authenticated: {0}")]
    NotAuthenticated(String),
    /// The token is authentic but not a service account's.
    #[error("the token authenticates {0}, which is not a service account")]
    NotServiceAccount(String),
    /// The token is not even text.
    #[error("the token is not UTF-8 text")]
    NotText,
    /// The reviewer could not be asked (the API server is down or slow).
    #[error("cannot review the token now: {0}")]
    Unavailable(String),
}

/// The future a review is.
pub type ReviewFuture<'a> = Pin<Box<dyn Future<Output = Result<Reviewed, TokenError>> + Send + 'a>>;

/// Checks proxies' tokens. The runtime implements it: with Kubernetes, a TokenReview.
pub trait TokenReviewer: Send + Sync + 'static {
    /// Who `token` belongs to.
    fn review<'a>(&'a self, token: &'a [u8]) -> ReviewFuture<'a>;
}

/// Accepts every token: for manifest mode, where no API server can review them.
#[derive(Clone, Copy, Debug, Default)]
pub struct UncheckedTokens;

impl TokenReviewer for UncheckedTokens {
    fn review<'a>(&'a self, _: &'a [u8]) -> ReviewFuture<'a> {
        Box::pin(async { Ok(Reviewed::Unchecked) })
    }
}

/// How identities are named: `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityDomain {
    pub control_plane_ns: String,
    pub trust_domain: String,
}

impl IdentityDomain {
    /// The identity of a service account.
    pub fn identity_of(&self, sa: &ServiceAccount) -> String {
        format!(
            "{}.{}.serviceaccount.identity.{}.{}",
            sa.name, sa.namespace, self.control_plane_ns, self.trust_domain
        )
    }

    /// The service account an identity of this domain names; `None` for another form or domain.
    pub fn service_account(&self, identity: &str) -> Option<ServiceAccount> {
        let suffix = format!(
            ".serviceaccount.identity.{}.{}",
            self.control_plane_ns, self.trust_domain
        );
        let rest = identity.strip_suffix(&suffix)?;
        // Namespaces are DNS labels (no dots); service account names may hold dots.
        let (name, namespace) = rest.rsplit_once('.')?;
        if name.is_empty() || namespace.is_empty() {
            return None;
        }
        Some(ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// The service account of a Kubernetes username `system:serviceaccount:<ns>:<name>`.
pub fn service_account_of_username(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some(ServiceAccount {
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_service_accounts_map_both_ways() {
        let domain = IdentityDomain {
            control_plane_ns: "linkerd".into(),
            trust_domain: "cluster.local".into(),
        };
        let sa = ServiceAccount {
            namespace: "shop".into(),
            name: "web.v2".into(),
        };
        let id = domain.identity_of(&sa);
        assert_eq!(
            id,
            "web.v2.shop.serviceaccount.identity.linkerd.cluster.local"
        );
        assert_eq!(domain.service_account(&id), Some(sa));
        assert_eq!(
            domain.service_account("web.shop.serviceaccount.identity.linkerd.example.org"),
            None
        );
        assert_eq!(
            domain.service_account("shop.serviceaccount.identity.linkerd.cluster.local"),
            None
        );
    }

    #[test]
    fn only_service_account_usernames_name_one() {
        assert_eq!(
            service_account_of_username("system:serviceaccount:shop:web"),
            Some(ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            })
        );
        assert_eq!(service_account_of_username("system:node:n1"), None);
        assert_eq!(
            service_account_of_username("system:serviceaccount:shop"),
            None
        );
        assert_eq!(service_account_of_username("alice"), None);
    }
}
