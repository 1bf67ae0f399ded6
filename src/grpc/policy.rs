//! `OutboundPolicies` and `InboundServerPolicies`: the defaults Linkerd's policy
//! controller gives Services without routes and pods without Servers, followed live
//! through the resolver (a Service's opaque ports, a pod's appearance).

mod inbound;
mod outbound;

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use serde::Deserialize;
use tokio::sync::watch;
use tonic::Status;
use tracing::{Instrument, debug, debug_span};

use super::{
    calls::{self, Call, CallLimits},
    framing::{self, MessageSender, SendError},
};
use crate::{
    metrics::{Metrics, RpcLabels, UpdateLabels},
    model::{PortSet, ServiceRef, quote_prefix},
    proto::{inbound as inbound_pb, net, outbound as outbound_pb},
    resolver::{AddrTarget, Resolver},
};

/// The outbound policy service's gRPC name.
pub const OUTBOUND_SERVICE_NAME: &str = "io.linkerd.proxy.outbound.OutboundPolicies";
/// The inbound policy service's gRPC name.
pub const INBOUND_SERVICE_NAME: &str = "io.linkerd.proxy.inbound.InboundServerPolicies";

/// Buffered messages per stream before the send timeout starts to count.
const STREAM_BUFFER: usize = 2;

/// What policies are made from besides the index.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// The cluster's DNS domain, for authorities and balancer paths.
    pub cluster_domain: String,
    /// Ports treated as opaque on pods that do not say otherwise.
    pub default_opaque_ports: Arc<PortSet>,
    /// The cluster's pod and service networks: unknown addresses inside are NotFound,
    /// outside get the egress fallback.
    pub cluster_networks: Vec<ipnet::IpNet>,
}

struct Inner {
    resolver: Resolver,
    settings: PolicySettings,
    limits: CallLimits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// `io.linkerd.proxy.outbound.OutboundPolicies`.
#[derive(Clone)]
pub struct OutboundPolicyService(Arc<Inner>);

/// `io.linkerd.proxy.inbound.InboundServerPolicies`.
#[derive(Clone)]
pub struct InboundPolicyService(Arc<Inner>);

/// Both policy services over one resolver; every stream ends when `shutdown` turns true.
pub fn policy_services(
    resolver: Resolver,
    settings: PolicySettings,
    limits: CallLimits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> (OutboundPolicyService, InboundPolicyService) {
    let inner = Arc::new(Inner {
        resolver,
        settings,
        limits,
        metrics,
        shutdown,
    });
    (
        OutboundPolicyService(Arc::clone(&inner)),
        InboundPolicyService(inner),
    )
}

/// A workload as proxies name it: `{"ns":..,"pod":..}` (or `{"ns":..,"external_workload":..}`),
/// or the older `<ns>:<pod>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// The pod's name; `None` for an external workload.
    pub pod: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadJson {
    ns: String,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    external_workload: Option<String>,
}

impl Workload {
    /// Parses a workload string; the error names what was wrong.
    pub fn parse(s: &str) -> Result<Self, Status> {
        let invalid = |why: &str| {
            Status::invalid_argument(format!("invalid workload {}: {why}", quote_prefix(s)))
        };
        if s.starts_with('{') {
            let json: WorkloadJson =
                serde_json::from_str(s).map_err(|e| invalid(&e.to_string()))?;
            return match (json.pod, json.external_workload) {
                _ if json.ns.is_empty() => Err(invalid("ns is empty")),
                (Some(pod), None) if !pod.is_empty() => Ok(Self {
                    namespace: json.ns,
                    pod: Some(pod),
                }),
                (None, Some(ext)) if !ext.is_empty() => Ok(Self {
                    namespace: json.ns,
                    pod: None,
                }),
                _ => Err(invalid("it must name one pod or one external_workload")),
            };
        }
        match s.split_once(':') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() => Ok(Self {
                namespace: ns.into(),
                pod: Some(pod.into()),
            }),
            _ => Err(invalid(
                r#"expected {"ns":"<namespace>","pod":"<pod>"} or <namespace>:<pod>"#,
            )),
        }
    }
}

/// What an outbound lookup is about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OutboundTarget {
    /// A Service port named by authority.
    Service(ServiceRef, u16),
    /// An original destination address.
    Addr(SocketAddr),
}

