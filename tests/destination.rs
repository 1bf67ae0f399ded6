//! `Get` over a real socket, checked with the published linkerd2-proxy-api client.

mod support;

use std::time::Duration;

use support::{world::*, *};
use tonic::Code;

const WEB: &str = "web.shop.svc.cluster.local:80";

fn web_pod(name: &'static str, ip: &'static str) -> String {
    pod(&PodOpts {
        name,
        ips: Box::leak(Box::new([ip])),
        ..Default::default()
    })
}

fn web_world(pods: &[(&'static str, &'static str)]) -> String {
    let mut parts = vec![service("shop", "web", &[(80, "http", "http")])];
    parts.extend(pods.iter().map(|(n, ip)| web_pod(n, ip)));
    docs(&parts)
}

#[tokio::test]
async fn unknown_service_then_service_without_ready_endpoints() {
    let unready = pod(&PodOpts {
        name: "web-1",
        ready: false,
        ..Default::default()
    });
    let srv = TestServer::start(&[(
        "local/web.yaml",
        &docs(&[service("shop", "web", &[(80, "http", "http")]), unready]),
    )])
    .await;

    let mut missing = srv
        .get("nope.shop.svc.cluster.local:80")
        .await
        .expect("Get");
    assert_eq!(
        next_msg(&mut missing).await,
        Msg::NoEndpoints { exists: false }
    );

    let mut web = srv.get(WEB).await.expect("Get");
    assert_eq!(next_msg(&mut web).await, Msg::NoEndpoints { exists: true });
    srv.stop().await;
}

#[tokio::test]
async fn scaling_sends_only_the_difference() {
    let srv = TestServer::start(&[(
        "local/web.yaml",
        &web_world(&[("web-1", "10.1.0.1"), ("web-2", "10.1.0.2")]),
    )])
    .await;
    let mut s = srv.get(WEB).await.expect("Get");
    assert_eq!(
        next_msg(&mut s).await.added(),
        [sa("10.1.0.1:8080"), sa("10.1.0.2:8080")]
    );

    // Scale up: only the new pod is added.
    srv.write(
        "local/web.yaml",
        &web_world(&[
            ("web-1", "10.1.0.1"),
            ("web-2", "10.1.0.2"),
            ("web-3", "10.1.0.3"),
        ]),
    );
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.3:8080")]);

    // Scale down: only the gone pods are removed.
    srv.write("local/web.yaml", &web_world(&[("web-3", "10.1.0.3")]));
    assert_eq!(
        next_msg(&mut s).await.removed(),
        [sa("10.1.0.1:8080"), sa("10.1.0.2:8080")]
    );
    assert_quiet(&mut s, Duration::from_millis(300)).await;

    // The last pod changes service account: it is re-sent whole with the new identity.
    let moved = pod(&PodOpts {
        name: "web-3",
        ips: &["10.1.0.3"],
        service_account: "web-v2",
        ..Default::default()
    });
    srv.write(
        "local/web.yaml",
        &docs(&[service("shop", "web", &[(80, "http", "http")]), moved]),
    );
    let msg = next_msg(&mut s).await;
    assert_eq!(msg.added(), [sa("10.1.0.3:8080")]);
    assert_eq!(
        identity(&msg.add_set()[0]).as_deref(),
        Some("web-v2.shop.serviceaccount.identity.linkerd.cluster.local")
    );
    srv.stop().await;
}

