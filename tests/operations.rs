//! GetProfile, health, reflection, the admin server, manifest errors and shutdown.

mod support;

use std::time::Duration;

use support::{world::*, *};

fn web_files() -> String {
    let svc = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {config.linkerd.io/opaque-ports: \"raw\"}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: raw, port: 9000, targetPort: 9000}
"
    .to_string();
    docs(&[svc, pod(&PodOpts::default())])
}

#[tokio::test]
async fn profile_of_a_service_by_name_and_by_cluster_ip() {
    let srv = TestServer::start(&[("local/web.yaml", &web_files())]).await;
    for authority in ["web.shop.svc.cluster.local:80", "10.96.0.10:80"] {
        let mut s = srv.get_profile(authority).await;
        let p = next(&mut s).await;
        assert_eq!(
            p.fully_qualified_name, "web.shop.svc.cluster.local",
            "{authority}"
        );
        assert!(!p.opaque_protocol, "{authority}");
        let budget = p.retry_budget.expect("retry budget");
        assert_eq!(budget.retry_ratio, 0.2);
        assert_eq!(budget.min_retries_per_second, 10);
        assert_eq!(budget.ttl.map(|t| t.seconds), Some(10));
        let parent = format!("{:?}", p.parent_ref.expect("parent_ref"));
        assert!(
            parent.contains("\"Service\"")
                && parent.contains("\"web\"")
                && parent.contains("\"shop\""),
            "{parent}"
        );
    }
    // The service's own opaque-ports annotation, naming a service port.
    let mut s = srv.get_profile("web.shop.svc.cluster.local:9000").await;
    assert!(next(&mut s).await.opaque_protocol);
    srv.stop().await;
}

#[tokio::test]
async fn profile_of_an_unannotated_service_uses_the_default_opaque_ports() {
    let pg = service(
        "shop",
        "pg",
        &[(5432, "5432", "pg"), (8080, "8080", "http")],
    );
    let srv = TestServer::start(&[("local/pg.yaml", &pg)]).await;
    let mut s = srv.get_profile("pg.shop.svc.cluster.local:5432").await;
    assert!(next(&mut s).await.opaque_protocol);
    let mut s = srv.get_profile("pg.shop.svc.cluster.local:8080").await;
    assert!(!next(&mut s).await.opaque_protocol);
    srv.stop().await;
}

#[tokio::test]
async fn profile_of_a_pod_ip_and_of_unknown_ips() {
    let srv = TestServer::start(&[("local/web.yaml", &web_files())]).await;
    let mut s = srv.get_profile("10.1.0.1:8080").await;
    let p = next(&mut s).await;
    let endpoint = p.endpoint.expect("endpoint");
    assert_eq!(addr_of(&endpoint), sa("10.1.0.1:8080"));
    assert_eq!(
        identity(&endpoint).as_deref(),
        Some("web.shop.serviceaccount.identity.linkerd.cluster.local")
    );
    assert_eq!(hint(&endpoint), Some("h2"));
    assert_eq!(
        endpoint.metric_labels.get("namespace").map(String::as_str),
        Some("shop")
    );

    let mut mysql = srv.get_profile("192.0.2.1:3306").await;
    let p = next(&mut mysql).await;
    assert!(p.opaque_protocol);
    assert!(p.endpoint.is_none());
    let mut http = srv.get_profile("192.0.2.1:80").await;
    assert!(!next(&mut http).await.opaque_protocol);

    // The pod goes away: the profile of its IP updates to a default one.
    srv.write(
        "local/web.yaml",
        &service("shop", "web", &[(80, "http", "http")]),
    );
    let p = next(&mut s).await;
    assert!(p.endpoint.is_none(), "{p:?}");
    srv.stop().await;
}

#[tokio::test]
async fn health_reflection_and_admin() {
    let srv = TestServer::start(&[("local/web.yaml", &web_files())]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", srv.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "io.linkerd.proxy.destination.Destination"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    let listed = reflection_services(channel).await;
    for want in [
        "io.linkerd.proxy.destination.Destination",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.iter().any(|s| s == want), "{want} not in {listed:?}");
    }

    assert_eq!(srv.admin_get("/live").await.0, 200);
    assert_eq!(srv.admin_get("/ready").await.0, 200);

    let mut stream = srv.get("web.shop.svc.cluster.local:80").await.expect("Get");
    next_msg(&mut stream).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains(r#"meshlink_grpc_streams_open{rpc="Get"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshlink_grpc_updates_sent_total{rpc="Get",kind="add"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshlink_index_objects{cluster="local",kind="pod"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshlink_index_objects{cluster="local",kind="service"} 1"#),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn malformed_manifests_are_reported_and_skipped() {
    let srv = TestServer::start(&[
        ("local/web.yaml", &web_files()),
        ("local/broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: shop}\nspec: {ports: 7}\n"),
    ])
    .await;
    let mut s = srv.get("web.shop.svc.cluster.local:80").await.expect("Get");
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.1:8080")]);
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshlink_manifest_invalid{")
                && l.contains("broken.yaml")
                && l.contains("reason=\"invalid_object\"")),
        "{metrics}"
    );

    // Break the good file: its last good objects keep serving, and the error is reported.
    let second = pod(&PodOpts {
        name: "web-2",
        ips: &["10.1.0.2"],
        ..Default::default()
    });
    srv.write(
        "local/web.yaml",
        &format!("{}---\n{second}---\nkind: [oops\n", web_files()),
    );
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.2:8080")]);
    srv.write("local/web.yaml", "this: is: not: yaml: [");
    assert_quiet(&mut s, Duration::from_millis(400)).await;
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshlink_manifest_invalid{") && l.contains("web.yaml")),
        "{metrics}"
    );

    // Fix both: errors clear, and the stream converges to the file's content.
    srv.write("local/web.yaml", &web_files());
    srv.remove("local/broken.yaml");
    assert_eq!(next_msg(&mut s).await.removed(), [sa("10.1.0.2:8080")]);
    let metrics = srv.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("meshlink_manifest_invalid{")),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let srv = TestServer::start(&[("local/web.yaml", &web_files())]).await;
    let mut s = srv.get("web.shop.svc.cluster.local:80").await.expect("Get");
    next_msg(&mut s).await;
    let mut p = srv.get_profile("web.shop.svc.cluster.local:80").await;
    next(&mut p).await;
    let stop = tokio::spawn(srv.stop());
    let ended = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("Get stream ends on shutdown");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    let ended = tokio::time::timeout(WAIT, p.message())
        .await
        .expect("GetProfile stream ends on shutdown");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    stop.await.expect("shutdown completes");
}

