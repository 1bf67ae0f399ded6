//! ServiceProfiles from their Kubernetes form to the model, shared by both sources: every
//! regex, duration and weight is checked here, so a profile that reaches the index is sound.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{
    k8s::{
        labels,
        profile::{
            OneOrMany, RequestMatchSpec, ResponseMatchSpec, RouteSpec, ServiceProfile,
            WeightedDstSpec,
        },
    },
    model::profile::{
        Failover, Profile, RequestMatch, ResponseClass, ResponseMatch, RetryBudget, Route,
        WeightedDst,
    },
};

/// Why a ServiceProfile is not served (its previous version, if any, stays).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("ServiceProfile has no metadata.name")]
    NoName,
    #[error("route {route:?}: invalid pathRegex {regex:?}: {error}")]
    BadRegex {
        route: String,
        regex: String,
        error: String,
    },
    #[error("{field}: invalid duration {value:?} (expected e.g. 250ms, 10s, 1m30s)")]
    BadDuration { field: String, value: String },
    #[error(
        "dstOverrides {authority:?}: invalid weight {value:?} (expected a quantity such as 1, 500m)"
    )]
    BadQuantity { authority: String, value: String },
    #[error("route {route:?}: {what}")]
    BadCondition { route: String, what: String },
    #[error("opaquePorts: {0:?} is not a port number")]
    BadOpaquePort(String),
    #[error(
        "{}: {primary:?} is not among dstOverrides",
        labels::FAILOVER_PRIMARY_SERVICE
    )]
    FailoverPrimaryMissing { primary: String },
}

impl ProfileError {
    /// A fixed value for a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoName => "missing_name",
            Self::BadRegex { .. } => "bad_regex",
            Self::BadDuration { .. } => "bad_duration",
            Self::BadQuantity { .. } => "bad_quantity",
            Self::BadCondition { .. } => "bad_condition",
            Self::BadOpaquePort(_) => "bad_opaque_port",
            Self::FailoverPrimaryMissing { .. } => "failover_primary_missing",
        }
    }
}

/// Checks and converts a ServiceProfile (a namespace missing from it is `default`).
pub fn parse_profile(sp: &ServiceProfile) -> Result<Profile, ProfileError> {
    let name = sp.metadata.name.clone().ok_or(ProfileError::NoName)?;
    let namespace = sp
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = &sp.spec;
    let routes = spec
        .routes
        .iter()
        .map(parse_route)
        .collect::<Result<Vec<_>, _>>()?;
    let retry_budget = spec
        .retry_budget
        .as_ref()
        .map(|b| {
            Ok(RetryBudget {
                retry_ratio: b.retry_ratio,
                min_retries_per_second: b.min_retries_per_second,
                ttl: non_zero(parse_go_duration(&b.ttl).ok_or_else(|| {
                    ProfileError::BadDuration {
                        field: "retryBudget.ttl".into(),
                        value: b.ttl.clone(),
                    }
                })?),
            })
        })
        .transpose()?;
    let dst_overrides = spec
        .dst_overrides
        .iter()
        .map(parse_dst)
        .collect::<Result<Vec<_>, _>>()?;
    let mut opaque_ports = BTreeSet::new();
    for (port, on) in spec.opaque_ports.iter().flatten() {
        let n: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ProfileError::BadOpaquePort(port.clone()))?;
        if *on {
            opaque_ports.insert(n);
        }
    }
    let failover = sp
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::FAILOVER_PRIMARY_SERVICE))
        .map(|primary| {
            dst_overrides
                .iter()
                .position(|d| names_service(&d.authority, primary, &namespace))
                .map(|primary| Failover { primary })
                .ok_or_else(|| ProfileError::FailoverPrimaryMissing {
                    primary: primary.clone(),
                })
        })
        .transpose()?;
    Ok(Profile {
        namespace,
        name,
        routes,
        retry_budget,
        dst_overrides,
        opaque_ports,
        failover,
    })
}

