//! Accepting TCP connections for the gRPC and admin servers: a limit on open connections,
//! back-off on accept errors (such as running out of file descriptors), and the process's
//! file-descriptor limit.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, info, warn};

use crate::metrics::{ListenerLabels, Metrics};

/// The most gRPC connections served at once. Each proxy holds one or a few; the
/// benchmark's 250 connections are far below it. Connections beyond it wait in the
/// kernel's accept queue until one closes.
pub const GRPC_MAX_CONNECTIONS: usize = 10_000;

/// The first pause after a failed accept; it doubles on each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause between accepts while they keep failing.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket that serves at most a fixed number of connections at once and
/// pauses, rather than spins, while accepting fails.
pub struct Listener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    name: &'static str,
    nodelay: bool,
    open: Gauge,
    errors: Counter,
}

impl Listener {
    /// Wraps `listener`, named `name` in logs and metrics, serving at most `max` connections.
    pub fn new(listener: TcpListener, name: &'static str, max: usize, metrics: &Metrics) -> Self {
        let labels = ListenerLabels { listener: name };
        metrics
            .connections_max
            .get_or_create(&labels)
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            name,
            nodelay: false,
            open: metrics.connections_open.get_or_create(&labels).clone(),
            errors: metrics.accept_errors.get_or_create(&labels).clone(),
        }
    }

    /// Sets TCP_NODELAY on every accepted connection.
    pub fn with_nodelay(mut self) -> Self {
        self.nodelay = true;
        self
    }

    /// Waits for a free slot, then for a connection: while all slots are taken, new
    /// connections wait in the kernel's accept queue.
    pub async fn accept(&self) -> Connection {
        let permit = self.slot().await;
        let stream = self.accept_stream().await;
        self.connection(stream, permit)
    }

    /// Takes a connection at once; while all slots are taken, runs `make_room` (which
    /// should close an idle connection, waiting until there is one) unless a slot frees
    /// first, then waits for the slot.
    pub async fn accept_then_make_room(&self, make_room: impl Future<Output = ()>) -> Connection {
        let stream = self.accept_stream().await;
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                permit = self.slot() => permit,
                () = make_room => self.slot().await,
            },
        };
        self.connection(stream, permit)
    }

    /// The connections with their peers' addresses, as a stream.
    pub fn into_connections(self) -> impl Stream<Item = (Connection, SocketAddr)> + Send {
        futures::stream::unfold(self, |listener| async move {
            let connection = listener.accept().await;
            let peer = connection.peer;
            Some(((connection, peer), listener))
        })
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring only fails if that changes.
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => std::future::pending().await,
        }
    }

    async fn accept_stream(&self) -> (TcpStream, SocketAddr) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u64;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if failures > 0 {
                        info!(
                            listener = self.name,
                            failures, "accepting connections again"
                        );
                    }
                    return (stream, peer);
                }
                // The peer gave up before we took its connection: nothing is wrong here.
                Err(e) if is_connection_error(&e) => {
                    debug!(listener = self.name, error = %e, "connection closed before accept")
                }
                Err(e) => {
                    // EMFILE/ENFILE leave the connection in the queue and the socket readable:
                    // retrying at once would spin a core until a descriptor frees up.
                    self.errors.inc();
                    if failures == 0 {
                        warn!(listener = self.name, error = %e, "cannot accept connections; retrying with back-off");
                    }
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn connection(
        &self,
        (stream, peer): (TcpStream, SocketAddr),
        permit: OwnedSemaphorePermit,
    ) -> Connection {
        if self.nodelay
            && let Err(e) = stream.set_nodelay(true)
        {
            debug!(listener = self.name, error = %e, "cannot set TCP_NODELAY");
        }
        self.open.inc();
        Connection {
            stream,
            peer,
            _slot: Slot {
                _permit: permit,
                open: self.open.clone(),
            },
        }
    }
}

/// Errors about one connection that do not say anything about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection; it holds its listener's slot until dropped.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
}

/// A taken connection slot, counted in `meshlink_connections_open`.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Raises the soft limit on open files to the hard limit, so connections and watches are
/// not refused while the kernel would allow more; logs both.
pub fn raise_fd_limit() {
    use rlimit::Resource;
    match Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match Resource::NOFILE.set(hard, hard) {
            Ok(()) => info!(
                from = soft,
                to = hard,
                hard,
                "raised the soft limit on open files to the hard limit"
            ),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the soft limit on open files"),
        },
        Ok((soft, hard)) => info!(soft, hard, "limit on open files"),
        Err(e) => warn!(error = %e, "cannot read the limit on open files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ListenerLabels;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let metrics = Metrics::new();
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let listener = Listener::new(socket, "test", 2, &metrics);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                if tx.send(listener.accept().await).is_err() {
                    return;
                }
            }
        });
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let first = tokio::time::timeout(WAIT, rx.recv()).await.expect("first");
        let _second = tokio::time::timeout(WAIT, rx.recv()).await.expect("second");
        let open = metrics
            .connections_open
            .get_or_create(&ListenerLabels { listener: "test" })
            .get();
        assert_eq!(open, 2);
        // The third stays in the accept queue while both slots are taken.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err()
        );
        drop(first);
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the third is accepted once a slot frees");
    }
}
