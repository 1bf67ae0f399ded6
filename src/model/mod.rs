//! Domain types of the destination service: what a proxy asks for and what it is told.
//!
//! Nothing here knows Kubernetes objects or gRPC messages; the index produces these
//! types and the gRPC layer translates them to the wire.

pub mod authority;
pub mod context;
pub mod endpoint;
pub mod locality;
pub mod ports;
pub mod profile;
pub mod quote;
pub mod service;
pub mod snapshot;

pub use authority::{Authority, AuthorityError, ServiceAuthority};
pub use context::ContextToken;
pub use endpoint::{Endpoint, EndpointAddrs, ProtocolHint};
pub use locality::{ClientLocality, ZoneLocality};
pub use ports::{PortSet, PortSetError};
pub use profile::{Profile, ServiceProfileView};
pub use quote::quote_prefix;
pub use service::{FederatedMember, MirrorInfo, ServiceInfo, ServiceKind, ServiceRef};
pub use snapshot::{
    EndpointDiff, EndpointSet, PortSnapshot, SnapshotVersion, all_hinted, diff_endpoints,
};
