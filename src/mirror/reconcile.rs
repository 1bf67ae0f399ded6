//! One Link's reconciler: watches the target cluster, computes the desired mirrors and
//! writes the difference (server-side apply under one field manager), never touching what
//! meshlink does not own.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::Instrument;

use super::{
    desired::{self, Desired, LinkConfig, ObjKey},
    metrics::MirrorMetrics,
    probe::{self, ProbeMetrics},
    status::{self, Health},
};
use crate::k8s::{
    EndpointSlice, Namespace, Service,
    client::client_from_secret,
    labels,
    link::{Link, MirrorTrouble},
};

/// The field manager of every write the mirror makes.
pub const FIELD_MANAGER: &str = "meshlink-mirror";
/// How long a write we made is trusted while the local watch has not shown it yet.
const WATCH_LAG: Duration = Duration::from_secs(10);

/// What every Link's reconciler shares: the local client, local watches, write budget.
#[derive(Clone)]
pub struct Shared {
    /// Client of the local cluster.
    pub client: Client,
    /// Every local Service.
    pub services: Store<Service>,
    /// Local EndpointSlices the mirror owns.
    pub slices: Store<EndpointSlice>,
    /// Local namespaces.
    pub namespaces: Store<Namespace>,
    /// Bumped on every local change.
    pub local_changed: watch::Receiver<u64>,
    /// Bounds the writes in flight across all Links.
    pub writes: Arc<Semaphore>,
    /// Reconciler metrics.
    pub metrics: Arc<MirrorMetrics>,
    /// Gateway prober metrics.
    pub probe_metrics: Arc<ProbeMetrics>,
    /// In a dry run, the writes are recorded here instead of sent.
    pub dry_run: Option<Arc<Mutex<DryRun>>>,
    /// Periodic repair: compares and writes only what differs.
    pub resync: Duration,
    /// Federated members of every Link.
    pub federation: Arc<super::federated::Federation>,
}

/// What a dry run would have written.
#[derive(Debug, Default)]
pub struct DryRun {
    /// Objects that would be applied.
    pub apply: Vec<serde_json::Value>,
    /// `kind namespace/name` of objects that would be deleted.
    pub delete: Vec<String>,
}

/// A write to make.
enum Op {
    ApplyService(Box<Service>),
    ApplySlice(Box<EndpointSlice>),
    DeleteService(ObjKey),
    DeleteSlice(ObjKey),
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::ApplyService(s) => format!("Service {}/{}", ns_of(&**s), s.name_any()),
            Op::ApplySlice(s) => format!("EndpointSlice {}/{}", ns_of(&**s), s.name_any()),
            Op::DeleteService((ns, n)) => format!("Service {ns}/{n}"),
            Op::DeleteSlice((ns, n)) => format!("EndpointSlice {ns}/{n}"),
        }
    }
}

fn ns_of<K: Resource>(k: &K) -> String {
    k.meta().namespace.clone().unwrap_or_default()
}

fn key_of<K: Resource>(k: &K) -> ObjKey {
    (ns_of(k), k.meta().name.clone().unwrap_or_default())
}

