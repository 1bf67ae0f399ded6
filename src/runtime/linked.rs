//! Starts and stops a source per linked cluster as credentials Secrets come and go.
//!
//! A linked cluster is its own failure domain: it never gates readiness, and a cluster
//! whose credentials or API server fail keeps its last endpoints, marked stale.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig, LinkedClusterSpec},
    k8s::client::client_from_kubeconfig,
    metrics::Metrics,
    sources::{kube::KubeSource, manifests::ManifestSource},
};

/// Keeps one manifest source running per linked cluster (`<root>/<cluster>`).
pub struct LinkedManifestClusters {
    pub root: PathBuf,
    pub clusters: Arc<ClusterSet>,
    pub base: IndexConfig,
    pub metrics: Arc<Metrics>,
    pub poll_interval: Duration,
}

impl LinkedManifestClusters {
    /// Follows `specs` until `shutdown` turns true.
    pub async fn run(
        self,
        specs: watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>>,
        shutdown: watch::Receiver<bool>,
    ) {
        follow_links(&self, specs, shutdown).await;
    }
}

impl LinkedSources for LinkedManifestClusters {
    fn clusters(&self) -> &ClusterSet {
        &self.clusters
    }

    fn base(&self) -> &IndexConfig {
        &self.base
    }

    async fn start(&self, handle: &ClusterHandle, spec: &LinkedClusterSpec) -> watch::Sender<bool> {
        let dir = self.root.join(&spec.name);
        let mut source =
            ManifestSource::new(dir.clone(), handle.clone(), Arc::clone(&self.metrics));
        // The first pass is synchronous: the cluster joins with its objects in.
        let report = source.sync();
        info!(
            cluster = %spec.name,
            dir = %dir.display(),
            objects = report.changed,
            errors = report.errors.len(),
            "read linked cluster folder"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(
            source
                .run(self.poll_interval, stop_rx)
                .instrument(info_span!("manifests", cluster = %spec.name)),
        );
        stop_tx
    }

    async fn new_credentials(&self, cluster: &mut RunningCluster, spec: &LinkedClusterSpec) {
        // The folder is the cluster's objects; its kubeconfig is not used.
        cluster.spec = spec.clone();
    }
}

/// Keeps one Kubernetes source running per linked cluster, with a client built from
/// the kubeconfig in its credentials Secret.
pub struct LinkedKubeClusters {
    pub clusters: Arc<ClusterSet>,
    pub base: IndexConfig,
}

impl LinkedKubeClusters {
    /// Follows `specs` until `shutdown` turns true.
    pub async fn run(
        self,
        specs: watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>>,
        shutdown: watch::Receiver<bool>,
    ) {
        follow_links(&self, specs, shutdown).await;
    }
}

impl LinkedSources for LinkedKubeClusters {
    fn clusters(&self) -> &ClusterSet {
        &self.clusters
    }

    fn base(&self) -> &IndexConfig {
        &self.base
    }

    async fn start(&self, handle: &ClusterHandle, spec: &LinkedClusterSpec) -> watch::Sender<bool> {
        start_kube_source(handle, spec).await
    }

