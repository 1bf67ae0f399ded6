//! Profiles: what `GetProfile` says about a service, a pod or an unknown address.
//!
//! A ServiceProfile maps as Linkerd's destination controller maps it: routes with their
//! `route` metric label, a condition with several keys wrapped in `all` (in the order all,
//! any, method, not, path; for responses all, any, status, not), registered methods as
//! enums, durations as protobuf Durations (zero or none: absent), weights in
//! ten-thousandths, a destination without a port given the requested one, and
//! `profile_ref` naming the ServiceProfile. Differences: a timeout that does not parse
//! rejects the whole profile (Linkerd logs it and sends no timeout), and `opaque_protocol`
//! is also set by the Service's opaque ports, not only the profile's `opaquePorts`.

use super::convert;
use crate::{
    model::{
        ClientLocality, Endpoint, PortSet, ProtocolHint, ServiceAuthority, ServiceInfo,
        ServiceProfileView,
        profile::{
            Profile, RequestMatch, ResponseMatch, RetryBudget, Route, WeightedDst,
            authority_has_port,
        },
    },
    proto::{
        destination::{self as pb},
        io::linkerd::proxy::http_types::{HttpMethod, http_method},
        meta,
    },
};

/// The retry budget every profile carries unless its ServiceProfile sets one: 20% extra
/// load, 10 retries/s, over 10 s.
fn default_retry_budget() -> pb::RetryBudget {
    to_retry_budget(&RetryBudget::DEFAULT)
}

fn to_retry_budget(b: &RetryBudget) -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl: b.ttl.map(to_duration),
    }
}

fn to_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A profile with nothing known but whether the port is opaque.
pub fn default_profile(opaque: bool) -> pb::DestinationProfile {
    pb::DestinationProfile {
        retry_budget: Some(default_retry_budget()),
        opaque_protocol: opaque,
        ..Default::default()
    }
}

/// The profile of a service port.
pub fn for_service(
    info: &ServiceInfo,
    port: u16,
    cluster_domain: &str,
    default_opaque_ports: &PortSet,
) -> pb::DestinationProfile {
    let svc = &info.service;
    pb::DestinationProfile {
        fully_qualified_name: format!("{}.{}.svc.{cluster_domain}", svc.name, svc.namespace),
        opaque_protocol: info.is_opaque(port, default_opaque_ports),
        parent_ref: Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "core".into(),
                kind: "Service".into(),
                name: svc.name.clone(),
                namespace: svc.namespace.clone(),
                section: String::new(),
                port: u32::from(port),
            })),
        }),
        ..default_profile(false)
    }
}

/// The profile of a pod's address: the endpoint itself.
pub fn for_endpoint(endpoint: &Endpoint) -> pb::DestinationProfile {
    // Pod labels carry `namespace`, which a profile's endpoint must have.
    let addr = convert::to_weighted_addr(endpoint, &ClientLocality::default(), &endpoint.cluster);
    pb::DestinationProfile {
        opaque_protocol: matches!(endpoint.hint, ProtocolHint::Opaque { .. }),
        endpoint: Some(addr),
        ..default_profile(false)
    }
}

/// The profile of a service port for one caller: the service's defaults overlaid with the
/// ServiceProfile that applies and the current split.
pub fn for_service_view(
    view: &ServiceProfileView,
    authority: &ServiceAuthority,
    cluster_domain: &str,
    default_opaque_ports: &PortSet,
) -> pb::DestinationProfile {
    let port = authority.port;
    let mut out = match &view.service {
        Some(info) => for_service(info, port, cluster_domain, default_opaque_ports),
        None if view.profile.is_some() => pb::DestinationProfile {
            fully_qualified_name: format!(
                "{}.{}.svc.{cluster_domain}",
                authority.service, authority.namespace
            ),
            ..default_profile(false)
        },
        None => return default_profile(false),
    };
    if let Some(profile) = &view.profile {
        apply_profile(&mut out, profile, &view.dst_overrides, port);
    }
    out
}