/// A stable hash of what we apply, stored on the object so that an unchanged mirror is
/// not written again (also after a restart).
fn content_hash<T: serde::Serialize>(obj: &T) -> String {
    let json = serde_json::to_string(obj).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn applied_hash<K: Resource>(k: &K) -> Option<&str> {
    k.meta()
        .annotations
        .as_ref()?
        .get(labels::MESHLINK_APPLIED_HASH)
        .map(String::as_str)
}

fn with_hash<K: Resource + serde::Serialize>(mut obj: K) -> (K, String) {
    let hash = content_hash(&serde_json::to_value(&obj).unwrap_or_default());
    obj.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(labels::MESHLINK_APPLIED_HASH.into(), hash.clone());
    (obj, hash)
}

/// Whether `obj` carries this Link's ownership labels.
fn owned_by<K: Resource>(cfg: &LinkConfig, obj: &K) -> bool {
    let Some(l) = obj.meta().labels.as_ref() else {
        return false;
    };
    cfg.owner_labels().iter().all(|(k, v)| l.get(k) == Some(v))
}

/// One Link's reconciler state.
struct LinkReconciler {
    shared: Shared,
    cfg: LinkConfig,
    link: Arc<Link>,
    remote_services: Store<Service>,
    remote_slices: Store<EndpointSlice>,
    health: watch::Receiver<Health>,
    gateway_alive: watch::Receiver<bool>,
    gateway_ips: Vec<IpAddr>,
    /// What each gateway DNS name last resolved to.
    resolved: HashMap<String, Vec<IpAddr>>,
    probe_error: Option<String>,
    /// What we wrote recently: key -> (hash, when); deletions have an empty hash.
    recent: HashMap<(bool, ObjKey), (String, Instant)>,
    conflicts_reported: BTreeSet<ObjKey>,
    last_status: Option<crate::k8s::link::LinkStatus>,
    recorder: Recorder,
    _constant_alive: watch::Sender<bool>,
    /// Federated members last published: keys and resource versions.
    published: Option<Vec<(ObjKey, Option<String>)>>,
}

/// Runs the reconciler of `link` until `shutdown` turns true. With `once`, returns after
/// the first full reconcile.
pub async fn run_link(
    shared: Shared,
    link: Arc<Link>,
    once: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        shared.client.clone(),
        Reporter {
            controller: "meshlink-mirror".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let link_name = link.name_any();
    let mut last_status = link.status.clone();
    let cfg = match LinkConfig::from_link(&link) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(link = %link_name, error = %e, "the Link is invalid; nothing mirrored for it");
            shared.metrics.error(&link_name, "invalid_link");
            let st = status::invalid(&link, "InvalidLink", &e.to_string());
            write_status(&shared, &link, &mut last_status, st).await;
            if !once {
                let _ = shutdown.wait_for(|s| *s).await;
            }
            return;
        }
    };
    // Known to the federation before its first sync: its cluster's entries are kept
    // until then (also while its credentials fail), and it holds no other Link back.
    shared.federation.publish(
        &link_name,
        super::federated::Contribution {
            cfg: cfg.clone(),
            members: None,
        },
    );
    // Credentials: retried until they work (the Secret may come later or be fixed).
    let remote = loop {
        match client_from_secret(
            &shared.client,
            &cfg.namespace,
            &cfg.credentials_secret,
            API_TIMEOUT,
        )
        .await
        .map(|(client, _)| client)
        {
            Ok(client) => break client,
            Err(e) => {
                tracing::error!(link = %link_name, error = %e, "cannot use the Link's credentials");
                shared.metrics.error(&link_name, "credentials");
                let st = status::invalid(&link, "CredentialsInvalid", &e);
                write_status(&shared, &link, &mut last_status, st).await;
                if once {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = crate::mirror::until_true(&mut shutdown) => return,
                }
            }
        }
    };

    let (health_tx, health) = watch::channel(Health::default());
    let health_tx = Arc::new(health_tx);
    let remote_changed = Arc::new(Notify::new());
    let (remote_services, w) = reflector::store::<Service>();
    spawn_remote_watch(
        Api::all(remote.clone()),
        w,
        "services",
        Arc::clone(&health_tx),
        Arc::clone(&remote_changed),
        shutdown.clone(),
    );
    let (remote_slices, w) = reflector::store::<EndpointSlice>();
    spawn_remote_watch(
        Api::all(remote),
        w,
        "endpointslices",
        Arc::clone(&health_tx),
        Arc::clone(&remote_changed),
        shutdown.clone(),
    );

    // Gateway probe: its receiver says whether the gateway is alive.
    let mut probe_error = None;
    // Without a prober the gateway counts as alive; the sender is kept so `changed` waits.
    let (constant_tx, constant_rx) = watch::channel(true);
    let gateway_alive = if cfg.gateway_mode() && !once {
        match probe::ProbeSpec::from_link(&link.spec) {
            Ok(spec) => probe::spawn_gateway_probe(
                cfg.cluster.clone(),
                cfg.gateway_addresses.clone(),
                spec,
                Arc::clone(&shared.probe_metrics),
                shutdown.clone(),
            ),
            Err(e) => {
                tracing::error!(link = %link_name, error = %e, "bad probeSpec; the gateway is not probed");
                shared.metrics.error(&link_name, "invalid_probe_spec");
                probe_error = Some(e.to_string());
                constant_rx
            }
        }
    } else {
        constant_rx
    };

    let mut r = LinkReconciler {
        shared,
        cfg,
        link,
        remote_services,
        remote_slices,
        health,
        gateway_alive,
        gateway_ips: Vec::new(),
        resolved: HashMap::new(),
        probe_error,
        recent: HashMap::new(),
        conflicts_reported: BTreeSet::new(),
        last_status,
        recorder,
        _constant_alive: constant_tx,
        published: None,
    };
    r.run(once, remote_changed, shutdown).await;
}

