//! The gRPC server: HTTP/2 connections whose cost a client cannot grow without bound.
//!
//! tonic's own server is not used for the connections so that every limit is ours to set
//! and document: the HTTP/2 preface must arrive within a deadline, each connection has a
//! stream limit and small receive windows (requests are a few hundred bytes), a request
//! that is not gRPC is refused with 415, and a connection whose every response stream
//! stalled is closed (see [`super::connection`]).

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    sync::watch,
};
use tracing::{Instrument, debug, debug_span, info, warn};

use super::{DestinationService, connection::ConnectionStreams};

/// The HTTP/2 client connection preface every gRPC connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose every stream stalled gets this long to take its GOAWAY.
const STALLED_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// The default of `--max-streams-per-connection`.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 10_000;
/// The default of `--max-pending-requests`: above a 20,000-request flood, so others are
/// still served during one.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 30_000;

/// Per-connection limits of the gRPC server.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Concurrent streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// How long a new connection may take to send the HTTP/2 preface.
    pub preface_timeout: Duration,
    /// How long open connections get to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// Per-stream receive window: what a client may send on a stream before we read it.
/// Requests are one small message, so a small window bounds unread request bytes.
const STREAM_WINDOW: u32 = 16 * 1024;
/// Per-connection receive window, shared by the connection's streams.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest header block a client may send (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may open and reset before the server has seen them (rapid reset).
const MAX_PENDING_RESETS: usize = 20;

/// Serves `destination` and the other `routes` on every connection `incoming` yields
/// until `shutdown` turns true, then lets open connections finish within the grace.
pub async fn serve_connections<I, IO>(
    incoming: I,
    destination: DestinationService,
    routes: tonic::service::Routes,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: Stream<Item = (IO, SocketAddr)>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let routes = routes.prepare();
    let mut connections = tokio::task::JoinSet::new();
    let mut incoming = Box::pin(incoming);
    loop {
        let (stream, peer) = tokio::select! {
            next = incoming.next() => match next {
                Some(conn) => conn,
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let connection = Connection {
            builder: Arc::clone(&builder),
            routes: routes.clone(),
            destination: destination.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(
            connection
                .serve(stream)
                .instrument(debug_span!("conn", %peer)),
        );
    }
    // Close the listening socket now: new clients are refused rather than left waiting.
    drop(incoming);
    info!(
        connections = connections.len(),
        "gRPC server stopped accepting; waiting for connections"
    );
    while connections.join_next().await.is_some() {}
}

/// One client connection.
struct Connection {
    builder: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    routes: tonic::service::Routes,
    destination: DestinationService,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn serve<IO>(mut self, mut stream: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if !read_preface(&mut stream, self.limits.preface_timeout).await {
            return;
        }
        let streams = Arc::new(ConnectionStreams::default());
        let service = ConnectionService {
            routes: self.routes.clone(),
            destination: self.destination.clone(),
            streams: Arc::clone(&streams),
        };
        let io = TokioIo::new(Preface::new(stream));
        let conn = self
            .builder
            .serve_connection(io, TowerToHyperService::new(service));
        tokio::pin!(conn);
        let send_timeout = self.destination.send_timeout();
        let mut sweep = tokio::time::interval(sweep_period(send_timeout));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let grace = loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.wait_for(|s| *s) => break self.limits.shutdown_grace,
                _ = streams.all_stalled() => {
                    warn!("every stream on the connection stopped reading; closing the connection");
                    break STALLED_CONNECTION_GRACE;
                }
                _ = sweep.tick() => streams.sweep(send_timeout),
            }
        };
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(grace, conn).await.is_err() {
            debug!("connection did not finish within its grace; closed");
        }
    }
}

/// How often a connection looks for streams whose client stopped reading: a stall is
/// found between one and one and a quarter send timeouts after it began.
fn sweep_period(send_timeout: Duration) -> Duration {
    (send_timeout / 4).max(Duration::from_millis(50))
}

/// Reads the HTTP/2 client preface within `timeout`; false (and logged why) when the
/// client is not speaking HTTP/2 or is too slow to.
async fn read_preface<IO: AsyncRead + Unpin>(stream: &mut IO, timeout: Duration) -> bool {
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout(timeout, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == PREFACE => true,
        Ok(Ok(_)) => {
            debug!("not an HTTP/2 connection; closing it (gRPC needs HTTP/2)");
            false
        }
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed before the HTTP/2 preface");
            false
        }
        Err(_) => {
            debug!(?timeout, "no HTTP/2 preface in time; closing");
            false
        }
    }
}

/// The services of one connection, behind the checks every request gets.
#[derive(Clone)]
struct ConnectionService {
    routes: tonic::service::Routes,
    destination: DestinationService,
    streams: Arc<ConnectionStreams>,
}

/// The path prefix of the destination API's methods.
const DESTINATION_PREFIX: &str = "/io.linkerd.proxy.destination.Destination/";

