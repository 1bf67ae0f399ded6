//! What a Link's mirrors should be: a pure function from the target cluster's Services and
//! EndpointSlices (and the Link) to the local objects the mirror owns. No I/O here.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
};
use kube::core::{Selector, SelectorExt};
use thiserror::Error;

use crate::k8s::{
    EndpointSlice, ObjectMeta, Service, labels,
    link::{Link, MirroredServices},
};

/// Namespace and name of a local object.
pub type ObjKey = (String, String);

/// A Link that does not say what the mirror needs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// A required spec field is empty.
    #[error("spec.{0} is missing")]
    Missing(&'static str),
    /// A label selector does not parse.
    #[error("spec.{field} does not parse: {error}")]
    Selector { field: &'static str, error: String },
    /// The gateway port is not a port.
    #[error("spec.gatewayPort {0:?} is not a port number")]
    GatewayPort(String),
}

/// A Link's spec as the mirror uses it.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Name of the Link.
    pub name: String,
    /// Namespace of the Link (and of its credentials Secret).
    pub namespace: String,
    /// The target cluster's name: the suffix of every mirror.
    pub cluster: String,
    /// DNS domain of the target cluster.
    pub remote_domain: String,
    /// The Secret holding the kubeconfig of the target cluster.
    pub credentials_secret: String,
    /// Gateway addresses as the Link gives them (IPs or DNS names).
    pub gateway_addresses: Vec<String>,
    /// Gateway port and identity (gateway mode only).
    pub gateway_port: Option<u16>,
    pub gateway_identity: Option<String>,
    selector: Option<Selector>,
    remote_discovery_selector: Option<Selector>,
    federated_selector: Option<Selector>,
    excluded_labels: Vec<String>,
    excluded_annotations: Vec<String>,
}

/// Parses a selector; an empty or missing one selects nothing (`None`).
fn parse_selector(
    field: &'static str,
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Option<Selector>, LinkError> {
    let Some(sel) = sel else { return Ok(None) };
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
    if empty {
        return Ok(None);
    }
    Selector::try_from(sel.clone())
        .map(Some)
        .map_err(|e| LinkError::Selector {
            field,
            error: e.to_string(),
        })
}

impl LinkConfig {
    /// Reads a Link; an error names the field that is wrong.
    pub fn from_link(link: &Link) -> Result<Self, LinkError> {
        let spec = &link.spec;
        let name = link
            .metadata
            .name
            .clone()
            .ok_or(LinkError::Missing("name"))?;
        let namespace = link.metadata.namespace.clone().unwrap_or_default();
        let cluster = spec
            .target_cluster_name
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or(LinkError::Missing("targetClusterName"))?;
        let credentials_secret = spec
            .cluster_credentials_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or(LinkError::Missing("clusterCredentialsSecret"))?;
        let selector = parse_selector("selector", spec.selector.as_ref())?;
        let gateway_port = match spec.gateway_port.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| LinkError::GatewayPort(p.to_string()))?,
            ),
            None if selector.is_some() => return Err(LinkError::Missing("gatewayPort")),
            None => None,
        };
        Ok(Self {
            name,
            namespace,
            cluster,
            remote_domain: spec
                .target_cluster_domain
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "cluster.local".into()),
            credentials_secret,
            gateway_addresses: spec
                .gateway_address
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            gateway_port,
            gateway_identity: spec.gateway_identity.clone(),
            selector,
            remote_discovery_selector: parse_selector(
                "remoteDiscoverySelector",
                spec.remote_discovery_selector.as_ref(),
            )?,
            federated_selector: parse_selector(
                "federatedServiceSelector",
                spec.federated_service_selector.as_ref(),
            )?,
            excluded_labels: spec.excluded_labels.clone().unwrap_or_default(),
            excluded_annotations: spec.excluded_annotations.clone().unwrap_or_default(),
        })
    }

    /// Whether the Link mirrors through a gateway at all.
    pub fn gateway_mode(&self) -> bool {
        self.selector.is_some()
    }

    /// The labels every object this Link owns carries (and is selected by).
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::MIRRORED_SERVICE.into(), "true".into()),
            (labels::MIRROR_CLUSTER_NAME.into(), self.cluster.clone()),
            (labels::MESHLINK_LINK.into(), self.name.clone()),
            (
                labels::MESHLINK_LINK_NAMESPACE.into(),
                self.namespace.clone(),
            ),
        ])
    }

    /// The label selector of the objects this Link owns.
    pub fn owner_selector(&self) -> String {
        format!(
            "{}={},{}={}",
            labels::MESHLINK_LINK,
            self.name,
            labels::MESHLINK_LINK_NAMESPACE,
            self.namespace
        )
    }

    /// How a remote Service is exported by this Link, if it is.
    pub fn mode_of(&self, svc: &Service) -> Option<Mode> {
        let empty = BTreeMap::new();
        let l = svc.metadata.labels.as_ref().unwrap_or(&empty);
        if self.selector.as_ref().is_some_and(|s| s.matches(l)) {
            Some(Mode::Gateway)
        } else if self
            .remote_discovery_selector
            .as_ref()
            .is_some_and(|s| s.matches(l))
        {
            Some(Mode::RemoteDiscovery)
        } else {
            None
        }
    }

    /// Whether a Service (remote or local) is a member of its federated service.
    pub fn is_federated_member(&self, svc: &Service) -> bool {
        let empty = BTreeMap::new();
        let l = svc.metadata.labels.as_ref().unwrap_or(&empty);
        self.federated_selector
            .as_ref()
            .is_some_and(|s| s.matches(l))
    }

    fn excluded(list: &[String], key: &str) -> bool {
        key.starts_with(labels::MIRROR_PREFIX)
            || list.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => e == key,
            })
    }
}

