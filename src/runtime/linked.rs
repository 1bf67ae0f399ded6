//! Starts and stops a source per linked cluster as credentials Secrets come and go.
//!
//! A linked cluster is its own failure domain: it never gates readiness, and a cluster
//! whose credentials or API server fail keeps its last endpoints, marked stale.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig, LinkedClusterSpec},
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
        mut specs: watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut running: BTreeMap<String, (LinkedClusterSpec, watch::Sender<bool>)> =
            BTreeMap::new();
        loop {
            let wanted = specs.borrow_and_update().clone();
            let stale: Vec<String> = running
                .iter()
                .filter(|(name, (spec, _))| wanted.get(*name) != Some(spec))
                .map(|(name, _)| name.clone())
                .collect();
            for name in stale {
                if let Some((_, stop)) = running.remove(&name) {
                    let _ = stop.send(true);
                }
                self.clusters.remove(&name);
                info!(cluster = %name, "unlinked cluster");
            }
            for (name, spec) in wanted.iter() {
                if running.contains_key(name) {
                    continue;
                }
                if *name == *self.base.cluster_name {
                    warn!(cluster = %name, secret = %spec.secret, "ignoring a link to the local cluster itself");
                    continue;
                }
                let stop = self.start(spec);
                running.insert(name.clone(), (spec.clone(), stop));
            }
            tokio::select! {
                r = specs.changed() => if r.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, stop)) in running {
            let _ = stop.send(true);
        }
    }

    fn start(&self, spec: &LinkedClusterSpec) -> watch::Sender<bool> {
        let config = IndexConfig {
            cluster_name: Arc::from(spec.name.as_str()),
            cluster_domain: spec.cluster_domain.clone(),
            trust_domain: spec.trust_domain.clone(),
            ..self.base.clone()
        };
        let handle = ClusterHandle::new(ClusterIndex::shared(config));
        let dir = self.root.join(&spec.name);
        let mut source =
            ManifestSource::new(dir.clone(), handle.clone(), Arc::clone(&self.metrics));
        let report = source.sync();
        self.clusters.insert(handle);
        info!(
            cluster = %spec.name,
            secret = %spec.secret,
            dir = %dir.display(),
            objects = report.changed,
            errors = report.errors.len(),
            "linked cluster"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(
            source
                .run(self.poll_interval, stop_rx)
                .instrument(info_span!("manifests", cluster = %spec.name)),
        );
        stop_tx
    }
}

/// Keeps one Kubernetes source running per linked cluster, with a client built from
/// the kubeconfig in its credentials Secret.
pub struct LinkedKubeClusters {
    pub clusters: Arc<ClusterSet>,
    pub base: IndexConfig,
}

/// How long a newly linked cluster may take to list its objects before it joins the
/// cluster set anyway (then stale, so its state shows in the metrics).
const LINK_SYNC_GRACE: Duration = Duration::from_secs(10);

/// A linked cluster being watched.
struct RunningCluster {
    spec: LinkedClusterSpec,
    handle: ClusterHandle,
    stop: watch::Sender<bool>,
    /// When it was linked, while it has not joined the cluster set yet.
    pending_since: Option<tokio::time::Instant>,
}

