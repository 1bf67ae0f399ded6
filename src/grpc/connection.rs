//! The response streams of one client connection, and which of them stalled.
//!
//! HTTP/2 cannot end a stream whose client grants it no flow-control window: the
//! library holds the stream's last message until window arrives, so neither trailers nor
//! RST_STREAM go out. A stalled stream still has its queued messages (or its producer,
//! see [`super::pulled`]) freed at the send timeout; a connection whose every response
//! stream stalled is closed outright, which is what a client that stopped reading its
//! socket gets.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The response streams open on one connection.
#[derive(Default)]
pub struct ConnectionStreams {
    counts: Mutex<Counts>,
    all_stalled: Notify,
    /// The streams the sweep looks at; dropped streams are purged as it runs.
    sweepable: Mutex<Vec<Weak<dyn Stallable>>>,
}

/// A response stream the connection's sweep can find stalled and end (see
/// [`super::pulled`]).
pub trait Stallable: Send + Sync {
    /// Whether the stream has had something to send for `timeout` or longer without its
    /// client making room for it.
    fn stalled_for(&self, timeout: Duration) -> bool;
    /// Ends the stream as stalled.
    fn end_stalled(&self);
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    stalled: usize,
}

impl ConnectionStreams {
    /// Counts a new response stream until its slot is dropped.
    pub fn open(self: &Arc<Self>) -> StreamSlot {
        self.counts.lock().open += 1;
        StreamSlot {
            conn: Arc::clone(self),
            stalled: false,
        }
    }

    /// Resolves once every open response stream of the connection has stalled.
    pub async fn all_stalled(&self) {
        loop {
            self.all_stalled.notified().await;
            if self.is_all_stalled() {
                return;
            }
        }
    }

    /// Registers a stream for [`Self::sweep`].
    pub fn register(&self, stream: &Arc<impl Stallable + 'static>) {
        let stream: Arc<dyn Stallable> = Arc::clone(stream) as Arc<dyn Stallable>;
        self.sweepable.lock().push(Arc::downgrade(&stream));
    }

    /// Ends every registered stream that had something to send for `timeout` or longer
    /// without its client making room for it.
    pub fn sweep(&self, timeout: Duration) {
        let live: Vec<Arc<dyn Stallable>> = {
            let mut sweepable = self.sweepable.lock();
            sweepable.retain(|s| s.strong_count() > 0);
            sweepable.iter().filter_map(Weak::upgrade).collect()
        };
        // Outside the registry's lock: a stream's own lock may be held while it encodes.
        for stream in live.iter().filter(|s| s.stalled_for(timeout)) {
            stream.end_stalled();
        }
    }

    /// How many streams are registered for the sweep (dropped ones until it purges them).
    pub fn registered(&self) -> usize {
        self.sweepable.lock().len()
    }

    pub(super) fn is_all_stalled(&self) -> bool {
        let counts = self.counts.lock();
        counts.stalled > 0 && counts.stalled == counts.open
    }
}

/// One response stream's place on its connection.
pub struct StreamSlot {
    conn: Arc<ConnectionStreams>,
    stalled: bool,
}

impl StreamSlot {
    /// Marks the stream stalled: its client did not read within the send timeout.
    pub fn mark_stalled(&mut self) {
        if self.stalled {
            return;
        }
        self.stalled = true;
        let all = {
            let mut counts = self.conn.counts.lock();
            counts.stalled += 1;
            counts.stalled == counts.open
        };
        if all {
            self.conn.all_stalled.notify_one();
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let all = {
            let mut counts = self.conn.counts.lock();
            counts.open -= 1;
            if self.stalled {
                counts.stalled -= 1;
            }
            counts.stalled > 0 && counts.stalled == counts.open
        };
        if all {
            self.conn.all_stalled.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_all_stalled_only_when_every_open_stream_is() {
        let conn = Arc::new(ConnectionStreams::default());
        let mut a = conn.open();
        let b = conn.open();
        a.mark_stalled();
        assert!(!conn.is_all_stalled(), "b still reads");
        drop(b);
        assert!(conn.is_all_stalled());
        tokio::time::timeout(std::time::Duration::from_secs(1), conn.all_stalled())
            .await
            .expect("the last healthy stream leaving wakes the connection");
        drop(a);
        assert!(!conn.is_all_stalled(), "no stream at all is not stalled");
    }
}
