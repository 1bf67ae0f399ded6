//! The gateway prober: an HTTP GET of a Link's `probeSpec.path` on `probeSpec.port` at
//! each gateway address, every `period`, each bounded by `timeout`. After
//! `failureThreshold` consecutive failed rounds the gateway is not alive; one good round
//! makes it alive again. A round is good when any gateway address answers 200, since
//! the mirrors' endpoints hold every address and one working address carries traffic.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::{Instant, MissedTickBehavior},
};
use tracing::Instrument;

use crate::k8s::link::LinkSpec;

/// Linkerd's defaults for a probe spec field left empty: the gateway chart's
/// `gateway.probe` (path `/ready`, port 4191, every 3 s) and the multicluster package's
/// `DefaultProbeTimeout` (30 s) and `DefaultFailureThreshold` (3).
pub const DEFAULT_PATH: &str = "/ready";
/// Default probe port (the gateway proxy's admin port).
pub const DEFAULT_PORT: u16 = 4191;
/// Default interval between probe rounds.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(3);
/// Default timeout of one probe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of consecutive failed rounds before the gateway is not alive.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// Parsed `probeSpec` of a Link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// HTTP path requested (starts with `/`).
    pub path: String,
    /// Port of the gateway's probe endpoint.
    pub port: u16,
    /// Interval between probe rounds.
    pub period: Duration,
    /// Bound on one probe (resolve, connect, request, status line).
    pub timeout: Duration,
    /// Consecutive failed rounds before the gateway counts as not alive.
    pub failure_threshold: u32,
}

/// A `probeSpec` field that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeSpecError {
    /// `period` or `timeout` is not a positive duration such as `3s` or `1m30s`.
    #[error(
        "probeSpec.{field}: {value:?} is not a positive duration (e.g. \"3s\", \"1m30s\"): {reason}"
    )]
    Duration {
        /// The field's name in the Link.
        field: &'static str,
        /// The value found.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// `port` or `failureThreshold` is not a number in range.
    #[error("probeSpec.{field}: {value:?} is not {expected}")]
    Number {
        /// The field's name in the Link.
        field: &'static str,
        /// The value found.
        value: String,
        /// What the field must be.
        expected: &'static str,
    },
    /// `path` does not start with `/` or holds characters that cannot go on a request line.
    #[error(
        "probeSpec.path: {0:?} is not an absolute HTTP path (must start with '/', no spaces or control characters)"
    )]
    Path(String),
}

impl ProbeSpecError {
    /// A short, stable label for metrics and status reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Duration { .. } => "bad_duration",
            Self::Number { .. } => "bad_number",
            Self::Path(_) => "bad_path",
        }
    }
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_string(),
            port: DEFAULT_PORT,
            period: DEFAULT_PERIOD,
            timeout: DEFAULT_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        }
    }
}

impl ProbeSpec {
    /// Parses the Link's `probeSpec`; a missing or empty field takes Linkerd's default.
    pub fn from_link(spec: &LinkSpec) -> Result<Self, ProbeSpecError> {
        let Some(raw) = &spec.probe_spec else {
            return Ok(Self::default());
        };
        let mut out = Self::default();
        if let Some(path) = given(&raw.path) {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ProbeSpecError::Path(path.to_string()));
            }
            out.path = path.to_string();
        }
        if let Some(port) = given(&raw.port) {
            out.port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err(ProbeSpecError::Number {
                        field: "port",
                        value: port.to_string(),
                        expected: "a port number (1-65535)",
                    });
                }
            };
        }
        if let Some(period) = given(&raw.period) {
            out.period = parse_duration("period", period)?;
        }
        if let Some(timeout) = given(&raw.timeout) {
            out.timeout = parse_duration("timeout", timeout)?;
        }
        if let Some(threshold) = given(&raw.failure_threshold) {
            out.failure_threshold = match threshold.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ProbeSpecError::Number {
                        field: "failureThreshold",
                        value: threshold.to_string(),
                        expected: "a whole number of at least 1",
                    });
                }
            };
        }
        Ok(out)
    }
}

/// A field's value, or None when it is missing or blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn parse_duration(field: &'static str, value: &str) -> Result<Duration, ProbeSpecError> {
    let err = |reason: String| ProbeSpecError::Duration {
        field,
        value: value.to_string(),
        reason,
    };
    match humantime::parse_duration(value) {
        Ok(d) if d.is_zero() => Err(err("it is zero".into())),
        Ok(d) => Ok(d),
        Err(e) => Err(err(e.to_string())),
    }
}

// === impl ProbeMetrics ===

/// Labels of the prober's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The linked cluster whose gateway is probed.
    pub target_cluster: String,
}

type HistogramFamily = Family<TargetLabels, Histogram, fn() -> Histogram>;