/// The binary itself: SIGTERM ends the process while a stream is open.
#[tokio::test]
async fn sigterm_stops_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("local")).expect("mkdir");
    std::fs::write(dir.path().join("local/web.yaml"), web_files()).expect("write");
    let port = free_port();
    let admin = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlink"))
        .args(["serve", "--manifests"])
        .arg(dir.path())
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meshlink");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/ready").await.0 == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "meshlink did not become ready");
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client =
        linkerd2_proxy_api::destination::destination_client::DestinationClient::new(channel);
    let mut s = client
        .get(linkerd2_proxy_api::destination::GetDestination {
            scheme: "k8s".into(),
            path: "web.shop.svc.cluster.local:80".into(),
            context_token: String::new(),
        })
        .await
        .expect("Get")
        .into_inner();
    next(&mut s).await;

    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("meshlink exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let ended = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("stream ends");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
}

/// A critical task that dies (here the gRPC server, aborted as a crash would end it):
/// `/ready` fails with the reason, then the server stops with an error, which `main`
/// turns into a non-zero exit.
#[tokio::test]
async fn a_dead_critical_task_fails_readiness_then_the_server() {
    let mut t = TestServer::start(&[("local/web.yaml", &web_files())]).await;
    assert_eq!(t.admin_get("/ready").await.0, 200);
    let server = t.server.take().expect("running");
    assert!(server.abort_task("grpc"));
    let run = tokio::spawn(server.run());
    let mut seen = None;
    for _ in 0..100 {
        let (code, body) = t.admin_get("/ready").await;
        if code == 503 {
            seen = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = seen.expect("/ready fails once the gRPC task is gone");
    assert!(body.contains("grpc"), "{body}");
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the server stops")
        .expect("join");
    let err = result.expect_err("a dead critical task is an error");
    assert!(err.to_string().contains("grpc"), "{err}");
}
