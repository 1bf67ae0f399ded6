//! Inbound policies: Linkerd's `all-unauthenticated` default for a pod's port.

use std::{collections::HashMap, net::IpAddr};

use super::outbound::{DETECT_TIMEOUT, duration};
use crate::{
    grpc::convert,
    proto::{http_route, inbound as pb, meta, net},
};

/// The default policy's name.
const ALL_UNAUTHENTICATED: &str = "all-unauthenticated";

/// `group`, `kind` and `name` labels of a default (the proxy reads a default from them).
fn default_labels(name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_string(), String::new()),
        ("kind".to_string(), "default".to_string()),
        ("name".to_string(), name.to_string()),
    ])
}

fn default_meta(name: &str) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Default(name.to_string())),
    })
}

fn network(addr: IpAddr, prefix_len: u32) -> pb::Network {
    pb::Network {
        net: Some(net::IpNetwork {
            ip: convert::to_tcp_address(std::net::SocketAddr::new(addr, 0)).ip,
            prefix_len,
        }),
        except: Vec::new(),
    }
}

/// The server policy of a pod port without Servers: anyone may connect, from anywhere,
/// with or without mesh TLS; HTTP is detected (one route matching every path) unless the
/// port is opaque.
pub fn all_unauthenticated(opaque: bool) -> pb::Server {
    let authz = pb::Authz {
        networks: vec![
            network(IpAddr::from([0, 0, 0, 0]), 0),
            network(IpAddr::from([0u16; 8]), 0),
        ],
        authentication: Some(pb::Authn {
            permit: Some(pb::authn::Permit::Unauthenticated(
                pb::authn::PermitUnauthenticated {},
            )),
        }),
        labels: default_labels(ALL_UNAUTHENTICATED),
        metadata: default_meta(ALL_UNAUTHENTICATED),
    };
    let kind = if opaque {
        pb::proxy_protocol::Kind::Opaque(pb::proxy_protocol::Opaque {})
    } else {
        pb::proxy_protocol::Kind::Detect(pb::proxy_protocol::Detect {
            timeout: Some(duration(DETECT_TIMEOUT)),
            http_routes: vec![pb::HttpRoute {
                metadata: default_meta("default"),
                // The server's authorizations apply; the route adds none.
                authorizations: Vec::new(),
                rules: vec![pb::http_route::Rule {
                    matches: vec![http_route::HttpRouteMatch {
                        path: Some(http_route::PathMatch {
                            kind: Some(http_route::path_match::Kind::Prefix("/".into())),
                        }),
                    }],
                }],
            }],
        })
    };
    pb::Server {
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
        server_ips: Vec::new(),
        authorizations: vec![authz],
        labels: default_labels(ALL_UNAUTHENTICATED),
    }
}
