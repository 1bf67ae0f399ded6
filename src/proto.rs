//! Code generated from `proto/` (the destination, identity and policy APIs), and its descriptor set for reflection.
#![allow(clippy::all, missing_docs)]

/// Generated modules, nested by protobuf package so cross-package paths resolve.
pub mod io {
    pub mod linkerd {
        pub mod proxy {
            pub mod destination {
                tonic::include_proto!("io.linkerd.proxy.destination");
            }
            pub mod net {
                tonic::include_proto!("io.linkerd.proxy.net");
            }
            pub mod meta {
                tonic::include_proto!("io.linkerd.proxy.meta");
            }
            pub mod http_types {
                tonic::include_proto!("io.linkerd.proxy.http_types");
            }
            pub mod http_route {
                tonic::include_proto!("io.linkerd.proxy.http_route");
            }
            pub mod identity {
                tonic::include_proto!("io.linkerd.proxy.identity");
            }
            pub mod inbound {
                tonic::include_proto!("io.linkerd.proxy.inbound");
            }
            pub mod outbound {
                tonic::include_proto!("io.linkerd.proxy.outbound");
            }
        }
    }
}

pub use io::linkerd::proxy::{destination, http_route, identity, inbound, meta, net, outbound};

/// The encoded descriptor set of every message and service in `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("destination_descriptor");
