//! Services as the index keeps them: their ports and their interpreted kind.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::{api::core::v1::ServiceSpec, apimachinery::pkg::util::intstr::IntOrString};

use crate::{
    k8s::{Service, labels},
    model::{FederatedMember, MirrorInfo, PortSet, ServiceInfo, ServiceKind, ServiceRef},
};

/// Labels or annotations.
type StrMap = BTreeMap<String, String>;

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
    /// Reads a Service; `None` when it has no name.
    pub fn from_k8s(svc: &Service) -> Option<Self> {
        let key = service_ref(svc)?;
        let spec = svc.spec.clone().unwrap_or_default();
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();

        let ports = service_ports(&spec);
        let port_names = ports
            .iter()
            .filter_map(|p| Some((p.port, p.name.clone()?)))
            .collect();
        let info = ServiceInfo {
            service: key,
            kind: service_kind(&spec, &labels, &annotations),
            headless: spec.cluster_ip.as_deref() == Some("None"),
            internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            cluster_ips: cluster_ips(&spec),
            opaque_ports: annotations
                .get(labels::OPAQUE_PORTS)
                .map(|list| Arc::new(PortSet::parse(list).0)),
            port_names,
            mirror: mirror_info(&labels, &annotations),
            labels: Arc::default(),
        };
        let info = ServiceInfo {
            labels: Arc::new(info.set_labels()),
            ..info
        };
        Some(Self {
            info: Arc::new(info),
            ports,
            gateway: gateway_info(&annotations),
        })
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// What kind of service this is: from its type, then the multicluster labels and
/// annotations (a remote-discovery mirror, a federated service), else local.
fn service_kind(spec: &ServiceSpec, labels: &StrMap, annotations: &StrMap) -> ServiceKind {
    if spec.type_.as_deref() == Some("ExternalName") {
        return ServiceKind::ExternalName;
    }
    if let Some(cluster) = labels.get(labels::MC_REMOTE_DISCOVERY) {
        return ServiceKind::RemoteDiscovery {
            cluster: cluster.clone(),
            service: labels.get(labels::MC_REMOTE_SERVICE).cloned(),
        };
    }
    let local = annotations.get(labels::MC_LOCAL_DISCOVERY);
    let remote = annotations.get(labels::MC_REMOTE_DISCOVERY);
    if local.is_some() || remote.is_some() {
        return ServiceKind::Federated {
            members: federated_members(local.map(String::as_str), remote.map(String::as_str)),
        };
    }
    ServiceKind::Local
}

/// Every cluster IP of the service (both families), sorted, without duplicates.
fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The service's valid ports with their target ports.
fn service_ports(spec: &ServiceSpec) -> Vec<ServicePort> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
            Some(ServicePort {
                port,
                name: p.name.clone().filter(|n| !n.is_empty()),
                target: target_port(p.target_port.as_ref(), port)?,
            })
        })
        .collect()
}

/// A `targetPort`: a number (also when written as a string), a container port name, or
/// the port itself when absent; `None` when out of range.
fn target_port(target: Option<&IntOrString>, port: u16) -> Option<TargetPort> {
    Some(match target {
        Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok().filter(|p| *p > 0)?),
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => TargetPort::Number(n),
            _ => TargetPort::Name(s.clone()),
        },
        None => TargetPort::Number(port),
    })
}

/// The cluster a mirror Service was mirrored from, and the remote service's name.
fn mirror_info(labels: &StrMap, annotations: &StrMap) -> Option<MirrorInfo> {
    labels
        .get(labels::MIRROR_CLUSTER_NAME)
        .map(|cluster| MirrorInfo {
            cluster: cluster.clone(),
            remote_fqn: annotations.get(labels::REMOTE_SVC_FQ_NAME).cloned(),
        })
}

/// Reads the gateway annotations of a mirror Service or of its EndpointSlices.
pub(super) fn gateway_info(annotations: &StrMap) -> Option<GatewayInfo> {
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
