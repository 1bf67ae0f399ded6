//! The in-memory index of one cluster: Kubernetes objects in, endpoint snapshots out.
//!
//! Synchronous and I/O-free. Sources call `apply_*`, `delete_*` and `reset_*`; readers
//! ask for a `watch` receiver per lookup (`*_rx`), which is created lazily, updated
//! whenever an object it depends on changes, and dropped once no receiver is left.
//! Writers never wait for readers: a slow reader only skips intermediate snapshots.

mod clusters;
mod endpoints;
mod intern;
mod links;
mod pod;
mod profiles;
mod service;
mod slice;

#[cfg(test)]
mod tests;

pub use clusters::{ClusterHandle, ClusterSet, ClusterStatus};
pub use links::{LinkedClusterSpec, RejectedSecret, SecretRejection};
pub use pod::PodInfo;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::sync::watch;

use crate::{
    k8s::{EndpointSlice, Node, Pod, Secret, Service, labels},
    model::{
        Endpoint, PortSet, PortSnapshot, Profile, ServiceInfo, ServiceRef, SnapshotVersion,
        diff_endpoints,
    },
};
use service::ServiceState;
use slice::SliceState;

/// Numbers lookups across every index, so snapshot versions never collide.
static NEXT_LOOKUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An index shared between its source (the writer) and the resolver (readers).
pub type SharedIndex = Arc<parking_lot::Mutex<ClusterIndex>>;

/// How endpoints of this cluster are described.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// The cluster's name, attached to every endpoint.
    pub cluster_name: Arc<str>,
    /// The cluster's DNS domain (e.g. `cluster.local`).
    pub cluster_domain: String,
    /// The identity trust domain of the cluster's control plane.
    pub trust_domain: String,
    /// The namespace of the control plane whose pods get identities.
    pub control_plane_ns: String,
    /// Ports treated as opaque when a pod does not say otherwise.
    pub default_opaque_ports: Arc<PortSet>,
}

/// A pod's key: `namespace/name`, shared by every structure that refers to the pod.
pub type PodRef = Arc<str>;

/// What an IP address and port are, for `GetProfile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrTarget {
    /// A Service's cluster IP.
    Service(Arc<ServiceInfo>),
    /// A pod's IP: the endpoint the pod is on that port.
    Pod(Arc<Endpoint>),
    /// Nothing this cluster knows.
    Unknown,
}

/// Object counts, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    pub services: usize,
    pub endpoint_slices: usize,
    pub pods: usize,
    pub nodes: usize,
    pub endpoints_published: usize,
    pub lookups: usize,
    pub service_profiles: usize,
}

/// One cluster's index.
pub struct ClusterIndex {
    config: IndexConfig,
    services: HashMap<ServiceRef, ServiceState>,
    /// Slices by owning service, then by slice name.
    slices: HashMap<Arc<ServiceRef>, BTreeMap<String, SliceState>>,
    /// Slice (namespace, name) to its service, so deletes by name find it.
    slice_owners: HashMap<(String, String), Arc<ServiceRef>>,
    pods: HashMap<PodRef, Arc<PodInfo>>,
    /// Services whose slices reference a pod, with how many endpoints do.
    pod_services: HashMap<PodRef, Vec<(Arc<ServiceRef>, u32)>>,
    pod_ips: HashMap<IpAddr, PodRef>,
    cluster_ips: HashMap<IpAddr, ServiceRef>,
    node_zones: HashMap<String, Option<Arc<str>>>,
    interner: intern::Interner,
    links: links::LinkState,
    lookups: HashMap<ServiceRef, HashMap<u16, watch::Sender<Arc<PortSnapshot>>>>,
    service_watches: HashMap<ServiceRef, watch::Sender<Option<Arc<ServiceInfo>>>>,
    addr_watches: HashMap<IpAddr, HashMap<u16, watch::Sender<AddrTarget>>>,
    /// Pods looked up by name (inbound policy).
    pod_watches: HashMap<PodRef, watch::Sender<Option<Arc<PodInfo>>>>,
    profiles: profiles::ProfileState,
    /// While a relist is applied: what to republish once it is whole.
    deferred: Option<Deferred>,
    /// Pods of a relist under way, read as they came (see [`ClusterIndex::stage_pods`]).
    pod_relist: Option<Vec<PodInfo>>,
}

