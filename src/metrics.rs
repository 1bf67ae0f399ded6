//! Prometheus metrics: streams, updates, index sizes, manifest errors, linked clusters,
//! connections and the process's own resources.
//!
//! Events (streams, updates, errors, connections) update their metric as they happen; state
//! that lives elsewhere (index sizes, clusters, rejected Secrets, the process) is read by a
//! collector at scrape time, so a scrape never rebuilds or clears a family others read.

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::index::{ClusterHandle, ClusterSet};

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
    /// Why it was ignored, one of a fixed set (see `RejectedSecret::metric_label`).
    pub reason: &'static str,
}

/// Labels of a rejected ServiceProfile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    /// `namespace/name` of the ServiceProfile.
    pub profile: String,
    /// Why it was rejected, one of a fixed set (see `ProfileError::metric_label`).
    pub reason: &'static str,
}

/// Labels of per-listener metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `grpc` or `admin`.
    pub listener: &'static str,
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
    /// Open connections, by listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// The most connections each listener serves at once.
    pub connections_max: Family<ListenerLabels, Gauge>,
    /// Failed accepts (e.g. out of file descriptors), by listener.
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// Unfinished or idle admin connections closed to make room for a new one.
    pub connections_evicted: Family<ListenerLabels, Counter>,
    /// The clusters whose state the cluster collector reads at scrape time.
    clusters: Arc<OnceLock<Arc<ClusterSet>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Process metrics keep the names every Prometheus client gives them, without our prefix.
        root.register_collector(Box::new(ProcessCollector));
        let m = Self {
            registry: Registry::default(),
            streams_open: Family::default(),
            updates_sent: Family::default(),
            stream_send_timeouts: Counter::default(),
            manifest_invalid: Family::default(),
            manifest_errors_total: Family::default(),
            connections_open: Family::default(),
            connections_max: Family::default(),
            accept_errors: Family::default(),
            connections_evicted: Family::default(),
            clusters: Arc::default(),
        };
        let registry = root.sub_registry_with_prefix("meshlink");
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
            "connections_open",
            "Open connections, by listener",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_max",
            "The most connections a listener serves at once",
            m.connections_max.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (such as running out of file descriptors), by listener",
            m.accept_errors.clone(),
        );
        registry.register(
            "connections_evicted",
            "Unfinished or idle connections closed to make room for a new one",
            m.connections_evicted.clone(),
        );
        registry.register_collector(Box::new(ClusterCollector {
            clusters: Arc::clone(&m.clusters),
        }));
        Self {
            registry: root,
            ..m
        }
    }

    /// Reports the state of `clusters` (index sizes, linked and stale clusters, rejected
    /// Secrets) on every scrape from now on. Only the first call counts.
    pub fn collect_clusters(&self, clusters: Arc<ClusterSet>) {
        let _ = self.clusters.set(clusters);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Reads the clusters' state at scrape time: index sizes, linked and stale clusters,
/// rejected credentials Secrets.
struct ClusterCollector {
    clusters: Arc<OnceLock<Arc<ClusterSet>>>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(clusters) = self.clusters.get() else {
            return Ok(());
        };
        let local = clusters.local();
        let linked = clusters.linked();
        let all: Vec<&ClusterHandle> = std::iter::once(local).chain(linked.values()).collect();

        let mut family = encoder.encode_descriptor(
            "index_objects",
            "Objects held by each cluster's index",
            None,
            MetricType::Gauge,
        )?;
        for cluster in &all {
            let counts = cluster.index.lock().counts();
            for (kind, n) in [
                ("service", counts.services),
                ("endpointslice", counts.endpoint_slices),
                ("pod", counts.pods),
                ("node", counts.nodes),
                ("lookup", counts.lookups),
                ("serviceprofile", counts.service_profiles),
            ] {
                let labels = ObjectLabels {
                    cluster: cluster.name.to_string(),
                    kind,
                };
                gauge(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cluster_linked",
            "Linked clusters (1 while linked)",
            None,
            MetricType::Gauge,
        )?;
        for cluster in linked.values() {
            let labels = ClusterLabels {
                cluster: cluster.name.to_string(),
            };
            gauge(1).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "cluster_stale",
            "1 while a cluster's source fails and its last known endpoints are served",
            None,
            MetricType::Gauge,
        )?;
        for cluster in &all {
            let labels = ClusterLabels {
                cluster: cluster.name.to_string(),
            };
            gauge(i64::from(cluster.status.is_stale())).encode(family.encode_family(&labels)?)?;
        }

        let rejected = local.index.lock().rejected_secrets();
        let mut family = encoder.encode_descriptor(
            "credentials_secret_rejected",
            "Credentials Secrets ignored, with the reason",
            None,
            MetricType::Gauge,
        )?;
        for secret in &rejected {
            let labels = SecretLabels {
                secret: secret.secret.clone(),
                reason: secret.metric_label(),
            };
            gauge(1).encode(family.encode_family(&labels)?)?;
        }

        let rejected = local.index.lock().rejected_profiles();
        let mut family = encoder.encode_descriptor(
            "service_profile_rejected",
            "ServiceProfiles whose current version does not parse (the last good one is served), with the reason",
            None,
            MetricType::Gauge,
        )?;
        for (profile, reason) in rejected {
            let labels = ProfileLabels { profile, reason };
            gauge(1).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

/// The process's file descriptors, memory and CPU time, read from `/proc/self` at scrape
/// time under the names Prometheus clients use (`process_open_fds` and friends).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Each figure is left out when it cannot be read (not Linux, /proc not mounted).
        let stats = ProcessStats::read();
        if let Some(n) = stats.open_fds {
            let metric = ConstGauge::new(n as i64);
            metric.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(n) = stats.max_fds {
            let metric = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(n) = stats.resident_memory_bytes {
            let metric = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(s) = stats.cpu_seconds {
            let metric = ConstCounter::new(s);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The process's resources as `/proc/self` reports them.
#[derive(Debug, Default)]
struct ProcessStats {
    open_fds: Option<usize>,
    max_fds: Option<u64>,
    resident_memory_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Self {
        Self {
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count()),
            max_fds: rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft),
            resident_memory_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| parse_vm_rss(&s)),
            cpu_seconds: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| parse_cpu_seconds(&s)),
        }
    }
}

/// `VmRSS:  1234 kB` of /proc/PID/status, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of /proc/PID/stat, in seconds.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it exposes to
    // user space (the Prometheus Go client's procfs assumes the same).
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_count_from_the_last_parenthesis() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn resident_memory_is_in_bytes() {
        let status = "Name:\tmeshlink\nVmRSS:\t   13312 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(13312 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    fn local_cluster() -> Arc<ClusterSet> {
        let config = crate::index::IndexConfig {
            cluster_name: Arc::from("local"),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "linkerd".into(),
            default_opaque_ports: Arc::new(crate::model::PortSet::default()),
        };
        let local = ClusterHandle::new(crate::index::ClusterIndex::shared(config));
        Arc::new(ClusterSet::new(local))
    }

    #[test]
    fn concurrent_scrapes_each_see_every_cluster_series() {
        let metrics = Arc::new(Metrics::new());
        metrics.collect_clusters(local_cluster());
        let expected = [
            "meshlink_index_objects{cluster=\"local\",kind=\"service\"} 0",
            "meshlink_index_objects{cluster=\"local\",kind=\"lookup\"} 0",
            "meshlink_cluster_stale{cluster=\"local\"} 0",
        ];
        let scrapers: Vec<_> = (0..4)
            .map(|_| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let text = metrics.encode();
                        for line in expected {
                            assert!(text.contains(line), "{line} missing from:\n{text}");
                        }
                    }
                })
            })
            .collect();
        for s in scrapers {
            s.join().expect("a scrape missed a series");
        }
    }

    #[test]
    fn process_metrics_have_the_names_prometheus_clients_use() {
        let text = Metrics::new().encode();
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing from:\n{text}"
            );
        }
    }
}