/// How a Service is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through the target cluster's gateway.
    Gateway,
    /// Pod to pod: the destination service reads the target cluster's endpoints.
    RemoteDiscovery,
}

/// What the mirror of one Link should hold locally: each object as [`desired`] makes it, or
/// in the form a caller of [`desired_with`] keeps of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired<S = Service, E = EndpointSlice> {
    /// Mirror Services by namespace and name.
    pub services: BTreeMap<ObjKey, S>,
    /// Mirror EndpointSlices by namespace and name.
    pub slices: BTreeMap<ObjKey, E>,
    /// Counts by kind.
    pub counts: MirroredServices,
    /// Federated members of the target cluster: (namespace, service) and the remote Service.
    pub federated: BTreeMap<ObjKey, Arc<Service>>,
}

/// The target cluster's state, as the watchers hold it.
pub struct Remote<'a> {
    /// Every Service of the target cluster.
    pub services: &'a [Arc<Service>],
    /// EndpointSlices of the target cluster by (namespace, service).
    pub slices: &'a BTreeMap<ObjKey, Vec<Arc<EndpointSlice>>>,
}

/// The mirror's inputs beyond the target cluster: resolved gateway addresses, whether the
/// gateway answers its probe, and the cluster IPs of local endpoint mirrors.
pub struct Local<'a> {
    /// The gateway's IP addresses.
    pub gateway_ips: &'a [IpAddr],
    /// Whether the gateway answers its probe.
    pub gateway_alive: bool,
    /// The cluster IP of a local Service, if it exists and has one.
    pub cluster_ip: &'a dyn Fn(&str, &str) -> Option<String>,
}

impl<S, E> Default for Desired<S, E> {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            counts: MirroredServices::default(),
            federated: BTreeMap::new(),
        }
    }
}

/// Computes every object the Link should have locally.
pub fn desired(link: &LinkConfig, remote: &Remote<'_>, local: &Local<'_>) -> Desired {
    desired_with(link, remote, local, &mut |svc| svc, &mut |slice| slice)
}

/// Computes every object the Link should have locally, handing each to `keep_service` or
/// `keep_slice` as it is made and keeping what they return. A reconciler that keeps only
/// what differs from what exists never holds thousands of unchanged objects at once.
pub fn desired_with<S, E>(
    link: &LinkConfig,
    remote: &Remote<'_>,
    local: &Local<'_>,
    keep_service: &mut dyn FnMut(Service) -> S,
    keep_slice: &mut dyn FnMut(EndpointSlice) -> E,
) -> Desired<S, E> {
    let mut out = Out {
        desired: Desired::default(),
        keep_service,
        keep_slice,
    };
    for svc in remote.services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        if link.is_federated_member(svc) {
            out.desired.counts.federated += 1;
            out.desired
                .federated
                .insert((ns.to_string(), name.to_string()), Arc::clone(svc));
        }
        let Some(mode) = link.mode_of(svc) else {
            continue;
        };
        let slices: &[Arc<EndpointSlice>] = remote
            .slices
            .get(&(ns.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match mode {
            Mode::RemoteDiscovery => {
                let mirror = mirror_service(link, svc, mode, false);
                out.desired.counts.remote_discovery += 1;
                out.service(mirror);
            }
            Mode::Gateway => gateway_mirrors(link, svc, slices, local, &mut out),
        }
    }
    out.desired
}

/// The objects made so far, and what to keep of each next one.
struct Out<'k, S, E> {
    desired: Desired<S, E>,
    keep_service: &'k mut dyn FnMut(Service) -> S,
    keep_slice: &'k mut dyn FnMut(EndpointSlice) -> E,
}

