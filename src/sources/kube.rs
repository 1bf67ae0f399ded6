//! The Kubernetes source: watches a cluster's API server and feeds its index.
//!
//! One kube-runtime watcher per kind (Services, EndpointSlices, Pods, Nodes, and for
//! the local cluster the credentials Secrets of the control-plane namespace). A watcher
//! that fails marks the cluster stale and is started again after a backoff, which lists
//! the kind anew: the cluster is healthy again once that list is in, and objects deleted
//! meanwhile leave the index. The cluster is synced once every kind was listed once.

mod objects;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::watcher::{self, watcher},
};
use tokio::{sync::watch, task::JoinSet};
use tracing::{Instrument, info, info_span, warn};

pub use objects::{Change, EventBuffer, Indexed};

use crate::{
    index::{ClusterHandle, ClusterStatus},
    k8s::{EndpointSlice, Node, Pod, Secret, Service, labels},
};

/// First wait before a failed watcher is started again; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts, so a cluster that comes back is read within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Feeds one cluster's index from its API server.
pub struct KubeSource {
    client: Client,
    cluster: ClusterHandle,
    /// Where credentials Secrets are read (the local cluster only).
    secrets_namespace: Option<String>,
}

impl KubeSource {
    /// A source for `cluster`; Secrets are watched only when `secrets_namespace` is set.
    pub fn new(client: Client, cluster: ClusterHandle, secrets_namespace: Option<String>) -> Self {
        Self {
            client,
            cluster,
            secrets_namespace,
        }
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
        let ctx = || Watch {
            cluster: self.cluster.clone(),
            health: Arc::clone(&health),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(
            ctx()
                .run(Api::<Service>::all(self.client.clone()), all.clone())
                .instrument(info_span!("watch", kind = Service::KIND)),
        );
        tasks.spawn(
            ctx()
                .run(Api::<EndpointSlice>::all(self.client.clone()), all.clone())
                .instrument(info_span!("watch", kind = EndpointSlice::KIND)),
        );
        tasks.spawn(
            ctx()
                .run(Api::<Pod>::all(self.client.clone()), all.clone())
                .instrument(info_span!("watch", kind = Pod::KIND)),
        );
        tasks.spawn(
            ctx()
                .run(Api::<Node>::all(self.client.clone()), all.clone())
                .instrument(info_span!("watch", kind = Node::KIND)),
        );
        if let Some(ns) = &self.secrets_namespace {
            // Only credentials Secrets: other Secrets' data is never read nor held.
            let credentials = watcher::Config::default()
                .fields(&format!("type={}", labels::REMOTE_KUBECONFIG_SECRET_TYPE));
            tasks.spawn(
                ctx()
                    .run(
                        Api::<Secret>::namespaced(self.client.clone(), ns),
                        credentials,
                    )
                    .instrument(info_span!("watch", kind = Secret::KIND, namespace = %ns)),
            );
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// One kind's watcher.
struct Watch {
    cluster: ClusterHandle,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
}

impl Watch {
    async fn run<K: Indexed>(mut self, api: Api<K>, config: watcher::Config) {
        let mut backoff = Backoff::default();
        loop {
            // A fresh watcher starts with a full list, applied as a reset.
            let mut events = std::pin::pin!(watcher(api.clone(), config.clone()));
            let mut buffer = EventBuffer::<K>::default();
            let error = loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = self.shutdown.wait_for(|s| *s) => return,
                };
                match event {
                    Some(Ok(event)) => {
                        let Some(change) = buffer.push(event) else {
                            continue;
                        };
                        change.apply_to(&mut self.cluster.index.lock());
                        if let Change::Reset(_) = change {
                            backoff.reset();
                            self.health.listed(K::KIND);
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the watch ended".to_string(),
                }
            };
            let delay = backoff.next_delay();
            self.health.failed(K::KIND, &error, delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.wait_for(|s| *s) => return,
            }
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

    /// The watcher of `kind` failed and starts again after `retry_in`.
    fn failed(&self, kind: &'static str, error: &str, retry_in: Duration) {
        warn!(%error, ?retry_in, "watch failed; serving the last known objects");
        let reason = format!("{kind}: {error}");
        self.state.lock().failing.insert(kind, reason.clone());
        self.status.set_stale(reason);
    }
}

/// Exponential backoff with jitter between watcher restarts.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The wait before the next attempt: a random point in the upper half of the
    /// current step, so clients that failed together do not retry together.
    fn next_delay(&mut self) -> Duration {
        use std::hash::BuildHasher;
        let step = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let random =
            std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
        let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
        step.mul_f64(fraction)
    }

    fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}
