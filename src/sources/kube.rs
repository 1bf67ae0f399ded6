//! The Kubernetes source: watches a cluster's API server and feeds its index.
//!
//! One kube-runtime watcher per kind (Services, EndpointSlices, Pods, Nodes, and for
//! the local cluster the credentials Secrets of the control-plane namespace), paced by
//! kube-runtime's default backoff. A watch that breaks is resumed from the last
//! resourceVersion; only a 410 Gone makes the watcher list the kind again, and that list
//! replaces the kind's objects at once (objects deleted meanwhile leave the index). The
//! cluster is stale while a watch fails or a relist is under way, and synced once every
//! kind was listed once.

mod objects;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{Instrument, info, info_span, warn};

pub use objects::{Change, EventBuffer, Indexed};

use crate::{
    index::{ClusterHandle, ClusterStatus},
    k8s::{EndpointSlice, Node, Pod, Secret, Service, labels, profile::ServiceProfile},
};

/// How long a watch opened again after a failure must go without an error before the
/// kind counts as read again: a 410 Gone arrives as the first event of such a watch.
const WATCH_SETTLE: Duration = Duration::from_secs(1);

/// Feeds one cluster's index from its API server.
pub struct KubeSource {
    client: Client,
    cluster: ClusterHandle,
    /// Where credentials Secrets are read (the local cluster only).
    secrets_namespace: Option<String>,
    /// Whether ServiceProfiles are watched (the local cluster only).
    profiles: bool,
}

impl KubeSource {
    /// A source for `cluster`; Secrets are watched only when `secrets_namespace` is set.
    pub fn new(client: Client, cluster: ClusterHandle, secrets_namespace: Option<String>) -> Self {
        Self {
            client,
            cluster,
            secrets_namespace,
            profiles: false,
        }
    }

    /// Also watches ServiceProfiles, once their CRD is installed.
    pub fn with_profiles(mut self) -> Self {
        self.profiles = true;
        self
    }

