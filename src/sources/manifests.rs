//! The manifest source: Kubernetes-shaped YAML files in a folder, re-read when they change.
//!
//! Each cluster is one folder of `*.yaml`/`*.yml` files holding ordinary objects. A file
//! or object that does not parse is reported and skipped; the objects that file last
//! held stay. A folder that cannot be read keeps its last objects; a folder that no
//! longer exists holds none. Services with a selector and no EndpointSlice get slices built from
//! their pods, as Kubernetes' EndpointSlice controller would.
//!
//! A file written in place (truncated, then written) can be read half-written. A changed
//! file therefore replaces its last good version only once it has settled: it read the
//! same on two consecutive polls, or its mtime is older than the poll interval. A file that
//! became empty never replaces a version that held objects (delete the file to remove them).

mod parse;
mod slices;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

pub use parse::{Object, ObjectKey, parse_manifests};

use crate::{
    index::{ClusterHandle, ClusterIndex},
    metrics::{ClusterLabels, ManifestErrorLabels, Metrics},
};

/// How often the folder is checked for changes when not configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A file's modification time and size: when both are unchanged, the file is not read again.
type Stamp = (Option<SystemTime>, u64);

/// A file as last applied.
struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjectKey, Object>,
    errors: Vec<String>,
}

/// A changed file read once, waiting to read the same again before it is applied.
struct Pending {
    text: String,
}

/// Feeds one cluster's index from one folder.
pub struct ManifestSource {
    dir: PathBuf,
    cluster: ClusterHandle,
    metrics: Arc<Metrics>,
    files: BTreeMap<PathBuf, FileState>,
    pending: BTreeMap<PathBuf, Pending>,
    /// How long a changed file must be at rest to be applied at once; `None` until `run`
    /// (the first load applies what it reads).
    settle: Option<Duration>,
    applied: BTreeMap<ObjectKey, Object>,
    dir_error: Option<String>,
    reported: BTreeSet<ManifestErrorLabels>,
}

/// What one pass over the folder found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects added, changed or removed in the index.
    pub changed: usize,
    /// Current errors (`file: reason`).
    pub errors: Vec<String>,
}

impl ManifestSource {
    /// A source reading `dir` into `cluster`.
    pub fn new(dir: PathBuf, cluster: ClusterHandle, metrics: Arc<Metrics>) -> Self {
        Self {
            dir,
            cluster,
            metrics,
            files: BTreeMap::new(),
            pending: BTreeMap::new(),
            settle: None,
            applied: BTreeMap::new(),
            dir_error: None,
            reported: BTreeSet::new(),
        }
    }