/// How long one request of the mirror's own (a Secret read, a DNS lookup) may take.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The addresses a gateway name resolves to, within [`API_TIMEOUT`].
async fn lookup(name: &str) -> std::io::Result<Vec<IpAddr>> {
    match tokio::time::timeout(API_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(found) => Ok(found?.map(|a| a.ip()).collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {API_TIMEOUT:?}"),
        )),
    }
}

/// Watches one kind in the target cluster into a store, reporting health and changes.
fn spawn_remote_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    health: Arc<watch::Sender<Health>>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + super::slim::Slim
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(K::slim)
        .reflect(writer);
    tokio::spawn(
        async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = crate::mirror::until_true(&mut shutdown) => return,
                };
                match ev {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, what, "target cluster watch failed; retrying");
                        health.send_modify(|h| h.failed(what, &e.to_string()));
                    }
                    Some(Ok(ev)) => {
                        let full = matches!(ev, watcher::Event::InitDone);
                        health.send_modify(|h| h.ok(what, full));
                        if !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
                            changed.notify_one();
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("remote_watch", what)),
    );
}

impl LinkReconciler {
    async fn run(
        &mut self,
        once: bool,
        remote_changed: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let name = self.cfg.name.clone();
        // Nothing is deleted before both target-cluster stores hold a full list.
        loop {
            let ready = async {
                let _ = self.remote_services.wait_until_ready().await;
                let _ = self.remote_slices.wait_until_ready().await;
            };
            tokio::select! {
                _ = ready => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    let st = status::unsynced(&self.link, &self.health.borrow());
                    write_status(&self.shared, &self.link, &mut self.last_status, st).await;
                }
                _ = crate::mirror::until_true(&mut shutdown) => return,
            }
        }
        tracing::info!(link = %name, cluster = %self.cfg.cluster, "target cluster listed; mirroring");
        self.resolve_gateway().await;
        let mut local = self.shared.local_changed.clone();
        let mut resync = tokio::time::interval(self.shared.resync);
        resync.tick().await;
        loop {
            self.reconcile().await;
            if once {
                return;
            }
            tokio::select! {
                _ = remote_changed.notified() => {}
                r = local.changed() => if r.is_err() { return },
                _ = self.gateway_alive.changed() => {}
                _ = self.health.changed() => {}
                _ = resync.tick() => self.resolve_gateway().await,
                _ = crate::mirror::until_true(&mut shutdown) => return,
            }
            // Let a burst of events settle into one reconcile.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resolves gateway addresses given as DNS names (again at each resync). A name whose
    /// lookup fails keeps the addresses it last resolved to: a DNS hiccup is no outage.
    async fn resolve_gateway(&mut self) {
        let mut ips = Vec::new();
        for addr in &self.cfg.gateway_addresses {
            match addr.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => match lookup(addr).await {
                    Ok(found) if !found.is_empty() => {
                        ips.extend(&found);
                        self.resolved.insert(addr.clone(), found);
                    }
                    found => {
                        let error = match found {
                            Ok(_) => "no addresses".to_string(),
                            Err(e) => e.to_string(),
                        };
                        self.shared.metrics.error(&self.cfg.name, "gateway_dns");
                        match self.resolved.get(addr) {
                            Some(last) => {
                                tracing::warn!(link = %self.cfg.name, address = %addr, %error, kept = ?last, "cannot resolve gateway address; keeping the addresses it last resolved to");
                                ips.extend(last);
                            }
                            None => {
                                tracing::warn!(link = %self.cfg.name, address = %addr, %error, "cannot resolve gateway address; it has no address yet");
                            }
                        }
                    }
                },
            }
        }
        ips.sort();
        ips.dedup();
        self.gateway_ips = ips;
    }

