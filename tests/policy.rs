//! OutboundPolicies and InboundServerPolicies over loopback with the published client:
//! answers decode and carry every field a proxy requires (checked field by field, as the
//! proxy's own conversion does), follow the Service or pod, and unknown targets answer as
//! Linkerd's policy controller does.

mod support;

use std::{net::SocketAddr, time::Duration};

use linkerd2_proxy_api::{
    http_route, inbound,
    inbound::inbound_server_policies_client::InboundServerPoliciesClient,
    meta, net,
    outbound::{
        self, Backend, OpaqueRoute, OutboundPolicy, TrafficSpec,
        outbound_policies_client::OutboundPoliciesClient, proxy_protocol, traffic_spec,
    },
};
use support::{
    TestServer, assert_quiet, next, reflection_services, socket_addr,
    world::{PodOpts, docs, pod, service, service_with},
};
use tonic::{Code, Streaming, transport::Channel};

const WORKLOAD: &str = r#"{"ns":"client","pod":"client-1"}"#;

/// A world with `web` (port 80 to 8080, cluster IP 10.96.0.10) and `db` (3306, opaque by
/// default), and the pod behind `web`.
fn world() -> Vec<(&'static str, String)> {
    vec![
        (
            "local/svc.yaml",
            docs(&[
                service_with(
                    "shop",
                    "web",
                    &[(80, "8080", "http")],
                    "  clusterIP: 10.96.0.10\n",
                ),
                service("shop", "db", &[(3306, "3306", "mysql")]),
            ]),
        ),
        (
            "local/pods.yaml",
            pod(&PodOpts {
                annotations: &[("config.linkerd.io/opaque-ports", "5432")],
                ports: &[("http", 8080), ("pg", 5432)],
                ..PodOpts::default()
            }),
        ),
    ]
}

async fn start() -> TestServer {
    let files = world();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    TestServer::start(&files).await
}

async fn channel(srv: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", srv.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn authority(a: &str) -> TrafficSpec {
    TrafficSpec {
        source_workload: WORKLOAD.into(),
        target: Some(traffic_spec::Target::Authority(a.into())),
    }
}

fn addr(a: &str) -> TrafficSpec {
    let addr: SocketAddr = a.parse().expect("socket address");
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => net::ip_address::Ip::Ipv4(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            net::ip_address::Ip::Ipv6(net::IPv6 {
                first: u64::from_be_bytes(o[..8].try_into().expect("8 bytes")),
                last: u64::from_be_bytes(o[8..].try_into().expect("8 bytes")),
            })
        }
    };
    TrafficSpec {
        source_workload: WORKLOAD.into(),
        target: Some(traffic_spec::Target::Addr(net::TcpAddress {
            ip: Some(net::IpAddress { ip: Some(ip) }),
            port: u32::from(addr.port()),
        })),
    }
}

async fn watch(
    srv: &TestServer,
    spec: TrafficSpec,
) -> Result<Streaming<OutboundPolicy>, tonic::Status> {
    OutboundPoliciesClient::new(channel(srv).await)
        .watch(spec)
        .await
        .map(|r| r.into_inner())
}

async fn watch_port(
    srv: &TestServer,
    workload: &str,
    port: u32,
) -> Result<Streaming<inbound::Server>, tonic::Status> {
    let spec = inbound::PortSpec {
        workload: workload.into(),
        port,
    };
    InboundServerPoliciesClient::new(channel(srv).await)
        .watch_port(spec)
        .await
        .map(|r| r.into_inner())
}

fn duration(d: &Option<prost_types::Duration>, what: &str) -> Duration {
    Duration::try_from((*d).unwrap_or_else(|| panic!("{what} is missing")))
        .unwrap_or_else(|e| panic!("{what} is not a valid duration: {e}"))
}

/// A metadata the proxy accepts: a default's name, or a resource with group, kind, name
/// and namespace set.
fn check_meta(m: &Option<meta::Metadata>, what: &str) -> meta::metadata::Kind {
    let kind = m
        .as_ref()
        .and_then(|m| m.kind.clone())
        .unwrap_or_else(|| panic!("{what}: metadata is missing"));
    if let meta::metadata::Kind::Resource(r) = &kind {
        for (field, value) in [
            ("group", &r.group),
            ("kind", &r.kind),
            ("name", &r.name),
            ("namespace", &r.namespace),
        ] {
            assert!(!value.is_empty(), "{what}: resource {field} is empty");
        }
    }
    kind
}

