//! Sharing of repeated strings and label sets between the objects of one index.
//!
//! Namespaces, node names, zones, service accounts, identities and per-owner label sets
//! repeat across thousands of pods; storing each once keeps memory proportional to the
//! number of endpoints rather than to their attributes. The vocabulary only grows with
//! distinct values, which a cluster has few of.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

/// One copy of each string and label set.
#[derive(Default)]
pub(super) struct Interner {
    strings: HashSet<Arc<str>>,
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// The shared copy of a label set.
    pub fn labels(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some(found) = self.label_sets.get(&labels) {
            return Arc::clone(found);
        }
        let shared = Arc::new(labels);
        self.label_sets.insert(Arc::clone(&shared));
        shared
    }
}
