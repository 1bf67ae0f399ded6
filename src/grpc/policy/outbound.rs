//! Outbound policies: Linkerd's policy-controller defaults for a Service without routes.

use std::{net::SocketAddr, time::Duration};

use crate::{
    grpc::convert,
    model::ServiceRef,
    proto::{destination, http_route, meta, outbound as pb},
};

/// How long the proxy waits for the first bytes before treating a connection as opaque.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests a backend's queue holds before pushing back.
const QUEUE_CAPACITY: u32 = 100;
/// A backend unready this long fails its queued requests.
const FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);
/// Peak EWMA: the latency assumed before any is measured, and its decay window.
const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn default_meta(name: &str) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Default(name.to_string())),
    })
}

fn service_meta(svc: &ServiceRef, port: u16) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "core".into(),
            kind: "Service".into(),
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    })
}

fn queue() -> Option<pb::Queue> {
    Some(pb::Queue {
        capacity: QUEUE_CAPACITY,
        failfast_timeout: Some(duration(FAILFAST_TIMEOUT)),
    })
}

/// The policy of a Service port with no routes: one balancer over the port's endpoints
/// (discovered with `Destination/Get` of `<svc>.<ns>.svc.<domain>:<port>`), behind an
/// opaque route and, unless the port is opaque, an HTTP route matching every path.
pub fn service_policy(
    svc: &ServiceRef,
    port: u16,
    opaque: bool,
    cluster_domain: &str,
) -> pb::OutboundPolicy {
    let backend = pb::Backend {
        metadata: service_meta(svc, port),
        queue: queue(),
        kind: Some(pb::backend::Kind::Balancer(pb::backend::BalanceP2c {
            discovery: Some(pb::backend::EndpointDiscovery {
                kind: Some(pb::backend::endpoint_discovery::Kind::Dst(
                    pb::backend::endpoint_discovery::DestinationGet {
                        path: format!("{}.{}.svc.{cluster_domain}:{port}", svc.name, svc.namespace),
                    },
                )),
            }),
            load: Some(pb::backend::balance_p2c::Load::PeakEwma(
                pb::backend::balance_p2c::PeakEwma {
                    default_rtt: Some(duration(EWMA_DEFAULT_RTT)),
                    decay: Some(duration(EWMA_DECAY)),
                },
            )),
        })),
    };
    let opaque_route = opaque_route("opaq", backend.clone());
    let protocol = if opaque {
        pb::proxy_protocol::Kind::Opaque(pb::proxy_protocol::Opaque {
            routes: vec![opaque_route],
        })
    } else {
        let http = http_route("http", prefix_match("/"), backend);
        detect(opaque_route, http)
    };
    pb::OutboundPolicy {
        protocol: Some(pb::ProxyProtocol {
            kind: Some(protocol),
        }),
        metadata: service_meta(svc, port),
    }
}

/// The policy of an address outside the cluster's networks: straight to the address.
pub fn egress_fallback(addr: SocketAddr) -> pb::OutboundPolicy {
    const NAME: &str = "egress-fallback";
    let backend = pb::Backend {
        metadata: default_meta(NAME),
        queue: queue(),
        kind: Some(pb::backend::Kind::Forward(destination::WeightedAddr {
            addr: Some(convert::to_tcp_address(addr)),
            weight: 1,
            ..Default::default()
        })),
    };
    let opaque_route = opaque_route(NAME, backend.clone());
    // A match with no conditions matches every request.
    let http = http_route(NAME, http_route::HttpRouteMatch::default(), backend);
    pb::OutboundPolicy {
        protocol: Some(pb::ProxyProtocol {
            kind: Some(detect(opaque_route, http)),
        }),
        metadata: default_meta(NAME),
    }
}

fn detect(opaque_route: pb::OpaqueRoute, http: pb::HttpRoute) -> pb::proxy_protocol::Kind {
    pb::proxy_protocol::Kind::Detect(pb::proxy_protocol::Detect {
        timeout: Some(duration(DETECT_TIMEOUT)),
        opaque: Some(pb::proxy_protocol::Opaque {
            routes: vec![opaque_route],
        }),
        http1: Some(pb::proxy_protocol::Http1 {
            routes: vec![http.clone()],
        }),
        http2: Some(pb::proxy_protocol::Http2 { routes: vec![http] }),
    })
}

fn prefix_match(prefix: &str) -> http_route::HttpRouteMatch {
    http_route::HttpRouteMatch {
        path: Some(http_route::PathMatch {
            kind: Some(http_route::path_match::Kind::Prefix(prefix.to_string())),
        }),
    }
}

fn opaque_route(name: &str, backend: pb::Backend) -> pb::OpaqueRoute {
    pb::OpaqueRoute {
        metadata: default_meta(name),
        rules: vec![pb::opaque_route::Rule {
            backends: Some(pb::opaque_route::Distribution {
                kind: Some(pb::opaque_route::distribution::Kind::FirstAvailable(
                    pb::opaque_route::distribution::FirstAvailable {
                        backends: vec![pb::opaque_route::RouteBackend {
                            backend: Some(backend),
                        }],
                    },
                )),
            }),
        }],
    }
}

fn http_route(
    name: &str,
    matches: http_route::HttpRouteMatch,
    backend: pb::Backend,
) -> pb::HttpRoute {
    pb::HttpRoute {
        metadata: default_meta(name),
        rules: vec![pb::http_route::Rule {
            matches: vec![matches],
            backends: Some(pb::http_route::Distribution {
                kind: Some(pb::http_route::distribution::Kind::FirstAvailable(
                    pb::http_route::distribution::FirstAvailable {
                        backends: vec![pb::http_route::RouteBackend {
                            backend: Some(backend),
                        }],
                    },
                )),
            }),
            timeouts: Some(http_route::Timeouts::default()),
        }],
    }
}
