//! What a caller may use of an endpoint set: node-local traffic and topology hints.

use std::sync::Arc;

use super::{EndpointAddrs, EndpointSet};

/// Where the caller runs, from its context token and the node's zone label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientLocality {
    pub node_name: Option<String>,
    pub zone: Option<Arc<str>>,
}

/// Whether an endpoint is in the caller's zone, for the `zone_locality` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneLocality {
    Local,
    Remote,
    Unknown,
}

impl ZoneLocality {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneLocality::Local => "local",
            ZoneLocality::Remote => "remote",
            ZoneLocality::Unknown => "unknown",
        }
    }
}

impl ClientLocality {
    /// The endpoints this caller should use.
    ///
    /// `internalTrafficPolicy: Local` keeps only the caller's node's endpoints. Topology
    /// hints keep the endpoints hinted for the caller's zone when every endpoint is hinted,
    /// and all of them when none is hinted for it.
    pub fn filter(&self, set: &EndpointSet) -> Arc<EndpointAddrs> {
        let mut endpoints = Arc::clone(&set.endpoints);
        if set.internal_traffic_local
            && let Some(node) = self.node_name.as_deref()
        {
            endpoints = Arc::new(
                endpoints
                    .iter()
                    .filter(|(_, e)| e.node_name.as_deref() == Some(node))
                    .map(|(a, e)| (*a, Arc::clone(e)))
                    .collect(),
            );
        }
        let Some(zone) = self.zone.as_deref() else {
            return endpoints;
        };
        let all_hinted =
            !endpoints.is_empty() && endpoints.values().all(|e| e.hint_zones.is_some());
        if !all_hinted {
            return endpoints;
        }
        let in_zone: EndpointAddrs = endpoints
            .iter()
            .filter(|(_, e)| {
                e.hint_zones
                    .as_deref()
                    .is_some_and(|z| z.iter().any(|z| &**z == zone))
            })
            .map(|(a, e)| (*a, Arc::clone(e)))
            .collect();
        if in_zone.is_empty() {
            endpoints
        } else {
            Arc::new(in_zone)
        }
    }

    /// Whether an endpoint in `zone` is local to the caller.
    pub fn zone_locality(&self, zone: Option<&str>) -> ZoneLocality {
        match (self.zone.as_deref(), zone) {
            (Some(mine), Some(theirs)) if mine == theirs => ZoneLocality::Local,
            (Some(_), Some(_)) => ZoneLocality::Remote,
            _ => ZoneLocality::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ProtocolHint};

    fn mk_endpoint(addr: &str, node: &str, hints: Option<&[&str]>) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr: addr.parse().unwrap(),
            identity: None,
            hint: ProtocolHint::Unknown,
            authority_override: None,
            hostname: None,
            node_name: Some(node.into()),
            zone: None,
            hint_zones: hints.map(|h| h.iter().map(|z| Arc::from(*z)).collect()),
            pod: None,
            labels: Default::default(),
            cluster: "local".into(),
        })
    }

    fn mk_set(eps: Vec<Arc<Endpoint>>, local: bool) -> EndpointSet {
        EndpointSet {
            exists: true,
            endpoints: Arc::new(eps.into_iter().map(|e| (e.addr, e)).collect()),
            labels: Default::default(),
            internal_traffic_local: local,
            all_hinted: false,
            version: None,
            delta: None,
        }
    }

    fn addrs(m: &EndpointAddrs) -> Vec<String> {
        m.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn node_local_policy_keeps_the_callers_node() {
        let set = mk_set(
            vec![
                mk_endpoint("10.0.0.1:80", "a", None),
                mk_endpoint("10.0.0.2:80", "b", None),
            ],
            true,
        );
        let client = ClientLocality {
            node_name: Some("b".into()),
            zone: None,
        };
        assert_eq!(addrs(&client.filter(&set)), ["10.0.0.2:80"]);
        assert_eq!(ClientLocality::default().filter(&set).len(), 2);
    }

    #[test]
    fn topology_hints_keep_the_callers_zone_or_everything() {
        let set = mk_set(
            vec![
                mk_endpoint("10.0.0.1:80", "a", Some(&["east-1a"])),
                mk_endpoint("10.0.0.2:80", "b", Some(&["east-1b"])),
            ],
            false,
        );
        let set = EndpointSet {
            all_hinted: true,
            ..set
        };
        let in_a = ClientLocality {
            node_name: None,
            zone: Some("east-1a".into()),
        };
        assert_eq!(addrs(&in_a.filter(&set)), ["10.0.0.1:80"]);
        let in_c = ClientLocality {
            node_name: None,
            zone: Some("east-1c".into()),
        };
        assert_eq!(in_c.filter(&set).len(), 2);
    }
}
