//! Computing a service port's endpoint set from slices, pods and nodes.

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use super::{
    ClusterIndex, IndexConfig, PodInfo, PodRef,
    service::{GatewayInfo, TargetPort},
};
use crate::model::{Endpoint, EndpointAddrs, PortSnapshot, ProtocolHint, ServiceKind, ServiceRef};

impl ClusterIndex {
    /// The snapshot of `svc` on `port`, reusing `prev`'s endpoints where nothing changed
    /// so that streams can compare by pointer.
    pub(super) fn compute_port(
        &self,
        svc: &ServiceRef,
        port: u16,
        prev: Option<&PortSnapshot>,
    ) -> PortSnapshot {
        let Some(state) = self.services.get(svc) else {
            return PortSnapshot::default();
        };
        let service = Some(Arc::clone(&state.info));
        if state.info.kind != ServiceKind::Local {
            return PortSnapshot {
                service,
                ..PortSnapshot::default()
            };
        }
        let svc_port = state.port(port);
        let target = svc_port
            .map(|p| p.target.clone())
            .unwrap_or(TargetPort::Number(port));
        // `None` when the service does not list the port: then the requested port is used.
        let port_name: Option<Option<&str>> = svc_port.map(|p| p.name.as_deref());

        let mut found: Vec<(Option<&PodRef>, Endpoint)> = Vec::new();
        // Pods that have an IPv6 address here: their IPv4 addresses are dropped.
        let mut v6_pods: HashSet<&PodRef> = HashSet::new();
        for slice in self.slices.get(svc).into_iter().flat_map(|s| s.values()) {
            let slice_port = port_name
                .and_then(|pn| slice.ports.iter().find(|(name, _)| name.as_deref() == pn))
                .map(|(_, n)| *n)
                .or(match target {
                    TargetPort::Number(n) => Some(n),
                    TargetPort::Name(_) => None,
                });
            let Some(target_port) = slice_port else {
                continue;
            };
            let gateway = slice.gateway.as_ref().or(state.gateway.as_ref());
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                // An endpoint of a pod is served only with what the pod says (identity,
                // hint): until the pod is known it is withheld, never sent bare, so a
                // proxy never reaches a meshed pod without mTLS.
                let pod = match &ep.pod {
                    Some(key) => match self.pods.get(key) {
                        Some(pod) => Some(pod),
                        None => continue,
                    },
                    None => None,
                };
                for ip in &ep.addrs {
                    if ip.is_ipv6()
                        && let Some(p) = &ep.pod
                    {
                        v6_pods.insert(p);
                    }
                    let addr = SocketAddr::new(*ip, target_port);
                    let mut endpoint = match pod {
                        Some(pod) => pod_endpoint(&self.config, pod, addr, None),
                        None => bare_endpoint(&self.config, addr),
                    };
                    endpoint.hostname = ep.hostname.clone();
                    endpoint.node_name = ep.node_name.clone().or(endpoint.node_name);
                    endpoint.zone = ep.zone.clone().or_else(|| {
                        endpoint
                            .node_name
                            .as_deref()
                            .and_then(|n| self.node_zone(n))
                    });
                    endpoint.hint_zones = ep.hint_zones.clone();
                    if let Some(gw) = gateway {
                        apply_gateway(&mut endpoint, gw, port);
                    }
                    found.push((ep.pod.as_ref(), endpoint));
                }
            }
        }

        let mut endpoints = EndpointAddrs::new();
        for (pod, e) in found {
            if e.addr.is_ipv4() && pod.is_some_and(|p| v6_pods.contains(p)) {
                continue;
            }
            let e = match prev.and_then(|p| p.endpoints.get(&e.addr)) {
                Some(old) if **old == e => Arc::clone(old),
                _ => Arc::new(e),
            };
            endpoints.insert(e.addr, e);
        }
        PortSnapshot {
            service,
            all_hinted: crate::model::all_hinted(&endpoints),
            endpoints: Arc::new(endpoints),
            ..PortSnapshot::default()
        }
    }
}

/// The endpoint a pod is at `addr`: identity, protocol hint and labels.
pub(super) fn pod_endpoint(
    config: &IndexConfig,
    pod: &PodInfo,
    addr: SocketAddr,
    zone: Option<Arc<str>>,
) -> Endpoint {
    let port = addr.port();
    let proxied = pod.proxied(port);
    let hint = if !proxied {
        ProtocolHint::Unknown
    } else if pod.is_opaque(port, &config.default_opaque_ports) {
        ProtocolHint::Opaque {
            inbound_port: pod.inbound_port,
        }
    } else {
        ProtocolHint::H2
    };
    Endpoint {
        addr,
        identity: pod.identity.clone().filter(|_| proxied),
        hint,
        authority_override: None,
        hostname: None,
        node_name: pod.node_name.clone(),
        zone,
        hint_zones: None,
        pod: Some(Arc::clone(&pod.name)),
        labels: Arc::clone(&pod.labels),
        cluster: Arc::clone(&config.cluster_name),
    }
}

fn bare_endpoint(config: &IndexConfig, addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr,
        identity: None,
        hint: ProtocolHint::Unknown,
        authority_override: None,
        hostname: None,
        node_name: None,
        zone: None,
        hint_zones: None,
        pod: None,
        labels: Default::default(),
        cluster: Arc::clone(&config.cluster_name),
    }
}

/// A gateway endpoint: the gateway's identity, and the remote service as authority.
fn apply_gateway(endpoint: &mut Endpoint, gw: &GatewayInfo, requested_port: u16) {
    endpoint.identity = Some(Arc::from(gw.identity.as_str()));
    endpoint.hint = ProtocolHint::H2;
    endpoint.authority_override = Some(Arc::from(format!("{}:{requested_port}", gw.remote_fqn)));
}