fn check_backend(b: &Option<Backend>, what: &str) -> outbound::backend::Kind {
    let b = b.as_ref().unwrap_or_else(|| panic!("{what}: no backend"));
    check_meta(&b.metadata, what);
    let queue = b
        .queue
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no queue"));
    assert_eq!(queue.capacity, 100, "{what}: queue capacity");
    assert_eq!(
        duration(&queue.failfast_timeout, "failfast timeout"),
        Duration::from_secs(3)
    );
    let kind = b
        .kind
        .clone()
        .unwrap_or_else(|| panic!("{what}: no dispatcher"));
    if let outbound::backend::Kind::Balancer(p2c) = &kind {
        p2c.discovery
            .as_ref()
            .and_then(|d| d.kind.as_ref())
            .unwrap_or_else(|| panic!("{what}: no discovery"));
        match p2c.load.as_ref() {
            Some(outbound::backend::balance_p2c::Load::PeakEwma(e)) => {
                duration(&e.default_rtt, "EWMA default RTT");
                duration(&e.decay, "EWMA decay");
            }
            other => panic!("{what}: load is {other:?}, not PeakEwma"),
        }
    }
    kind
}

/// The one backend of an opaque route.
fn opaque_backend(routes: &[OpaqueRoute]) -> outbound::backend::Kind {
    let [route] = routes else {
        panic!("one opaque route expected: {routes:?}");
    };
    check_meta(&route.metadata, "opaque route");
    let [rule] = route.rules.as_slice() else {
        panic!("one opaque rule expected");
    };
    match rule.backends.as_ref().and_then(|d| d.kind.as_ref()) {
        Some(outbound::opaque_route::distribution::Kind::FirstAvailable(f)) => {
            let [b] = f.backends.as_slice() else {
                panic!("one backend expected");
            };
            check_backend(&b.backend, "opaque backend")
        }
        other => panic!("opaque distribution {other:?}"),
    }
}

/// The one rule of the HTTP routes (the same for HTTP/1 and HTTP/2): its match and backend.
fn http_rule(
    http1: &Option<proxy_protocol::Http1>,
    http2: &Option<proxy_protocol::Http2>,
) -> (http_route::HttpRouteMatch, outbound::backend::Kind) {
    let routes1 = &http1.as_ref().expect("HTTP/1 configuration").routes;
    let routes2 = &http2.as_ref().expect("HTTP/2 configuration").routes;
    assert_eq!(routes1, routes2, "the same routes for HTTP/1 and HTTP/2");
    let [route] = routes1.as_slice() else {
        panic!("one HTTP route expected");
    };
    check_meta(&route.metadata, "HTTP route");
    let [rule] = route.rules.as_slice() else {
        panic!("one HTTP rule expected");
    };
    let [m] = rule.matches.as_slice() else {
        panic!("one match expected");
    };
    let backend = match rule.backends.as_ref().and_then(|d| d.kind.as_ref()) {
        Some(outbound::http_route::distribution::Kind::FirstAvailable(f)) => {
            let [b] = f.backends.as_slice() else {
                panic!("one backend expected");
            };
            check_backend(&b.backend, "HTTP backend")
        }
        other => panic!("HTTP distribution {other:?}"),
    };
    (m.clone(), backend)
}

fn dst_path(kind: &outbound::backend::Kind) -> String {
    match kind {
        outbound::backend::Kind::Balancer(p2c) => {
            match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(outbound::backend::endpoint_discovery::Kind::Dst(dst)) => dst.path.clone(),
                other => panic!("discovery {other:?}"),
            }
        }
        other => panic!("backend {other:?}, not a balancer"),
    }
}

fn service_meta(ns: &str, name: &str, port: u32) -> meta::metadata::Kind {
    meta::metadata::Kind::Resource(meta::Resource {
        group: "core".into(),
        kind: "Service".into(),
        name: name.into(),
        namespace: ns.into(),
        section: String::new(),
        port,
    })
}

/// Checks the default policy of an HTTP Service port; returns nothing, fails on a gap.
fn check_http_service_policy(p: &OutboundPolicy, ns: &str, name: &str, port: u32) {
    assert_eq!(
        check_meta(&p.metadata, "policy"),
        service_meta(ns, name, port)
    );
    let Some(proxy_protocol::Kind::Detect(detect)) =
        p.protocol.as_ref().and_then(|p| p.kind.clone())
    else {
        panic!("protocol detection expected: {p:?}");
    };
    assert_eq!(
        duration(&detect.timeout, "detect timeout"),
        Duration::from_secs(10)
    );
    let opaque = opaque_backend(&detect.opaque.expect("opaque configuration").routes);
    let (m, http) = http_rule(&detect.http1, &detect.http2);
    assert_eq!(
        m.path.and_then(|p| p.kind),
        Some(http_route::path_match::Kind::Prefix("/".into()))
    );
    let path = format!("{name}.{ns}.svc.cluster.local:{port}");
    assert_eq!(dst_path(&opaque), path);
    assert_eq!(dst_path(&http), path);
}

