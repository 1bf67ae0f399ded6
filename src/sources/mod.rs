//! Sources turn the outside world into index updates; nothing below them knows which one ran.

pub mod kube;
pub mod manifests;
pub mod profile;