impl tower_service::Service<http::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if !is_grpc(req.headers()) {
            return Box::pin(async { Ok(unsupported_media_type()) });
        }
        req.extensions_mut().insert(Arc::clone(&self.streams));
        // The destination API directly: its requests are the ones a flood is made of, and
        // the router's own state per request is memory each of them would hold.
        if req.uri().path().starts_with(DESTINATION_PREFIX) {
            let mut destination = self.destination.clone();
            let req = req.map(tonic::body::Body::new);
            return Box::pin(async move { destination.call(req).await });
        }
        let call = tower_service::Service::call(&mut self.routes, req);
        Box::pin(call)
    }
}

/// Whether the request says it is gRPC (`application/grpc` or `application/grpc+...`).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

/// gRPC's answer to a request that is not gRPC: HTTP 415.
fn unsupported_media_type() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

/// A connection whose preface was already read: hands it to HTTP/2 again first, and
/// gathers the small writes of a burst into one system call.
///
/// h2 writes a DATA frame of 1 KiB or less into its own 16 KiB buffer, but only when
/// the connection says it cannot write vectored; a larger payload it writes separately,
/// and with vectored writes it does so for every payload of 256 bytes or more, with a
/// `writev` and a flush each. A change sent to 100 streams of a connection (a delta is
/// a few hundred bytes) was then 100 system calls, the largest share of a stream
/// update's cost. So the connection says it does not write vectored, and writes that
/// h2 makes one after the other (its buffer, then a large payload) are kept here and go
/// out together in one `writev`, at the latest on flush.
///
/// A flush is also put off once, behind the tasks already waiting to run: a change
/// wakes every stream of the connection, and each stream's frame woke the connection
/// task to run right after it, so each flush carried one frame. Put off, the flush
/// carries the frames of all the streams that ran in between.
struct Preface<IO> {
    pending: &'static [u8],
    inner: IO,
    /// Bytes accepted from h2 and not yet written to the socket.
    out: BytesMut,
    /// Whether the flush of the bytes kept now was already put off once.
    flush_put_off: bool,
}

impl<IO> Preface<IO> {
    fn new(inner: IO) -> Self {
        Self {
            pending: PREFACE,
            inner,
            out: BytesMut::new(),
            flush_put_off: false,
        }
    }
}

/// Writes up to this size are kept until the next write or flush; a larger one is
/// written at once, together with what is kept.
const GATHER_LIMIT: usize = 64 * 1024;

impl<IO: AsyncWrite + Unpin> Preface<IO> {
    /// Writes what is kept, and as much of `buf` as the socket takes with it in the same
    /// system call; the count is of `buf`'s bytes. Ready(0) means only kept bytes went.
    fn poll_write_kept(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let kept = self.out.len();
        let slices = [io::IoSlice::new(&self.out), io::IoSlice::new(buf)];
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let from_kept = n.min(kept);
        self.out.advance(from_kept);
        Poll::Ready(Ok(n - from_kept))
    }

    /// Writes everything kept.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            ready!(self.poll_write_kept(cx, &[]))?;
        }
        // Freed once written: an idle connection keeps no buffer of a past burst.
        self.out = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Preface<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending = &self.pending[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Preface<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() <= GATHER_LIMIT {
            this.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            let n = ready!(this.poll_write_kept(cx, buf))?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            if this.out.is_empty() && buf.len() <= GATHER_LIMIT {
                this.out.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() && !this.flush_put_off {
            // Woken now, the task runs again after those already scheduled (tokio puts a
            // task that woke itself at the back of its queue), and h2 flushes again then.
            this.flush_put_off = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.flush_put_off = false;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that records each system call's bytes and takes at most `max` per call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        max: usize,
    }

    impl Recorder {
        fn record(&mut self, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let mut call: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            call.truncate(self.max);
            let n = call.len();
            self.writes.push(call);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.record(&[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.record(bufs)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_go_out_together_in_order_on_flush() {
        use tokio::io::AsyncWriteExt;
        let mut conn = Preface::new(Recorder {
            max: usize::MAX,
            ..Recorder::default()
        });
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 450]).collect();
        for f in &frames {
            conn.write_all(f).await.unwrap();
        }
        assert!(
            conn.inner.writes.is_empty(),
            "nothing is written before a flush"
        );
        conn.flush().await.unwrap();
        assert_eq!(conn.inner.writes.len(), 1, "one system call for the burst");
        assert_eq!(conn.inner.writes[0], frames.concat());
        assert_eq!(conn.out.capacity(), 0, "no buffer is kept once written");
    }

    #[tokio::test]
    async fn a_large_write_goes_with_the_kept_bytes_and_partial_writes_lose_nothing() {
        use tokio::io::AsyncWriteExt;
        let mut conn = Preface::new(Recorder {
            max: 7_000,
            ..Recorder::default()
        });
        let head = vec![1u8; 1_033];
        let payload: Vec<u8> = (0..GATHER_LIMIT + 10).map(|i| i as u8).collect();
        conn.write_all(&head).await.unwrap();
        conn.write_all(&payload).await.unwrap();
        conn.flush().await.unwrap();
        let written: Vec<u8> = conn.inner.writes.concat();
        assert_eq!(written, [head.clone(), payload].concat());
        assert_eq!(
            conn.inner.writes[0].len(),
            7_000,
            "the kept head and the payload share the first call"
        );
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let with = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(v).unwrap(),
            );
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/json"));
        assert!(!with("application/grpcx"));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
