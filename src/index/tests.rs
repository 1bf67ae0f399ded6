//! Synchronous tests of the index: Kubernetes objects in, snapshots out.

mod addrs;
mod fixtures;
mod lookups;
mod metrics;
mod mirrors;
mod pods;
mod reset;
mod secrets;
mod services;
mod slices;
