//! The admin HTTP server: `/live`, `/ready`, `/metrics`.
//!
//! It must answer Kubernetes probes even while clients hold connections open without
//! finishing a request (slowloris): each connection has `header_timeout` to send a request's
//! headers (from its start, and again after each response, so idle keep-alive connections
//! close too), and when all `max_connections` are taken a new connection closes the one
//! that has waited longest without a request in progress.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Router, body::Body, extract::State, http::StatusCode, response::IntoResponse, routing::get,
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};
use tower_service::Service;
use tracing::debug;

use super::listener::{Connection, Listener};
use crate::{
    index::ClusterSet,
    metrics::{ListenerLabels, Metrics},
};

/// Limits of the admin server.
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Time a client has to send a request's headers, from the connection's start or the
    /// end of its previous response.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    clusters: Arc<ClusterSet>,
    /// Why the process is failing, once a critical task ended.
    failed: watch::Receiver<Option<String>>,
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    clusters: Arc<ClusterSet>,
    failed: watch::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    metrics.collect_clusters(Arc::clone(&clusters));
    let listener = Listener::new(listener, "admin", limits.max_connections, &metrics);
    let waiting = Arc::new(Waiting::new(
        metrics
            .connections_evicted
            .get_or_create(&ListenerLabels { listener: "admin" })
            .clone(),
    ));
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            metrics,
            clusters,
            failed,
        });
    loop {
        let connection = tokio::select! {
            c = listener.accept_then_make_room(waiting.evict_oldest()) => c,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        // Evictable from now on, even before its task first runs.
        let entry = waiting.add();
        tokio::spawn(serve_connection(
            connection,
            entry,
            app.clone(),
            limits.header_timeout,
            Arc::clone(&waiting),
            shutdown.clone(),
        ));
        // Lets the connections already accepted read their requests before more are taken
        // (and the oldest of them evicted) during a flood of new connections.
        tokio::task::yield_now().await;
    }
}

/// Serves HTTP/1 on one connection until it ends, times out, is evicted or shutdown.
async fn serve_connection(
    connection: Connection,
    entry: Arc<Entry>,
    app: Router,
    header_timeout: Duration,
    waiting: Arc<Waiting>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let service = {
        let waiting = Arc::clone(&waiting);
        let entry = Arc::clone(&entry);
        service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::new(&waiting, &entry);
            let mut app = app.clone();
            async move {
                let response = app.call(request.map(Body::new)).await;
                drop(busy);
                response
            }
        })
    };
    let mut conn = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(connection), service),
    );
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "admin connection ended");
            }
        }
        // Dropping the connection closes it: it had no request in progress.
        _ = entry.evict.notified() => debug!("closed an idle admin connection to make room"),
        _ = shutdown => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
    // Closed first, so a request that was in progress cannot put it back among the waiting.
    drop(conn);
    waiting.remove(&entry);
}

/// Connections without a request in progress, oldest first: the ones to close when a new
/// connection needs a slot.
struct Waiting {
    inner: Mutex<WaitingInner>,
    /// Told when a connection starts waiting for a request.
    added: Notify,
    evicted: Counter,
}

#[derive(Default)]
struct WaitingInner {
    next: u64,
    by_age: BTreeMap<u64, Arc<Entry>>,
}

/// One connection's place in [`Waiting`].
struct Entry {
    /// Its key in `by_age` while it waits for a request.
    key: Mutex<Option<u64>>,
    /// Told when the connection must close.
    evict: Notify,
}

impl Waiting {
    fn new(evicted: Counter) -> Self {
        Self {
            inner: Mutex::default(),
            added: Notify::new(),
            evicted,
        }
    }

    /// A new connection, waiting for its first request.
    fn add(&self) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            key: Mutex::new(None),
            evict: Notify::new(),
        });
        self.wait(&entry);
        entry
    }

    /// Marks `entry` as waiting for a request, the youngest of all.
    fn wait(&self, entry: &Arc<Entry>) {
        let mut inner = self.inner.lock();
        let key = inner.next;
        inner.next += 1;
        inner.by_age.insert(key, Arc::clone(entry));
        *entry.key.lock() = Some(key);
        drop(inner);
        self.added.notify_waiters();
    }

    /// Takes `entry` out of the waiting connections.
    fn remove(&self, entry: &Entry) {
        let mut inner = self.inner.lock();
        if let Some(key) = entry.key.lock().take() {
            inner.by_age.remove(&key);
        }
    }

    /// Closes the connection that has waited longest without a request, waiting for one
    /// while every connection has a request in progress.
    async fn evict_oldest(&self) {
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            // Registered before looking, so a connection added in between is not missed.
            added.as_mut().enable();
            if self.try_evict_oldest() {
                return;
            }
            added.await;
        }
    }

    fn try_evict_oldest(&self) -> bool {
        let oldest = {
            let mut inner = self.inner.lock();
            inner.by_age.pop_first().map(|(_, entry)| entry)
        };
        let Some(entry) = oldest else {
            return false;
        };
        *entry.key.lock() = None;
        // notify_one keeps the wake-up if the task is not waiting yet.
        entry.evict.notify_one();
        self.evicted.inc();
        true
    }
}

/// A request in progress: its connection is not evicted until the response is ready.
struct Busy {
    waiting: Arc<Waiting>,
    entry: Arc<Entry>,
}

impl Busy {
    fn new(waiting: &Arc<Waiting>, entry: &Arc<Entry>) -> Self {
        waiting.remove(entry);
        Self {
            waiting: Arc::clone(waiting),
            entry: Arc::clone(entry),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.waiting.wait(&self.entry);
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some(reason) = state.failed.borrow().as_ref() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        );
    }
    if state.clusters.local().status.is_synced() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the local cluster is still loading\n".to_string(),
        )
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