/// Lookups to republish at the end of a batch, so a relist reaches readers as one change
/// and never as the intermediate states of applying it object by object.
#[derive(Default)]
struct Deferred {
    services: HashSet<ServiceRef>,
    ips: HashSet<IpAddr>,
    all: bool,
}

// === impl ClusterIndex ===

impl ClusterIndex {
    /// Creates an empty index.
    pub fn new(config: IndexConfig) -> Self {
        let links = links::LinkState::new(config.control_plane_ns.clone());
        Self {
            config,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owners: HashMap::new(),
            pods: HashMap::new(),
            pod_services: HashMap::new(),
            pod_ips: HashMap::new(),
            cluster_ips: HashMap::new(),
            node_zones: HashMap::new(),
            interner: intern::Interner::default(),
            links,
            lookups: HashMap::new(),
            service_watches: HashMap::new(),
            addr_watches: HashMap::new(),
            pod_watches: HashMap::new(),
            profiles: profiles::ProfileState::default(),
            deferred: None,
            pod_relist: None,
        }
    }

    /// Creates an empty index ready to be shared.
    pub fn shared(config: IndexConfig) -> SharedIndex {
        Arc::new(parking_lot::Mutex::new(Self::new(config)))
    }

    /// The configuration this index describes endpoints with.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// How many objects the index holds and serves.
    pub fn counts(&self) -> IndexCounts {
        IndexCounts {
            services: self.services.len(),
            endpoint_slices: self.slice_owners.len(),
            pods: self.pods.len(),
            nodes: self.node_zones.len(),
            endpoints_published: self
                .lookups
                .values()
                .flat_map(|ports| ports.values())
                .map(|tx| tx.borrow().endpoints.len())
                .sum(),
            lookups: self.lookups.values().map(HashMap::len).sum(),
            service_profiles: self.profiles.len(),
        }
    }

    // --- lookups ---

    /// The endpoints of a service port, kept current.
    pub fn endpoints_rx(
        &mut self,
        svc: &ServiceRef,
        port: u16,
    ) -> watch::Receiver<Arc<PortSnapshot>> {
        if let Some(tx) = self.lookups.get(svc).and_then(|ports| ports.get(&port)) {
            return tx.subscribe();
        }
        let mut snapshot = self.compute_port(svc, port, None);
        snapshot.version = SnapshotVersion {
            lookup: NEXT_LOOKUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            seq: 0,
        };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        self.lookups
            .entry(svc.clone())
            .or_default()
            .insert(port, tx);
        rx
    }

    /// A service's interpreted description, kept current (`None` while it does not exist).
    pub fn service_rx(&mut self, svc: &ServiceRef) -> watch::Receiver<Option<Arc<ServiceInfo>>> {
        if let Some(tx) = self.service_watches.get(svc) {
            return tx.subscribe();
        }
        let info = self.services.get(svc).map(|s| Arc::clone(&s.info));
        let (tx, rx) = watch::channel(info);
        self.service_watches.insert(svc.clone(), tx);
        rx
    }

