//! Starts and stops a source per linked cluster as credentials Secrets come and go.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig, LinkedClusterSpec},
    metrics::Metrics,
    sources::manifests::ManifestSource,
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
