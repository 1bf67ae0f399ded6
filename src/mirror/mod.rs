//! The service mirror: keeps local mirrors of every linked cluster's exported services.
//!
//! `desired` computes what a Link's mirrors should be (pure); `reconcile` watches a target
//! cluster and writes the difference; `controller` starts and stops one reconciler per
//! Link; `status` and `metrics` report. `probe` (gateway liveness) and `lease` (leader
//! election) are the operations side.

pub mod desired;
pub mod lease;
pub mod probe;