    /// What an IP address and port belong to, kept current.
    pub fn addr_rx(&mut self, addr: SocketAddr) -> watch::Receiver<AddrTarget> {
        if let Some(tx) = self
            .addr_watches
            .get(&addr.ip())
            .and_then(|p| p.get(&addr.port()))
        {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(self.compute_addr(addr));
        self.addr_watches
            .entry(addr.ip())
            .or_default()
            .insert(addr.port(), tx);
        rx
    }

    /// A pod by namespace and name, kept current (`None` while it does not exist).
    pub fn pod_rx(&mut self, namespace: &str, name: &str) -> watch::Receiver<Option<Arc<PodInfo>>> {
        let key = pod::pod_key(namespace, name);
        if let Some(tx) = self.pod_watches.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(self.pods.get(&key).cloned());
        self.pod_watches.insert(key, tx);
        rx
    }

    /// Releases every lookup whose receivers are all gone.
    pub fn gc(&mut self) {
        for ports in self.lookups.values_mut() {
            ports.retain(|_, tx| !tx.is_closed());
        }
        self.lookups.retain(|_, ports| !ports.is_empty());
        self.service_watches.retain(|_, tx| !tx.is_closed());
        for ports in self.addr_watches.values_mut() {
            ports.retain(|_, tx| !tx.is_closed());
        }
        self.addr_watches.retain(|_, ports| !ports.is_empty());
        self.pod_watches.retain(|_, tx| !tx.is_closed());
        self.profiles.gc();
    }

    /// The ServiceProfile `namespace/name` (a service's FQDN), kept current.
    pub fn profile_rx(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> watch::Receiver<Option<Arc<Profile>>> {
        self.profiles.rx(namespace, name)
    }

    /// The zone of a node, when the node is known and labelled.
    pub fn node_zone(&self, node: &str) -> Option<Arc<str>> {
        self.node_zones.get(node).cloned().flatten()
    }

    /// The linked clusters defined by credentials Secrets, kept current.
    pub fn linked_clusters_rx(&self) -> watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>> {
        self.links.subscribe()
    }

    /// Credentials Secrets that were rejected, with the reason.
    pub fn rejected_secrets(&self) -> Vec<RejectedSecret> {
        self.links.rejected()
    }

    // --- Services ---

    /// Adds or updates a Service.
    pub fn apply_service(&mut self, svc: &Service) {
        let Some(state) = ServiceState::from_k8s(svc) else {
            return;
        };
        let key = state.info.service.clone();
        if self.services.get(&key) == Some(&state) {
            return;
        }
        let old = self.services.insert(key.clone(), state);
        self.after_service_change(&key, old);
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = ServiceRef::new(namespace, name);
        if let Some(old) = self.services.remove(&key) {
            self.after_service_change(&key, Some(old));
        }
    }

    /// Replaces every Service with `svcs` (after a relist).
    pub fn reset_services(&mut self, svcs: &[Service]) {
        let keep: HashSet<ServiceRef> = svcs.iter().filter_map(service::service_ref).collect();
        let gone: Vec<ServiceRef> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        self.batch(|index| {
            for key in gone {
                index.delete_service(&key.namespace, &key.name);
            }
            for svc in svcs {
                index.apply_service(svc);
            }
        });
    }

    fn after_service_change(&mut self, key: &ServiceRef, old: Option<ServiceState>) {
        let new_info = self.services.get(key).map(|s| Arc::clone(&s.info));
        let mut ips: HashSet<IpAddr> = HashSet::new();
        if let Some(old) = &old {
            for ip in &old.info.cluster_ips {
                if self.cluster_ips.get(ip) == Some(key) {
                    self.cluster_ips.remove(ip);
                }
                ips.insert(*ip);
            }
        }
        if let Some(info) = &new_info {
            for ip in &info.cluster_ips {
                self.cluster_ips.insert(*ip, key.clone());
                ips.insert(*ip);
            }
        }
        if let Some(tx) = self.service_watches.get(key) {
            tx.send_if_modified(|cur| replace_if_changed(cur, new_info.clone()));
        }
        self.gc_service_watch(key);
        self.refresh_service(key);
        for ip in ips {
            self.refresh_addr_ip(ip);
        }
    }

    // --- EndpointSlices ---

    /// Adds or updates an EndpointSlice.
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) {
        let Some((owner, name, mut state)) = SliceState::from_k8s(slice, &mut self.interner) else {
            // A slice that no longer names a service leaves the one it belonged to.
            if let Some((ns, name)) = slice::slice_id(slice) {
                self.delete_endpoint_slice(&ns, &name);
            }
            return;
        };
        let id = (owner.namespace.clone(), name.clone());
        // A slice that moved to another service (label edit) leaves the old one.
        if self
            .slice_owners
            .get(&id)
            .is_some_and(|prev| **prev != owner)
        {
            self.delete_endpoint_slice(&id.0, &id.1);
        }
        // Refer to pods by the keys the pod map already holds.
        for ep in &mut state.endpoints {
            if let Some(pod) = ep.pod.as_mut()
                && let Some((key, _)) = self.pods.get_key_value(&**pod)
            {
                *pod = Arc::clone(key);
            }
        }
        let owner: Arc<ServiceRef> = match self.slices.get_key_value(&owner) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::new(owner),
        };
        let slices = self.slices.entry(Arc::clone(&owner)).or_default();
        if slices.get(&name) == Some(&state) {
            return;
        }
        let new_pods = state.pod_refs();
        let old_pods = slices
            .insert(name, state)
            .map(|s| s.pod_refs())
            .unwrap_or_default();
        self.slice_owners.insert(id, Arc::clone(&owner));
        self.track_pod_refs(&owner, &old_pods, &new_pods);
        self.refresh_service(&owner);
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let id = (namespace.to_string(), name.to_string());
        let Some(owner) = self.slice_owners.remove(&id) else {
            return;
        };
        let removed = self.slices.get_mut(&*owner).and_then(|s| s.remove(name));
        if self.slices.get(&*owner).is_some_and(BTreeMap::is_empty) {
            self.slices.remove(&*owner);
        }
        if let Some(old) = removed {
            self.track_pod_refs(&owner, &old.pod_refs(), &[]);
        }
        self.refresh_service(&owner);
    }

