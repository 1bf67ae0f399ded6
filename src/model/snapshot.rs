//! Immutable endpoint sets shared by every stream, and the diff between two of them.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::{Endpoint, EndpointAddrs, ServiceInfo};

/// Identifies a snapshot: the lookup that published it and its place in that lookup's
/// sequence, so that a stream can tell a snapshot follows the one it last sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotVersion {
    /// Unique per lookup across every index of the process.
    pub lookup: u64,
    /// Counts the lookup's published snapshots.
    pub seq: u64,
}

impl SnapshotVersion {
    /// The version published after this one.
    pub fn next(self) -> Self {
        Self {
            lookup: self.lookup,
            seq: self.seq + 1,
        }
    }
}

/// What the index publishes for one (service, port) lookup in one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSnapshot {
    /// `None` when the service does not exist in this cluster.
    pub service: Option<Arc<ServiceInfo>>,
    /// Ready endpoints for the port.
    pub endpoints: Arc<EndpointAddrs>,
    pub version: SnapshotVersion,
    /// The change from the previous version, computed once for every stream that has it.
    pub delta: Option<Arc<EndpointDiff>>,
    /// Every endpoint carries topology hints (so zone filtering applies).
    pub all_hinted: bool,
}

impl PortSnapshot {
    /// Whether two snapshots hold the same service and endpoints, whatever their versions.
    pub fn same_content(&self, other: &Self) -> bool {
        self.service == other.service && self.endpoints == other.endpoints
    }
}

/// Whether every endpoint of a non-empty set carries topology hints.
pub fn all_hinted(endpoints: &EndpointAddrs) -> bool {
    !endpoints.is_empty() && endpoints.values().all(|e| e.hint_zones.is_some())
}

/// What the resolver hands to a stream: the merged answer for one authority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// Whether the service exists (decides `no_endpoints{exists}` when empty).
    pub exists: bool,
    pub endpoints: Arc<EndpointAddrs>,
    /// Labels for the whole set (`service`, `namespace`, `target_cluster`, ...).
    pub labels: Arc<BTreeMap<String, String>>,
    /// Only endpoints on the caller's node may be used.
    pub internal_traffic_local: bool,
    /// Every endpoint carries topology hints.
    pub all_hinted: bool,
    /// Set when `endpoints` is exactly one lookup's snapshot, with its delta from the
    /// previous version: streams that sent that version reuse the delta.
    pub version: Option<SnapshotVersion>,
    pub delta: Option<Arc<EndpointDiff>>,
}

/// The change from one endpoint map to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointDiff {
    /// Addresses that went away.
    pub removed: Vec<SocketAddr>,
    /// New addresses and addresses whose attributes changed.
    pub added: Vec<Arc<Endpoint>>,
}

impl EndpointDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// Computes what turns `old` into `new` in one ordered pass over both maps.
pub fn diff_endpoints(old: &EndpointAddrs, new: &EndpointAddrs) -> EndpointDiff {
    let mut diff = EndpointDiff::default();
    let mut old_iter = old.iter().peekable();
    let mut new_iter = new.iter().peekable();
    loop {
        match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some((a, _)), None) => {
                diff.removed.push(**a);
                old_iter.next();
            }
            (None, Some((_, e))) => {
                diff.added.push(Arc::clone(e));
                new_iter.next();
            }
            (Some((oa, oe)), Some((na, ne))) => match oa.cmp(na) {
                std::cmp::Ordering::Less => {
                    diff.removed.push(**oa);
                    old_iter.next();
                }
                std::cmp::Ordering::Greater => {
                    diff.added.push(Arc::clone(ne));
                    new_iter.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(oe, ne) && oe != ne {
                        diff.added.push(Arc::clone(ne));
                    }
                    old_iter.next();
                    new_iter.next();
                }
            },
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProtocolHint;

    fn mk_endpoint(addr: &str, identity: Option<&str>) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr: addr.parse().unwrap(),
            identity: identity.map(Into::into),
            hint: ProtocolHint::Unknown,
            authority_override: None,
            hostname: None,
            node_name: None,
            zone: None,
            hint_zones: None,
            pod: None,
            labels: Default::default(),
            cluster: "local".into(),
        })
    }

    fn mk_map(eps: &[Arc<Endpoint>]) -> EndpointAddrs {
        eps.iter().map(|e| (e.addr, Arc::clone(e))).collect()
    }

    #[test]
    fn adds_removes_and_changes() {
        let a = mk_endpoint("10.0.0.1:80", None);
        let b = mk_endpoint("10.0.0.2:80", None);
        let b2 = mk_endpoint(
            "10.0.0.2:80",
            Some("b.ns.serviceaccount.identity.linkerd.cluster.local"),
        );
        let c = mk_endpoint("10.0.0.3:80", None);
        let diff = diff_endpoints(&mk_map(&[a.clone(), b]), &mk_map(&[b2.clone(), c.clone()]));
        assert_eq!(diff.removed, vec![a.addr]);
        assert_eq!(diff.added, vec![b2, c]);
    }

    #[test]
    fn equal_content_is_no_change() {
        let a = mk_endpoint("10.0.0.1:80", None);
        let a_again = mk_endpoint("10.0.0.1:80", None);
        assert!(diff_endpoints(&mk_map(&[a]), &mk_map(&[a_again])).is_empty());
    }
}
