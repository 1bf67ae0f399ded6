//! The kinds the Kubernetes source watches: how each is trimmed to what the index reads,
//! and how its watch events become index calls.

use std::collections::BTreeMap;

use kube::runtime::watcher::Event;

use crate::{
    index::ClusterIndex,
    k8s::{EndpointSlice, Node, ObjectMeta, Pod, Secret, Service, labels, profile::ServiceProfile},
    sources::profile::parse_profile,
};

/// A resource kind the index reads, with its `apply_*`/`delete_*`/`reset_*`.
pub trait Indexed:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind's name in logs and errors.
    const KIND: &'static str;

    /// Drops everything the index never reads, so held objects stay small.
    fn trim(self) -> Self;
    fn apply(index: &mut ClusterIndex, obj: &Self);
    fn delete(index: &mut ClusterIndex, obj: &Self);
    fn reset(index: &mut ClusterIndex, objs: &[Self]);

    /// Whether a relist hands its objects to the index in parts as they come
    /// ([`Indexed::stage`]) instead of holding them all until it is whole.
    const STAGED: bool = false;
    /// A relist begins: whatever an unfinished earlier one staged is forgotten.
    fn begin_relist(_index: &mut ClusterIndex) {}
    /// Part of a relist under way, for a kind that is [`Indexed::STAGED`].
    fn stage(_index: &mut ClusterIndex, _objs: &[Self]) {}
}

/// Objects of a staged relist handed to the index at a time.
const STAGE_CHUNK: usize = 256;

fn name_of(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Metadata without managed fields and the last-applied copy.
fn trim_meta(mut meta: ObjectMeta) -> ObjectMeta {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(labels::LAST_APPLIED);
    }
    meta
}

/// Only the named keys of a label or annotation map.
fn keep_keys(
    map: Option<BTreeMap<String, String>>,
    keys: &[&str],
) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

// === impl Indexed for ServiceProfile ===

impl Indexed for ServiceProfile {
    const KIND: &'static str = "ServiceProfile";

    fn trim(mut self) -> Self {
        self.metadata = trim_meta(self.metadata);
        self
    }
    /// A profile that does not parse is reported; its last good version stays.
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        match parse_profile(obj) {
            Ok(profile) => index.apply_profile(profile),
            Err(error) => {
                let (ns, name) = name_of(&obj.metadata);
                tracing::warn!(namespace = ns, name, %error, "ServiceProfile rejected; serving its last good version");
                index.reject_profile(ns, name, error.metric_label());
            }
        }
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        let (ns, name) = name_of(&obj.metadata);
        index.delete_profile(ns, name);
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        let mut good = Vec::with_capacity(objs.len());
        let mut invalid = Vec::new();
        for obj in objs {
            match parse_profile(obj) {
                Ok(profile) => good.push(profile),
                Err(error) => {
                    let (ns, name) = name_of(&obj.metadata);
                    tracing::warn!(namespace = ns, name, %error, "ServiceProfile rejected; serving its last good version");
                    invalid.push(((ns.to_string(), name.to_string()), error.metric_label()));
                }
            }
        }
        index.reset_profiles(good, invalid);
    }
}

// === impl Indexed for Service ===

impl Indexed for Service {
    const KIND: &'static str = "Service";

    fn trim(self) -> Self {
        Service {
            metadata: trim_meta(self.metadata),
            spec: self.spec,
            status: None,
        }
    }
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        index.apply_service(obj);
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        let (ns, name) = name_of(&obj.metadata);
        index.delete_service(ns, name);
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        index.reset_services(objs);
    }
}

// === impl Indexed for EndpointSlice ===

impl Indexed for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";

    fn trim(mut self) -> Self {
        self.metadata = trim_meta(self.metadata);
        self
    }
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        index.apply_endpoint_slice(obj);
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        let (ns, name) = name_of(&obj.metadata);
        index.delete_endpoint_slice(ns, name);
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        index.reset_endpoint_slices(objs);
    }
}

// === impl Indexed for Pod ===

impl Indexed for Pod {
    const KIND: &'static str = "Pod";

    /// Keeps what endpoint attributes come from (see `index::PodInfo`): labels, the
    /// port annotations, the controller, the service account, the node, container
    /// ports, the proxy's inbound listener, and the pod IPs.
    fn trim(self) -> Self {
        use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

        let meta = self.metadata;
        let metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            labels: meta.labels,
            annotations: keep_keys(meta.annotations, labels::POD_ANNOTATIONS_READ),
            owner_references: meta.owner_references.map(|o| {
                o.into_iter()
                    .filter(|o| o.controller == Some(true))
                    .collect()
            }),
            ..ObjectMeta::default()
        };
        let trim_container = |c: Container| {
            let proxy = c.name == labels::PROXY_CONTAINER;
            Container {
                env: c.env.filter(|_| proxy).map(|env| {
                    env.into_iter()
                        .filter(|e| e.name == labels::PROXY_INBOUND_LISTEN_ADDR_ENV)
                        .collect()
                }),
                ports: c.ports,
                name: c.name,
                ..Container::default()
            }
        };
        let spec = self.spec.map(|s| PodSpec {
            containers: s.containers.into_iter().map(trim_container).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(trim_container).collect()),
            service_account_name: s.service_account_name,
            node_name: s.node_name,
            ..PodSpec::default()
        });
        let status = self.status.map(|s| PodStatus {
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..PodStatus::default()
        });
        Pod {
            metadata,
            spec,
            status,
        }
    }
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        index.apply_pod(obj);
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        let (ns, name) = name_of(&obj.metadata);
        index.delete_pod(ns, name);
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        index.reset_pods(objs);
    }
    /// Staged: a relist of 100,000 Pods held as trimmed Pods took 400 MB until it was whole.
    const STAGED: bool = true;
    fn begin_relist(index: &mut ClusterIndex) {
        index.begin_pod_relist();
    }
    fn stage(index: &mut ClusterIndex, objs: &[Self]) {
        index.stage_pods(objs);
    }
}