    /// Replaces every EndpointSlice with `slices`.
    pub fn reset_endpoint_slices(&mut self, slices: &[EndpointSlice]) {
        let keep: HashSet<(String, String)> = slices.iter().filter_map(slice::slice_id).collect();
        let gone: Vec<(String, String)> = self
            .slice_owners
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        self.batch(|index| {
            for (ns, name) in gone {
                index.delete_endpoint_slice(&ns, &name);
            }
            for s in slices {
                index.apply_endpoint_slice(s);
            }
        });
    }

    fn track_pod_refs(&mut self, svc: &Arc<ServiceRef>, old: &[PodRef], new: &[PodRef]) {
        for pod in new {
            let svcs = self.pod_services.entry(Arc::clone(pod)).or_default();
            match svcs.iter_mut().find(|(s, _)| s == svc) {
                Some((_, n)) => *n += 1,
                None => svcs.push((Arc::clone(svc), 1)),
            }
        }
        for pod in old {
            if let Some(svcs) = self.pod_services.get_mut(pod) {
                if let Some(pos) = svcs.iter().position(|(s, _)| s == svc) {
                    svcs[pos].1 -= 1;
                    if svcs[pos].1 == 0 {
                        svcs.swap_remove(pos);
                    }
                }
                if svcs.is_empty() {
                    self.pod_services.remove(pod);
                }
            }
        }
    }

    // --- Pods ---

    /// Adds or updates a Pod.
    pub fn apply_pod(&mut self, pod: &Pod) {
        if let Some(info) = PodInfo::from_k8s(pod, &self.config, &mut self.interner) {
            self.apply_pod_info(info);
        }
    }

    fn apply_pod_info(&mut self, info: PodInfo) {
        let key = Arc::clone(&info.key);
        if self.pods.get(&key).is_some_and(|p| **p == info) {
            return;
        }
        let old = self.pods.insert(key.clone(), Arc::new(info));
        self.after_pod_change(&key, old);
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let key = pod::pod_key(namespace, name);
        if let Some(old) = self.pods.remove(&key) {
            self.after_pod_change(&key, Some(old));
        }
    }

    /// Begins a relist of Pods: what [`ClusterIndex::stage_pods`] reads from here on
    /// (and nothing read before) replaces the Pods at [`ClusterIndex::reset_pods`].
    pub fn begin_pod_relist(&mut self) {
        self.pod_relist = Some(Vec::new());
    }

    /// Reads part of a relist of Pods into the index's own form and keeps it aside; the
    /// index serves its old Pods until the relist ends. A list of 100,000 Pods is then
    /// never held as Pod objects, which are kilobytes each even when trimmed.
    pub fn stage_pods(&mut self, pods: &[Pod]) {
        let staged = self.pod_relist.get_or_insert_default();
        staged.extend(
            pods.iter()
                .filter_map(|p| PodInfo::from_k8s(p, &self.config, &mut self.interner)),
        );
    }

    /// Replaces every Pod with those staged since the relist began and `pods`; pods in
    /// both the old and the new list stay known throughout, so their endpoints keep their
    /// identities.
    pub fn reset_pods(&mut self, pods: &[Pod]) {
        self.stage_pods(pods);
        let pods = self.pod_relist.take().unwrap_or_default();
        let keep: HashSet<PodRef> = pods.iter().map(|p| Arc::clone(&p.key)).collect();
        let gone: Vec<PodRef> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        self.batch(|index| {
            for key in gone {
                if let Some(old) = index.pods.remove(&key) {
                    index.after_pod_change(&key, Some(old));
                }
            }
            for p in pods {
                index.apply_pod_info(p);
            }
        });
    }

