//! The admin HTTP server: `/live`, `/ready`, `/metrics`.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, sync::watch};

use crate::{index::ClusterSet, metrics::Metrics};

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
    metrics: Arc<Metrics>,
    clusters: Arc<ClusterSet>,
    failed: watch::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            metrics,
            clusters,
            failed,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
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
    state.metrics.observe_clusters(&state.clusters);
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
