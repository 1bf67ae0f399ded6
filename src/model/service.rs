//! What the index knows about a Service, already interpreted: its kind decides how it resolves.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::PortSet;

/// A namespaced service name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    /// Builds a reference from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a service's endpoints are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// Its own EndpointSlices in this cluster (includes gateway mirrors, whose
    /// slices point at the gateway).
    Local,
    /// `type: ExternalName`: not resolvable by the destination service.
    ExternalName,
    /// A pod-to-pod mirror: the endpoints of `service` in the same namespace of `cluster`.
    RemoteDiscovery {
        cluster: String,
        service: Option<String>,
    },
    /// The union of several services' endpoints, here and in linked clusters.
    Federated { members: Vec<FederatedMember> },
}

/// One member of a federated service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FederatedMember {
    /// `None` for the local cluster.
    pub cluster: Option<String>,
    pub service: String,
}

/// Where a mirror service came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorInfo {
    pub cluster: String,
    /// `<svc>.<ns>.svc.<remote-domain>` of the exported service, when known.
    pub remote_fqn: Option<String>,
}

/// A Service as resolution needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub service: ServiceRef,
    /// How its endpoints are found.
    pub kind: ServiceKind,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `internalTrafficPolicy: Local`: only endpoints on the caller's node.
    pub internal_traffic_local: bool,
    /// Its cluster IPs (both families), for `GetProfile` by IP.
    pub cluster_ips: Vec<IpAddr>,
    /// The service's `config.linkerd.io/opaque-ports`, for profiles.
    pub opaque_ports: Option<Arc<PortSet>>,
    /// Named service ports, so opaque ports can be listed by name.
    pub port_names: Vec<(u16, String)>,
    /// Set on mirror services: where they were mirrored from.
    pub mirror: Option<MirrorInfo>,
    /// The metric labels of the service's endpoint set, made once (by [`Self::set_labels`])
    /// and shared by every stream of the service so streams can compare them by pointer.
    pub labels: Arc<BTreeMap<String, String>>,
}

impl ServiceInfo {
    /// Labels describing the service's endpoint set: the service, and where a mirror points.
    pub fn set_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert("service".to_string(), self.service.name.clone());
        labels.insert("namespace".to_string(), self.service.namespace.clone());
        let remote = match &self.kind {
            ServiceKind::RemoteDiscovery {
                cluster,
                service: Some(service),
            } => Some((
                cluster.clone(),
                service.clone(),
                self.service.namespace.clone(),
            )),
            ServiceKind::Federated { members } => match members.as_slice() {
                [
                    FederatedMember {
                        cluster: Some(cluster),
                        service,
                    },
                ] => Some((
                    cluster.clone(),
                    service.clone(),
                    self.service.namespace.clone(),
                )),
                _ => None,
            },
            _ => self.mirror.as_ref().map(|m| {
                let mut parts = m.remote_fqn.as_deref().unwrap_or_default().split('.');
                let (name, ns) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                (m.cluster.clone(), name.to_string(), ns.to_string())
            }),
        };
        if let Some((cluster, service, namespace)) = remote {
            labels.insert("target_cluster".into(), cluster);
            if !service.is_empty() && !namespace.is_empty() {
                labels.insert("target_service".into(), service);
                labels.insert("target_service_namespace".into(), namespace);
            }
        }
        labels
    }

    /// Whether traffic to service port `port` is opaque: the service's own list when
    /// annotated, else `defaults`.
    pub fn is_opaque(&self, port: u16, defaults: &PortSet) -> bool {
        let name = self
            .port_names
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, n)| n.as_str());
        self.opaque_ports
            .as_deref()
            .unwrap_or(defaults)
            .contains(port, name)
    }
}