#[tokio::test]
async fn named_target_port_resolves_per_pod() {
    let a = pod(&PodOpts {
        name: "web-1",
        ips: &["10.1.0.1"],
        ports: &[("http", 8080)],
        ..Default::default()
    });
    let b = pod(&PodOpts {
        name: "web-2",
        ips: &["10.1.0.2"],
        ports: &[("http", 9090)],
        ..Default::default()
    });
    let srv = TestServer::start(&[(
        "local/web.yaml",
        &docs(&[service("shop", "web", &[(80, "http", "http")]), a, b]),
    )])
    .await;
    let mut s = srv.get(WEB).await.expect("Get");
    assert_eq!(
        next_msg(&mut s).await.added(),
        [sa("10.1.0.1:8080"), sa("10.1.0.2:9090")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn identities_and_hints_follow_the_mesh() {
    let meshed = pod(&PodOpts {
        name: "meshed",
        ips: &["10.1.0.1"],
        service_account: "web-sa",
        ..Default::default()
    });
    let plain = pod(&PodOpts {
        name: "plain",
        ips: &["10.1.0.2"],
        meshed: false,
        ..Default::default()
    });
    let skipped = pod(&PodOpts {
        name: "skipped",
        ips: &["10.1.0.3"],
        annotations: &[("config.linkerd.io/skip-inbound-ports", "8080")],
        ..Default::default()
    });
    let srv = TestServer::start(&[(
        "local/web.yaml",
        &docs(&[
            service("shop", "web", &[(80, "http", "http")]),
            meshed,
            plain,
            skipped,
        ]),
    )])
    .await;
    let mut s = srv.get(WEB).await.expect("Get");
    let msg = next_msg(&mut s).await;
    let set = msg.add_set();

    let m = find(set, "10.1.0.1:8080");
    let id = "web-sa.shop.serviceaccount.identity.linkerd.cluster.local";
    assert_eq!(identity(m).as_deref(), Some(id));
    assert_eq!(server_name(m).as_deref(), Some(id));
    assert_eq!(hint(m), Some("h2"));
    assert_eq!(m.weight, 10_000);
    assert_eq!(
        m.metric_labels.get("pod").map(String::as_str),
        Some("meshed")
    );
    assert_eq!(
        m.metric_labels.get("serviceaccount").map(String::as_str),
        Some("web-sa")
    );

    for addr in ["10.1.0.2:8080", "10.1.0.3:8080"] {
        let e = find(set, addr);
        assert_eq!(identity(e), None, "{addr}");
        assert_eq!(hint(e), None, "{addr}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn opaque_ports_by_number_range_and_name() {
    let mk = |name: &'static str, ip: &'static [&'static str], ann: &'static str| {
        pod(&PodOpts {
            name,
            app: "db",
            ips: ip,
            ports: &[("sql", 7000)],
            annotations: Box::leak(Box::new([("config.linkerd.io/opaque-ports", ann)])),
            ..Default::default()
        })
    };
    let srv = TestServer::start(&[(
        "local/db.yaml",
        &docs(&[
            service("shop", "db", &[(7000, "sql", "sql")]),
            mk("by-number", &["10.1.0.1"], "7000"),
            mk("by-range", &["10.1.0.2"], "6000-7100"),
            mk("by-name", &["10.1.0.3"], "sql"),
            mk("not-opaque", &["10.1.0.4"], "25"),
        ]),
    )])
    .await;
    let mut s = srv
        .get("db.shop.svc.cluster.local:7000")
        .await
        .expect("Get");
    let msg = next_msg(&mut s).await;
    for addr in ["10.1.0.1:7000", "10.1.0.2:7000", "10.1.0.3:7000"] {
        let e = find(msg.add_set(), addr);
        assert_eq!(hint(e), Some("opaque"), "{addr}");
        assert_eq!(opaque_port(e), Some(4143), "{addr}");
    }
    let plain = find(msg.add_set(), "10.1.0.4:7000");
    assert_eq!(hint(plain), Some("h2"));
    assert_eq!(opaque_port(plain), None);
    srv.stop().await;
}

#[tokio::test]
async fn default_opaque_ports_apply_without_annotation() {
    let pg = pod(&PodOpts {
        name: "pg-0",
        app: "pg",
        ips: &["10.1.0.9"],
        ports: &[("pg", 5432)],
        ..Default::default()
    });
    let srv = TestServer::start(&[(
        "local/pg.yaml",
        &docs(&[service("shop", "pg", &[(5432, "5432", "pg")]), pg]),
    )])
    .await;
    let mut s = srv
        .get("pg.shop.svc.cluster.local:5432")
        .await
        .expect("Get");
    let msg = next_msg(&mut s).await;
    assert_eq!(hint(&msg.add_set()[0]), Some("opaque"));
    srv.stop().await;
}

#[tokio::test]
async fn opaque_transport_port_is_the_proxys_inbound_port() {
    let mk = |name: &'static str, ip: &'static [&'static str], env: &'static [(&str, &str)]| {
        pod(&PodOpts {
            name,
            app: "db",
            ips: ip,
            ports: &[("sql", 5432)],
            proxy_env: env,
            ..Default::default()
        })
    };
    const ENV: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";
    let srv = TestServer::start(&[(
        "local/db.yaml",
        &docs(&[
            service("shop", "db", &[(5432, "sql", "sql")]),
            mk("custom", &["10.1.0.1"], &[(ENV, "0.0.0.0:4243")]),
            mk("ipv6", &["10.1.0.2"], &[(ENV, "[::]:4343")]),
            mk("unset", &["10.1.0.3"], &[("LINKERD2_PROXY_LOG", "info")]),
            mk("garbled", &["10.1.0.4"], &[(ENV, "0.0.0.0:http")]),
        ]),
    )])
    .await;
    let mut s = srv
        .get("db.shop.svc.cluster.local:5432")
        .await
        .expect("Get");
    let msg = next_msg(&mut s).await;
    let set = msg.add_set();
    for (addr, port) in [
        ("10.1.0.1:5432", 4243),
        ("10.1.0.2:5432", 4343),
        ("10.1.0.3:5432", 4143),
        ("10.1.0.4:5432", 4143),
    ] {
        let e = find(set, addr);
        assert_eq!(hint(e), Some("opaque"), "{addr}");
        assert_eq!(opaque_port(e), Some(port), "{addr}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn control_plane_ns_label_of_meshed_pods() {
    let srv = TestServer::start(&[(
        "local/web.yaml",
        &docs(&[
            service("shop", "web", &[(80, "http", "http")]),
            pod(&PodOpts {
                name: "meshed",
                ips: &["10.1.0.1"],
                ..Default::default()
            }),
            pod(&PodOpts {
                name: "plain",
                ips: &["10.1.0.2"],
                meshed: false,
                ..Default::default()
            }),
        ]),
    )])
    .await;
    let mut s = srv.get(WEB).await.expect("Get");
    let msg = next_msg(&mut s).await;
    let label = |addr| {
        find(msg.add_set(), addr)
            .metric_labels
            .get("control_plane_ns")
            .cloned()
    };
    assert_eq!(label("10.1.0.1:8080").as_deref(), Some("linkerd"));
    assert_eq!(label("10.1.0.2:8080"), None);
    srv.stop().await;
}

#[tokio::test]
async fn hostname_of_a_headless_service_is_only_that_pod() {
    let headless = service_with("shop", "db", &[(5432, "5432", "pg")], "  clusterIP: None\n");
    let p0 = pod(&PodOpts {
        name: "db-0",
        app: "db",
        ips: &["10.1.0.10"],
        hostname: Some("db-0"),
        ports: &[("pg", 5432)],
        ..Default::default()
    });
    let p1 = pod(&PodOpts {
        name: "db-1",
        app: "db",
        ips: &["10.1.0.11"],
        hostname: Some("db-1"),
        ports: &[("pg", 5432)],
        ..Default::default()
    });
    let srv = TestServer::start(&[("local/db.yaml", &docs(&[headless, p0, p1]))]).await;
    let mut s = srv
        .get("db-0.db.shop.svc.cluster.local:5432")
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.10:5432")]);
    let mut all = srv
        .get("db.shop.svc.cluster.local:5432")
        .await
        .expect("Get");
    assert_eq!(
        next_msg(&mut all).await.added(),
        [sa("10.1.0.10:5432"), sa("10.1.0.11:5432")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn dual_stack_pods_are_served_by_ipv6() {
    let dual = pod(&PodOpts {
        name: "api-1",
        app: "api",
        ips: &["10.1.0.20", "fd00:1::20"],
        ..Default::default()
    });
    let v4_only = pod(&PodOpts {
        name: "api-2",
        app: "api",
        ips: &["10.1.0.21"],
        ..Default::default()
    });
    let svc = service_with(
        "shop",
        "api",
        &[(80, "http", "http")],
        "  ipFamilyPolicy: RequireDualStack\n",
    );
    let srv = TestServer::start(&[("local/api.yaml", &docs(&[svc, dual, v4_only]))]).await;
    let mut s = srv.get("api.shop.svc.cluster.local:80").await.expect("Get");
    assert_eq!(
        next_msg(&mut s).await.added(),
        [sa("10.1.0.21:8080"), sa("[fd00:1::20]:8080")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn internal_traffic_policy_local_keeps_the_callers_node() {
    let svc = service_with(
        "shop",
        "web",
        &[(80, "http", "http")],
        "  internalTrafficPolicy: Local\n",
    );
    let a = pod(&PodOpts {
        name: "web-1",
        ips: &["10.1.0.1"],
        node: "node-a",
        ..Default::default()
    });
    let b = pod(&PodOpts {
        name: "web-2",
        ips: &["10.1.0.2"],
        node: "node-b",
        ..Default::default()
    });
    let srv = TestServer::start(&[("local/web.yaml", &docs(&[svc, a, b]))]).await;
    let mut s = srv
        .get_with_token(WEB, r#"{"ns":"shop","nodeName":"node-b","pod":"client"}"#)
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.2:8080")]);
    srv.stop().await;
}

fn hinted_slice(endpoints: &[(&str, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, zone)| {
            format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  zone: {zone}\n  hints: {{forZones: [{{name: {zone}}}]}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: zonal-1
  namespace: shop
  labels: {{kubernetes.io/service-name: zonal}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{eps}"
    )
}

#[tokio::test]
async fn topology_hints_keep_the_callers_zone() {
    let svc = service("shop", "zonal", &[(80, "http", "http")]);
    let world = docs(&[
        svc,
        node("node-a", "zone-a"),
        node("node-b", "zone-b"),
        node("node-c", "zone-c"),
        hinted_slice(&[("10.1.0.1", "zone-a"), ("10.1.0.2", "zone-b")]),
    ]);
    let srv = TestServer::start(&[("local/zonal.yaml", &world)]).await;
    let authority = "zonal.shop.svc.cluster.local:80";

    let mut in_a = srv
        .get_with_token(authority, r#"{"nodeName":"node-a"}"#)
        .await
        .expect("Get");
    let msg = next_msg(&mut in_a).await;
    assert_eq!(msg.added(), [sa("10.1.0.1:8080")]);
    let e = &msg.add_set()[0];
    assert_eq!(
        e.metric_labels.get("zone").map(String::as_str),
        Some("zone-a")
    );
    assert_eq!(
        e.metric_labels.get("zone_locality").map(String::as_str),
        Some("local")
    );

    // No endpoint is hinted for zone-c: all of them.
    let mut in_c = srv
        .get_with_token(authority, r#"{"nodeName":"node-c"}"#)
        .await
        .expect("Get");
    assert_eq!(
        next_msg(&mut in_c).await.added(),
        [sa("10.1.0.1:8080"), sa("10.1.0.2:8080")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument() {
    let external = "apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
";
    let srv = TestServer::start(&[
        ("local/web.yaml", &web_world(&[("web-1", "10.1.0.1")])),
        ("local/ext.yaml", external),
    ])
    .await;
    for (path, needle) in [
        ("10.1.0.1:8080", "IP"),
        ("not a name", "not a service name"),
        ("web.shop.svc.cluster.local:0", "port"),
        ("web.shop.svc.cluster.local:70000", "port"),
        ("ext.shop.svc.cluster.local:80", "ExternalName"),
    ] {
        let (code, message) = expect_error(srv.get(path).await);
        assert_eq!(code, Code::InvalidArgument, "{path}: {message}");
        assert!(
            message.contains(needle),
            "{path}: {message:?} should mention {needle:?}"
        );
    }
    // A garbage context token is served as if empty.
    let mut s = srv.get_with_token(WEB, "{{{garbage").await.expect("Get");
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.1:8080")]);
    srv.stop().await;
}

#[tokio::test]
async fn service_appears_and_disappears_on_an_open_stream() {
    let srv = TestServer::start(&[]).await;
    let mut s = srv.get(WEB).await.expect("Get");
    assert_eq!(next_msg(&mut s).await, Msg::NoEndpoints { exists: false });
    srv.write("local/web.yaml", &web_world(&[("web-1", "10.1.0.1")]));
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.1:8080")]);
    srv.remove("local/web.yaml");
    assert_eq!(next_msg(&mut s).await, Msg::NoEndpoints { exists: false });
    srv.stop().await;
}
