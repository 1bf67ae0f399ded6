//! The gRPC edge: the destination API, identity, policy, health and reflection on one server.

pub mod calls;
pub mod connection;
pub mod convert;
mod destination;
pub mod framing;
mod identity;
mod policy;
mod profile;
pub mod pulled;
pub mod server;
mod shared;

pub use destination::{DestinationService, StreamSettings};
pub use identity::{IDENTITY_SERVICE_NAME, IdentityService, MAX_CERTIFY_REQUEST};
pub use policy::{
    INBOUND_SERVICE_NAME, InboundPolicyService, OUTBOUND_SERVICE_NAME, OutboundPolicyService,
    PolicySettings, Workload, policy_services,
};

/// The names of the services reported healthy once the index is loaded.
pub const DESTINATION_SERVICE_NAME: &str = "io.linkerd.proxy.destination.Destination";