    /// Reads what changed since the last pass and applies it to the index.
    pub fn sync(&mut self) -> SyncReport {
        match list_manifests(&self.dir) {
            Ok(paths) => {
                if self.dir_error.take().is_some() {
                    info!(dir = %self.dir.display(), "folder is readable again");
                }
                self.files.retain(|p, _| paths.contains(p));
                self.pending.retain(|p, _| paths.contains(p));
                for path in paths {
                    self.read_if_changed(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A folder that is gone holds no objects: the cluster's endpoints leave.
                let msg = format!("folder {} does not exist", self.dir.display());
                if self.dir_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "serving no objects for this cluster");
                }
                self.files.clear();
                self.pending.clear();
                self.dir_error = Some(msg);
            }
            Err(e) => {
                let msg = format!("cannot read folder {}: {e}", self.dir.display());
                if self.dir_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "keeping the last objects read from this cluster's folder");
                    self.metrics
                        .manifest_errors_total
                        .get_or_create(&ClusterLabels {
                            cluster: self.cluster.name.to_string(),
                        })
                        .inc();
                }
                self.dir_error = Some(msg);
            }
        }
        let changed = self.apply();
        let errors = self.publish_errors();
        SyncReport { changed, errors }
    }

    /// Syncs every `interval` until `shutdown` turns true.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        self.settle = Some(interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let report = self.sync();
            if report.changed > 0 {
                info!(changed = report.changed, "applied manifest changes");
            }
        }
    }

    fn read_if_changed(&mut self, path: PathBuf) {
        let stamp = std::fs::metadata(&path)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0));
        if self
            .files
            .get(&path)
            .is_some_and(|f| f.stamp == stamp && stamp.0.is_some())
        {
            self.pending.remove(&path);
            return;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => {
                if !self.settled(&path, stamp, &text) {
                    self.pending.insert(path, Pending { text });
                    return;
                }
                self.pending.remove(&path);
                Ok(text)
            }
            Err(e) => Err(e),
        };
        let previous = self.files.remove(&path);
        let (mut objects, errors) = match text {
            Ok(text) => parse_manifests(&text),
            Err(e) => (BTreeMap::new(), vec![format!("cannot read file: {e}")]),
        };
        for e in &errors {
            warn!(file = %path.display(), error = %e, "skipping invalid manifest content");
            self.metrics
                .manifest_errors_total
                .get_or_create(&ClusterLabels {
                    cluster: self.cluster.name.to_string(),
                })
                .inc();
        }
        if !errors.is_empty() {
            // Keep what the file held before, under what did parse now.
            if let Some(prev) = previous {
                for (k, o) in prev.objects {
                    objects.entry(k).or_insert(o);
                }
            }
        }
        self.files.insert(
            path,
            FileState {
                stamp,
                objects,
                errors,
            },
        );
    }

    /// Whether `text`, just read from `path`, may replace the file's last good version.
    fn settled(&self, path: &Path, stamp: Stamp, text: &str) -> bool {
        let held_objects = self.files.get(path).is_some_and(|f| !f.objects.is_empty());
        if text.trim().is_empty() && held_objects {
            // Most likely truncated by a writer that has not written yet.
            if !self
                .pending
                .get(path)
                .is_some_and(|p| p.text.trim().is_empty())
            {
                info!(file = %path.display(), "file is empty; keeping its objects until it has content or is deleted");
            }
            return false;
        }
        let Some(settle) = self.settle else {
            return true;
        };
        if self.pending.get(path).is_some_and(|p| p.text == text) {
            return true;
        }
        stamp
            .0
            .and_then(|mtime| mtime.elapsed().ok())
            .is_some_and(|age| age >= settle)
    }

    /// Applies the union of every file's objects to the index; returns how many changed.
    fn apply(&mut self) -> usize {
        let mut desired: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        for file in self.files.values() {
            for (k, o) in &file.objects {
                desired.insert(k.clone(), o.clone());
            }
        }
        for slice in slices::derive_endpoint_slices(&desired) {
            desired.insert(ObjectKey::of(&slice), slice);
        }
        let mut changed = 0;
        let mut index = self.cluster.index.lock();
        for key in self.applied.keys() {
            if !desired.contains_key(key) {
                delete(&mut index, key);
                changed += 1;
            }
        }
        // Pods and nodes first so that slices find them.
        let mut order: Vec<(&ObjectKey, &Object)> = desired.iter().collect();
        order.sort_by_key(|(k, _)| k.kind.apply_order());
        for (key, obj) in order {
            if self.applied.get(key) != Some(obj) {
                apply(&mut index, obj);
                changed += 1;
            }
        }
        drop(index);
        self.applied = desired;
        self.cluster.status.set_synced();
        changed
    }

    fn publish_errors(&mut self) -> Vec<String> {
        let cluster = self.cluster.name.to_string();
        let mut now = BTreeSet::new();
        let mut messages = Vec::new();
        if let Some(e) = &self.dir_error {
            now.insert(ManifestErrorLabels {
                cluster: cluster.clone(),
                file: self.dir.display().to_string(),
                reason: e.clone(),
            });
            messages.push(e.clone());
        }
        for (path, file) in &self.files {
            for reason in &file.errors {
                now.insert(ManifestErrorLabels {
                    cluster: cluster.clone(),
                    file: path.display().to_string(),
                    reason: reason.clone(),
                });
                messages.push(format!("{}: {reason}", path.display()));
            }
        }
        for gone in self.reported.difference(&now) {
            self.metrics.manifest_invalid.remove(gone);
        }
        for label in &now {
            self.metrics.manifest_invalid.get_or_create(label).set(1);
        }
        self.reported = now;
        match messages.first() {
            Some(first) => self.cluster.status.set_stale(first.clone()),
            None => self.cluster.status.set_healthy(),
        }
        messages
    }
}

fn list_manifests(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && !hidden && path.is_file() {
            paths.insert(path);
        }
    }
    Ok(paths)
}

fn apply(index: &mut ClusterIndex, obj: &Object) {
    match obj {
        Object::Service(o) => index.apply_service(o),
        Object::EndpointSlice(o) => index.apply_endpoint_slice(o),
        Object::Pod(o) => index.apply_pod(o),
        Object::Node(o) => index.apply_node(o),
        Object::Secret(o) => index.apply_secret(o),
        Object::Namespace(_) => {}
    }
}

fn delete(index: &mut ClusterIndex, key: &ObjectKey) {
    use parse::Kind;
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    match key.kind {
        Kind::Service => index.delete_service(ns, name),
        Kind::EndpointSlice => index.delete_endpoint_slice(ns, name),
        Kind::Pod => index.delete_pod(ns, name),
        Kind::Node => index.delete_node(name),
        Kind::Secret => index.delete_secret(ns, name),
        Kind::Namespace => {}
    }
}
