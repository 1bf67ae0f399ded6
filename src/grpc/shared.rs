//! Encoded deltas shared between streams.
//!
//! When a snapshot changes, every stream that held the previous version unfiltered sends
//! the same delta; callers in the same zone see the same labels too. The messages are
//! encoded once per (delta, zone, set labels) and every such stream sends the same bytes.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::{Arc, Weak},
};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::model::EndpointDiff;

/// What a message is, for the update counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    Add,
    Remove,
    NoEndpoints,
}

/// Framed messages written together (one send, one HTTP/2 DATA frame), with the kind of
/// each for the update counters.
#[derive(Debug)]
pub struct EncodedUpdates {
    /// The kind of each message, in order.
    pub kinds: Vec<UpdateKind>,
    /// The framed messages, back to back.
    pub bytes: Bytes,
}

impl EncodedUpdates {
    /// Joins framed messages, in order, into one buffer.
    pub fn join(frames: Vec<(UpdateKind, Bytes)>) -> Self {
        let kinds = frames.iter().map(|(k, _)| *k).collect();
        let bytes = match frames.len() {
            1 => frames
                .into_iter()
                .next()
                .map(|(_, b)| b)
                .unwrap_or_default(),
            _ => {
                let mut joined =
                    bytes::BytesMut::with_capacity(frames.iter().map(|(_, b)| b.len()).sum());
                for (_, b) in &frames {
                    joined.extend_from_slice(b);
                }
                joined.freeze()
            }
        };
        Self { kinds, bytes }
    }
}

/// The messages of one delta: a remove, then an add, as present.
pub type EncodedDelta = Arc<EncodedUpdates>;

struct Entry {
    delta: Weak<EndpointDiff>,
    /// Compared by content: each stream has its own copy of its set's labels.
    labels: Arc<BTreeMap<String, String>>,
    zone: Option<Arc<str>>,
    frames: EncodedDelta,
}

const SHARDS: usize = 16;

/// A cache of encoded deltas, dropped with the deltas themselves.
pub struct SharedDeltas {
    shards: [Mutex<Vec<Entry>>; SHARDS],
}

impl Default for SharedDeltas {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }
}

impl SharedDeltas {
    /// The encoded messages of `delta` for callers in `zone` with set labels `labels`,
    /// encoding them with `encode` the first time.
    pub fn get_or_encode(
        &self,
        delta: &Arc<EndpointDiff>,
        labels: &Arc<BTreeMap<String, String>>,
        zone: Option<&Arc<str>>,
        encode: impl FnOnce() -> Vec<(UpdateKind, Bytes)>,
    ) -> EncodedDelta {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        Arc::as_ptr(delta).hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        let matches = |e: &Entry| {
            e.delta.as_ptr() == Arc::as_ptr(delta)
                && (Arc::ptr_eq(&e.labels, labels) || e.labels == *labels)
                && e.zone.as_deref() == zone.map(|z| &**z)
        };
        if let Some(e) = shard
            .lock()
            .iter()
            .find(|e| matches(e) && e.delta.strong_count() > 0)
        {
            return Arc::clone(&e.frames);
        }
        // Encode outside the lock; a concurrent stream may do the same once, harmlessly.
        let frames: EncodedDelta = Arc::new(EncodedUpdates::join(encode()));
        let mut entries = shard.lock();
        entries.retain(|e| e.delta.strong_count() > 0);
        entries.push(Entry {
            delta: Arc::downgrade(delta),
            labels: Arc::clone(labels),
            zone: zone.cloned(),
            frames: Arc::clone(&frames),
        });
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_once_per_delta_zone_and_labels_and_forgets_dropped_deltas() {
        let cache = SharedDeltas::default();
        let delta = Arc::new(EndpointDiff::default());
        let labels = Arc::new(BTreeMap::new());
        let zone: Arc<str> = Arc::from("zone-a");
        let encodes = std::cell::Cell::new(0);
        let get = |z: Option<&Arc<str>>, d: &Arc<EndpointDiff>| {
            cache.get_or_encode(d, &labels, z, || {
                encodes.set(encodes.get() + 1);
                vec![(UpdateKind::Add, Bytes::from_static(b"x"))]
            })
        };
        get(Some(&zone), &delta);
        get(Some(&zone), &delta);
        assert_eq!(encodes.get(), 1);
        get(None, &delta);
        assert_eq!(encodes.get(), 2);
        let other = Arc::new(EndpointDiff::default());
        get(None, &other);
        assert_eq!(encodes.get(), 3);
        drop(delta);
        let total: usize = cache.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(total, 3, "entries are purged lazily, on the next insert");
    }
}
