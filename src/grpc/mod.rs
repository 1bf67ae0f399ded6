//! The gRPC edge: the destination API, health and reflection on one server.

pub mod connection;
pub mod convert;
mod destination;
pub mod framing;
mod profile;
pub mod server;
mod shared;

pub use destination::{DestinationService, StreamSettings};

/// The names of the services reported healthy once the index is loaded.
pub const DESTINATION_SERVICE_NAME: &str = "io.linkerd.proxy.destination.Destination";