/// Reads `<svc>.<ns>.svc[.<cluster-domain>][:port]` (port 80 when omitted); anything
/// else is NotFound, as Linkerd's policy controller answers.
fn parse_authority(authority: &str, cluster_domain: &str) -> Result<(ServiceRef, u16), Status> {
    let parsed: http::uri::Authority = authority.parse().map_err(|_| {
        Status::invalid_argument(format!("invalid authority {}", quote_prefix(authority)))
    })?;
    let port = match parsed.port_u16() {
        Some(0) => {
            return Err(Status::invalid_argument(format!(
                "invalid authority {}: port 0",
                quote_prefix(authority)
            )));
        }
        Some(port) => port,
        None => 80,
    };
    let host = parsed.host().trim_end_matches('.');
    let host = host
        .strip_suffix(cluster_domain)
        .and_then(|h| h.strip_suffix('.'))
        .unwrap_or(host);
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some("svc"), None) if !name.is_empty() && !ns.is_empty() => {
            Ok((ServiceRef::new(ns, name), port))
        }
        _ => Err(Status::not_found(format!(
            "{} is not a service: authorities must be of the form <name>.<namespace>.svc.{cluster_domain}",
            quote_prefix(authority)
        ))),
    }
}

/// The socket address of a proxy's `TcpAddress`.
fn to_socket_addr(addr: &net::TcpAddress) -> Result<SocketAddr, Status> {
    let ip = match addr.ip.as_ref().and_then(|ip| ip.ip.as_ref()) {
        Some(net::ip_address::Ip::Ipv4(v4)) => IpAddr::from(v4.to_be_bytes()),
        Some(net::ip_address::Ip::Ipv6(v6)) => {
            let mut octets = [0u8; 16];
            octets[..8].copy_from_slice(&v6.first.to_be_bytes());
            octets[8..].copy_from_slice(&v6.last.to_be_bytes());
            IpAddr::from(octets)
        }
        None => return Err(Status::invalid_argument("traffic target must have an IP")),
    };
    let port = u16::try_from(addr.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!("port {} is outside 1..65535", addr.port))
        })?;
    Ok(SocketAddr::new(ip, port))
}

// === impl Inner ===

