//! Response bodies whose messages are made when HTTP/2 pulls the next one.
//!
//! A `Get` stream was a task of its own that made each message and queued it for the
//! response body, which hyper's per-stream task then took: two task wake-ups and a queue
//! per stream update, and a task and a channel per open stream. Here the stream's future
//! (the *producer*) runs inside the body: hyper polls the body when it holds no message of
//! the stream's, the producer makes the next one from the newest set, and nothing waits in
//! a queue in between. hyper polls again as soon as it has handed a message to HTTP/2,
//! which takes it only as the client's flow-control window allows.
//!
//! So a client that stops reading leaves its last message in hyper's hands, its body is not
//! polled again, and the producer stops with it: the stream then holds that one message and
//! the newest set, never a backlog. Every message handed over starts the stream's wait;
//! the next poll (hyper back for more) ends it. Its connection's sweep
//! ([`super::connection`]) ends a stream that waited for the send timeout: the producer and
//! the lookups it holds are dropped, the stream is counted in
//! `meshlink_grpc_stream_send_timeouts_total` and marked stalled on its connection, and its
//! trailers say so if the client ever reads again. While it waits, the producer is not
//! polled, so the client's deadline and shutdown reach such a stream only through the sweep.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tonic::Status;
use tracing::debug;

use super::{
    calls,
    connection::{Stallable, StreamSlot},
    framing,
};

/// What a producer is: the stream's messages put in its [`Outbox`], then the status the
/// stream ends with.
pub type Producer = Pin<Box<dyn Future<Output = Status> + Send>>;

/// Where a producer puts its next message for the body to send.
pub struct Outbox {
    next: Arc<Mutex<Option<Bytes>>>,
}

impl Outbox {
    /// Hands `msg` to the body; waits while the message before it has not been taken.
    ///
    /// So the producer goes on to wait for the next change as soon as a message is out,
    /// and it is never more than one message ahead of the body.
    pub fn put(&self, msg: Bytes) -> impl Future<Output = ()> + Send + '_ {
        let mut msg = Some(msg);
        std::future::poll_fn(move |_| {
            let mut next = self.next.lock();
            if next.is_some() {
                // The body takes the message after this poll of the producer, and the next
                // poll of the body polls the producer again: no waker is needed.
                return Poll::Pending;
            }
            *next = msg.take();
            Poll::Ready(())
        })
    }
}

/// A stream's state, shared by its body and its connection's sweep.
pub struct PulledStream {
    inner: Mutex<Inner>,
    /// The producer's next message, shared with its [`Outbox`].
    next: Arc<Mutex<Option<Bytes>>>,
    wake: Arc<WakeBody>,
    /// `wake` as a waker, made once.
    waker: Waker,
    timeouts: Counter,
}

struct Inner {
    /// `None` once the stream ended: by itself, or stalled.
    producer: Option<Producer>,
    /// The status to end with when the sweep ended the stream.
    end: Option<Status>,
    /// This stream's place among its connection's streams.
    slot: Option<StreamSlot>,
}

/// The producer's waker: notes when the stream was first given something to send since the
/// body last ran, and wakes hyper's task for the body.
struct WakeBody {
    /// Milliseconds since [`epoch`] plus one when the stream started waiting; 0 while
    /// it is not waiting.
    waiting_since: AtomicU64,
    body: AtomicWaker,
}