    /// The Link's desired objects, each compared with what exists as it is made: only those
    /// that differ are kept whole (see [`Planned`]).
    fn compute(&self) -> Desired<PlannedService, PlannedSlice> {
        let mut by_svc: BTreeMap<ObjKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for s in self.remote_slices.state() {
            if let Some(svc) = labels::slice_service(&s) {
                by_svc
                    .entry((ns_of(&*s), svc.to_string()))
                    .or_default()
                    .push(Arc::clone(&s));
            }
        }
        let services = self.remote_services.state();
        let store = self.shared.services.clone();
        let cluster_ip = move |ns: &str, name: &str| -> Option<String> {
            store
                .get(&ObjectRef::new(name).within(ns))?
                .spec
                .as_ref()?
                .cluster_ip
                .clone()
        };
        desired::desired_with(
            &self.cfg,
            &desired::Remote {
                services: &services,
                slices: &by_svc,
            },
            &desired::Local {
                gateway_ips: &self.gateway_ips,
                gateway_alive: *self.gateway_alive.borrow(),
                cluster_ip: &cluster_ip,
            },
            &mut |svc| {
                let counted = Counted::of(&svc);
                Planned::new(svc, &self.shared.services, counted)
            },
            &mut |slice| {
                let service = labels::slice_service(&slice)
                    .unwrap_or_default()
                    .to_string();
                Planned::new(slice, &self.shared.slices, service)
            },
        )
    }

    fn recently(&self, slice: bool, key: &ObjKey, hash: &str) -> bool {
        self.recent
            .get(&(slice, key.clone()))
            .is_some_and(|(h, at)| h == hash && at.elapsed() < WATCH_LAG)
    }

    /// One pass: desired vs. what exists, the difference written, status updated.
    async fn reconcile(&mut self) {
        let mut desired = self.compute();
        self.publish_federated(&desired);
        let mut troubles: Vec<MirrorTrouble> = Vec::new();
        let mut ops = self.plan_services(&mut desired, &mut troubles).await;
        let blocked: BTreeSet<ObjKey> = troubles
            .iter()
            .map(|t| (t.namespace.clone(), t.name.clone()))
            .collect();
        ops.extend(self.plan_slices(&mut desired, &blocked));
        ops.extend(self.orphans(&desired));
        if !ops.is_empty() {
            tracing::debug!(link = %self.cfg.name, writes = ops.len(), "reconciling");
        }
        let results = self.write_all(ops).await;
        self.record(results, &mut troubles);
        self.report(&desired, troubles).await;
    }

    /// Hands the Link's federated members to the federated mirror when they changed.
    fn publish_federated(&mut self, desired: &Desired<PlannedService, PlannedSlice>) {
        let members: Vec<(ObjKey, Option<String>)> = desired
            .federated
            .iter()
            .map(|(k, s)| (k.clone(), s.metadata.resource_version.clone()))
            .collect();
        if self.published.as_ref() != Some(&members) {
            self.shared.federation.publish(
                &self.cfg.name,
                super::federated::Contribution {
                    cfg: self.cfg.clone(),
                    members: Some(desired.federated.clone()),
                },
            );
            self.published = Some(members);
        }
    }

    /// The mirror Services to write. A Service whose namespace is missing or whose name a
    /// Service of someone else's holds is left out, with its trouble.
    async fn plan_services(
        &mut self,
        desired: &mut Desired<PlannedService, PlannedSlice>,
        troubles: &mut Vec<MirrorTrouble>,
    ) -> Vec<(String, Op)> {
        let mut ops = Vec::new();
        for (key, planned) in &mut desired.services {
            let (ns, name) = key;
            if self.shared.namespaces.get(&ObjectRef::new(ns)).is_none() {
                troubles.push(trouble(
                    key,
                    "NamespaceMissing",
                    format!("namespace {ns} does not exist here; {name} is mirrored once it does"),
                ));
                continue;
            }
            let live = self.shared.services.get(&ObjectRef::new(name).within(ns));
            if let Some(live) = &live
                && !owned_by(&self.cfg, &**live)
            {
                let message = format!(
                    "a Service {ns}/{name} exists that meshlink does not own; left untouched"
                );
                if self.conflicts_reported.insert(key.clone()) {
                    tracing::warn!(link = %self.cfg.name, service = %format!("{ns}/{name}"), "{message}");
                    self.publish_conflict(&message).await;
                }
                troubles.push(trouble(key, "Conflict", message));
                continue;
            }
            if let Some(obj) = planned.write.take()
                && !self.recently(false, key, &planned.hash)
            {
                ops.push((planned.hash.clone(), Op::ApplyService(obj)));
            }
        }
        self.conflicts_reported
            .retain(|k| troubles.iter().any(|t| t.namespace == k.0 && t.name == k.1));
        ops
    }

