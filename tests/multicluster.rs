//! Linked clusters: remote discovery, gateway and headless mirrors, federated services,
//! and separate failure domains, all from manifest folders.

mod support;

use std::time::Duration;

use support::{world::*, *};
use tonic::Code;

fn federated(remote_members: &str, local_member: Option<&str>) -> String {
    let local = local_member
        .map(|m| format!("\n    multicluster.linkerd.io/local-discovery: {m}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: foo-federated
  namespace: ns
  annotations:
    multicluster.linkerd.io/remote-discovery: \"{remote_members}\"{local}
spec:
  ports: [{{name: http, port: 8080}}]
"
    )
}

/// `foo` with pods at `ips` (port 8080, meshed).
fn foo(ips: &[&'static str]) -> String {
    let mut parts = vec![service("ns", "foo", &[(8080, "8080", "http")])];
    for (i, ip) in ips.iter().enumerate() {
        parts.push(pod(&PodOpts {
            ns: "ns",
            name: Box::leak(format!("foo-{i}").into_boxed_str()),
            app: "foo",
            ips: Box::leak(Box::new([*ip])),
            service_account: "foo",
            ports: &[("http", 8080)],
            ..Default::default()
        }));
    }
    docs(&parts)
}

const FOO_WEST: &str = "foo-west.ns.svc.cluster.local:8080";
const FOO_FED: &str = "foo-federated.ns.svc.cluster.local:8080";

async fn linked_world() -> TestServer {
    TestServer::start(&[
        (
            "local/links.yaml",
            &docs(&[
                credentials("west", "west.example"),
                credentials("east", "east.example"),
            ]),
        ),
        (
            "local/mirrors.yaml",
            &docs(&[
                remote_discovery_mirror("ns", "foo", "west", 8080),
                remote_discovery_mirror("ns", "foo", "east", 8080),
            ]),
        ),
        ("local/foo.yaml", &foo(&["10.1.0.1"])),
        (
            "local/federated.yaml",
            &federated("foo@west,foo@east", Some("foo")),
        ),
        ("west/foo.yaml", &foo(&["10.2.0.1", "10.2.0.2"])),
        ("east/foo.yaml", &foo(&["10.3.0.1"])),
    ])
    .await
}

#[tokio::test]
async fn remote_discovery_streams_the_linked_clusters_pods() {
    let srv = linked_world().await;
    let mut s = srv.get(FOO_WEST).await.expect("Get");
    let (addrs, labels) = next_add_with_labels(&mut s).await;
    let mut got: Vec<_> = addrs.iter().map(addr_of).collect();
    got.sort();
    assert_eq!(got, [sa("10.2.0.1:8080"), sa("10.2.0.2:8080")]);
    for a in &addrs {
        assert_eq!(
            identity(a).as_deref(),
            Some("foo.ns.serviceaccount.identity.linkerd.west.example")
        );
        assert_eq!(hint(a), Some("h2"));
    }
    assert_eq!(
        labels.get("target_cluster").map(String::as_str),
        Some("west")
    );
    srv.stop().await;
}

#[tokio::test]
async fn unlinking_and_relinking_a_cluster() {
    let srv = linked_world().await;
    let mut s = srv.get(FOO_WEST).await.expect("Get");
    assert_eq!(next_msg(&mut s).await.added().len(), 2);
    let mut east = srv
        .get("foo-east.ns.svc.cluster.local:8080")
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut east).await.added(), [sa("10.3.0.1:8080")]);

    srv.write("local/links.yaml", &credentials("east", "east.example"));
    assert_eq!(
        next_msg(&mut s).await.removed(),
        [sa("10.2.0.1:8080"), sa("10.2.0.2:8080")]
    );
    assert_quiet(&mut east, Duration::from_millis(300)).await;
    let metrics = srv.metrics().await;
    assert!(
        !metrics.contains(r#"meshlink_cluster_linked{cluster="west"}"#),
        "{metrics}"
    );

    srv.write(
        "local/links.yaml",
        &docs(&[
            credentials("west", "west.example"),
            credentials("east", "east.example"),
        ]),
    );
    assert_eq!(
        next_msg(&mut s).await.added(),
        [sa("10.2.0.1:8080"), sa("10.2.0.2:8080")]
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_cluster_linked_later_fills_an_open_stream() {
    let srv = TestServer::start(&[
        (
            "local/mirrors.yaml",
            &remote_discovery_mirror("ns", "foo", "west", 8080),
        ),
        ("west/foo.yaml", &foo(&["10.2.0.1"])),
    ])
    .await;
    let mut s = srv.get(FOO_WEST).await.expect("Get");
    assert_eq!(next_msg(&mut s).await, Msg::NoEndpoints { exists: true });
    srv.write("local/links.yaml", &credentials("west", "west.example"));
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.2.0.1:8080")]);
    srv.stop().await;
}

#[tokio::test]
async fn remote_mirror_without_remote_service_is_failed_precondition() {
    let broken = remote_discovery_mirror("ns", "foo", "west", 8080)
        .replace("    multicluster.linkerd.io/remote-service: foo\n", "");
    let srv = TestServer::start(&[
        ("local/links.yaml", &credentials("west", "west.example")),
        ("local/m.yaml", &broken),
    ])
    .await;
    let (code, message) = expect_error(srv.get(FOO_WEST).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("remote-service"), "{message}");
    srv.stop().await;
}

#[tokio::test]
async fn federated_service_is_the_union_of_its_members() {
    let srv = linked_world().await;
    let mut s = srv.get(FOO_FED).await.expect("Get");
    let msg = next_msg(&mut s).await;
    assert_eq!(
        msg.added(),
        [
            sa("10.1.0.1:8080"),
            sa("10.2.0.1:8080"),
            sa("10.2.0.2:8080"),
            sa("10.3.0.1:8080")
        ]
    );
    let east = find(msg.add_set(), "10.3.0.1:8080");
    assert_eq!(
        identity(east).as_deref(),
        Some("foo.ns.serviceaccount.identity.linkerd.east.example")
    );
    assert_eq!(
        east.metric_labels.get("target_cluster").map(String::as_str),
        Some("east")
    );

    // A member leaves the annotation: only its addresses go.
    srv.write("local/federated.yaml", &federated("foo@west", Some("foo")));
    assert_eq!(next_msg(&mut s).await.removed(), [sa("10.3.0.1:8080")]);
    assert_quiet(&mut s, Duration::from_millis(300)).await;
    srv.stop().await;
}

#[tokio::test]
async fn an_address_in_two_members_goes_only_with_the_last() {
    let srv = TestServer::start(&[
        (
            "local/links.yaml",
            &docs(&[
                credentials("west", "west.example"),
                credentials("east", "east.example"),
            ]),
        ),
        (
            "local/federated.yaml",
            &federated("foo@west,foo@east", None),
        ),
        // Flat network: the same pod IP shows up in both clusters.
        ("west/foo.yaml", &foo(&["10.9.0.1", "10.2.0.1"])),
        ("east/foo.yaml", &foo(&["10.9.0.1"])),
    ])
    .await;
    let mut s = srv.get(FOO_FED).await.expect("Get");
    assert_eq!(
        next_msg(&mut s).await.added(),
        [sa("10.2.0.1:8080"), sa("10.9.0.1:8080")]
    );

    // East (first by name) served 10.9.0.1; when it goes, west's endpoint takes over and
    // is re-sent with west's identity, but the address is not removed.
    srv.write("east/foo.yaml", &foo(&[]));
    let msg = next_msg(&mut s).await;
    assert_eq!(msg.added(), [sa("10.9.0.1:8080")]);
    assert_eq!(
        identity(&msg.add_set()[0]).as_deref(),
        Some("foo.ns.serviceaccount.identity.linkerd.west.example")
    );
    assert_quiet(&mut s, Duration::from_millis(300)).await;
    srv.write("west/foo.yaml", &foo(&["10.2.0.1"]));
    assert_eq!(next_msg(&mut s).await.removed(), [sa("10.9.0.1:8080")]);
    srv.stop().await;
}

#[tokio::test]
async fn gateway_mirror_resolves_to_the_gateway() {
    let mirror = "apiVersion: v1
kind: Service
metadata:
  name: foo-west
  namespace: ns
  labels:
    mirror.linkerd.io/mirrored-service: \"true\"
    mirror.linkerd.io/cluster-name: west
  annotations:
    mirror.linkerd.io/remote-gateway-identity: linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.west.example
    mirror.linkerd.io/remote-svc-fq-name: foo.ns.svc.cluster.local
spec:
  ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: foo-west-gw
  namespace: ns
  labels: {kubernetes.io/service-name: foo-west}
addressType: IPv4
ports: [{name: http, port: 4143}]
endpoints:
- addresses: [\"172.20.0.1\"]
  conditions: {ready: true}
- addresses: [\"172.20.0.2\"]
  conditions: {ready: false}
";
    let srv = TestServer::start(&[("local/gw.yaml", mirror)]).await;
    let mut s = srv.get(FOO_WEST).await.expect("Get");
    let (addrs, labels) = next_add_with_labels(&mut s).await;
    assert_eq!(addrs.len(), 1, "not-ready gateway endpoints are not served");
    let gw = &addrs[0];
    assert_eq!(addr_of(gw), sa("172.20.0.1:4143"));
    assert_eq!(
        identity(gw).as_deref(),
        Some("linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.west.example")
    );
    assert_eq!(
        gw.authority_override
            .as_ref()
            .map(|o| o.authority_override.as_str()),
        Some("foo.ns.svc.cluster.local:8080")
    );
    assert_eq!(
        labels.get("target_cluster").map(String::as_str),
        Some("west")
    );
    assert_eq!(
        labels.get("target_service").map(String::as_str),
        Some("foo")
    );
    assert_eq!(
        labels.get("target_service_namespace").map(String::as_str),
        Some("ns")
    );
    srv.stop().await;
}

#[tokio::test]
async fn headless_mirror_host_resolves_to_its_endpoint_mirror() {
    let mirrors = "apiVersion: v1
kind: Service
metadata:
  name: db-west
  namespace: ns
  labels: {mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: west}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-0-west
  namespace: ns
  labels:
    mirror.linkerd.io/mirrored-service: \"true\"
    mirror.linkerd.io/cluster-name: west
    mirror.linkerd.io/headless-mirror-svc-name: db-west
  annotations:
    mirror.linkerd.io/remote-gateway-identity: gw.west.example
    mirror.linkerd.io/remote-svc-fq-name: web-0.db.ns.svc.cluster.local
spec:
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-0-west
  namespace: ns
  labels: {kubernetes.io/service-name: web-0-west}
addressType: IPv4
ports: [{name: pg, port: 4143}]
endpoints:
- addresses: [\"172.20.0.1\"]
";
    let srv = TestServer::start(&[("local/db.yaml", mirrors)]).await;
    let mut s = srv
        .get("web-0.db-west.ns.svc.cluster.local:5432")
        .await
        .expect("Get");
    let msg = next_msg(&mut s).await;
    assert_eq!(msg.added(), [sa("172.20.0.1:4143")]);
    assert_eq!(
        msg.add_set()[0]
            .authority_override
            .as_ref()
            .map(|o| o.authority_override.as_str()),
        Some("web-0.db.ns.svc.cluster.local:5432")
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_broken_cluster_keeps_its_last_endpoints_and_spares_the_others() {
    let srv = linked_world().await;
    let mut west = srv.get(FOO_WEST).await.expect("Get");
    assert_eq!(next_msg(&mut west).await.added().len(), 2);
    let mut east = srv
        .get("foo-east.ns.svc.cluster.local:8080")
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut east).await.added(), [sa("10.3.0.1:8080")]);
    let mut fed = srv.get(FOO_FED).await.expect("Get");
    assert_eq!(next_msg(&mut fed).await.added().len(), 4);

    // West's folder breaks: its file is replaced by garbage.
    srv.write("west/foo.yaml", "kind: [this is not yaml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains(r#"meshlink_cluster_stale{cluster="west"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshlink_cluster_stale{cluster="east"} 0"#),
        "{metrics}"
    );
    assert_quiet(&mut west, Duration::from_millis(200)).await;

    // East keeps flowing.
    srv.write("east/foo.yaml", &foo(&["10.3.0.1", "10.3.0.2"]));
    assert_eq!(next_msg(&mut east).await.added(), [sa("10.3.0.2:8080")]);
    assert_eq!(next_msg(&mut fed).await.added(), [sa("10.3.0.2:8080")]);

    // West is fixed with different content: streams converge to it.
    srv.write("west/foo.yaml", &foo(&["10.2.0.3", "10.2.0.2"]));
    let first = next_msg(&mut west).await;
    let second = next_msg(&mut west).await;
    assert_eq!(first.removed(), [sa("10.2.0.1:8080")]);
    assert_eq!(second.added(), [sa("10.2.0.3:8080")]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains(r#"meshlink_cluster_stale{cluster="west"} 0"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_cluster_folder_that_is_gone_takes_only_its_endpoints() {
    let srv = linked_world().await;
    let mut fed = srv.get(FOO_FED).await.expect("Get");
    assert_eq!(next_msg(&mut fed).await.added().len(), 4);
    let mut east = srv
        .get("foo-east.ns.svc.cluster.local:8080")
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut east).await.added(), [sa("10.3.0.1:8080")]);
    srv.remove("west");
    assert_eq!(
        next_msg(&mut fed).await.removed(),
        [sa("10.2.0.1:8080"), sa("10.2.0.2:8080")]
    );
    assert_quiet(&mut east, Duration::from_millis(200)).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains(r#"meshlink_cluster_stale{cluster="west"} 1"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_secret_without_trust_domain_is_ignored_and_reported() {
    let bad = credentials("west", "west.example").replace(
        "    multicluster.linkerd.io/trust-domain: west.example\n",
        "",
    );
    let srv = TestServer::start(&[
        (
            "local/links.yaml",
            &docs(&[bad, credentials("east", "east.example")]),
        ),
        (
            "local/mirrors.yaml",
            &docs(&[
                remote_discovery_mirror("ns", "foo", "west", 8080),
                remote_discovery_mirror("ns", "foo", "east", 8080),
            ]),
        ),
        ("west/foo.yaml", &foo(&["10.2.0.1"])),
        ("east/foo.yaml", &foo(&["10.3.0.1"])),
    ])
    .await;
    let mut west = srv.get(FOO_WEST).await.expect("Get");
    assert_eq!(next_msg(&mut west).await, Msg::NoEndpoints { exists: true });
    let mut east = srv
        .get("foo-east.ns.svc.cluster.local:8080")
        .await
        .expect("Get");
    assert_eq!(next_msg(&mut east).await.added(), [sa("10.3.0.1:8080")]);
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshlink_credentials_secret_rejected{")
                && l.contains("linkerd/cluster-credentials-west")
                && l.contains(r#"reason="missing_trust_domain""#)),
        "{metrics}"
    );
    srv.stop().await;
}