impl Inner {
    async fn route(
        self: Arc<Self>,
        req: http::Request<tonic::body::Body>,
        service: &'static str,
    ) -> http::Response<tonic::body::Body> {
        let path = req.uri().path().to_string();
        let method = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(service))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or_default();
        let result = match (service, method) {
            (OUTBOUND_SERVICE_NAME, "Watch" | "Get") => {
                let watch = method == "Watch";
                match self.limits.read(req, framing::MAX_REQUEST).await {
                    Ok((spec, call)) => self.outbound(spec, call, watch).await,
                    Err(status) => Err(status),
                }
            }
            (INBOUND_SERVICE_NAME, "WatchPort" | "GetPort") => {
                let watch = method == "WatchPort";
                match self.limits.read(req, framing::MAX_REQUEST).await {
                    Ok((spec, call)) => self.inbound(spec, call, watch),
                    Err(status) => Err(status),
                }
            }
            _ => Err(Status::unimplemented(format!(
                "{} is not a method of {service}",
                quote_prefix(&path)
            ))),
        };
        result.unwrap_or_else(Status::into_http)
    }

    async fn outbound(
        self: &Arc<Self>,
        spec: outbound_pb::TrafficSpec,
        call: Call,
        watch: bool,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        Workload::parse(&spec.source_workload)?;
        let target = match spec.target {
            Some(outbound_pb::traffic_spec::Target::Authority(a)) => {
                let (svc, port) = parse_authority(&a, &self.settings.cluster_domain)?;
                OutboundTarget::Service(svc, port)
            }
            Some(outbound_pb::traffic_spec::Target::Addr(addr)) => {
                OutboundTarget::Addr(to_socket_addr(&addr)?)
            }
            None => return Err(Status::invalid_argument("target is required")),
        };
        let domain = self.settings.cluster_domain.clone();
        match target {
            OutboundTarget::Service(svc, port) => {
                let mut rx = self
                    .resolver
                    .service_info_rx(&crate::model::ServiceAuthority {
                        service: svc.name.clone(),
                        namespace: svc.namespace.clone(),
                        port,
                        hostname: None,
                    });
                let defaults = Arc::clone(&self.settings.default_opaque_ports);
                let build = move |info: &Option<Arc<crate::model::ServiceInfo>>| {
                    // Like Linkerd: a Service not (yet) known is not opaque.
                    let opaque = info.as_ref().is_some_and(|i| i.is_opaque(port, &defaults));
                    Some(outbound::service_policy(&svc, port, opaque, &domain))
                };
                let first = build(&rx.borrow_and_update());
                self.answer(call, watch, "Watch", first, Some(rx), build)
            }
            OutboundTarget::Addr(addr) => {
                let mut rx = self.resolver.addr_target_rx(addr);
                let defaults = Arc::clone(&self.settings.default_opaque_ports);
                let build = move |target: &AddrTarget| match target {
                    AddrTarget::Service(info) => Some(outbound::service_policy(
                        &info.service,
                        addr.port(),
                        info.is_opaque(addr.port(), &defaults),
                        &domain,
                    )),
                    // An address that stops being a Service keeps its last policy.
                    _ => None,
                };
                let first = build(&rx.borrow_and_update());
                if first.is_some() {
                    return self.answer(call, watch, "Watch", first, Some(rx), build);
                }
                let in_cluster = self
                    .settings
                    .cluster_networks
                    .iter()
                    .any(|n| n.contains(&addr.ip()));
                if in_cluster {
                    return Err(Status::not_found(format!(
                        "no such service: {addr} is not a Service's cluster IP"
                    )));
                }
                let fallback = outbound::egress_fallback(addr);
                // Answered once; the stream stays open like Linkerd's.
                self.answer(
                    call,
                    watch,
                    "Watch",
                    Some(fallback),
                    None::<watch::Receiver<()>>,
                    |_| None,
                )
            }
        }
    }

    fn inbound(
        self: &Arc<Self>,
        spec: inbound_pb::PortSpec,
        call: Call,
        watch: bool,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        let workload = Workload::parse(&spec.workload)?;
        let port = u16::try_from(spec.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("invalid port: {}", spec.port)))?;
        let Some(pod) = workload.pod else {
            return Err(Status::not_found(
                "unknown server: external workloads are not indexed",
            ));
        };
        let mut rx = self.resolver.pod_rx(&workload.namespace, &pod);
        if rx.borrow().is_none() {
            return Err(Status::not_found(format!(
                "unknown server: no pod {}/{}",
                workload.namespace,
                quote_prefix(&pod)
            )));
        }
        let defaults = Arc::clone(&self.settings.default_opaque_ports);
        let build = move |pod: &Option<Arc<crate::resolver::PodInfo>>| {
            // A pod that goes away keeps its last policy until the proxy stops asking.
            let pod = pod.as_ref()?;
            Some(inbound::all_unauthenticated(pod.is_opaque(port, &defaults)))
        };
        let first = build(&rx.borrow_and_update());
        self.answer(call, watch, "WatchPort", first, Some(rx), build)
    }

    /// The first message at once (the whole answer of a unary call); for a watch, a
    /// task that sends it again whenever `rx` changes it.
    #[allow(clippy::too_many_arguments)]
    fn answer<T, M>(
        self: &Arc<Self>,
        call: Call,
        watch: bool,
        rpc: &'static str,
        first: Option<M>,
        rx: Option<watch::Receiver<T>>,
        build: impl FnMut(&T) -> Option<M> + Send + 'static,
    ) -> Result<http::Response<tonic::body::Body>, Status>
    where
        T: Send + Sync + 'static,
        M: prost::Message + PartialEq + 'static,
    {
        let Some(first) = first else {
            return Err(Status::not_found("no policy for this target"));
        };
        if !watch {
            return Ok(calls::unary(&first));
        }
        let (tx, body) = call.channel(STREAM_BUFFER);
        let stream = PolicyStream {
            tx,
            inner: Arc::clone(self),
            deadline: call.deadline,
            rpc,
        };
        tokio::spawn(
            stream
                .run(first, rx, build)
                .instrument(debug_span!("policy", rpc)),
        );
        Ok(body.into_response())
    }
}

