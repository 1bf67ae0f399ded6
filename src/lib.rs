//! meshlink: a control plane for a service mesh that spans clusters.
//!
//! Layers, from the bottom: [`model`] (domain types), [`index`] (per-cluster state,
//! synchronous), [`sources`] (files or Kubernetes into the index), [`resolver`] and
//! [`grpc`] (serving), [`runtime`] (wiring and the command line).
#![forbid(unsafe_code)]

pub mod client;
pub mod grpc;
pub mod identity;
pub mod index;
pub mod k8s;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod proto;
pub mod resolver;
pub mod runtime;
pub mod sources;