    fn after_pod_change(&mut self, key: &PodRef, old: Option<Arc<PodInfo>>) {
        if let Some(tx) = self.pod_watches.get(key) {
            tx.send_replace(self.pods.get(key).cloned());
        }
        let mut ips: HashSet<IpAddr> = HashSet::new();
        if let Some(old) = &old {
            for ip in &old.ips {
                if self.pod_ips.get(ip) == Some(key) {
                    self.pod_ips.remove(ip);
                }
                ips.insert(*ip);
            }
        }
        if let Some(new) = self.pods.get(key) {
            for ip in &new.ips {
                self.pod_ips.insert(*ip, key.clone());
                ips.insert(*ip);
            }
        }
        let svcs: Vec<ServiceRef> = self
            .pod_services
            .get(key)
            .map(|s| s.iter().map(|(svc, _)| ServiceRef::clone(svc)).collect())
            .unwrap_or_default();
        for svc in svcs {
            self.refresh_service(&svc);
        }
        for ip in ips {
            self.refresh_addr_ip(ip);
        }
    }

    // --- Nodes ---

    /// Adds or updates a Node (only its zone matters).
    pub fn apply_node(&mut self, node: &Node) {
        if self.set_node_zone(node) {
            self.refresh_all();
        }
    }

    /// Records a node's zone; whether it changed.
    fn set_node_zone(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let zone = labels::node_zone(node).map(|z| self.interner.str(z));
        if self.node_zones.get(&name) == Some(&zone) {
            return false;
        }
        self.node_zones.insert(name, zone);
        true
    }

    /// Removes a Node.
    pub fn delete_node(&mut self, name: &str) {
        if self.node_zones.remove(name).is_some() {
            self.refresh_all();
        }
    }

    /// Replaces every Node with `nodes`, republishing once rather than once per node.
    pub fn reset_nodes(&mut self, nodes: &[Node]) {
        let keep: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let before = self.node_zones.len();
        self.node_zones
            .retain(|name, _| keep.contains(name.as_str()));
        let mut changed = self.node_zones.len() != before;
        for n in nodes {
            changed |= self.set_node_zone(n);
        }
        if changed {
            self.refresh_all();
        }
    }

    // --- Secrets ---

    /// Adds or updates a Secret (only linked-cluster credentials matter).
    pub fn apply_secret(&mut self, secret: &Secret) {
        self.links.apply(secret);
    }

    /// Removes a Secret.
    pub fn delete_secret(&mut self, namespace: &str, name: &str) {
        self.links.delete(namespace, name);
    }

    /// Replaces every Secret with `secrets`.
    pub fn reset_secrets(&mut self, secrets: &[Secret]) {
        self.links.reset(secrets);
    }

    // --- ServiceProfiles (validated by the sources) ---

    /// Adds or replaces a ServiceProfile.
    pub fn apply_profile(&mut self, profile: Profile) {
        self.profiles.apply(profile);
    }

    /// Removes a ServiceProfile.
    pub fn delete_profile(&mut self, namespace: &str, name: &str) {
        self.profiles.delete(namespace, name);
    }

    /// Records that a ServiceProfile's current version does not parse (`reason` is a
    /// metric label); its last good version keeps being served.
    pub fn reject_profile(&mut self, namespace: &str, name: &str, reason: &'static str) {
        self.profiles.reject(namespace, name, reason);
    }

    /// ServiceProfiles rejected now: (`namespace/name`, reason).
    pub fn rejected_profiles(&self) -> Vec<(String, &'static str)> {
        self.profiles.rejected()
    }

