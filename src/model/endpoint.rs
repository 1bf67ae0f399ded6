//! One address a proxy may send traffic to, with everything it needs to know about it.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

/// What the peer's proxy understands on this port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtocolHint {
    /// Unknown: not meshed, or the port is skipped by the proxy.
    #[default]
    Unknown,
    /// Meshed: HTTP may be upgraded to HTTP/2 between proxies.
    H2,
    /// Meshed and opaque: send raw TCP, wrapped for the peer proxy's inbound port.
    Opaque { inbound_port: u16 },
}

/// Per-address metric labels shared by pods alike (`namespace`, owner, `serviceaccount`).
pub type Labels = Arc<BTreeMap<String, String>>;

/// An endpoint as the index computed it for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The TLS identity the peer presents (also used as its server name).
    pub identity: Option<Arc<str>>,
    pub hint: ProtocolHint,
    /// `host:port` the proxy must send as authority (gateway mirrors).
    pub authority_override: Option<Arc<str>>,
    /// The endpoint's hostname (headless services).
    pub hostname: Option<Arc<str>>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Topology hints: the zones that should use this endpoint; `None` when not hinted.
    pub hint_zones: Option<Arc<[Arc<str>]>>,
    /// The pod's name (its `pod` metric label), when the endpoint is a pod.
    pub pod: Option<Arc<str>>,
    /// Metric labels shared by the pod's siblings: `namespace`, owner, `serviceaccount`.
    pub labels: Labels,
    /// The cluster the endpoint was found in.
    pub cluster: Arc<str>,
}

/// Endpoints keyed (and so ordered) by address.
pub type EndpointAddrs = BTreeMap<SocketAddr, Arc<Endpoint>>;
