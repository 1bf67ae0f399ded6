//! Profiles: what `GetProfile` says about a service, a pod or an unknown address.

use super::convert;
use crate::{
    model::{ClientLocality, Endpoint, PortSet, ProtocolHint, ServiceInfo},
    proto::{
        destination::{self as pb},
        meta,
    },
};

/// The retry budget every profile carries: 20% extra load, 10 retries/s, over 10 s.
fn default_retry_budget() -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl: Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        }),
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
