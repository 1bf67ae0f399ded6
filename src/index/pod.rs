//! Pods as the index keeps them: only what endpoint attributes need.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::Container;

use super::{IndexConfig, PodRef, intern::Interner};

use crate::{
    k8s::{Pod, labels},
    model::{PortSet, endpoint::Labels},
};

/// The proxy's inbound port when the pod does not say.
pub const DEFAULT_INBOUND_PORT: u16 = 4143;

/// What the index keeps of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`, the pod's key in the index.
    pub key: PodRef,
    pub name: Arc<str>,
    pub ips: Box<[IpAddr]>,
    pub node_name: Option<Arc<str>>,
    /// Has a proxy (`linkerd.io/control-plane-ns` is set).
    pub meshed: bool,
    /// The TLS identity, when meshed by our control plane.
    pub identity: Option<Arc<str>>,
    pub skip_inbound: Option<Box<PortSet>>,
    /// The pod's own opaque ports; `None` means the defaults apply.
    pub opaque_ports: Option<Box<PortSet>>,
    /// Container port numbers and their names, for ports listed by name.
    pub port_names: Vec<(u16, String)>,
    pub inbound_port: u16,
    /// `namespace`, owner kind (`deployment`, ...), `serviceaccount`, `control_plane_ns` and
    /// `pod_template_hash` (when the pod has them), shared by siblings.
    pub labels: Labels,
}

/// The index key of a pod: `namespace/name`.
pub(super) fn pod_key(namespace: &str, name: &str) -> PodRef {
    Arc::from(format!("{namespace}/{name}"))
}

pub(super) fn pod_ref(pod: &Pod) -> Option<PodRef> {
    Some(pod_key(
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref()?,
    ))
}

impl PodInfo {
    /// Reads a Pod; `None` when it has no name.
    pub(super) fn from_k8s(
        pod: &Pod,
        config: &IndexConfig,
        interner: &mut Interner,
    ) -> Option<Self> {
        let key = pod_ref(pod)?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name: Arc<str> = Arc::from(pod.metadata.name.as_deref()?);
        // Read in place: a real pod's spec and status are kilobytes, and a cold start
        // reads every pod of the cluster.
        let empty = BTreeMap::new();
        let meta_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();

        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();

        // An empty label meshes nothing, as in Linkerd.
        let control_plane_ns = meta_labels
            .get(labels::CONTROL_PLANE_NS)
            .filter(|ns| !ns.is_empty());
        let meshed = control_plane_ns.is_some();
        let service_account = spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        let identity = (control_plane_ns == Some(&config.control_plane_ns)
            && !config.trust_domain.is_empty())
        .then(|| {
            Arc::from(format!(
                "{service_account}.{namespace}.serviceaccount.identity.{}.{}",
                config.control_plane_ns, config.trust_domain
            ))
        });

        let containers = || {
            spec.into_iter().flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
        };
        let mut port_names = Vec::new();
        for c in containers() {
            for p in c.ports.iter().flatten() {
                if let (Ok(n), Some(pname)) = (u16::try_from(p.container_port), p.name.as_ref()) {
                    port_names.push((n, pname.clone()));
                }
            }
        }
        let inbound_port = proxy_inbound_port(containers());

        let mut pod_labels = BTreeMap::new();
        pod_labels.insert("namespace".to_string(), namespace.to_string());
        pod_labels.insert("serviceaccount".to_string(), service_account);
        // Linkerd's dashboards select on these two; its controller sends them when the pod has them.
        if let Some(ns) = control_plane_ns {
            pod_labels.insert("control_plane_ns".to_string(), ns.clone());
        }
        if let Some(hash) = meta_labels
            .get(labels::POD_TEMPLATE_HASH)
            .filter(|h| !h.is_empty())
        {
            pod_labels.insert("pod_template_hash".to_string(), hash.clone());
        }
        if let Some((kind, owner)) = owner_label(pod, meta_labels) {
            pod_labels.insert(kind, owner);
        }

        Some(Self {
            key,
            name,
            ips: ips.into_boxed_slice(),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .map(|n| interner.str(n)),
            meshed,
            identity,
            skip_inbound: annotations
                .get(labels::SKIP_INBOUND_PORTS)
                .map(|l| Box::new(PortSet::parse(l).0)),
            opaque_ports: annotations
                .get(labels::OPAQUE_PORTS)
                .map(|l| Box::new(PortSet::parse(l).0)),
            port_names,
            inbound_port,
            labels: interner.labels(pod_labels),
        })
    }

    /// Whether the pod's proxy handles inbound traffic on `port`.
    pub fn proxied(&self, port: u16) -> bool {
        self.meshed
            && !self
                .skip_inbound
                .as_ref()
                .is_some_and(|s| s.contains(port, self.port_name(port)))
    }

    /// The container port name of `port`, if the pod names it.
    fn port_name(&self, port: u16) -> Option<&str> {
        self.port_names
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, n)| n.as_str())
    }

    /// Whether traffic to `port` is opaque.
    pub fn is_opaque(&self, port: u16, defaults: &PortSet) -> bool {
        let name = self.port_name(port);
        match &self.opaque_ports {
            Some(set) => set.contains(port, name),
            None => defaults.contains(port, name),
        }
    }
}

/// The proxy's inbound port, from `LINKERD2_PROXY_INBOUND_LISTEN_ADDR` of the `linkerd-proxy`
/// container (a main container or a native sidecar, as Linkerd reads it); the default when that
/// is missing or is not `host:port` with a port above 0.
fn proxy_inbound_port<'a>(containers: impl Iterator<Item = &'a Container>) -> u16 {
    containers
        .filter(|c| c.name == labels::PROXY_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == labels::PROXY_INBOUND_LISTEN_ADDR_ENV)
        .and_then(|e| e.value.as_deref())
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port > 0)
        .unwrap_or(DEFAULT_INBOUND_PORT)
}

/// The owner metric label: `deployment` for ReplicaSet pods, else the controller's kind.
fn owner_label(pod: &Pod, meta_labels: &BTreeMap<String, String>) -> Option<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = meta_labels.get(labels::POD_TEMPLATE_HASH)
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return Some(("deployment".into(), deployment.into()));
    }
    Some((owner.kind.to_ascii_lowercase(), owner.name.clone()))
}