    /// Runs every watcher until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut kinds = vec![Service::KIND, EndpointSlice::KIND, Pod::KIND, Node::KIND];
        if self.secrets_namespace.is_some() {
            kinds.push(Secret::KIND);
        }
        let health = Arc::new(Health::new(
            Arc::clone(&self.cluster.status),
            kinds.iter().copied(),
        ));
        let all = watcher::Config::default();
        let mut tasks = JoinSet::new();
        // Each kind gets its own client, so that the watches it opens are its own.
        let ctx = || {
            let (client, opened) = WatchOpened::wrap(&self.client);
            let watch = Watch {
                cluster: self.cluster.clone(),
                health: Arc::clone(&health),
                shutdown: shutdown.clone(),
                opened,
            };
            (client, watch)
        };
        let (client, watch) = ctx();
        tasks.spawn(
            watch
                .run(Api::<Service>::all(client), all.clone())
                .instrument(info_span!("watch", kind = Service::KIND)),
        );
        let (client, watch) = ctx();
        tasks.spawn(
            watch
                .run(Api::<EndpointSlice>::all(client), all.clone())
                .instrument(info_span!("watch", kind = EndpointSlice::KIND)),
        );
        let (client, watch) = ctx();
        tasks.spawn(
            watch
                .run(Api::<Pod>::all(client), all.clone())
                .instrument(info_span!("watch", kind = Pod::KIND)),
        );
        let (client, watch) = ctx();
        tasks.spawn(
            watch
                .run(Api::<Node>::all(client), all.clone())
                .instrument(info_span!("watch", kind = Node::KIND)),
        );
        if let Some(ns) = &self.secrets_namespace {
            // Only credentials Secrets: other Secrets' data is never read nor held.
            let credentials = watcher::Config::default()
                .fields(&format!("type={}", labels::REMOTE_KUBECONFIG_SECRET_TYPE));
            let (client, watch) = ctx();
            tasks.spawn(
                watch
                    .run(Api::<Secret>::namespaced(client, ns), credentials)
                    .instrument(info_span!("watch", kind = Secret::KIND, namespace = %ns)),
            );
        }
        if self.profiles {
            let (client, opened) = WatchOpened::wrap(&self.client);
            let profiles = ProfileWatch {
                client,
                opened,
                cluster: self.cluster.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(
                profiles
                    .run()
                    .instrument(info_span!("watch", kind = ServiceProfile::KIND)),
            );
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// How often a cluster without the ServiceProfile CRD is asked again whether it has it.
const PROFILE_CRD_RECHECK: Duration = Duration::from_secs(30);

/// Watches ServiceProfiles once their CRD exists. Outside the cluster's health: a cluster
/// without the CRD (or with a failing profile watch) is served, with default profiles or
/// the last known ones, and never held unready for it.
struct ProfileWatch {
    client: Client,
    opened: Arc<Notify>,
    cluster: ClusterHandle,
    shutdown: watch::Receiver<bool>,
}

impl ProfileWatch {
    async fn run(self) {
        let api = Api::<ServiceProfile>::all(self.client.clone());
        let mut shutdown = self.shutdown.clone();
        let mut said_absent = false;
        loop {
            match api.list(&kube::api::ListParams::default().limit(1)).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    if !said_absent {
                        info!(
                            "the ServiceProfile CRD is not installed; serving default profiles until it is"
                        );
                        said_absent = true;
                    }
                }
                Err(error) => warn!(%error, "cannot list ServiceProfiles; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PROFILE_CRD_RECHECK) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        if said_absent {
            info!("the ServiceProfile CRD is installed; watching ServiceProfiles");
        }
        let status = Arc::new(ClusterStatus::default());
        let watch = Watch {
            cluster: self.cluster,
            health: Arc::new(Health::new(status, [ServiceProfile::KIND])),
            shutdown: self.shutdown,
            opened: self.opened,
        };
        watch.run(api, watcher::Config::default()).await;
    }
}

/// What a kind's watcher yields.
enum Item<K> {
    Event(Event<K>),
    /// 410 Gone: the watcher lists the kind again next.
    Gone(String),
}

/// One kind's watcher.
struct Watch {
    cluster: ClusterHandle,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
    /// Told each time the kind's client opened a watch.
    opened: Arc<Notify>,
}

impl Watch {
    async fn run<K: Indexed>(self, api: Api<K>, config: watcher::Config) {
        let mut shutdown = self.shutdown.clone();
        // A 410 Gone is passed on as an item rather than an error, so that the backoff
        // does not delay the relist it calls for (the watcher lists at its next poll).
        let events = watcher(api, config).map(|item| match item {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                Ok(Item::Gone(status.message))
            }
            other => other.map(Item::Event),
        });
        let mut events = std::pin::pin!(events.default_backoff());
        let mut buffer = EventBuffer::<K>::default();
        // After a failure, when the watch was opened again: it is working once
        // WATCH_SETTLE passes without an error (the watcher resumes it without an event).
        let mut reopened: Option<Instant> = None;
        loop {
            let settled = async {
                match reopened {
                    Some(at) => tokio::time::sleep_until(at + WATCH_SETTLE).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = self.opened.notified() => {
                    if self.health.is_failing(K::KIND) && !buffer.relisting() {
                        reopened = Some(Instant::now());
                    }
                }
                _ = settled => {
                    reopened = None;
                    self.health.resumed(K::KIND);
                }
                event = events.next() => match event {
                    Some(Ok(Item::Event(event))) => self.on_event(&mut buffer, event),
                    Some(Ok(Item::Gone(message))) => {
                        self.failed::<K>(&mut reopened, &format!("410 Gone: {message}"));
                    }
                    Some(Err(e)) => self.failed::<K>(&mut reopened, &e.to_string()),
                    // A watcher only ends when its backoff gives up, which the default never does.
                    None => return,
                },
            }
        }
    }

    /// The watch failed: not working until it was opened again (a notice of the watch
    /// that just failed, e.g. with a 410 as its first event, does not count).
    fn failed<K: Indexed>(&self, reopened: &mut Option<Instant>, error: &str) {
        *reopened = None;
        let _ = futures::FutureExt::now_or_never(self.opened.notified());
        self.health.failed(K::KIND, error);
    }

    fn on_event<K: Indexed>(&self, buffer: &mut EventBuffer<K>, event: Event<K>) {
        let (relist_starts, watching) = (
            matches!(event, Event::Init),
            matches!(event, Event::Apply(_) | Event::Delete(_)),
        );
        if relist_starts {
            self.health.relisting(K::KIND);
        }
        let Some(change) = buffer.push(event) else {
            return;
        };
        change.apply_to(&mut self.cluster.index.lock());
        if let Change::Reset(_) = change {
            self.health.listed(K::KIND);
        } else if watching {
            self.health.resumed(K::KIND);
        }
    }
}

/// Which kinds of a cluster were listed and which are failing; drives its status.
struct Health {
    status: Arc<ClusterStatus>,
    state: parking_lot::Mutex<HealthState>,
}

struct HealthState {
    never_listed: BTreeSet<&'static str>,
    failing: BTreeMap<&'static str, String>,
}

impl Health {
    fn new(status: Arc<ClusterStatus>, kinds: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            status,
            state: parking_lot::Mutex::new(HealthState {
                never_listed: kinds.into_iter().collect(),
                failing: BTreeMap::new(),
            }),
        }
    }

    /// A full list of `kind` is in the index.
    fn listed(&self, kind: &'static str) {
        let mut state = self.state.lock();
        let first = state.never_listed.remove(kind);
        if first && state.never_listed.is_empty() {
            info!("initial lists are in");
            self.status.set_synced();
        }
        self.recovered(&mut state, kind);
    }

    /// The watch of `kind` works again (without a relist).
    fn resumed(&self, kind: &'static str) {
        let mut state = self.state.lock();
        self.recovered(&mut state, kind);
    }

    fn recovered(&self, state: &mut HealthState, kind: &'static str) {
        let recovered = state.failing.remove(kind).is_some();
        if recovered {
            info!("reading the API server again");
        }
        match state.failing.values().next() {
            Some(other) if recovered => self.status.set_stale(other.clone()),
            Some(_) => {}
            // Fresh once every kind is listed and none fails, whatever made it stale
            // before (also an earlier source of the cluster, e.g. unusable credentials).
            None if state.never_listed.is_empty() && self.status.is_stale() => {
                self.status.set_healthy()
            }
            None => {}
        }
    }

    /// `kind` is listed again (after a 410 Gone): stale until the list is in.
    fn relisting(&self, kind: &'static str) {
        let mut state = self.state.lock();
        if state.never_listed.contains(kind) {
            return;
        }
        info!("listing again");
        let reason = state
            .failing
            .entry(kind)
            .or_insert_with(|| format!("{kind}: listing again"))
            .clone();
        self.status.set_stale(reason);
    }

    /// The watch of `kind` failed; the watcher tries again after its backoff.
    fn failed(&self, kind: &'static str, error: &str) {
        warn!(%error, "watch failed; serving the last known objects");
        let reason = format!("{kind}: {error}");
        self.state.lock().failing.insert(kind, reason.clone());
        self.status.set_stale(reason);
    }

    /// Whether the watch of `kind` failed and has not worked since.
    fn is_failing(&self, kind: &'static str) -> bool {
        self.state.lock().failing.contains_key(kind)
    }
}

/// A client that tells when it opened a watch: kube-runtime's watcher resumes a broken
/// watch without an event, and a watch open again is what makes a failed kind fresh.
struct WatchOpened {
    client: Client,
    opened: Arc<Notify>,
}

impl WatchOpened {
    /// `client` with a notification for each watch it opens.
    fn wrap(client: &Client) -> (Client, Arc<Notify>) {
        let opened = Arc::new(Notify::new());
        let observed = Self {
            client: client.clone(),
            opened: Arc::clone(&opened),
        };
        let wrapped = Client::new(observed, client.default_namespace())
            .with_valid_until(*client.valid_until());
        (wrapped, opened)
    }
}

impl tower_service::Service<http::Request<kube::client::Body>> for WatchOpened {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let is_watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let (client, opened) = (self.client.clone(), Arc::clone(&self.opened));
        Box::pin(async move {
            let res = client.send(req).await?;
            if is_watch && res.status().is_success() {
                opened.notify_one();
            }
            Ok(res)
        })
    }
}