impl LinkedKubeClusters {
    /// Follows `specs` until `shutdown` turns true.
    pub async fn run(
        self,
        mut specs: watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut running: BTreeMap<String, RunningCluster> = BTreeMap::new();
        loop {
            let wanted = specs.borrow_and_update().clone();
            let gone: Vec<String> = running
                .keys()
                .filter(|name| !wanted.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                if let Some(cluster) = running.remove(&name) {
                    let _ = cluster.stop.send(true);
                }
                self.clusters.remove(&name);
                info!(cluster = %name, "unlinked cluster");
            }
            for (name, spec) in wanted.iter() {
                if *name == *self.base.cluster_name {
                    if !running.contains_key(name) {
                        warn!(cluster = %name, secret = %spec.secret, "ignoring a link to the local cluster itself");
                    }
                    continue;
                }
                match running.get_mut(name) {
                    Some(cluster) if cluster.spec == *spec => {}
                    Some(cluster)
                        if cluster.spec.trust_domain == spec.trust_domain
                            && cluster.spec.cluster_domain == spec.cluster_domain =>
                    {
                        // New credentials (e.g. a rotated token): watch again with them into
                        // the same index; the relist replaces its objects without a gap.
                        let _ = cluster.stop.send(true);
                        cluster.stop = start_kube_source(&cluster.handle, spec).await;
                        cluster.spec = spec.clone();
                        info!(cluster = %name, secret = %spec.secret, "credentials changed; watching again");
                    }
                    _ => {
                        // A cluster whose domains changed is replaced: its old index (with
                        // identities in the old trust domain) leaves every stream now.
                        if let Some(old) = running.remove(name) {
                            let _ = old.stop.send(true);
                            self.clusters.remove(name);
                        }
                        let handle = self.new_handle(spec);
                        let stop = start_kube_source(&handle, spec).await;
                        info!(cluster = %name, secret = %spec.secret, "linking cluster");
                        running.insert(
                            name.clone(),
                            RunningCluster {
                                spec: spec.clone(),
                                handle,
                                stop,
                                pending_since: Some(tokio::time::Instant::now()),
                            },
                        );
                    }
                }
            }
            // A cluster joins once its initial lists are in, so streams never see its
            // endpoints before their pods (identities) are known.
            let mut pending = false;
            for (name, cluster) in running.iter_mut() {
                let Some(since) = cluster.pending_since else {
                    continue;
                };
                let synced = cluster.handle.status.is_synced();
                if synced || since.elapsed() >= LINK_SYNC_GRACE {
                    cluster.pending_since = None;
                    self.clusters.insert(cluster.handle.clone());
                    match synced {
                        true => info!(cluster = %name, "linked cluster"),
                        false => warn!(
                            cluster = %name,
                            error = cluster.handle.status.last_error().unwrap_or_default(),
                            "linked cluster not listed yet; serving it as stale"
                        ),
                    }
                } else {
                    pending = true;
                }
            }
            let poll = async {
                match pending {
                    true => tokio::time::sleep(Duration::from_millis(20)).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                r = specs.changed() => if r.is_err() { break },
                _ = poll => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        for (_, cluster) in running {
            let _ = cluster.stop.send(true);
        }
    }

    fn new_handle(&self, spec: &LinkedClusterSpec) -> ClusterHandle {
        ClusterHandle::new(ClusterIndex::shared(IndexConfig {
            cluster_name: Arc::from(spec.name.as_str()),
            cluster_domain: spec.cluster_domain.clone(),
            trust_domain: spec.trust_domain.clone(),
            ..self.base.clone()
        }))
    }
}

/// Starts watching the cluster `spec` describes into `handle`; returns its stop switch.
/// Credentials that cannot be used leave the cluster stale, with the reason.
async fn start_kube_source(
    handle: &ClusterHandle,
    spec: &LinkedClusterSpec,
) -> watch::Sender<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = match client_from_kubeconfig(spec.kubeconfig.as_deref()).await {
        Ok(client) => client,
        Err(e) => {
            let reason = format!("cannot use the kubeconfig of Secret {}: {e}", spec.secret);
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

/// A client from the kubeconfig bytes of a credentials Secret (its current context).
async fn client_from_kubeconfig(kubeconfig: Option<&[u8]>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let bytes = kubeconfig.context("the Secret has no kubeconfig")?;
    let text = std::str::from_utf8(bytes).context("the kubeconfig is not UTF-8")?;
    let file = kube::config::Kubeconfig::from_yaml(text).context("invalid kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .context("invalid kubeconfig")?;
    kube::Client::try_from(config).context("cannot build a client")
}