    /// The mirror EndpointSlices to write, but none of a `blocked` Service.
    fn plan_slices(
        &self,
        desired: &mut Desired<PlannedService, PlannedSlice>,
        blocked: &BTreeSet<ObjKey>,
    ) -> Vec<(String, Op)> {
        let mut ops = Vec::new();
        for (key, planned) in &mut desired.slices {
            if blocked.contains(&(key.0.clone(), planned.about.clone())) {
                continue;
            }
            if let Some(obj) = planned.write.take()
                && !self.recently(true, key, &planned.hash)
            {
                ops.push((planned.hash.clone(), Op::ApplySlice(obj)));
            }
        }
        ops
    }

    /// Deletes of what this Link owns here and no longer wants.
    fn orphans(&self, desired: &Desired<PlannedService, PlannedSlice>) -> Vec<(String, Op)> {
        let mut ops = Vec::new();
        for live in self.shared.services.state() {
            let key = key_of(&*live);
            if owned_by(&self.cfg, &*live)
                && !desired.services.contains_key(&key)
                && !self.recently(false, &key, "")
            {
                ops.push((String::new(), Op::DeleteService(key)));
            }
        }
        for live in self.shared.slices.state() {
            let key = key_of(&*live);
            if owned_by(&self.cfg, &*live)
                && !desired.slices.contains_key(&key)
                && !self.recently(true, &key, "")
            {
                ops.push((String::new(), Op::DeleteSlice(key)));
            }
        }
        ops
    }

    /// Remembers what was written (trusted until the watch shows it) and turns failed
    /// writes into troubles.
    fn record(&mut self, results: Vec<WriteResult>, troubles: &mut Vec<MirrorTrouble>) {
        for (slice, key, hash, result) in results {
            match result {
                Ok(()) => {
                    self.recent.insert((slice, key), (hash, Instant::now()));
                }
                Err((reason, message)) => {
                    self.shared
                        .metrics
                        .error(&self.cfg.name, reason.metric_label());
                    tracing::warn!(link = %self.cfg.name, object = %format!("{}/{}", key.0, key.1), "{message}");
                    troubles.push(trouble(&key, reason.as_str(), message));
                }
            }
        }
        self.recent.retain(|_, (_, at)| at.elapsed() < WATCH_LAG);
    }

    /// Counts what is mirrored into the metrics and writes the Link's status.
    async fn report(
        &mut self,
        desired: &Desired<PlannedService, PlannedSlice>,
        mut troubles: Vec<MirrorTrouble>,
    ) {
        troubles.sort();
        troubles.dedup();
        let counts = mirrored_counts(desired, &troubles);
        self.shared
            .metrics
            .set_counts(&self.cfg.name, &counts, troubles.len());
        let st = status::build(
            &self.link,
            self.last_status.as_ref(),
            &counts,
            troubles,
            &self.health.borrow(),
            self.cfg
                .gateway_mode()
                .then(|| (*self.gateway_alive.borrow(), self.probe_error.clone())),
        );
        write_status(&self.shared, &self.link, &mut self.last_status, st).await;
    }

    async fn publish_conflict(&self, message: &str) {
        if self.shared.dry_run.is_some() {
            return;
        }
        let ev = Event {
            type_: EventType::Warning,
            reason: "Conflict".into(),
            note: Some(message.to_string()),
            action: "Mirror".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &self.link.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish an Event");
        }
    }