/// Prometheus families of the prober: gateway_alive{target_cluster}, gateway_probe_latency_ms (histogram).
pub struct ProbeMetrics {
    alive: Family<TargetLabels, Gauge>,
    latency_ms: HistogramFamily,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s: loopback answers to a probe waiting out a 30 s timeout.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

impl ProbeMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            alive: Family::default(),
            latency_ms: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "gateway_alive",
            "Whether the linked cluster's gateway answers its probe (1) or failed failureThreshold times in a row (0)",
            metrics.alive.clone(),
        );
        registry.register(
            "gateway_probe_latency_ms",
            "Time to a 200 answer from a gateway's probe endpoint, in milliseconds",
            metrics.latency_ms.clone(),
        );
        Arc::new(metrics)
    }

    /// The gateway_alive value of a cluster, if a prober reports it.
    pub fn alive(&self, target_cluster: &str) -> Option<bool> {
        let labels = TargetLabels {
            target_cluster: target_cluster.to_string(),
        };
        self.alive.get(&labels).map(|g| g.get() != 0)
    }

    fn set_alive(&self, labels: &TargetLabels, alive: bool) {
        self.alive.get_or_create(labels).set(i64::from(alive));
    }

    fn observe(&self, labels: &TargetLabels, latency: Duration) {
        self.latency_ms
            .get_or_create(labels)
            .observe(latency.as_secs_f64() * 1000.0);
    }

    fn forget(&self, labels: &TargetLabels) {
        self.alive.remove(labels);
        self.latency_ms.remove(labels);
    }
}

// === the probe task ===

/// Probes every gateway address each period; the receiver says whether the gateway is
/// alive (starts true until failure_threshold consecutive failures; one success makes it
/// true again). Ends when `shutdown` turns true (or its sender is dropped), removing its
/// metric series. DNS-name gateway addresses are resolved at each probe. Must be called
/// within a Tokio runtime.
pub fn spawn_gateway_probe(
    target_cluster: String,
    gateway_addresses: Vec<String>,
    spec: ProbeSpec,
    metrics: Arc<ProbeMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    let labels = TargetLabels {
        target_cluster: target_cluster.clone(),
    };
    metrics.set_alive(&labels, true);
    let span = tracing::info_span!("gateway_probe", target_cluster = %target_cluster);
    tokio::spawn(
        async move {
            let mut state = Liveness::new(spec.failure_threshold);
            // A zero period (only possible when built by hand) would spin.
            let mut ticks = tokio::time::interval(spec.period.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                let round = async {
                    ticks.tick().await;
                    probe_round(&gateway_addresses, &spec, &metrics, &labels).await
                };
                let ok = tokio::select! {
                    ok = round => ok,
                    // A dropped sender ends the prober like `true` does.
                    changed = shutdown.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                };
                if let Some(alive) = state.record(ok) {
                    if alive {
                        tracing::info!("gateway answers its probe again; alive");
                    } else {
                        tracing::warn!(
                            failures = spec.failure_threshold,
                            "gateway probe failed failureThreshold times in a row; not alive"
                        );
                    }
                    metrics.set_alive(&labels, alive);
                    tx.send_replace(alive);
                }
            }
            metrics.forget(&labels);
        }
        .instrument(span),
    );
    rx
}

/// Consecutive failures counted against the threshold.
#[derive(Debug)]
struct Liveness {
    alive: bool,
    failures: u32,
    threshold: u32,
}

impl Liveness {
    fn new(threshold: u32) -> Self {
        Self {
            alive: true,
            failures: 0,
            threshold: threshold.max(1),
        }
    }

    /// Records a round; returns the new liveness when it changed.
    fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let alive = ok || (self.alive && self.failures < self.threshold);
        (alive != self.alive).then(|| {
            self.alive = alive;
            alive
        })
    }
}

/// Probes every address at once; true when any answered 200.
async fn probe_round(
    addresses: &[String],
    spec: &ProbeSpec,
    metrics: &ProbeMetrics,
    labels: &TargetLabels,
) -> bool {
    let probes = addresses.iter().map(|addr| async move {
        let started = Instant::now();
        let result = tokio::time::timeout(spec.timeout, probe_address(addr, spec)).await;
        match result {
            Ok(Ok(())) => {
                metrics.observe(labels, started.elapsed());
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(address = %addr, error = %e, "gateway probe failed");
                false
            }
            Err(_) => {
                tracing::debug!(address = %addr, timeout = ?spec.timeout, "gateway probe timed out");
                false
            }
        }
    });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .any(|ok| ok)
}

/// Why one probe of one address failed.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0} answered {1:?}, not 200")]
    Status(SocketAddr, String),
}