/// A watch: the latest policy, sent whenever it changes.
struct PolicyStream {
    tx: MessageSender,
    inner: Arc<Inner>,
    deadline: Option<tokio::time::Instant>,
    rpc: &'static str,
}

impl PolicyStream {
    async fn run<T, M>(
        self,
        first: M,
        mut rx: Option<watch::Receiver<T>>,
        mut build: impl FnMut(&T) -> Option<M>,
    ) where
        M: prost::Message + PartialEq,
    {
        let metrics = &self.inner.metrics;
        let open = metrics
            .streams_open
            .get_or_create(&RpcLabels { rpc: self.rpc })
            .clone();
        open.inc();
        let _open = scopeguard(move || {
            open.dec();
        });
        let sent = metrics
            .updates_sent
            .get_or_create(&UpdateLabels {
                rpc: self.rpc,
                kind: "policy",
            })
            .clone();
        let mut shutdown = self.inner.shutdown.clone();
        let mut next = Some(first);
        let mut last: Option<M> = None;
        loop {
            if let Some(msg) = next.take().filter(|m| last.as_ref() != Some(m)) {
                match self
                    .tx
                    .send(framing::encode(&msg), self.inner.limits.send_timeout)
                    .await
                {
                    Ok(()) => sent.inc(),
                    Err(SendError::Closed) => return,
                    Err(SendError::TimedOut) => {
                        debug!("client stopped reading; ending the stream");
                        metrics.stream_send_timeouts.inc();
                        self.tx.end_stalled(calls::stalled());
                        return;
                    }
                };
                last = Some(msg);
            }
            let changed = async {
                match rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = changed => {
                    match (alive, rx.as_mut()) {
                        (true, Some(rx)) => next = build(&rx.borrow_and_update()),
                        // The index is gone: the server is shutting down.
                        _ => return,
                    }
                }
                _ = self.tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
                _ = Call::deadline_passed(self.deadline) => {
                    self.tx.end(calls::deadline_exceeded());
                    return;
                }
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

macro_rules! tower_service {
    ($ty:ident, $name:expr) => {
        impl tower_service::Service<http::Request<tonic::body::Body>> for $ty {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
                let inner = Arc::clone(&self.0);
                Box::pin(async move { Ok(inner.route(req, $name).await) })
            }
        }

        impl tonic::server::NamedService for $ty {
            const NAME: &'static str = $name;
        }
    };
}

tower_service!(OutboundPolicyService, OUTBOUND_SERVICE_NAME);
tower_service!(InboundPolicyService, INBOUND_SERVICE_NAME);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_in_both_forms() {
        let pod = |ns: &str, pod: &str| Workload {
            namespace: ns.into(),
            pod: Some(pod.into()),
        };
        assert_eq!(
            Workload::parse(r#"{"ns":"shop","pod":"web-1"}"#).unwrap(),
            pod("shop", "web-1")
        );
        assert_eq!(Workload::parse("shop:web-1").unwrap(), pod("shop", "web-1"));
        assert_eq!(
            Workload::parse(r#"{"ns":"shop","external_workload":"vm"}"#)
                .unwrap()
                .pod,
            None
        );
        for bad in [
            "",
            "shop",
            ":web",
            r#"{"ns":"shop"}"#,
            r#"{"ns":"shop","x":"y"}"#,
        ] {
            let err = Workload::parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn authorities_name_services_or_are_not_found() {
        let ok = |a: &str| parse_authority(a, "cluster.local").unwrap();
        assert_eq!(
            ok("web.shop.svc.cluster.local:8080"),
            (ServiceRef::new("shop", "web"), 8080)
        );
        assert_eq!(
            ok("web.shop.svc.cluster.local."),
            (ServiceRef::new("shop", "web"), 80)
        );
        assert_eq!(ok("web.shop.svc:81"), (ServiceRef::new("shop", "web"), 81));
        for missing in ["web.shop:80", "example.com:443", "a.b.svc.other.domain:80"] {
            let err = parse_authority(missing, "cluster.local").unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{missing}");
        }
        let err = parse_authority("web.shop.svc.cluster.local:x", "cluster.local").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
