//! Prometheus metrics: streams, updates, index sizes, manifest errors, linked clusters.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::index::{ClusterHandle, ClusterSet, RejectedSecret};

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Get` or `GetProfile`.
    pub rpc: &'static str,
}

/// Labels of the messages-sent counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// `Get` or `GetProfile`.
    pub rpc: &'static str,
    /// `add`, `remove`, `no_endpoints` or `profile`.
    pub kind: &'static str,
}

/// Labels of per-cluster metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster's name.
    pub cluster: String,
}

/// Labels of the indexed-objects gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The cluster's name.
    pub cluster: String,
    /// `service`, `endpointslice`, `pod`, `node` or `lookup`.
    pub kind: &'static str,
}

/// Labels of a rejected manifest file or object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ManifestErrorLabels {
    /// The cluster whose folder holds the file.
    pub cluster: String,
    /// The file's path.
    pub file: String,
    /// Why it was rejected, from a fixed set (`invalid_yaml`, `invalid_object`, ...): the
    /// message itself is logged, never a label value.
    pub reason: &'static str,
}

/// Labels of a rejected credentials Secret.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// Why it was ignored.
    pub reason: String,
}

/// Every metric meshlink exports.
pub struct Metrics {
    registry: Registry,
    /// Open `Get`/`GetProfile` streams.
    pub streams_open: Family<RpcLabels, Gauge>,
    /// Messages sent on streams, by kind (`add`, `remove`, `no_endpoints`, `profile`).
    pub updates_sent: Family<UpdateLabels, Counter>,
    /// Streams reset because the client did not read within the send timeout.
    pub stream_send_timeouts: Counter,
    /// Manifest files or objects currently rejected (1 each), with the reason.
    pub manifest_invalid: Family<ManifestErrorLabels, Gauge>,
    /// Manifest errors seen since start.
    pub manifest_errors_total: Family<ClusterLabels, Counter>,
    index_objects: Family<ObjectLabels, Gauge>,
    cluster_linked: Family<ClusterLabels, Gauge>,
    cluster_stale: Family<ClusterLabels, Gauge>,
    secrets_rejected: Family<SecretLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlink");
        let m = Self {
            registry: Registry::default(),
            streams_open: Family::default(),
            updates_sent: Family::default(),
            stream_send_timeouts: Counter::default(),
            manifest_invalid: Family::default(),
            manifest_errors_total: Family::default(),
            index_objects: Family::default(),
            cluster_linked: Family::default(),
            cluster_stale: Family::default(),
            secrets_rejected: Family::default(),
        };
        registry.register(
            "grpc_streams_open",
            "Open destination streams",
            m.streams_open.clone(),
        );
        registry.register(
            "grpc_updates_sent",
            "Messages sent on destination streams",
            m.updates_sent.clone(),
        );
        registry.register(
            "grpc_stream_send_timeouts",
            "Streams reset because the client stopped reading",
            m.stream_send_timeouts.clone(),
        );
        registry.register(
            "manifest_invalid",
            "Manifest files or objects currently rejected, with the reason",
            m.manifest_invalid.clone(),
        );
        registry.register(
            "manifest_errors",
            "Manifest errors seen",
            m.manifest_errors_total.clone(),
        );
        registry.register(
            "index_objects",
            "Objects held by each cluster's index",
            m.index_objects.clone(),
        );
        registry.register(
            "cluster_linked",
            "Linked clusters (1 while linked)",
            m.cluster_linked.clone(),
        );
        registry.register(
            "cluster_stale",
            "1 while a cluster's source fails and its last known endpoints are served",
            m.cluster_stale.clone(),
        );
        registry.register(
            "credentials_secret_rejected",
            "Credentials Secrets ignored, with the reason",
            m.secrets_rejected.clone(),
        );
        Self { registry, ..m }
    }

    /// Reads the clusters' current state into the gauges.
    pub fn observe_clusters(&self, clusters: &ClusterSet) {
        self.index_objects.clear();
        self.cluster_linked.clear();
        self.cluster_stale.clear();
        self.secrets_rejected.clear();
        let local = clusters.local();
        self.observe_cluster(local);
        for cluster in clusters.linked().values() {
            self.cluster_linked
                .get_or_create(&ClusterLabels {
                    cluster: cluster.name.to_string(),
                })
                .set(1);
            self.observe_cluster(cluster);
        }
        for RejectedSecret { secret, reason } in local.index.lock().rejected_secrets() {
            self.secrets_rejected
                .get_or_create(&SecretLabels { secret, reason })
                .set(1);
        }
    }

    fn observe_cluster(&self, cluster: &ClusterHandle) {
        let counts = cluster.index.lock().counts();
        let name = cluster.name.to_string();
        for (kind, n) in [
            ("service", counts.services),
            ("endpointslice", counts.endpoint_slices),
            ("pod", counts.pods),
            ("node", counts.nodes),
            ("lookup", counts.lookups),
        ] {
            self.index_objects
                .get_or_create(&ObjectLabels {
                    cluster: name.clone(),
                    kind,
                })
                .set(n as i64);
        }
        self.cluster_stale
            .get_or_create(&ClusterLabels { cluster: name })
            .set(i64::from(cluster.status.is_stale()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