    /// Sends the writes, a bounded number at a time across all Links.
    async fn write_all(&self, ops: Vec<(String, Op)>) -> Vec<WriteResult> {
        let shared = &self.shared;
        let link = self.cfg.name.as_str();
        futures::stream::iter(ops)
            .map(|(hash, op)| async move {
                let (slice, key) = match &op {
                    Op::ApplyService(s) => (false, key_of(&**s)),
                    Op::ApplySlice(s) => (true, key_of(&**s)),
                    Op::DeleteService(k) => (false, k.clone()),
                    Op::DeleteSlice(k) => (true, k.clone()),
                };
                let result = write(shared, link, op).await;
                (slice, key, hash, result)
            })
            .buffer_unordered(16)
            .collect()
            .await
    }
}

/// One write's outcome: whether a slice, its key, the hash written, and the result.
type WriteResult = (bool, ObjKey, String, Result<(), (WriteError, String)>);

/// Counts of what is mirrored: the desired mirrors less those in trouble.
fn mirrored_counts(
    desired: &Desired<PlannedService, PlannedSlice>,
    troubles: &[MirrorTrouble],
) -> crate::k8s::link::MirroredServices {
    let mut counts = desired.counts.clone();
    for t in troubles {
        let Some(planned) = desired.services.get(&(t.namespace.clone(), t.name.clone())) else {
            continue;
        };
        let n = match planned.about {
            Counted::RemoteDiscovery => &mut counts.remote_discovery,
            Counted::HeadlessEndpoint => &mut counts.headless_endpoints,
            Counted::Gateway => &mut counts.gateway,
        };
        *n = n.saturating_sub(1);
    }
    counts
}

/// One desired object as a reconcile pass keeps it: the hash of its content, what the pass
/// needs to know about it (`about`), and the object itself only when what exists locally
/// carries another hash. Unchanged objects are dropped as soon as they are made.
/// `about` is what the pass needs to know beyond that: a Service's count in the Link's
/// status, an EndpointSlice's Service (whose trouble blocks the slice's writes).
struct Planned<K, A> {
    hash: String,
    about: A,
    write: Option<Box<K>>,
}

/// A planned mirror Service.
type PlannedService = Planned<Service, Counted>;
/// A planned mirror EndpointSlice, with the name of its Service.
type PlannedSlice = Planned<EndpointSlice, String>;

impl<K, A> Planned<K, A>
where
    K: Resource<DynamicType = ()> + serde::Serialize + Clone,
{
    fn new(obj: K, live: &Store<K>, about: A) -> Self {
        let (obj, hash) = with_hash(obj);
        let live = live.get(&ObjectRef::from_obj(&obj));
        let same = live.as_deref().and_then(applied_hash) == Some(hash.as_str());
        Planned {
            hash,
            about,
            write: (!same).then(|| Box::new(obj)),
        }
    }
}

/// Which of the Link's status counts a mirror Service is in.
#[derive(Clone, Copy, Debug)]
enum Counted {
    RemoteDiscovery,
    HeadlessEndpoint,
    Gateway,
}

impl Counted {
    fn of(svc: &Service) -> Self {
        let has = |k: &str| svc.labels().contains_key(k);
        if has(labels::MC_REMOTE_DISCOVERY) {
            Counted::RemoteDiscovery
        } else if has(labels::HEADLESS_MIRROR_SVC_NAME) {
            Counted::HeadlessEndpoint
        } else {
            Counted::Gateway
        }
    }
}

fn trouble(key: &ObjKey, reason: &str, message: String) -> MirrorTrouble {
    MirrorTrouble {
        namespace: key.0.clone(),
        name: key.1.clone(),
        reason: reason.into(),
        message,
    }
}

/// Why a write failed, as a bounded metric label and a status reason.
#[derive(Clone, Copy, Debug)]
enum WriteError {
    NamespaceMissing,
    ApplyFailed,
}

impl WriteError {
    fn as_str(self) -> &'static str {
        match self {
            WriteError::NamespaceMissing => "NamespaceMissing",
            WriteError::ApplyFailed => "ApplyFailed",
        }
    }
    fn metric_label(self) -> &'static str {
        match self {
            WriteError::NamespaceMissing => "namespace_missing",
            WriteError::ApplyFailed => "apply_failed",
        }
    }
}

