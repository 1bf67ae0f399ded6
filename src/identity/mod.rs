//! Identities for proxies: the CA that signs their certificates, the checks their CSRs
//! must pass, and the review of the token that proves who they are.
//!
//! No tonic and no kube here: the gRPC layer serves `Certify` on top of this, and the
//! runtime implements [`TokenReviewer`] with a Kubernetes TokenReview.

mod ca;
mod csr;
mod token;

pub use ca::{CLOCK_SKEW, Ca, CaError, DemoCa, IssuedCert};
pub use csr::{CheckedCsr, CsrError, check_csr};
pub use token::{
    IdentityDomain, ReviewFuture, Reviewed, ServiceAccount, TokenError, TokenReviewer,
    UncheckedTokens, service_account_of_username,
};
