//! Model to wire: endpoints, sets and profiles as destination API messages.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use crate::{
    model::{ClientLocality, Endpoint, EndpointAddrs, ProtocolHint},
    proto::{
        destination::{
            self as pb, AuthorityOverride, NoEndpoints, TlsIdentity, protocol_hint,
            tls_identity::DnsLikeIdentity, update,
        },
        net,
    },
};

/// The weight of every address: equal load across endpoints.
pub const WEIGHT: u32 = 10_000;

/// An address on the wire.
pub fn to_tcp_address(addr: SocketAddr) -> net::TcpAddress {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => net::ip_address::Ip::Ipv4(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            net::ip_address::Ip::Ipv6(net::IPv6 {
                first: (bits >> 64) as u64,
                last: bits as u64,
            })
        }
    };
    net::TcpAddress {
        ip: Some(net::IpAddress { ip: Some(ip) }),
        port: u32::from(addr.port()),
    }
}

/// An endpoint on the wire, labelled for a caller at `client`.
pub fn to_weighted_addr(
    e: &Endpoint,
    client: &ClientLocality,
    local_cluster: &str,
) -> pb::WeightedAddr {
    let mut metric_labels: HashMap<String, String> = e
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(pod) = &e.pod {
        metric_labels.insert("pod".into(), pod.to_string());
    }
    metric_labels.insert(
        "zone".into(),
        e.zone.as_deref().unwrap_or_default().to_string(),
    );
    metric_labels.insert(
        "zone_locality".into(),
        client.zone_locality(e.zone.as_deref()).as_str().to_string(),
    );
    if &*e.cluster != local_cluster {
        metric_labels.insert("target_cluster".into(), e.cluster.to_string());
    }
    pb::WeightedAddr {
        addr: Some(to_tcp_address(e.addr)),
        weight: WEIGHT,
        metric_labels,
        tls_identity: e.identity.as_deref().map(to_tls_identity),
        protocol_hint: to_protocol_hint(e.hint),
        authority_override: e.authority_override.as_deref().map(|a| AuthorityOverride {
            authority_override: a.to_string(),
        }),
        http2: None,
        resource_ref: None,
    }
}

fn to_tls_identity(name: &str) -> TlsIdentity {
    let dns = DnsLikeIdentity {
        name: name.to_string(),
    };
    TlsIdentity {
        strategy: Some(pb::tls_identity::Strategy::DnsLikeIdentity(dns.clone())),
        server_name: Some(dns),
    }
}

fn to_protocol_hint(hint: ProtocolHint) -> Option<pb::ProtocolHint> {
    match hint {
        ProtocolHint::Unknown => None,
        ProtocolHint::H2 => Some(pb::ProtocolHint {
            protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
            opaque_transport: None,
        }),
        ProtocolHint::Opaque { inbound_port } => Some(pb::ProtocolHint {
            protocol: Some(protocol_hint::Protocol::Opaque(protocol_hint::Opaque {})),
            opaque_transport: Some(protocol_hint::OpaqueTransport {
                inbound_port: u32::from(inbound_port),
            }),
        }),
    }
}

/// `no_endpoints{exists}`.
pub fn no_endpoints(exists: bool) -> pb::Update {
    pb::Update {
        update: Some(update::Update::NoEndpoints(NoEndpoints { exists })),
    }
}

/// An `add` of `endpoints` with the set's labels.
pub fn add<'a>(
    endpoints: impl IntoIterator<Item = &'a std::sync::Arc<Endpoint>>,
    set_labels: &std::collections::BTreeMap<String, String>,
    client: &ClientLocality,
    local_cluster: &str,
) -> pb::Update {
    pb::Update {
        update: Some(update::Update::Add(pb::WeightedAddrSet {
            addrs: endpoints
                .into_iter()
                .map(|e| to_weighted_addr(e, client, local_cluster))
                .collect(),
            metric_labels: set_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })),
    }
}

/// A `remove` of `addrs`.
pub fn remove(addrs: impl IntoIterator<Item = SocketAddr>) -> pb::Update {
    pb::Update {
        update: Some(update::Update::Remove(pb::AddrSet {
            addrs: addrs.into_iter().map(to_tcp_address).collect(),
        })),
    }
}

/// The whole set as a first message: `add`, or `no_endpoints` when empty.
pub fn full_update(
    exists: bool,
    endpoints: &EndpointAddrs,
    set_labels: &std::collections::BTreeMap<String, String>,
    client: &ClientLocality,
    local_cluster: &str,
) -> pb::Update {
    if endpoints.is_empty() {
        no_endpoints(exists)
    } else {
        add(endpoints.values(), set_labels, client, local_cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_big_endian() {
        let v4 = to_tcp_address("10.1.2.3:8080".parse().unwrap());
        assert_eq!(v4.port, 8080);
        assert_eq!(
            v4.ip.unwrap().ip,
            Some(net::ip_address::Ip::Ipv4(0x0a01_0203))
        );
        let v6 = to_tcp_address("[fd00::1:2]:80".parse().unwrap());
        assert_eq!(
            v6.ip.unwrap().ip,
            Some(net::ip_address::Ip::Ipv6(net::IPv6 {
                first: 0xfd00_0000_0000_0000,
                last: 0x0000_0000_0001_0002,
            }))
        );
    }
}