    async fn new_credentials(&self, cluster: &mut RunningCluster, spec: &LinkedClusterSpec) {
        // Watch again with them into the same index; the relist replaces its objects
        // without a gap.
        let _ = cluster.stop.send(true);
        cluster.stop = start_kube_source(&cluster.handle, spec).await;
        cluster.spec = spec.clone();
        info!(cluster = %spec.name, secret = %spec.secret, "credentials changed; watching again");
    }
}

/// How long a newly linked cluster may take to list its objects before it joins the
/// cluster set anyway (then stale, so its state shows in the metrics).
const LINK_SYNC_GRACE: Duration = Duration::from_secs(10);

/// A linked cluster being read.
struct RunningCluster {
    spec: LinkedClusterSpec,
    handle: ClusterHandle,
    stop: watch::Sender<bool>,
    /// When it was linked, while it has not joined the cluster set yet.
    pending_since: Option<tokio::time::Instant>,
}

/// What differs between one kind of source per linked cluster and another.
trait LinkedSources {
    /// The set linked clusters join.
    fn clusters(&self) -> &ClusterSet;
    /// The index settings a linked cluster's own name and domains override.
    fn base(&self) -> &IndexConfig;
    /// Starts reading `spec`'s cluster into `handle`; returns its stop switch.
    async fn start(&self, handle: &ClusterHandle, spec: &LinkedClusterSpec) -> watch::Sender<bool>;
    /// The cluster's Secret changed, but not its domains.
    async fn new_credentials(&self, cluster: &mut RunningCluster, spec: &LinkedClusterSpec);
}

/// What to do to bring the running linked clusters to the wanted ones.
#[derive(Debug, PartialEq)]
enum Change {
    /// Stop reading the cluster; its endpoints leave every stream.
    Unlink(String),
    /// Start reading a cluster into a new index.
    Link(LinkedClusterSpec),
    /// Same cluster and domains, new credentials.
    NewCredentials(LinkedClusterSpec),
}

/// The changes from `running` to `wanted`, unlinks first. A cluster whose domains changed
/// is unlinked and linked again: its old index (with identities in the old trust domain)
/// must leave every stream.
fn changes(
    running: &BTreeMap<String, LinkedClusterSpec>,
    wanted: &BTreeMap<String, LinkedClusterSpec>,
    local: &str,
) -> Vec<Change> {
    let mut unlinks = Vec::new();
    let mut links = Vec::new();
    for name in running.keys().filter(|n| !wanted.contains_key(*n)) {
        unlinks.push(Change::Unlink(name.clone()));
    }
    for (name, spec) in wanted {
        if name == local {
            warn!(cluster = %name, secret = %spec.secret, "ignoring a link to the local cluster itself");
            continue;
        }
        match running.get(name) {
            Some(old) if old == spec => {}
            Some(old)
                if old.trust_domain == spec.trust_domain
                    && old.cluster_domain == spec.cluster_domain =>
            {
                links.push(Change::NewCredentials(spec.clone()));
            }
            Some(_) => {
                unlinks.push(Change::Unlink(name.clone()));
                links.push(Change::Link(spec.clone()));
            }
            None => links.push(Change::Link(spec.clone())),
        }
    }
    unlinks.extend(links);
    unlinks
}

/// Starts and stops sources as `specs` changes until `shutdown` turns true.
async fn follow_links(
    sources: &impl LinkedSources,
    mut specs: watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<String, RunningCluster> = BTreeMap::new();
    loop {
        let wanted = specs.borrow_and_update().clone();
        let specs_running = running
            .iter()
            .map(|(name, c)| (name.clone(), c.spec.clone()))
            .collect();
        let local = Arc::clone(&sources.base().cluster_name);
        for change in changes(&specs_running, &wanted, &local) {
            apply_change(sources, &mut running, change).await;
        }
        join_synced(sources.clusters(), &mut running);
        tokio::select! {
            r = specs.changed() => if r.is_err() { break },
            _ = next_joinable(&running) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for cluster in running.into_values() {
        let _ = cluster.stop.send(true);
    }
}

/// Carries out one change.
async fn apply_change(
    sources: &impl LinkedSources,
    running: &mut BTreeMap<String, RunningCluster>,
    change: Change,
) {
    match change {
        Change::Unlink(name) => {
            if let Some(cluster) = running.remove(&name) {
                let _ = cluster.stop.send(true);
            }
            sources.clusters().remove(&name);
            info!(cluster = %name, "unlinked cluster");
        }
        Change::Link(spec) => {
            let handle = ClusterHandle::new(ClusterIndex::shared(IndexConfig {
                cluster_name: Arc::from(spec.name.as_str()),
                cluster_domain: spec.cluster_domain.clone(),
                trust_domain: spec.trust_domain.clone(),
                ..sources.base().clone()
            }));
            let stop = sources.start(&handle, &spec).await;
            info!(cluster = %spec.name, secret = %spec.secret, "linking cluster");
            running.insert(
                spec.name.clone(),
                RunningCluster {
                    spec,
                    handle,
                    stop,
                    pending_since: Some(tokio::time::Instant::now()),
                },
            );
        }
        Change::NewCredentials(spec) => {
            if let Some(cluster) = running.get_mut(&spec.name) {
                sources.new_credentials(cluster, &spec).await;
            }
        }
    }
}

/// Adds to the cluster set the pending clusters whose initial load is in, or that have
/// waited `LINK_SYNC_GRACE` (as stale): streams never see a cluster's endpoints before
/// its pods (identities) are known.
fn join_synced(clusters: &ClusterSet, running: &mut BTreeMap<String, RunningCluster>) {
    for (name, cluster) in running.iter_mut() {
        let Some(since) = cluster.pending_since else {
            continue;
        };
        let synced = cluster.handle.status.is_synced();
        if !synced && since.elapsed() < LINK_SYNC_GRACE {
            continue;
        }
        cluster.pending_since = None;
        clusters.insert(cluster.handle.clone());
        match synced {
            true => info!(cluster = %name, "linked cluster"),
            false => warn!(
                cluster = %name,
                error = cluster.handle.status.last_error().unwrap_or_default(),
                "linked cluster not listed yet; serving it as stale"
            ),
        }
    }
}

/// Resolves when a pending cluster has synced or waited out its grace; never when none
/// is pending.
async fn next_joinable(running: &BTreeMap<String, RunningCluster>) {
    let waits: Vec<_> = running
        .values()
        .filter_map(|cluster| {
            let since = cluster.pending_since?;
            let mut synced = cluster.handle.status.synced_rx();
            Some(Box::pin(async move {
                tokio::select! {
                    _ = synced.wait_for(|s| *s) => {}
                    _ = tokio::time::sleep_until(since + LINK_SYNC_GRACE) => {}
                }
            }))
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(waits).await;
}

/// Starts watching the cluster `spec` describes into `handle`; returns its stop switch.
/// Credentials that cannot be used leave the cluster stale, with the reason.
async fn start_kube_source(
    handle: &ClusterHandle,
    spec: &LinkedClusterSpec,
) -> watch::Sender<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let source = format!("Secret {}", spec.secret);
    let client = match client_from_kubeconfig(spec.kubeconfig.as_deref(), &source).await {
        Ok((client, _)) => client,
        Err(e) => {
            let reason = e.to_string();
            warn!(cluster = %spec.name, error = %reason, "linked cluster is not watched");
            handle.status.set_stale(reason);
            return stop_tx;
        }
    };
    tokio::spawn(
        KubeSource::new(client, handle.clone(), None)
            .run(stop_rx)
            .instrument(info_span!("kube", cluster = %spec.name)),
    );
    stop_tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, trust_domain: &str, kubeconfig: &str) -> LinkedClusterSpec {
        LinkedClusterSpec {
            name: name.into(),
            secret: format!("linkerd/cluster-credentials-{name}"),
            trust_domain: trust_domain.into(),
            cluster_domain: "cluster.local".into(),
            kubeconfig: Some(Arc::from(kubeconfig.as_bytes())),
        }
    }

    fn map(specs: &[LinkedClusterSpec]) -> BTreeMap<String, LinkedClusterSpec> {
        specs.iter().map(|s| (s.name.clone(), s.clone())).collect()
    }

    #[test]
    fn changes_link_unlink_and_swap_credentials() {
        let running = map(&[
            spec("west", "west.example", "a"),
            spec("east", "east.example", "a"),
            spec("north", "north.example", "a"),
        ]);
        let wanted = map(&[
            spec("west", "west.example", "b"),
            spec("east", "east.example", "a"),
            spec("north", "other.example", "a"),
            spec("south", "south.example", "a"),
            spec("local", "local.example", "a"),
        ]);
        assert_eq!(
            changes(&running, &wanted, "local"),
            [
                Change::Unlink("north".into()),
                Change::Link(spec("north", "other.example", "a")),
                Change::Link(spec("south", "south.example", "a")),
                Change::NewCredentials(spec("west", "west.example", "b")),
            ]
        );
        assert_eq!(changes(&wanted, &BTreeMap::new(), "local").len(), 5);
        assert!(changes(&running, &running, "local").is_empty());
    }
}
