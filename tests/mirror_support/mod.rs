//! Helpers of the mirror operations tests: a network namespace holding a gateway's
//! probe endpoint.
#![allow(dead_code)]

pub mod netns;
pub mod proxy;