// === impl Indexed for Node ===

impl Indexed for Node {
    const KIND: &'static str = "Node";

    /// Only the name and the zone label matter.
    fn trim(self) -> Self {
        Node {
            metadata: ObjectMeta {
                name: self.metadata.name,
                labels: keep_keys(self.metadata.labels, &[labels::TOPOLOGY_ZONE]),
                ..ObjectMeta::default()
            },
            spec: None,
            status: None,
        }
    }
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        index.apply_node(obj);
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        index.delete_node(obj.metadata.name.as_deref().unwrap_or_default());
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        index.reset_nodes(objs);
    }
}

// === impl Indexed for Secret ===

impl Indexed for Secret {
    const KIND: &'static str = "Secret";

    /// Only the kubeconfig of a credentials Secret is read.
    fn trim(self) -> Self {
        Secret {
            metadata: trim_meta(self.metadata),
            data: self.data.map(|d| {
                d.into_iter()
                    .filter(|(k, _)| k == labels::KUBECONFIG_KEY)
                    .collect()
            }),
            type_: self.type_,
            immutable: self.immutable,
            string_data: None,
        }
    }
    fn apply(index: &mut ClusterIndex, obj: &Self) {
        index.apply_secret(obj);
    }
    fn delete(index: &mut ClusterIndex, obj: &Self) {
        let (ns, name) = name_of(&obj.metadata);
        index.delete_secret(ns, name);
    }
    fn reset(index: &mut ClusterIndex, objs: &[Self]) {
        index.reset_secrets(objs);
    }
}

/// Turns one watcher's events into index changes: a relist (`Init`, `InitApply`*,
/// `InitDone`) is buffered and becomes one reset, so objects deleted while the watch was
/// down leave the index, and readers see the old objects until the new list is whole.
/// A staged kind (Pods) is handed over in parts of [`STAGE_CHUNK`] that the index keeps
/// aside, in its own compact form, until the reset.
#[derive(Debug)]
pub struct EventBuffer<K> {
    relist: Option<Vec<K>>,
}

impl<K> Default for EventBuffer<K> {
    fn default() -> Self {
        Self { relist: None }
    }
}

/// What an event asks of the index.
#[derive(Debug)]
pub enum Change<K> {
    Apply(K),
    Delete(K),
    /// A relist of a staged kind begins.
    BeginRelist,
    /// Part of a relist of a staged kind, for the index to keep aside.
    Stage(Vec<K>),
    /// A full list: the index must hold exactly these objects of the kind (with those
    /// staged since the relist began, for a staged kind).
    Reset(Vec<K>),
}

impl<K: Indexed> EventBuffer<K> {
    /// Whether a relist is under way (between `Init` and `InitDone`).
    pub fn relisting(&self) -> bool {
        self.relist.is_some()
    }

    /// Takes one event; returns what the index must do, if anything yet.
    pub fn push(&mut self, event: Event<K>) -> Option<Change<K>> {
        match event {
            Event::Init => {
                self.relist = Some(Vec::new());
                K::STAGED.then_some(Change::BeginRelist)
            }
            Event::InitApply(obj) => {
                let obj = obj.trim();
                match self.relist.as_mut() {
                    Some(buffer) => {
                        buffer.push(obj);
                        (K::STAGED && buffer.len() >= STAGE_CHUNK)
                            .then(|| Change::Stage(std::mem::take(buffer)))
                    }
                    None => Some(Change::Apply(obj)),
                }
            }
            Event::InitDone => Some(Change::Reset(self.relist.take().unwrap_or_default())),
            Event::Apply(obj) => Some(Change::Apply(obj.trim())),
            Event::Delete(obj) => Some(Change::Delete(obj)),
        }
    }
}

impl<K: Indexed> Change<K> {
    /// Applies the change to the index.
    pub fn apply_to(&self, index: &mut ClusterIndex) {
        match self {
            Change::Apply(obj) => K::apply(index, obj),
            Change::Delete(obj) => K::delete(index, obj),
            Change::BeginRelist => K::begin_relist(index),
            Change::Stage(objs) => K::stage(index, objs),
            Change::Reset(objs) => K::reset(index, objs),
        }
    }
}