/// The time [`WakeBody::waiting_since`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_mark() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl WakeBody {
    fn start_waiting(&self) {
        if self.waiting_since.load(Ordering::Relaxed) == 0 {
            let _ = self.waiting_since.compare_exchange(
                0,
                now_mark(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl Wake for WakeBody {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.start_waiting();
        self.body.wake();
    }
}

/// A pulled stream's response body: the producer's messages, then `grpc-status` trailers.
pub struct PulledBody {
    stream: Arc<PulledStream>,
    finished: bool,
}

/// A stream that `producer` (given the outbox) feeds, counted on its connection by `slot`
/// and registered there for the sweep; stalls are counted in `timeouts`.
pub fn stream(
    producer: impl FnOnce(Outbox) -> Producer,
    slot: Option<StreamSlot>,
    timeouts: Counter,
) -> (Arc<PulledStream>, PulledBody) {
    let next = Arc::new(Mutex::new(None));
    let wake = Arc::new(WakeBody {
        waiting_since: AtomicU64::new(0),
        body: AtomicWaker::new(),
    });
    // Until hyper first asks for a message, the stream waits too.
    wake.start_waiting();
    let stream = Arc::new(PulledStream {
        inner: Mutex::new(Inner {
            producer: Some(producer(Outbox {
                next: Arc::clone(&next),
            })),
            end: None,
            slot,
        }),
        next,
        waker: Waker::from(Arc::clone(&wake)),
        wake,
        timeouts,
    });
    let body = PulledBody {
        stream: Arc::clone(&stream),
        finished: false,
    };
    (stream, body)
}

impl PulledStream {
    /// Runs the producer until it puts a message or ends: the message, or the status the
    /// stream ends with (once the producer's last message went out).
    fn poll_next_message(&self) -> Poll<Result<Bytes, Status>> {
        let mut inner = self.inner.lock();
        if let Some(producer) = inner.producer.as_mut() {
            let mut producer_cx = Context::from_waker(&self.waker);
            if let Poll::Ready(status) = producer.as_mut().poll(&mut producer_cx) {
                inner.producer = None;
                inner.end = Some(status);
            }
            // A message the producer put before it ended goes out ahead of the status.
            if let Some(msg) = self.next.lock().take() {
                return Poll::Ready(Ok(msg));
            }
            if inner.producer.is_some() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Err(inner.end.take().unwrap_or_else(|| Status::ok(""))))
    }
}

impl Stallable for PulledStream {
    /// Whether the stream has had something to send for `timeout` or longer without its
    /// body being polled, while it still runs.
    fn stalled_for(&self, timeout: Duration) -> bool {
        let since = self.wake.waiting_since.load(Ordering::Relaxed);
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        since != 0
            && now_mark().saturating_sub(since) >= timeout
            && self.inner.lock().producer.is_some()
    }

    /// Ends a stream whose client stopped reading: its producer (and every lookup it
    /// holds) is dropped now, the stream is marked stalled on its connection and counted,
    /// and its trailers say why if the client ever reads them.
    fn end_stalled(&self) {
        let producer = {
            let mut inner = self.inner.lock();
            let Some(producer) = inner.producer.take() else {
                return;
            };
            inner.end = Some(calls::stalled());
            if let Some(slot) = inner.slot.as_mut() {
                slot.mark_stalled();
            }
            producer
        };
        drop(producer);
        self.timeouts.inc();
        debug!("client stopped reading; ended the stream");
        self.wake.body.wake();
    }
}

impl PulledBody {
    /// The response carrying this body.
    pub fn into_response(self) -> http::Response<tonic::body::Body> {
        framing::response(self)
    }
}

impl http_body::Body for PulledBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let stream = &*self.stream;
        stream.wake.body.register(cx.waker());
        // hyper is back for more: whatever it was handed went out.
        stream.wake.waiting_since.store(0, Ordering::Relaxed);
        match ready!(stream.poll_next_message()) {
            Ok(msg) => {
                // The stream waits from now until hyper, having handed it to HTTP/2 (as
                // the client's window allows), asks for the next.
                stream.wake.start_waiting();
                Poll::Ready(Some(Ok(http_body::Frame::data(msg))))
            }
            Err(status) => {
                self.finished = true;
                Poll::Ready(framing::status_trailers(status))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::connection::ConnectionStreams;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn messages_are_made_as_the_body_is_polled_then_the_status_ends_it() {
        let (made_tx, mut made) = tokio::sync::mpsc::unbounded_channel();
        let (stream, body) = super::stream(
            move |outbox| {
                Box::pin(async move {
                    for m in [&b"one"[..], b"two"] {
                        made_tx.send(m).ok();
                        outbox.put(Bytes::from_static(m)).await;
                    }
                    Status::not_found("gone")
                })
            },
            None,
            Counter::default(),
        );
        tokio::pin!(body);
        assert!(
            made.try_recv().is_err(),
            "nothing is made before the body is polled"
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from_static(b"one"));
        assert_eq!(made.try_recv().ok(), Some(&b"one"[..]));
        assert_eq!(
            made.try_recv().ok(),
            Some(&b"two"[..]),
            "the producer runs one message ahead, and waits there"
        );
        assert!(
            stream.stalled_for(Duration::ZERO),
            "a message handed over waits until hyper asks for the next"
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "5");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"two"));
    }

    #[tokio::test]
    async fn a_stream_left_unpolled_with_something_to_send_is_stalled_and_ended() {
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let timeouts = Counter::default();
        let (stream, body) = super::stream(
            move |outbox| {
                Box::pin(async move {
                    let _guard = dropped_tx;
                    outbox.put(Bytes::from_static(b"first")).await;
                    std::future::pending::<Status>().await
                })
            },
            None,
            timeouts.clone(),
        );
        assert!(!stream.stalled_for(Duration::from_millis(50)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            stream.stalled_for(Duration::from_millis(50)),
            "a first message never asked for is a stall"
        );
        stream.end_stalled();
        assert!(dropped.await.is_err(), "the producer is dropped at once");
        assert_eq!(timeouts.get(), 1);
        assert!(
            !stream.stalled_for(Duration::ZERO),
            "ended streams are not swept again"
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "4");
        assert!(collected.to_bytes().is_empty(), "nothing more is made");
    }

    #[tokio::test]
    async fn a_stream_whose_messages_all_went_out_is_not_waiting() {
        let (stream, body) = super::stream(
            |outbox| {
                Box::pin(async move {
                    outbox.put(Bytes::from_static(b"only")).await;
                    std::future::pending::<Status>().await
                })
            },
            None,
            Counter::default(),
        );
        tokio::pin!(body);
        let msg = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(msg, Bytes::from_static(b"only"));
        // hyper asks for the next message once it has handed this one over: there is none.
        let next = tokio::time::timeout(Duration::from_millis(10), body.frame()).await;
        assert!(next.is_err(), "nothing more to send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !stream.stalled_for(Duration::from_millis(10)),
            "a client with nothing left to take is not stalled, however long it waits"
        );
    }

    #[tokio::test]
    async fn the_sweep_ends_only_streams_stalled_for_the_timeout_and_forgets_dropped_ones() {
        use bytes::Bytes;
        use http_body_util::BodyExt;
        use prometheus_client::metrics::counter::Counter;

        let conn = Arc::new(ConnectionStreams::default());
        let timeouts = Counter::default();
        let open = |conn: &Arc<ConnectionStreams>| {
            let (stream, body) = super::stream(
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
        // ... and asks for the next, as hyper does once the message is handed over.
        let next = tokio::time::timeout(Duration::from_millis(10), reading_body.frame()).await;
        assert!(next.is_err(), "nothing more to send");
        tokio::time::sleep(Duration::from_millis(60)).await;
        conn.sweep(Duration::from_millis(50));
        assert_eq!(timeouts.get(), 1, "only the stream never read is ended");
        assert_eq!(conn.registered(), 2, "the dropped stream is forgotten");
        assert!(!conn.is_all_stalled(), "one stream still reads");
        conn.sweep(Duration::from_millis(50));
        assert_eq!(timeouts.get(), 1, "an ended stream is not counted again");
    }
}
