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

pub use parse::{DocumentError, Object, ObjectKey, parse_manifests};

use crate::{
    index::{ClusterHandle, ClusterIndex},
    metrics::{ClusterLabels, ManifestErrorLabels, Metrics},
};

/// Why a manifest file, or the cluster's folder, is not read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The folder does not exist (the cluster holds no objects).
    #[error("folder {0} does not exist")]
    FolderMissing(String),
    /// The folder cannot be listed (its last objects are kept).
    #[error("cannot read folder {dir}: {error}")]
    FolderUnreadable { dir: String, error: String },
    /// A file cannot be read (its last objects are kept).
    #[error("cannot read file: {0}")]
    FileUnreadable(String),
    /// A document of a file cannot be read.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

impl ManifestError {
    /// The `reason` label of `meshlink_manifest_invalid`: one of a few fixed values, so
    /// that no file content becomes a label value (the whole message is logged).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::FolderMissing(_) => "folder_missing",
            Self::FolderUnreadable { .. } => "folder_unreadable",
            Self::FileUnreadable(_) => "file_unreadable",
            Self::Document(e) => e.metric_label(),
        }
    }
}

/// How often the folder is checked for changes when not configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A file's modification time and size: when both are unchanged, the file is not read again.
type Stamp = (Option<SystemTime>, u64);

