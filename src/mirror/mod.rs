//! The service mirror: keeps local mirrors of linked clusters' exported services.
//!
//! Stub declaring the operations modules until the reconciler's own `mod.rs` lands.

pub mod lease;
pub mod probe;