#[tokio::test]
async fn a_service_port_gets_the_default_routes_to_one_balancer() {
    let srv = start().await;
    let mut by_name = watch(&srv, authority("web.shop.svc.cluster.local:80"))
        .await
        .expect("Watch");
    let policy = next(&mut by_name).await;
    check_http_service_policy(&policy, "shop", "web", 80);
    // By cluster IP, the same policy.
    let mut by_ip = watch(&srv, addr("10.96.0.10:80")).await.expect("Watch");
    assert_eq!(next(&mut by_ip).await, policy);
    // The stream stays open with nothing new to say.
    assert_quiet(&mut by_name, Duration::from_millis(300)).await;

    // Get answers the same once.
    let once = OutboundPoliciesClient::new(channel(&srv).await)
        .get(authority("web.shop.svc.cluster.local:80"))
        .await
        .expect("Get")
        .into_inner();
    assert_eq!(once, policy);
    srv.stop().await;
}

#[tokio::test]
async fn opaque_ports_get_the_opaque_route_and_changes_are_streamed() {
    let srv = start().await;
    // 3306 is among the default opaque ports.
    let mut db = watch(&srv, authority("db.shop.svc.cluster.local:3306"))
        .await
        .expect("Watch");
    let policy = next(&mut db).await;
    let Some(proxy_protocol::Kind::Opaque(opaque)) =
        policy.protocol.as_ref().and_then(|p| p.kind.clone())
    else {
        panic!("opaque expected: {policy:?}");
    };
    assert_eq!(
        dst_path(&opaque_backend(&opaque.routes)),
        "db.shop.svc.cluster.local:3306"
    );

    // Marking web's port 80 opaque reaches an open watch.
    let mut web = watch(&srv, authority("web.shop.svc.cluster.local:80"))
        .await
        .expect("Watch");
    check_http_service_policy(&next(&mut web).await, "shop", "web", 80);
    srv.write(
        "local/svc.yaml",
        &service_with(
            "shop",
            "web",
            &[(80, "8080", "http")],
            "  clusterIP: 10.96.0.10\n",
        )
        .replace(
            "metadata: {name: web, namespace: shop}",
            "metadata: {name: web, namespace: shop, annotations: {config.linkerd.io/opaque-ports: \"80\"}}",
        ),
    );
    let changed = next(&mut web).await;
    assert!(
        matches!(
            changed.protocol.and_then(|p| p.kind),
            Some(proxy_protocol::Kind::Opaque(_))
        ),
        "the watch follows the Service's opaque ports"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unknown_targets_answer_as_linkerds_policy_controller() {
    let srv = start().await;
    // Outside the cluster's networks: straight to the address.
    let mut egress = watch(&srv, addr("203.0.113.7:443")).await.expect("Watch");
    let policy = next(&mut egress).await;
    assert_eq!(
        check_meta(&policy.metadata, "policy"),
        meta::metadata::Kind::Default("egress-fallback".into())
    );
    let Some(proxy_protocol::Kind::Detect(detect)) = policy.protocol.and_then(|p| p.kind) else {
        panic!("protocol detection expected");
    };
    duration(&detect.timeout, "detect timeout");
    let forward = opaque_backend(&detect.opaque.expect("opaque").routes);
    let (_, http) = http_rule(&detect.http1, &detect.http2);
    for backend in [forward, http] {
        match backend {
            outbound::backend::Kind::Forward(ep) => {
                assert_eq!(
                    socket_addr(ep.addr.as_ref().expect("address")),
                    "203.0.113.7:443".parse::<SocketAddr>().expect("addr")
                );
            }
            other => panic!("forward expected, got {other:?}"),
        }
    }
    assert_quiet(&mut egress, Duration::from_millis(200)).await;

    let status = |r: Result<Streaming<OutboundPolicy>, tonic::Status>| match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => s,
    };
    // Inside the cluster's networks, not a Service: NotFound (the proxy then uses the profile).
    let s = status(watch(&srv, addr("10.1.0.1:8080")).await);
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    // A name that is not a service.
    let s = status(watch(&srv, authority("example.com:80")).await);
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    // Requests a proxy never sends.
    let mut no_workload = authority("web.shop.svc.cluster.local:80");
    no_workload.source_workload.clear();
    let s = status(watch(&srv, no_workload).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let no_target = TrafficSpec {
        source_workload: WORKLOAD.into(),
        target: None,
    };
    let s = status(watch(&srv, no_target).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = status(watch(&srv, addr("10.96.0.10:0")).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    srv.stop().await;
}

/// Checks Linkerd's `all-unauthenticated` default server, as the proxy reads it.
fn check_all_unauthenticated(s: &inbound::Server) -> inbound::proxy_protocol::Kind {
    let label = |k: &str| s.labels.get(k).map(String::as_str);
    assert_eq!(label("name"), Some("all-unauthenticated"));
    assert_eq!(label("kind"), Some("default"));
    assert_eq!(label("group"), Some(""));
    let [authz] = s.authorizations.as_slice() else {
        panic!("one authorization expected");
    };
    assert_eq!(
        check_meta(&authz.metadata, "authorization"),
        meta::metadata::Kind::Default("all-unauthenticated".into())
    );
    let nets: Vec<(Option<net::ip_address::Ip>, u32)> = authz
        .networks
        .iter()
        .map(|n| {
            let net = n.net.as_ref().expect("network");
            (net.ip.as_ref().and_then(|ip| ip.ip), net.prefix_len)
        })
        .collect();
    assert_eq!(
        nets,
        vec![
            (Some(net::ip_address::Ip::Ipv4(0)), 0),
            (
                Some(net::ip_address::Ip::Ipv6(net::IPv6 { first: 0, last: 0 })),
                0
            ),
        ],
        "every IPv4 and IPv6 client"
    );
    assert!(matches!(
        authz
            .authentication
            .as_ref()
            .and_then(|a| a.permit.as_ref()),
        Some(inbound::authn::Permit::Unauthenticated(_))
    ));
    s.protocol
        .as_ref()
        .and_then(|p| p.kind.clone())
        .expect("a protocol")
}

#[tokio::test]
async fn a_pod_port_gets_all_unauthenticated() {
    let srv = start().await;
    let workload = r#"{"ns":"shop","pod":"web-1"}"#;
    let mut http = watch_port(&srv, workload, 8080).await.expect("WatchPort");
    let server = next(&mut http).await;
    match check_all_unauthenticated(&server) {
        inbound::proxy_protocol::Kind::Detect(d) => {
            assert_eq!(
                duration(&d.timeout, "detect timeout"),
                Duration::from_secs(10)
            );
            let [route] = d.http_routes.as_slice() else {
                panic!("one HTTP route expected");
            };
            assert_eq!(
                check_meta(&route.metadata, "route"),
                meta::metadata::Kind::Default("default".into())
            );
            let [rule] = route.rules.as_slice() else {
                panic!("one rule expected");
            };
            assert_eq!(
                rule.matches[0].path.as_ref().and_then(|p| p.kind.clone()),
                Some(http_route::path_match::Kind::Prefix("/".into()))
            );
        }
        other => panic!("protocol detection expected, got {other:?}"),
    }
    assert_quiet(&mut http, Duration::from_millis(200)).await;

    // The pod's opaque port, named in the older `ns:pod` form.
    let mut pg = watch_port(&srv, "shop:web-1", 5432)
        .await
        .expect("WatchPort");
    assert!(matches!(
        check_all_unauthenticated(&next(&mut pg).await),
        inbound::proxy_protocol::Kind::Opaque(_)
    ));

    let code = |r: Result<Streaming<inbound::Server>, tonic::Status>| match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => s.code(),
    };
    assert_eq!(
        code(watch_port(&srv, r#"{"ns":"shop","pod":"nope"}"#, 8080).await),
        Code::NotFound
    );
    assert_eq!(
        code(watch_port(&srv, workload, 0).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(watch_port(&srv, "nonsense", 8080).await),
        Code::InvalidArgument
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_pod_that_appears_is_answered_and_streams_count_in_metrics() {
    let srv = start().await;
    let workload = r#"{"ns":"shop","pod":"web-2"}"#;
    assert_eq!(
        watch_port(&srv, workload, 8080)
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::NotFound),
        "unknown until the pod exists"
    );
    srv.write(
        "local/pod2.yaml",
        &pod(&PodOpts {
            name: "web-2",
            ips: &["10.1.0.2"],
            ..PodOpts::default()
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match watch_port(&srv, workload, 8080).await {
            Ok(stream) => break stream,
            Err(s) if s.code() == Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("the new pod was not answered: {s:?}"),
        }
    };
    check_all_unauthenticated(&next(&mut stream).await);
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains(r#"meshlink_grpc_streams_open{rpc="WatchPort"} 1"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn health_and_reflection_list_identity_and_policy() {
    let srv = start().await;
    let channel = channel(&srv).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "io.linkerd.proxy.identity.Identity",
        "io.linkerd.proxy.outbound.OutboundPolicies",
        "io.linkerd.proxy.inbound.InboundServerPolicies",
    ] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
    let listed = reflection_services(channel).await;
    for want in [
        "io.linkerd.proxy.identity.Identity",
        "io.linkerd.proxy.outbound.OutboundPolicies",
        "io.linkerd.proxy.inbound.InboundServerPolicies",
    ] {
        assert!(listed.iter().any(|s| s == want), "{want} not in {listed:?}");
    }
    srv.stop().await;
}
