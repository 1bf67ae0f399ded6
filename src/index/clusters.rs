//! The set of clusters the resolver can read: the local one and the linked ones.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::watch;

use super::SharedIndex;

/// The health of a cluster's source, as its source reports it.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// Turns true once the initial load is done; tasks that wait for it subscribe.
    synced_tx: watch::Sender<bool>,
    stale: AtomicBool,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl ClusterStatus {
    /// The source has loaded the cluster's objects at least once.
    pub fn set_synced(&self) {
        self.synced_tx
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// Follows whether the initial load is done (the index stays synchronous: waiting is
    /// the caller's).
    pub fn synced_rx(&self) -> watch::Receiver<bool> {
        self.synced_tx.subscribe()
    }

    /// Whether the initial load is done.
    pub fn is_synced(&self) -> bool {
        *self.synced_tx.borrow()
    }

    /// The source failed: the last known objects are kept but may be out of date.
    pub fn set_stale(&self, error: String) {
        self.stale.store(true, Ordering::Release);
        *self.last_error.lock() = Some(error);
    }

    /// The source is reading the cluster again.
    pub fn set_healthy(&self) {
        self.stale.store(false, Ordering::Release);
        *self.last_error.lock() = None;
    }

    /// Whether the cluster's objects may be out of date.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// The error that made the cluster stale.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

/// One cluster: its name, its index and its health.
#[derive(Clone)]
pub struct ClusterHandle {
    /// The cluster's name (the index's `cluster_name`).
    pub name: Arc<str>,
    /// Its index, written by its source.
    pub index: SharedIndex,
    /// Its source's health.
    pub status: Arc<ClusterStatus>,
}

impl ClusterHandle {
    /// Wraps an index as a cluster.
    pub fn new(index: SharedIndex) -> Self {
        let name = Arc::clone(&index.lock().config().cluster_name);
        Self {
            name,
            index,
            status: Arc::default(),
        }
    }
}

/// The local cluster and the linked clusters currently available.
pub struct ClusterSet {
    local: ClusterHandle,
    linked: watch::Sender<Arc<BTreeMap<String, ClusterHandle>>>,
}

impl ClusterSet {
    /// A set with only the local cluster.
    pub fn new(local: ClusterHandle) -> Self {
        Self {
            local,
            linked: watch::channel(Arc::default()).0,
        }
    }

    /// The local cluster.
    pub fn local(&self) -> &ClusterHandle {
        &self.local
    }

    /// The linked clusters, kept current.
    pub fn linked_rx(&self) -> watch::Receiver<Arc<BTreeMap<String, ClusterHandle>>> {
        self.linked.subscribe()
    }

    /// The linked clusters now.
    pub fn linked(&self) -> Arc<BTreeMap<String, ClusterHandle>> {
        Arc::clone(&self.linked.borrow())
    }

    /// Adds or replaces a linked cluster.
    pub fn insert(&self, cluster: ClusterHandle) {
        self.linked.send_modify(|map| {
            let mut next = (**map).clone();
            next.insert(cluster.name.to_string(), cluster);
            *map = Arc::new(next);
        });
    }

    /// Removes a linked cluster; its endpoints leave every stream.
    pub fn remove(&self, name: &str) {
        self.linked.send_if_modified(|map| {
            if !map.contains_key(name) {
                return false;
            }
            let mut next = (**map).clone();
            next.remove(name);
            *map = Arc::new(next);
            true
        });
    }
}