    /// Replaces every ServiceProfile with `profiles`; those listed in `invalid` (with
    /// the reason) keep their last good version.
    pub fn reset_profiles(
        &mut self,
        profiles: Vec<Profile>,
        invalid: Vec<((String, String), &'static str)>,
    ) {
        self.profiles.reset(profiles, invalid);
    }

    // --- publishing ---

    /// Runs `f` (a relist's changes) and then republishes each lookup it touched once.
    fn batch(&mut self, f: impl FnOnce(&mut Self)) {
        self.deferred = Some(Deferred::default());
        f(self);
        let Some(deferred) = self.deferred.take() else {
            return;
        };
        if deferred.all {
            self.refresh_all();
            return;
        }
        for svc in deferred.services {
            self.refresh_service(&svc);
        }
        for ip in deferred.ips {
            self.refresh_addr_ip(ip);
        }
    }

    /// Recomputes every open lookup of `svc` and publishes those that changed.
    fn refresh_service(&mut self, svc: &ServiceRef) {
        if let Some(deferred) = self.deferred.as_mut() {
            deferred.services.insert(svc.clone());
            return;
        }
        let Some(ports) = self.lookups.get(svc) else {
            return;
        };
        let ports: Vec<(u16, Arc<PortSnapshot>, bool)> = ports
            .iter()
            .map(|(port, tx)| (*port, Arc::clone(&tx.borrow()), tx.is_closed()))
            .collect();
        for (port, prev, closed) in ports {
            if closed {
                self.remove_lookup(svc, port);
                continue;
            }
            let mut next = self.compute_port(svc, port, Some(&prev));
            if !prev.same_content(&next)
                && let Some(tx) = self.lookups.get(svc).and_then(|p| p.get(&port))
            {
                next.version = prev.version.next();
                next.delta = Some(Arc::new(diff_endpoints(&prev.endpoints, &next.endpoints)));
                tx.send_replace(Arc::new(next));
            }
        }
    }

    fn remove_lookup(&mut self, svc: &ServiceRef, port: u16) {
        if let Some(ports) = self.lookups.get_mut(svc) {
            ports.remove(&port);
            if ports.is_empty() {
                self.lookups.remove(svc);
            }
        }
    }

    fn gc_service_watch(&mut self, svc: &ServiceRef) {
        if self
            .service_watches
            .get(svc)
            .is_some_and(watch::Sender::is_closed)
        {
            self.service_watches.remove(svc);
        }
    }

    fn refresh_all(&mut self) {
        if let Some(deferred) = self.deferred.as_mut() {
            deferred.all = true;
            return;
        }
        let svcs: Vec<ServiceRef> = self.lookups.keys().cloned().collect();
        for svc in svcs {
            self.refresh_service(&svc);
        }
        let ips: Vec<IpAddr> = self.addr_watches.keys().copied().collect();
        for ip in ips {
            self.refresh_addr_ip(ip);
        }
    }

    fn refresh_addr_ip(&mut self, ip: IpAddr) {
        if let Some(deferred) = self.deferred.as_mut() {
            deferred.ips.insert(ip);
            return;
        }
        let Some(ports) = self.addr_watches.get(&ip) else {
            return;
        };
        let ports: Vec<u16> = ports.keys().copied().collect();
        for port in ports {
            let target = self.compute_addr(SocketAddr::new(ip, port));
            if let Some(watches) = self.addr_watches.get_mut(&ip) {
                if let Some(tx) = watches.get(&port) {
                    if tx.is_closed() {
                        watches.remove(&port);
                    } else {
                        tx.send_if_modified(|cur| replace_if_changed(cur, target));
                    }
                }
                if watches.is_empty() {
                    self.addr_watches.remove(&ip);
                }
            }
        }
    }

    fn compute_addr(&self, addr: SocketAddr) -> AddrTarget {
        if let Some(svc) = self
            .cluster_ips
            .get(&addr.ip())
            .and_then(|k| self.services.get(k))
        {
            return AddrTarget::Service(Arc::clone(&svc.info));
        }
        match self.pod_ips.get(&addr.ip()).and_then(|k| self.pods.get(k)) {
            Some(pod) => AddrTarget::Pod(Arc::new(endpoints::pod_endpoint(
                &self.config,
                pod,
                addr,
                self.node_zones_of(pod.node_name.as_deref()),
            ))),
            None => AddrTarget::Unknown,
        }
    }

    fn node_zones_of(&self, node: Option<&str>) -> Option<Arc<str>> {
        node.and_then(|n| self.node_zone(n))
    }
}

fn replace_if_changed<T: PartialEq>(cur: &mut T, next: T) -> bool {
    if *cur == next {
        return false;
    }
    *cur = next;
    true
}
