//! ServiceProfiles as the destination service reads them: routes, retry budget, traffic
//! split and failover, already validated (regexes compile, durations and weights parsed).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::ServiceInfo;

/// A validated ServiceProfile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// The profile's namespace: the service's (server side) or the caller's (client side).
    pub namespace: String,
    /// The profile's name: the service's FQDN, e.g. `web.shop.svc.cluster.local`.
    pub name: String,
    /// Routes, in the order they are matched.
    pub routes: Vec<Route>,
    /// `None`: the default budget.
    pub retry_budget: Option<RetryBudget>,
    /// The traffic split, as written.
    pub dst_overrides: Vec<WeightedDst>,
    /// Ports the profile declares opaque.
    pub opaque_ports: BTreeSet<u16>,
    /// Set when the profile is annotated for failover.
    pub failover: Option<Failover>,
}

/// One route: requests it matches and how they are treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The route's name, sent as its `route` metric label.
    pub name: String,
    pub condition: RequestMatch,
    pub response_classes: Vec<ResponseClass>,
    pub is_retryable: bool,
    /// `None`: no timeout.
    pub timeout: Option<Duration>,
}

/// Which requests a route matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    /// A regular expression the whole path must match (already checked to compile).
    Path(String),
    /// An HTTP method, as written (upper case for the registered ones).
    Method(String),
}

/// Which responses a class covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseMatch {
    All(Vec<ResponseMatch>),
    Any(Vec<ResponseMatch>),
    Not(Box<ResponseMatch>),
    /// Status codes `min..=max` (0 for a bound not given).
    Status {
        min: u32,
        max: u32,
    },
}

/// How responses that match `condition` are classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseClass {
    pub condition: ResponseMatch,
    pub is_failure: bool,
}

/// How many retries a client may add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    pub retry_ratio: f32,
    pub min_retries_per_second: u32,
    /// `None` for a zero TTL (sent as an absent field).
    pub ttl: Option<Duration>,
}

impl RetryBudget {
    /// Linkerd's default: 20% extra load, at least 10 retries per second, over 10 s.
    pub const DEFAULT: Self = Self {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl: Some(Duration::from_secs(10)),
    };
}

/// One destination of a traffic split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedDst {
    /// `host[:port]` as written.
    pub authority: String,
    /// In ten-thousandths of the quantity's unit (`1` is 10000, `500m` is 5000).
    pub weight: u32,
}

/// The weight the primary gets while it has ready endpoints, when its own weight is 0.
pub const FULL_WEIGHT: u32 = 10_000;

/// Failover between the profile's `dst_overrides`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The index in `dst_overrides` of the primary service.
    pub primary: usize,
}

/// What `GetProfile` for a service answers from: the service and the profile that applies
/// to the caller, with the traffic split as it stands now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceProfileView {
    /// `None` while the service does not exist.
    pub service: Option<Arc<ServiceInfo>>,
    /// The caller's namespace's profile if there is one, else the service's.
    pub profile: Option<Arc<Profile>>,
    /// The split to send: the profile's, or the failover's as computed from readiness.
    pub dst_overrides: Arc<[WeightedDst]>,
}

/// The split of a failover profile given which destinations have ready endpoints
/// (`ready[i]` for `dsts[i]`): the primary alone while it is ready (with its weight, or
/// full weight when written as 0); otherwise the ready fallbacks by their weights (evenly
/// when all of theirs are 0); the primary alone when no destination is ready.
pub fn failover_split(dsts: &[WeightedDst], primary: usize, ready: &[bool]) -> Vec<WeightedDst> {
    let is_ready = |i: usize| ready.get(i).copied().unwrap_or(false);
    let only_primary = || {
        dsts.iter()
            .enumerate()
            .map(|(i, d)| WeightedDst {
                authority: d.authority.clone(),
                weight: if i == primary {
                    if d.weight == 0 { FULL_WEIGHT } else { d.weight }
                } else {
                    0
                },
            })
            .collect()
    };
    if is_ready(primary) {
        return only_primary();
    }
    let fallbacks: Vec<usize> = (0..dsts.len())
        .filter(|&i| i != primary && is_ready(i))
        .collect();
    if fallbacks.is_empty() {
        return only_primary();
    }
    let even = fallbacks.iter().all(|&i| dsts[i].weight == 0);
    dsts.iter()
        .enumerate()
        .map(|(i, d)| WeightedDst {
            authority: d.authority.clone(),
            weight: match (fallbacks.contains(&i), even) {
                (false, _) => 0,
                (true, true) => FULL_WEIGHT,
                (true, false) => d.weight,
            },
        })
        .collect()
}

/// Whether an authority (`host:port`, `[v6]:port`) carries a port.
pub fn authority_has_port(authority: &str) -> bool {
    authority.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsts(weights: &[u32]) -> Vec<WeightedDst> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| WeightedDst {
                authority: format!("svc-{i}"),
                weight: *w,
            })
            .collect()
    }

    fn weights(split: &[WeightedDst]) -> Vec<u32> {
        split.iter().map(|d| d.weight).collect()
    }

    #[test]
    fn a_ready_primary_takes_all_weight() {
        let d = dsts(&[10_000, 5_000, 5_000]);
        assert_eq!(
            weights(&failover_split(&d, 0, &[true, true, true])),
            [10_000, 0, 0]
        );
        let d = dsts(&[0, 10_000]);
        assert_eq!(weights(&failover_split(&d, 0, &[true, true])), [10_000, 0]);
    }

    #[test]
    fn ready_fallbacks_share_by_weight_and_unready_ones_get_none() {
        let d = dsts(&[10_000, 8_000, 2_000, 5_000]);
        assert_eq!(
            weights(&failover_split(&d, 0, &[false, true, true, false])),
            [0, 8_000, 2_000, 0]
        );
        // Fallbacks written with weight 0 share evenly.
        let d = dsts(&[10_000, 0, 0]);
        assert_eq!(
            weights(&failover_split(&d, 0, &[false, true, true])),
            [0, 10_000, 10_000]
        );
    }

    #[test]
    fn nothing_ready_leaves_the_primary_in_place() {
        let d = dsts(&[10_000, 5_000]);
        assert_eq!(
            weights(&failover_split(&d, 0, &[false, false])),
            [10_000, 0]
        );
        // The primary need not be first.
        let d = dsts(&[5_000, 10_000]);
        assert_eq!(
            weights(&failover_split(&d, 1, &[false, false])),
            [0, 10_000]
        );
        assert_eq!(weights(&failover_split(&d, 1, &[true, false])), [5_000, 0]);
    }
}
