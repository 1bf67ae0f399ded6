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

use super::pulled::PulledStream;

/// The response streams open on one connection.
#[derive(Default)]
pub struct ConnectionStreams {
    counts: Mutex<Counts>,
    all_stalled: Notify,
    /// The pulled streams, for the sweep; dropped streams are purged as it runs.
    pulled: Mutex<Vec<Weak<PulledStream>>>,
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

    /// Registers a pulled stream for [`Self::sweep`].
    pub fn register(&self, stream: &Arc<PulledStream>) {
        self.pulled.lock().push(Arc::downgrade(stream));
    }

    /// Ends every pulled stream that had something to send for `timeout` or longer
    /// without its client making room for it.
    pub fn sweep(&self, timeout: Duration) {
        let stalled: Vec<Arc<PulledStream>> = {
            let mut pulled = self.pulled.lock();
            pulled.retain(|s| s.strong_count() > 0);
            pulled
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|s| s.stalled_for(timeout))
                .collect()
        };
        for stream in stalled {
            stream.end_stalled();
        }
    }

    fn is_all_stalled(&self) -> bool {
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

    #[tokio::test]
    async fn the_sweep_ends_only_streams_stalled_for_the_timeout_and_forgets_dropped_ones() {
        use bytes::Bytes;
        use http_body_util::BodyExt;
        use prometheus_client::metrics::counter::Counter;

        let conn = Arc::new(ConnectionStreams::default());
        let timeouts = Counter::default();
        let open = |conn: &Arc<ConnectionStreams>| {
            let (stream, body) = super::super::pulled::stream(
                |outbox| {
                    Box::pin(async move {
                        outbox.put(Bytes::from_static(b"first")).await;
                        std::future::pending::<tonic::Status>().await
                    })
                },
                Some(conn.open()),
                timeouts.clone(),
            );
            conn.register(&stream);
            (stream, Box::pin(body))
        };
        let (_reading, mut reading_body) = open(&conn);
        let (_stalled, _stalled_body) = open(&conn);
        let (gone, gone_body) = open(&conn);
        drop((gone, gone_body));
        // The reading client takes its first message; the stalled one never does.
        reading_body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        conn.sweep(Duration::from_millis(50));
        assert_eq!(timeouts.get(), 1, "only the stream never read is ended");
        assert_eq!(
            conn.pulled.lock().len(),
            2,
            "the dropped stream is forgotten"
        );
        assert!(!conn.is_all_stalled(), "one stream still reads");
        conn.sweep(Duration::from_millis(50));
        assert_eq!(timeouts.get(), 1, "an ended stream is not counted again");
    }
}