async fn write(shared: &Shared, link: &str, op: Op) -> Result<(), (WriteError, String)> {
    if let Some(dry) = &shared.dry_run {
        let mut dry = dry.lock();
        match &op {
            Op::ApplyService(s) => dry.apply.push(serde_json::to_value(s).unwrap_or_default()),
            Op::ApplySlice(s) => dry.apply.push(serde_json::to_value(s).unwrap_or_default()),
            Op::DeleteService(_) | Op::DeleteSlice(_) => dry.delete.push(op.describe()),
        }
        return Ok(());
    }
    let _permit = shared.writes.acquire().await;
    let what = op.describe();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let client = shared.client.clone();
    let (verb, result) = match op {
        Op::ApplyService(s) => {
            let api: Api<Service> = Api::namespaced(client, &ns_of(&*s));
            let result = api.patch(&s.name_any(), &params, &Patch::Apply(&*s)).await;
            // A Service that changed between headless and not cannot be patched: recreate.
            if let Err(kube::Error::Api(e)) = &result
                && e.code == 422
            {
                let _ = api.delete(&s.name_any(), &DeleteParams::default()).await;
            }
            ("apply", result.map(drop))
        }
        Op::ApplySlice(s) => {
            let api: Api<EndpointSlice> = Api::namespaced(client, &ns_of(&*s));
            let result = api.patch(&s.name_any(), &params, &Patch::Apply(&*s)).await;
            ("apply", result.map(drop))
        }
        Op::DeleteService((ns, name)) => {
            let api: Api<Service> = Api::namespaced(client, &ns);
            (
                "delete",
                api.delete(&name, &DeleteParams::default()).await.map(drop),
            )
        }
        Op::DeleteSlice((ns, name)) => {
            let api: Api<EndpointSlice> = Api::namespaced(client, &ns);
            (
                "delete",
                api.delete(&name, &DeleteParams::default()).await.map(drop),
            )
        }
    };
    shared.metrics.write(link, verb);
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 && verb == "delete" => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err((
            WriteError::NamespaceMissing,
            format!("cannot write {what}: {}", e.message),
        )),
        Err(e) => Err((WriteError::ApplyFailed, format!("cannot write {what}: {e}"))),
    }
}

/// Writes the Link's status when it differs from what was last written.
async fn write_status(
    shared: &Shared,
    link: &Link,
    last: &mut Option<crate::k8s::link::LinkStatus>,
    status: crate::k8s::link::LinkStatus,
) {
    if last.as_ref() == Some(&status) || shared.dry_run.is_some() {
        return;
    }
    let api: Api<Link> = Api::namespaced(shared.client.clone(), &ns_of(link));
    let patch = serde_json::json!({ "status": status });
    let _permit = shared.writes.acquire().await;
    match api
        .patch_status(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            shared.metrics.write(&link.name_any(), "status");
            *last = Some(status);
        }
        Err(e) => {
            shared.metrics.error(&link.name_any(), "status_write");
            tracing::warn!(link = %link.name_any(), error = %e, "cannot write the Link's status");
        }
    }
}

/// Deletes every object a Link owns (it is going away). Lists by label so that objects
/// made by an earlier process are found too.
pub async fn remove_all(client: &Client, link_ns: &str, link_name: &str) -> kube::Result<usize> {
    let selector = format!(
        "{}={link_name},{}={link_ns}",
        labels::MESHLINK_LINK,
        labels::MESHLINK_LINK_NAMESPACE
    );
    let lp = kube::api::ListParams::default().labels(&selector);
    let mut n = 0;
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    for s in slices.list(&lp).await?.items {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns_of(&s));
        ignore_404(
            api.delete(&s.name_any(), &DeleteParams::default())
                .await
                .map(drop),
        )?;
        n += 1;
    }
    let services: Api<Service> = Api::all(client.clone());
    for s in services.list(&lp).await?.items {
        let api: Api<Service> = Api::namespaced(client.clone(), &ns_of(&s));
        ignore_404(
            api.delete(&s.name_any(), &DeleteParams::default())
                .await
                .map(drop),
        )?;
        n += 1;
    }
    Ok(n)
}

fn ignore_404(r: kube::Result<()>) -> kube::Result<()> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        r => r,
    }
}

/// The time now, as Kubernetes writes it.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
