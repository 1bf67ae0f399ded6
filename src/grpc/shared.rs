//! Encoded messages shared between streams.
//!
//! When a snapshot changes, every stream that held the previous version unfiltered sends
//! the same delta; callers in the same zone see the same labels too. The messages are
//! encoded once per (delta, zone, set labels) and every such stream sends the same bytes.
//! First snapshots are shared the same way while many streams open at once (a restart of
//! many proxies, a scale-up), for a short time only, so that an idle set does not keep its
//! encoding for as long as it lives.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::model::{EndpointAddrs, EndpointDiff};

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

struct Entry<T> {
    source: Weak<T>,
    /// Compared by content: each stream has its own copy of its set's labels.
    labels: Arc<BTreeMap<String, String>>,
    zone: Option<Arc<str>>,
    made: Instant,
    frames: EncodedDelta,
}

impl<T> Entry<T> {
    fn live(&self, max_age: Option<Duration>) -> bool {
        self.source.strong_count() > 0 && max_age.is_none_or(|age| self.made.elapsed() < age)
    }
}

const SHARDS: usize = 16;

/// How long a first snapshot's encoding is kept for other streams opening on the same set.
pub const SNAPSHOT_SHARE_TIME: Duration = Duration::from_secs(2);

/// A cache of messages encoded from a `T` (a delta, a set of endpoints), dropped with the
/// `T` itself or, when given a maximum age, once older than that.
pub struct SharedEncodings<T> {
    shards: [Mutex<Vec<Entry<T>>>; SHARDS],
    max_age: Option<Duration>,
}

/// Encoded deltas, kept as long as their delta lives.
pub type SharedDeltas = SharedEncodings<EndpointDiff>;
/// Encoded first snapshots, kept [`SNAPSHOT_SHARE_TIME`] at most.
pub type SharedSnapshots = SharedEncodings<EndpointAddrs>;

impl Default for SharedDeltas {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Default for SharedSnapshots {
    fn default() -> Self {
        Self::new(Some(SNAPSHOT_SHARE_TIME))
    }
}

impl<T> SharedEncodings<T> {
    /// An empty cache whose entries expire after `max_age`, if given.
    pub fn new(max_age: Option<Duration>) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            max_age,
        }
    }

    /// The encoded messages of `source` for callers in `zone` with set labels `labels`,
    /// encoding them with `encode` the first time.
    pub fn get_or_encode(
        &self,
        source: &Arc<T>,
        labels: &Arc<BTreeMap<String, String>>,
        zone: Option<&Arc<str>>,
        encode: impl FnOnce() -> Vec<(UpdateKind, Bytes)>,
    ) -> EncodedDelta {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        Arc::as_ptr(source).hash(&mut hasher);
        let shard = &self.shards[hasher.finish() as usize % SHARDS];
        let matches = |e: &Entry<T>| {
            std::ptr::eq(e.source.as_ptr(), Arc::as_ptr(source))
                && (Arc::ptr_eq(&e.labels, labels) || e.labels == *labels)
                && e.zone.as_deref() == zone.map(|z| &**z)
        };
        if let Some(e) = shard
            .lock()
            .iter()
            .find(|e| matches(e) && e.live(self.max_age))
        {
            return Arc::clone(&e.frames);
        }
        // Encode outside the lock; a concurrent stream may do the same once, harmlessly.
        let frames: EncodedDelta = Arc::new(EncodedUpdates::join(encode()));
        let mut entries = shard.lock();
        entries.retain(|e| e.live(self.max_age));
        entries.push(Entry {
            source: Arc::downgrade(source),
            labels: Arc::clone(labels),
            zone: zone.cloned(),
            made: Instant::now(),
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

    #[test]
    fn an_entry_older_than_its_maximum_age_is_encoded_again() {
        let cache = SharedEncodings::<u32>::new(Some(Duration::from_millis(50)));
        let source = Arc::new(7);
        let labels = Arc::new(BTreeMap::new());
        let encodes = std::cell::Cell::new(0);
        let get = || {
            cache.get_or_encode(&source, &labels, None, || {
                encodes.set(encodes.get() + 1);
                vec![(UpdateKind::Add, Bytes::from_static(b"x"))]
            })
        };
        get();
        get();
        assert_eq!(encodes.get(), 1, "shared while young");
        std::thread::sleep(Duration::from_millis(60));
        get();
        assert_eq!(encodes.get(), 2, "encoded again once too old");
        let total: usize = cache.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(total, 1, "the old entry is purged when the new one goes in");
    }
}