/// A file as last applied.
struct FileState {
    stamp: Stamp,
    /// A hash of the text applied: a file touched but not changed is not parsed again.
    text_hash: Option<u64>,
    /// Shared with `applied`, so that building the desired set clones no object.
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    errors: Vec<ManifestError>,
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
    applied: BTreeMap<ObjectKey, Arc<Object>>,
    /// Whether a file or the folder changed since the last pass applied.
    dirty: bool,
    dir_error: Option<ManifestError>,
    reported: BTreeSet<ManifestErrorLabels>,
    errors: Vec<String>,
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
            dirty: true,
            dir_error: None,
            reported: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    /// Reads what changed since the last pass and applies it to the index. A pass that
    /// finds no file changed (by mtime, size, then content) touches neither the index nor
    /// the metrics.
    pub fn sync(&mut self) -> SyncReport {
        match list_manifests(&self.dir) {
            Ok(paths) => {
                if self.dir_error.take().is_some() {
                    info!(dir = %self.dir.display(), "folder is readable again");
                    self.dirty = true;
                }
                let before = self.files.len();
                self.files.retain(|p, _| paths.contains(p));
                self.dirty |= self.files.len() != before;
                self.pending.retain(|p, _| paths.contains(p));
                for path in paths {
                    self.read_if_changed(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A folder that is gone holds no objects: the cluster's endpoints leave.
                let error = ManifestError::FolderMissing(self.dir.display().to_string());
                if !self.same_dir_error(&error) {
                    warn!(%error, "serving no objects for this cluster");
                    self.dirty = true;
                }
                self.files.clear();
                self.pending.clear();
                self.dir_error = Some(error);
            }
            Err(e) => {
                let error = ManifestError::FolderUnreadable {
                    dir: self.dir.display().to_string(),
                    error: e.to_string(),
                };
                if !self.same_dir_error(&error) {
                    self.dirty = true;
                    warn!(%error, "keeping the last objects read from this cluster's folder");
                    self.metrics
                        .manifest_errors_total
                        .get_or_create(&ClusterLabels {
                            cluster: self.cluster.name.to_string(),
                        })
                        .inc();
                }
                self.dir_error = Some(error);
            }
        }
        if !std::mem::take(&mut self.dirty) {
            return SyncReport {
                changed: 0,
                errors: self.errors.clone(),
            };
        }
        let changed = self.apply();
        self.errors = self.publish_errors();
        SyncReport {
            changed,
            errors: self.errors.clone(),
        }
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
        let text_hash = text.as_ref().ok().map(|t| hash(t));
        if let Some(file) = self.files.get_mut(&path)
            && text_hash.is_some()
            && file.text_hash == text_hash
        {
            // Touched, not changed.
            file.stamp = stamp;
            return;
        }
        self.dirty = true;
        let previous = self.files.remove(&path);
        let (objects, errors) = match text {
            Ok(text) => {
                let (objects, errors) = parse_manifests(&text);
                (
                    objects,
                    errors.into_iter().map(ManifestError::from).collect(),
                )
            }
            Err(e) => (
                BTreeMap::new(),
                vec![ManifestError::FileUnreadable(e.to_string())],
            ),
        };
        let mut objects: BTreeMap<ObjectKey, Arc<Object>> =
            objects.into_iter().map(|(k, o)| (k, Arc::new(o))).collect();
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
                text_hash,
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
    /// The difference is found before the index is locked, so lookups wait only for the
    /// objects that changed.
    fn apply(&mut self) -> usize {
        let desired = self.desired();
        let removed: Vec<&ObjectKey> = self
            .applied
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .collect();
        let mut changed: Vec<(&ObjectKey, &Arc<Object>)> = desired
            .iter()
            .filter(|(key, obj)| {
                self.applied
                    .get(*key)
                    .is_none_or(|old| !Arc::ptr_eq(old, obj) && old != *obj)
            })
            .collect();
        // Pods and nodes first so that slices find them.
        changed.sort_by_key(|(k, _)| k.kind.apply_order());
        let count = removed.len() + changed.len();
        if count > 0 {
            let mut index = self.cluster.index.lock();
            for key in removed {
                delete(&mut index, key);
            }
            for (_, obj) in changed {
                apply(&mut index, obj);
            }
        }
        self.applied = desired;
        self.cluster.status.set_synced();
        count
    }

    /// Every file's objects and the slices derived from them.
    fn desired(&self) -> BTreeMap<ObjectKey, Arc<Object>> {
        let mut desired: BTreeMap<ObjectKey, Arc<Object>> = BTreeMap::new();
        for file in self.files.values() {
            for (k, o) in &file.objects {
                desired.insert(k.clone(), Arc::clone(o));
            }
        }
        for slice in slices::derive_endpoint_slices(&desired) {
            desired.insert(ObjectKey::of(&slice), Arc::new(slice));
        }
        desired
    }

    fn same_dir_error(&self, error: &ManifestError) -> bool {
        self.dir_error
            .as_ref()
            .is_some_and(|e| e.to_string() == error.to_string())
    }

    /// Sets `meshlink_manifest_invalid` (1 for each file and reason) and the cluster's
    /// staleness; returns every error as `file: message`.
    fn publish_errors(&mut self) -> Vec<String> {
        let cluster = self.cluster.name.to_string();
        let mut now = BTreeSet::new();
        let mut messages = Vec::new();
        let mut count = |file: &Path, error: &ManifestError| {
            let labels = ManifestErrorLabels {
                cluster: cluster.clone(),
                file: file.display().to_string(),
                reason: error.metric_label(),
            };
            now.insert(labels);
        };
        if let Some(e) = &self.dir_error {
            count(&self.dir, e);
            messages.push(e.to_string());
        }
        for (path, file) in &self.files {
            for e in &file.errors {
                count(path, e);
                messages.push(format!("{}: {e}", path.display()));
            }
        }
        for gone in self.reported.difference(&now) {
            self.metrics.manifest_invalid.remove(gone);
        }
        for labels in &now {
            self.metrics.manifest_invalid.get_or_create(labels).set(1);
        }
        self.reported = now;
        match messages.first() {
            Some(first) => self.cluster.status.set_stale(first.clone()),
            None => self.cluster.status.set_healthy(),
        }
        messages
    }
}

/// A hash of a file's text, to tell a touched file from a changed one.
fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
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
        Object::ServiceProfile(o) => match crate::sources::profile::parse_profile(o) {
            Ok(profile) => index.apply_profile(profile),
            // Checked when the file was read; kept out of the index all the same.
            Err(error) => warn!(%error, "skipping an invalid ServiceProfile"),
        },
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
        Kind::ServiceProfile => index.delete_profile(ns, name),
        Kind::Namespace => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{index::IndexConfig, model::PortSet};

    const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
status: {podIP: 10.1.0.1}
";

    fn cluster() -> ClusterHandle {
        ClusterHandle::new(ClusterIndex::shared(IndexConfig {
            cluster_name: Arc::from("local"),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "linkerd".into(),
            default_opaque_ports: Arc::new(PortSet::default()),
        }))
    }

    #[test]
    fn a_pass_with_no_file_changed_leaves_the_index_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, WEB).expect("write");
        let cluster = cluster();
        let mut source = ManifestSource::new(dir.path().into(), cluster.clone(), Arc::default());
        assert_eq!(source.sync().changed, 3, "service, pod, derived slice");

        // With the index locked, as a lookup holds it, passes that find nothing changed
        // (the file untouched, then rewritten with the same text) still complete.
        let guard = cluster.index.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let pass = std::thread::spawn(move || {
            let _ = tx.send(source.sync().changed);
            std::fs::write(&file, WEB).expect("rewrite");
            let _ = tx.send(source.sync().changed);
        });
        let timeout = Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(timeout), Ok(0));
        assert_eq!(rx.recv_timeout(timeout), Ok(0));
        drop(guard);
        pass.join().expect("pass");
    }

    #[test]
    fn error_reasons_are_bounded_label_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 7}\n---\nkind: [secret-ish text\n";
        std::fs::write(dir.path().join("bad.yaml"), bad).expect("write");
        let mut source = ManifestSource::new(dir.path().into(), cluster(), Arc::default());
        let report = source.sync();
        assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
        assert!(
            report.errors[1].contains("document 2: invalid YAML"),
            "{:?}",
            report.errors
        );
        let reasons: Vec<&str> = source.reported.iter().map(|l| l.reason).collect();
        assert_eq!(reasons, ["invalid_object", "invalid_yaml"]);
    }
}