/// One GET against one gateway address (each resolved address in turn until one answers).
async fn probe_address(address: &str, spec: &ProbeSpec) -> Result<(), ProbeError> {
    let targets: Vec<SocketAddr> = match address.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, spec.port)],
        Err(_) => tokio::net::lookup_host((address, spec.port))
            .await
            .map_err(|e| ProbeError::Resolve(address.to_string(), e))?
            .collect(),
    };
    let mut last = ProbeError::NoAddress(address.to_string());
    for target in targets {
        match http_get_status(target, address, &spec.path).await {
            Ok(status) if status_code(&status) == Some(200) => return Ok(()),
            Ok(status) => last = ProbeError::Status(target, status),
            Err(e) => last = ProbeError::Io(target, e),
        }
    }
    Err(last)
}

/// Sends `GET path HTTP/1.1` and returns the response's status line.
async fn http_get_status(
    target: SocketAddr,
    host: &str,
    path: &str,
) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect(target).await?;
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: meshlink-gateway-probe\r\nConnection: close\r\n\r\n",
        port = target.port()
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all we need; it fits well within 512 bytes.
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if buf.len() >= 512 {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a status line",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::link::ProbeSpec as RawProbeSpec;

    fn link(raw: RawProbeSpec) -> LinkSpec {
        LinkSpec {
            probe_spec: Some(raw),
            ..LinkSpec::default()
        }
    }

    #[test]
    fn missing_fields_take_linkerds_defaults() {
        assert_eq!(
            ProbeSpec::from_link(&LinkSpec::default()),
            Ok(ProbeSpec::default())
        );
        let spec = ProbeSpec::from_link(&link(RawProbeSpec {
            period: Some("".into()),
            port: Some("4192".into()),
            ..RawProbeSpec::default()
        }))
        .unwrap();
        assert_eq!(spec.path, "/ready");
        assert_eq!(spec.port, 4192);
        assert_eq!(spec.period, Duration::from_secs(3));
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.failure_threshold, 3);
    }

    #[test]
    fn a_full_spec_parses_go_style_durations() {
        let spec = ProbeSpec::from_link(&link(RawProbeSpec {
            path: Some("/health".into()),
            port: Some("8080".into()),
            period: Some("1m30s".into()),
            timeout: Some("500ms".into()),
            failure_threshold: Some("5".into()),
        }))
        .unwrap();
        assert_eq!(
            spec,
            ProbeSpec {
                path: "/health".into(),
                port: 8080,
                period: Duration::from_secs(90),
                timeout: Duration::from_millis(500),
                failure_threshold: 5,
            }
        );
    }

    #[test]
    fn a_bad_duration_names_the_field_and_the_value() {
        let err = ProbeSpec::from_link(&link(RawProbeSpec {
            timeout: Some("3 parsecs".into()),
            ..RawProbeSpec::default()
        }))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("probeSpec.timeout: \"3 parsecs\""),
            "{text}"
        );
        assert_eq!(err.metric_label(), "bad_duration");
        let err = ProbeSpec::from_link(&link(RawProbeSpec {
            period: Some("0s".into()),
            ..RawProbeSpec::default()
        }))
        .unwrap_err();
        assert!(err.to_string().contains("probeSpec.period"), "{err}");
    }

    #[test]
    fn bad_numbers_and_paths_are_refused() {
        for (raw, field) in [
            (
                RawProbeSpec {
                    port: Some("70000".into()),
                    ..RawProbeSpec::default()
                },
                "probeSpec.port: \"70000\"",
            ),
            (
                RawProbeSpec {
                    failure_threshold: Some("0".into()),
                    ..RawProbeSpec::default()
                },
                "probeSpec.failureThreshold: \"0\"",
            ),
            (
                RawProbeSpec {
                    path: Some("ready".into()),
                    ..RawProbeSpec::default()
                },
                "probeSpec.path: \"ready\"",
            ),
            (
                RawProbeSpec {
                    path: Some("/a b".into()),
                    ..RawProbeSpec::default()
                },
                "probeSpec.path: \"/a b\"",
            ),
        ] {
            let err = ProbeSpec::from_link(&link(raw)).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn liveness_falls_after_the_threshold_and_rises_on_one_success() {
        let mut l = Liveness::new(3);
        assert_eq!(l.record(false), None);
        assert_eq!(l.record(false), None);
        assert_eq!(l.record(true), None, "a success resets the count");
        assert_eq!(l.record(false), None);
        assert_eq!(l.record(false), None);
        assert_eq!(l.record(false), Some(false));
        assert_eq!(l.record(false), None);
        assert_eq!(l.record(true), Some(true));
    }

    #[tokio::test]
    async fn a_dns_name_is_resolved_and_each_address_tried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            request
        });
        let spec = ProbeSpec {
            path: "/health".into(),
            port,
            ..ProbeSpec::default()
        };
        // `localhost` may resolve to ::1 first, where nothing listens.
        probe_address("localhost", &spec).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("Host: localhost:{port}\r\n")),
            "{request}"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(""), None);
    }
}