/// Whether `authority` (`host[:port]`) names service `svc` of namespace `ns`.
fn names_service(authority: &str, svc: &str, ns: &str) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let mut labels = host.split('.');
    labels.next() == Some(svc) && labels.next().is_none_or(|n| n == ns)
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn parse_route(route: &RouteSpec) -> Result<Route, ProfileError> {
    let bad = |what: &str| ProfileError::BadCondition {
        route: route.name.clone(),
        what: what.into(),
    };
    let condition = route
        .condition
        .as_ref()
        .ok_or_else(|| bad("missing condition"))?;
    let condition = request_match(&route.name, condition)?;
    let response_classes = route
        .response_classes
        .iter()
        .map(|rc| {
            let cond = rc
                .condition
                .as_ref()
                .ok_or_else(|| bad("response class without condition"))?;
            Ok(ResponseClass {
                condition: response_match(&route.name, cond)?,
                is_failure: rc.is_failure.unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, ProfileError>>()?;
    let timeout = match route.timeout.as_deref() {
        None | Some("") => None,
        Some(t) => non_zero(
            parse_go_duration(t).ok_or_else(|| ProfileError::BadDuration {
                field: format!("route {:?} timeout", route.name),
                value: t.into(),
            })?,
        ),
    };
    Ok(Route {
        name: route.name.clone(),
        condition,
        response_classes,
        is_retryable: route.is_retryable.unwrap_or(false),
        timeout,
    })
}

/// Several keys are all required, in Linkerd's order (all, any, method, not, path); one
/// key stands alone.
fn request_match(route: &str, m: &RequestMatchSpec) -> Result<RequestMatch, ProfileError> {
    let nested = |ms: &[RequestMatchSpec]| {
        ms.iter()
            .map(|m| request_match(route, m))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut parts = Vec::new();
    if let Some(all) = &m.all {
        parts.push(RequestMatch::All(nested(all)?));
    }
    if let Some(any) = &m.any {
        parts.push(RequestMatch::Any(nested(any)?));
    }
    if let Some(method) = m.method.as_deref().filter(|s| !s.is_empty()) {
        parts.push(RequestMatch::Method(method.to_string()));
    }
    if let Some(not) = &m.not {
        let inner = match not {
            OneOrMany::One(m) => request_match(route, m)?,
            OneOrMany::Many(ms) => single_or_all(nested(ms)?, RequestMatch::All),
        };
        parts.push(RequestMatch::Not(Box::new(inner)));
    }
    if let Some(re) = m.path_regex.as_deref().filter(|s| !s.is_empty()) {
        // Anchored as the proxy anchors it, so what compiles here compiles there.
        regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| ProfileError::BadRegex {
            route: route.into(),
            regex: re.into(),
            error: e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .into(),
        })?;
        parts.push(RequestMatch::Path(re.to_string()));
    }
    if parts.is_empty() {
        return Err(ProfileError::BadCondition {
            route: route.into(),
            what: "a request condition sets none of all, any, method, not, pathRegex".into(),
        });
    }
    Ok(single_or_all(parts, RequestMatch::All))
}

/// Like [`request_match`], in Linkerd's order (all, any, status, not).
fn response_match(route: &str, m: &ResponseMatchSpec) -> Result<ResponseMatch, ProfileError> {
    let nested = |ms: &[ResponseMatchSpec]| {
        ms.iter()
            .map(|m| response_match(route, m))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut parts = Vec::new();
    if let Some(all) = &m.all {
        parts.push(ResponseMatch::All(nested(all)?));
    }
    if let Some(any) = &m.any {
        parts.push(ResponseMatch::Any(nested(any)?));
    }
    if let Some(status) = &m.status {
        let (min, max) = (status.min.unwrap_or(0), status.max.unwrap_or(0));
        let valid = |c: u32| c == 0 || (100..=599).contains(&c);
        if !valid(min) || !valid(max) || (max != 0 && min > max) {
            return Err(ProfileError::BadCondition {
                route: route.into(),
                what: format!("invalid status range {min}..{max}"),
            });
        }
        parts.push(ResponseMatch::Status { min, max });
    }
    if let Some(not) = &m.not {
        let inner = match not {
            OneOrMany::One(m) => response_match(route, m)?,
            OneOrMany::Many(ms) => single_or_all(nested(ms)?, ResponseMatch::All),
        };
        parts.push(ResponseMatch::Not(Box::new(inner)));
    }
    if parts.is_empty() {
        return Err(ProfileError::BadCondition {
            route: route.into(),
            what: "a response condition sets none of all, any, status, not".into(),
        });
    }
    Ok(single_or_all(parts, ResponseMatch::All))
}

fn single_or_all<T>(mut parts: Vec<T>, all: fn(Vec<T>) -> T) -> T {
    if parts.len() == 1
        && let Some(one) = parts.pop()
    {
        return one;
    }
    all(parts)
}

fn parse_dst(dst: &WeightedDstSpec) -> Result<WeightedDst, ProfileError> {
    let bad = |value: String| ProfileError::BadQuantity {
        authority: dst.authority.clone(),
        value,
    };
    let milli = match &dst.weight {
        IntOrString::Int(n) => u64::try_from(*n)
            .ok()
            .and_then(|n| n.checked_mul(1000))
            .ok_or_else(|| bad(n.to_string()))?,
        IntOrString::String(s) => parse_milli_quantity(s).ok_or_else(|| bad(s.clone()))?,
    };
    // Linkerd sends the milli-value times ten: 1 is 10000.
    let weight = milli
        .checked_mul(10)
        .and_then(|w| u32::try_from(w).ok())
        .ok_or_else(|| bad(format!("{:?} (too large)", dst.weight)))?;
    Ok(WeightedDst {
        authority: dst.authority.clone(),
        weight,
    })
}

/// A non-negative Kubernetes quantity as thousandths (`500m` → 500, `2` → 2000,
/// `1k` → 1000000), rounded up as Kubernetes' `MilliValue` does.
pub fn parse_milli_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // (numerator, denominator) of one unit of the suffix, in thousandths.
    let (num, den): (u128, u128) = match suffix {
        "n" => (1, 1_000_000),
        "u" => (1, 1_000),
        "m" => (1, 1),
        "" => (1_000, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "Ki" => (1_024_000, 1),
        "Mi" => (1_048_576_000, 1),
        "Gi" => (1_073_741_824_000, 1),
        _ => return None,
    };
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let num = digits.checked_mul(num)?;
    let den = den.checked_mul(scale)?;
    u64::try_from(num.div_ceil(den)).ok()
}

/// A Go duration (`300ms`, `1.5s`, `1h2m`, `0`) as Linkerd reads them; `None` when it is not one.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let (number, tail) = rest.split_at(n);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        let value: f64 = number.parse().ok()?;
        let nanos = value * nanos_per;
        if !nanos.is_finite() || nanos > u64::MAX as f64 {
            return None;
        }
        total = total.checked_add(Duration::from_nanos(nanos.round() as u64))?;
        rest = tail;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("250ms"), Some(ms(250)));
        assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "ten", "5 s", "-1s", "1d", "s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quantities_as_milli_values() {
        let cases = [
            ("1", 1000),
            ("500m", 500),
            ("0", 0),
            ("0.8", 800),
            ("1.5", 1500),
            ("2k", 2_000_000),
            ("1Ki", 1_024_000),
        ];
        for (q, milli) in cases {
            assert_eq!(parse_milli_quantity(q), Some(milli), "{q}");
        }
        for bad in ["", "-1", "abc", "1x", "1.2.3", "m"] {
            assert_eq!(parse_milli_quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_failover_primary_is_found_by_service_name() {
        assert!(names_service(
            "web.shop.svc.cluster.local:80",
            "web",
            "shop"
        ));
        assert!(names_service("web", "web", "shop"));
        assert!(!names_service(
            "web-west.shop.svc.cluster.local",
            "web",
            "shop"
        ));
        assert!(!names_service("web.other.svc.cluster.local", "web", "shop"));
    }
}