fn apply_profile(
    out: &mut pb::DestinationProfile,
    profile: &Profile,
    dst_overrides: &[WeightedDst],
    port: u16,
) {
    out.routes = profile.routes.iter().map(to_route).collect();
    if let Some(budget) = &profile.retry_budget {
        out.retry_budget = Some(to_retry_budget(budget));
    }
    out.dst_overrides = dst_overrides
        .iter()
        .map(|d| pb::WeightedDst {
            authority: if authority_has_port(&d.authority) {
                d.authority.clone()
            } else {
                format!("{}:{port}", d.authority)
            },
            weight: d.weight,
            backend_ref: None,
        })
        .collect();
    out.opaque_protocol |= profile.opaque_ports.contains(&port);
    out.profile_ref = Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "linkerd.io".into(),
            kind: "ServiceProfile".into(),
            name: profile.name.clone(),
            namespace: profile.namespace.clone(),
            section: String::new(),
            port: 0,
        })),
    });
}

fn to_route(route: &Route) -> pb::Route {
    pb::Route {
        condition: Some(to_request_match(&route.condition)),
        response_classes: route
            .response_classes
            .iter()
            .map(|rc| pb::ResponseClass {
                condition: Some(to_response_match(&rc.condition)),
                is_failure: rc.is_failure,
            })
            .collect(),
        metrics_labels: [("route".to_string(), route.name.clone())].into(),
        is_retryable: route.is_retryable,
        timeout: route.timeout.map(to_duration),
    }
}

fn to_request_match(m: &RequestMatch) -> pb::RequestMatch {
    use pb::request_match::{Match, Seq};
    let seq = |ms: &[RequestMatch]| Seq {
        matches: ms.iter().map(to_request_match).collect(),
    };
    let m = match m {
        RequestMatch::All(ms) => Match::All(seq(ms)),
        RequestMatch::Any(ms) => Match::Any(seq(ms)),
        RequestMatch::Not(m) => Match::Not(Box::new(to_request_match(m))),
        RequestMatch::Path(regex) => Match::Path(pb::PathMatch {
            regex: regex.clone(),
        }),
        RequestMatch::Method(method) => Match::Method(to_method(method)),
    };
    pb::RequestMatch { r#match: Some(m) }
}

fn to_response_match(m: &ResponseMatch) -> pb::ResponseMatch {
    use pb::response_match::{Match, Seq};
    let seq = |ms: &[ResponseMatch]| Seq {
        matches: ms.iter().map(to_response_match).collect(),
    };
    let m = match m {
        ResponseMatch::All(ms) => Match::All(seq(ms)),
        ResponseMatch::Any(ms) => Match::Any(seq(ms)),
        ResponseMatch::Not(m) => Match::Not(Box::new(to_response_match(m))),
        ResponseMatch::Status { min, max } => Match::Status(pb::HttpStatusRange {
            min: *min,
            max: *max,
        }),
    };
    pb::ResponseMatch { r#match: Some(m) }
}

/// A registered method as its enum (matched exactly, as Linkerd does), any other as a string.
fn to_method(method: &str) -> HttpMethod {
    use http_method::Registered;
    let registered = match method {
        "GET" => Some(Registered::Get),
        "POST" => Some(Registered::Post),
        "PUT" => Some(Registered::Put),
        "DELETE" => Some(Registered::Delete),
        "PATCH" => Some(Registered::Patch),
        "OPTIONS" => Some(Registered::Options),
        "CONNECT" => Some(Registered::Connect),
        "HEAD" => Some(Registered::Head),
        "TRACE" => Some(Registered::Trace),
        _ => None,
    };
    HttpMethod {
        r#type: Some(match registered {
            Some(r) => http_method::Type::Registered(r as i32),
            None => http_method::Type::Unregistered(method.to_string()),
        }),
    }
}