impl<S, E> Out<'_, S, E> {
    fn service(&mut self, svc: Service) {
        let key = obj_key(&svc.metadata);
        let kept = (self.keep_service)(svc);
        self.desired.services.insert(key, kept);
    }

    fn slice(&mut self, slice: EndpointSlice) {
        let key = obj_key(&slice.metadata);
        let kept = (self.keep_slice)(slice);
        self.desired.slices.insert(key, kept);
    }
}

fn obj_key(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Ready endpoints of the remote service: (hostname, ready).
fn ready_hosts(slices: &[Arc<EndpointSlice>]) -> (bool, BTreeSet<String>) {
    let mut any_ready = false;
    let mut hosts = BTreeSet::new();
    for ep in slices.iter().flat_map(|s| s.endpoints.iter().flatten()) {
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if ready && !ep.addresses.is_empty() {
            any_ready = true;
            if let Some(h) = ep.hostname.as_ref().filter(|h| !h.is_empty()) {
                hosts.insert(h.clone());
            }
        }
    }
    (any_ready, hosts)
}

fn gateway_mirrors<S, E>(
    link: &LinkConfig,
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    local: &Local<'_>,
    out: &mut Out<'_, S, E>,
) {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let (any_ready, hosts) = ready_hosts(slices);
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
        && !hosts.is_empty();
    out.desired.counts.gateway += 1;
    let mirror = mirror_service(link, svc, Mode::Gateway, headless);
    let mirror_name = mirror.metadata.name.clone().unwrap_or_default();
    let ports = mirror_ports(svc);
    if !headless {
        let fqn = format!("{name}.{ns}.svc.{}", link.remote_domain);
        for slice in gateway_slices(link, &mirror, &fqn, &ports, local, any_ready) {
            out.slice(slice);
        }
        out.service(mirror);
        return;
    }
    // Headless: one endpoint mirror per ready host, and the headless mirror's slice at
    // their cluster IPs (known once the API server assigned them).
    let mut parent_endpoints = Vec::new();
    for host in &hosts {
        let mut ep_mirror = mirror_service(link, svc, Mode::Gateway, false);
        let ep_name = format!("{host}-{}", link.cluster);
        let fqn = format!("{host}.{name}.{ns}.svc.{}", link.remote_domain);
        ep_mirror.metadata.name = Some(ep_name.clone());
        let l = ep_mirror.metadata.labels.get_or_insert_default();
        l.insert(labels::HEADLESS_MIRROR_SVC_NAME.into(), mirror_name.clone());
        let a = ep_mirror.metadata.annotations.get_or_insert_default();
        a.insert(labels::REMOTE_SVC_FQ_NAME.into(), fqn.clone());
        for mut slice in gateway_slices(link, &ep_mirror, &fqn, &ports, local, true) {
            slice
                .metadata
                .labels
                .get_or_insert_default()
                .insert(labels::HEADLESS_MIRROR_SVC_NAME.into(), mirror_name.clone());
            out.slice(slice);
        }
        if let Some(ip) = (local.cluster_ip)(&ns, &ep_name).filter(|ip| ip != "None") {
            parent_endpoints.push(Endpoint {
                addresses: vec![ip],
                hostname: Some(host.clone()),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            });
        }
        out.desired.counts.headless_endpoints += 1;
        out.service(ep_mirror);
    }
    let v6 = parent_endpoints
        .first()
        .is_some_and(|e| e.addresses[0].contains(':'));
    let parent_slice = EndpointSlice {
        metadata: slice_meta(link, &mirror, &mirror_name, false),
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: Some(parent_endpoints),
        ports: Some(
            ports
                .iter()
                .map(|p| EndpointPort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: p.protocol.clone(),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    };
    out.slice(parent_slice);
    out.service(mirror);
}

/// Metadata of a mirror's slice (`<mirror>-meshlink`, `-v6` for IPv6 addresses).
fn slice_meta(link: &LinkConfig, mirror: &Service, svc_name: &str, v6: bool) -> ObjectMeta {
    let mut l = link.owner_labels();
    l.insert(labels::SLICE_SERVICE_NAME.into(), svc_name.to_string());
    l.insert(
        labels::SLICE_MANAGED_BY.into(),
        labels::SLICE_MANAGED_BY_MIRROR.into(),
    );
    ObjectMeta {
        name: Some(format!(
            "{svc_name}-meshlink{}",
            if v6 { "-v6" } else { "" }
        )),
        namespace: mirror.metadata.namespace.clone(),
        labels: Some(l),
        ..ObjectMeta::default()
    }
}

/// The gateway slices of a gateway mirror: the gateway addresses, every port rewritten to
/// the gateway port, ready while the remote service has ready endpoints and the gateway lives.
fn gateway_slices(
    link: &LinkConfig,
    mirror: &Service,
    fqn: &str,
    ports: &[ServicePort],
    local: &Local<'_>,
    remote_ready: bool,
) -> Vec<EndpointSlice> {
    let name = mirror.metadata.name.clone().unwrap_or_default();
    let gw_port = i32::from(link.gateway_port.unwrap_or(4143));
    let ready = remote_ready && local.gateway_alive;
    let mut out = Vec::new();
    for v6 in [false, true] {
        let addrs: Vec<String> = local
            .gateway_ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(ToString::to_string)
            .collect();
        // An IPv4 slice always exists, so that the mirror says "no endpoints" explicitly.
        if v6 && addrs.is_empty() {
            continue;
        }
        let mut meta = slice_meta(link, mirror, &name, v6);
        let mut a = BTreeMap::from([(labels::REMOTE_SVC_FQ_NAME.to_string(), fqn.to_string())]);
        if let Some(id) = &link.gateway_identity {
            a.insert(labels::REMOTE_GATEWAY_IDENTITY.into(), id.clone());
        }
        meta.annotations = Some(a);
        out.push(EndpointSlice {
            metadata: meta,
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints: Some(
                addrs
                    .into_iter()
                    .map(|addr| Endpoint {
                        addresses: vec![addr],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: Some(gw_port),
                        protocol: p.protocol.clone(),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        });
    }
    out
}

/// The remote service's ports, as the mirror lists them (no selector, target = port).
fn mirror_ports(svc: &Service) -> Vec<ServicePort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol.clone(),
            target_port: Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port),
            ),
            ..ServicePort::default()
        })
        .collect()
}

/// The mirror Service `<svc>-<cluster>` of a remote Service.
fn mirror_service(link: &LinkConfig, svc: &Service, mode: Mode, headless: bool) -> Service {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut l: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !LinkConfig::excluded(&link.excluded_labels, k))
        .filter(|(k, _)| !k.starts_with(labels::MESHLINK_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.extend(link.owner_labels());
    let mut a: BTreeMap<String, String> = svc
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !LinkConfig::excluded(&link.excluded_annotations, k))
        .filter(|(k, _)| !k.starts_with(labels::MESHLINK_PREFIX))
        .filter(|(k, _)| *k != labels::LAST_APPLIED)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    a.insert(
        labels::REMOTE_SVC_FQ_NAME.into(),
        format!("{name}.{ns}.svc.{}", link.remote_domain),
    );
    a.insert(
        labels::REMOTE_RESOURCE_VERSION.into(),
        svc.metadata.resource_version.clone().unwrap_or_default(),
    );
    match mode {
        Mode::RemoteDiscovery => {
            l.insert(labels::MC_REMOTE_DISCOVERY.into(), link.cluster.clone());
            l.insert(labels::MC_REMOTE_SERVICE.into(), name.clone());
        }
        Mode::Gateway => {
            if let Some(id) = link.gateway_identity.as_ref().filter(|_| !headless) {
                a.insert(labels::REMOTE_GATEWAY_IDENTITY.into(), id.clone());
            }
        }
    }
    Service {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", link.cluster)),
            namespace: Some(ns),
            labels: Some(l),
            annotations: Some(a),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(mirror_ports(svc)),
            cluster_ip: headless.then(|| "None".to_string()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;
