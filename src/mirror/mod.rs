//! The service mirror: keeps local mirrors of every linked cluster's exported services.
//!
//! `desired` computes what a Link's mirrors should be (pure); `reconcile` watches a target
//! cluster and writes the difference; `controller` starts and stops one reconciler per
//! Link; `status` and `metrics` report. `probe` (gateway liveness) and `lease` (leader
//! election) are the operations side; `slim` cuts watched objects down to what is read.

pub mod controller;
pub mod desired;
pub mod federated;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod slim;
pub mod status;

/// Waits until `rx` holds true (or its sender is gone); holds no borrow across awaits.
pub async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Waits until `rx` holds false (or its sender is gone).
pub async fn until_false(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| !*v).await;
}
