//! Services as the index keeps them: their ports and their interpreted kind.

use std::{net::IpAddr, sync::Arc};

use crate::{
    k8s::{Service, labels},
    model::{FederatedMember, MirrorInfo, PortSet, ServiceInfo, ServiceKind, ServiceRef},
};

/// A service port and where it sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServicePort {
    pub port: u16,
    pub name: Option<String>,
    pub target: TargetPort,
}

/// A port's `targetPort`: a number, or a container port name resolved per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TargetPort {
    Number(u16),
    Name(String),
}

/// Gateway annotations of a gateway mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GatewayInfo {
    pub identity: String,
    pub remote_fqn: String,
}

/// Everything the index keeps of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServiceState {
    pub info: Arc<ServiceInfo>,
    pub ports: Vec<ServicePort>,
    pub gateway: Option<GatewayInfo>,
}

pub(super) fn service_ref(svc: &Service) -> Option<ServiceRef> {
    Some(ServiceRef::new(
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref()?,
    ))
}

impl ServiceState {
    pub fn from_k8s(svc: &Service) -> Option<Self> {
        let key = service_ref(svc)?;
        let spec = svc.spec.clone().unwrap_or_default();
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();

        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            ServiceKind::ExternalName
        } else if let Some(cluster) = labels.get(labels::MC_REMOTE_DISCOVERY) {
            ServiceKind::RemoteDiscovery {
                cluster: cluster.clone(),
                service: labels.get(labels::MC_REMOTE_SERVICE).cloned(),
            }
        } else if annotations.contains_key(labels::MC_REMOTE_DISCOVERY)
            || annotations.contains_key(labels::MC_LOCAL_DISCOVERY)
        {
            ServiceKind::Federated {
                members: federated_members(
                    annotations
                        .get(labels::MC_LOCAL_DISCOVERY)
                        .map(String::as_str),
                    annotations
                        .get(labels::MC_REMOTE_DISCOVERY)
                        .map(String::as_str),
                ),
            }
        } else {
            ServiceKind::Local
        };

        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let headless = spec.cluster_ip.as_deref() == Some("None");

        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
                let target = match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        TargetPort::Number(u16::try_from(*n).ok().filter(|p| *p > 0)?)
                    }
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                        match s.parse::<u16>() {
                            Ok(n) if n > 0 => TargetPort::Number(n),
                            _ => TargetPort::Name(s.clone()),
                        }
                    }
                    None => TargetPort::Number(port),
                };
                Some(ServicePort {
                    port,
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    target,
                })
            })
            .collect();

        let mirror = labels
            .get(labels::MIRROR_CLUSTER_NAME)
            .map(|cluster| MirrorInfo {
                cluster: cluster.clone(),
                remote_fqn: annotations.get(labels::REMOTE_SVC_FQ_NAME).cloned(),
            });
        let gateway = gateway_info(&annotations);
        let opaque_ports = annotations
            .get(labels::OPAQUE_PORTS)
            .map(|list| Arc::new(PortSet::parse(list).0));

        let port_names = ports
            .iter()
            .filter_map(|p: &ServicePort| Some((p.port, p.name.clone()?)))
            .collect();
        let info = ServiceInfo {
            service: key,
            kind,
            headless,
            internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            cluster_ips,
            opaque_ports,
            port_names,
            mirror,
            labels: Arc::default(),
        };
        let info = ServiceInfo {
            labels: Arc::new(info.set_labels()),
            ..info
        };
        Some(Self {
            info: Arc::new(info),
            ports,
            gateway,
        })
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// Reads the gateway annotations of a mirror Service or of its EndpointSlices.
pub(super) fn gateway_info(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<GatewayInfo> {
    Some(GatewayInfo {
        identity: annotations.get(labels::REMOTE_GATEWAY_IDENTITY)?.clone(),
        remote_fqn: annotations.get(labels::REMOTE_SVC_FQ_NAME)?.clone(),
    })
}

/// Parses `local-discovery: svc` and `remote-discovery: svc@east,svc@west`.
fn federated_members(local: Option<&str>, remote: Option<&str>) -> Vec<FederatedMember> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let mut members: Vec<FederatedMember> = local
        .map(split)
        .unwrap_or_default()
        .into_iter()
        .map(|service| FederatedMember {
            cluster: None,
            service,
        })
        .collect();
    for entry in remote.map(split).unwrap_or_default() {
        match entry.split_once('@') {
            Some((service, cluster)) if !service.is_empty() && !cluster.is_empty() => {
                members.push(FederatedMember {
                    cluster: Some(cluster.to_string()),
                    service: service.to_string(),
                })
            }
            _ => tracing::warn!(
                entry,
                "ignoring federated member that is not <service>@<cluster>"
            ),
        }
    }
    members.sort();
    members.dedup();
    members
}
