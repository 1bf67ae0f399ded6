//! Clients of a running destination service.

pub mod resolve;
