//! `meshlink mirror` against real API servers: `east` is the local cluster, `west` the
//! target. The mirror runs in this process; its writes are checked on east's API server,
//! and `meshlink serve` on east resolves what it made.
//!
//! The cases share the API servers (starting them is the slow part) and run in order in
//! one test; each prints its name and time. The gateway's address is inside a network
//! namespace the test makes (a veth pair), where a small HTTP server answers its probe;
//! west's endpoint addresses are pure data that nothing dials.

mod k8s;
mod mirror_support;
mod support;

use std::time::Instant;

use clap::Parser;
use k8s::*;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use linkerd2_proxy_api::destination as pb;
use meshlink::{
    k8s::link::{Link, LinkTarget},
    runtime::{
        self,
        cli::{MirrorArgs, ServeArgs},
        mirror::Mirror,
    },
};
use serde_json::json;
use support::{TestServer, addr_of, identity};

const GATEWAY_ID: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.west.example";

struct World {
    env: Env,
    east: Client,
    west: Client,
    north: Client,
    gateway_ip: String,
    probe: mirror_support::netns::ProbeTarget,
    _netns: mirror_support::netns::NetNs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mirror_against_real_api_servers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "meshlink=info,kube=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let env = Env::up(&["east", "west", "north"]).await;
    println!("API servers up in {:?}", started.elapsed());
    let w = setup(env).await;
    // A user-made Service with a future mirror's name, there before the Link.
    user_service(&w.east, "users-west").await;
    link_west(&w).await;
    let mut mirror = start_mirror(&w).await;
    // The destination service on east, with the mirror, end to end.
    let serve = start_serve(&w).await;

    step(
        "export web (gateway) -> web-west with ports, labels, annotations, slice",
        export_gateway(&w),
    )
    .await;
    step(
        "meshlink serve on east answers Get web-west via the gateway",
        serve_resolves_gateway_mirror(&w, &serve),
    )
    .await;
    step(
        "gateway probe fails -> endpoints not ready; recovers -> ready",
        gateway_probe(&w),
    )
    .await;
    step(
        "export api (remote-discovery) -> api-west, no endpoints",
        export_remote_discovery(&w),
    )
    .await;
    step(
        "Get api-west streams west's pods; a pod added in west reaches the open stream",
        serve_streams_remote_discovery(&w, &serve),
    )
    .await;
    step(
        "headless db with 2 hosts -> endpoint mirrors; scale to 1",
        headless(&w),
    )
    .await;
    step(
        "Get db-0-west resolves through the gateway",
        serve_resolves_headless_host(&w, &serve),
    )
    .await;
    step(
        "a user-made users-west is untouched; conflict in status",
        conflict(&w),
    )
    .await;
    step(
        "a missing namespace is reported, mirrored once it exists",
        namespace_missing(&w),
    )
    .await;
    step(
        "a Link with an unknown credentials Secret: CredentialsInvalid, others fine",
        bad_credentials(&w),
    )
    .await;
    step(
        "a kubeconfig that does not parse, a probe spec with a bad duration: errors in status, others fine",
        bad_input(&w),
    )
    .await;
    step(
        "federated members in east, west and north (one Link never lists) -> cache-federated; \
         west leaves and the stream drops only its address",
        federated(&w, &serve),
    )
    .await;
    step("unexport -> mirror gone", unexport(&w)).await;
    step(
        "status: counts by kind, TargetSynced, lastSyncTime",
        status_counts(&w),
    )
    .await;
    step("no write when nothing changes", quiet_at_rest(&w, &mirror)).await;
    mirror.stop().await;
    step(
        "dry run prints what it would apply and delete, writes nothing",
        dry_run(&w),
    )
    .await;
    mirror = step(
        "stopped while unexported -> orphan removed on restart",
        orphan_after_restart(&w),
    )
    .await;
    mirror.stop().await;
    step(
        "two replicas with leader election: only one writes",
        two_replicas(&w),
    )
    .await;
    mirror = step(
        "RBAC: the mirror with only deploy/'s role mirrors; a write outside it is refused",
        rbac_mirror(&w),
    )
    .await;
    step(
        "west's API server stops: mirrors stay, status says unreachable",
        target_down(&w),
    )
    .await;
    step(
        "Link deleted -> every object it created gone, nothing else",
        link_deleted(&w),
    )
    .await;
    mirror.stop().await;
    serve.stop().await;
    println!("all cases passed in {:?}", started.elapsed());
}

async fn step<T>(name: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    println!("case: {name} ...");
    let out = f.await;
    println!("case: {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
    out
}

// --- setup ---

async fn setup(env: Env) -> World {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let east = env.admin("east").await;
    let west = env.admin("west").await;
    let north = env.admin("north").await;
    apply_yaml(
        &east,
        &std::fs::read_to_string(root.join("deploy/crds/link.yaml")).expect("CRD"),
    )
    .await;
    // deploy/ as a user installs it: the mirror's ServiceAccount and roles, for the RBAC case.
    apply_kustomization(&east, &root.join("deploy")).await;
    for c in [&east, &west, &north] {
        for ns in ["linkerd", "shop"] {
            apply::<Namespace>(
                c,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        }
    }
    let netns = mirror_support::netns::NetNs::create();
    let ip = netns.ns_addrs[0];
    let probe = mirror_support::netns::ProbeTarget::serve(netns.bind((ip, 4191).into()));
    World {
        env,
        east,
        west,
        north,
        gateway_ip: ip.to_string(),
        probe,
        _netns: netns,
    }
}

fn target(gateway_ip: &str) -> LinkTarget {
    LinkTarget {
        cluster_name: "west".into(),
        namespace: "linkerd".into(),
        trust_domain: "west.example".into(),
        cluster_domain: "cluster.local".into(),
        target_linkerd_namespace: "linkerd".into(),
        gateway: Some((gateway_ip.into(), 4143, GATEWAY_ID.into())),
    }
}

async fn link_west(w: &World) {
    let kubeconfig = std::fs::read_to_string(w.env.kubeconfig("west")).expect("west kubeconfig");
    let t = target(&w.gateway_ip);
    let secret = serde_json::to_value(t.credentials_secret(&kubeconfig)).expect("secret");
    apply::<Secret>(&w.east, secret).await;
    let mut link = serde_json::to_value(t.link()).expect("link");
    link["spec"]["probeSpec"]["period"] = json!("500ms");
    link["spec"]["probeSpec"]["timeout"] = json!("1s");
    link["spec"]["probeSpec"]["failureThreshold"] = json!("2");
    apply::<Link>(&w.east, link).await;
}

fn mirror_args(w: &World, extra: &[&str]) -> MirrorArgs {
    mirror_args_with(&w.env.kubeconfig("east"), extra)
}

fn mirror_args_with(kubeconfig: &std::path::Path, extra: &[&str]) -> MirrorArgs {
    let mut argv = vec![
        "mirror",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--namespace",
        "linkerd",
        "--admin-addr",
        "127.0.0.1:0",
        "--resync-interval",
        "2s",
    ];
    if !extra.contains(&"--leader-election") {
        argv.extend_from_slice(&["--leader-election", "false"]);
    }
    argv.extend_from_slice(extra);
    MirrorArgs::try_parse_from(argv).expect("flags")
}

async fn start_mirror(w: &World) -> Mirror {
    let m = runtime::mirror::spawn(mirror_args(w, &[]))
        .await
        .expect("mirror starts");
    assert_eq!(support::http_get(m.admin_addr, "/ready").await.0, 200);
    m
}

// --- objects ---

async fn remote_service(c: &Client, ns: &str, name: &str, export: &str, headless: bool) {
    let mut spec = json!({"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]});
    if headless {
        spec["clusterIP"] = json!("None");
    }
    apply::<Service>(
        c,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name,
                "labels": {"app": name, "mirror.linkerd.io/exported": export, "tier": "backend"},
                "annotations": {"team": "shop"}},
            "spec": spec}),
    )
    .await;
}

/// West's EndpointSlice of `svc`: (address, hostname) endpoints, all ready.
async fn remote_slice(c: &Client, ns: &str, svc: &str, eps: &[(&str, Option<&str>)]) {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, host)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    apply::<EndpointSlice>(
        c,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": format!("{svc}-abcde"),
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}),
    )
    .await;
}

async fn user_service(c: &Client, name: &str) {
    apply::<Service>(
        c,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": name, "labels": {"made-by": "user"}},
            "spec": {"ports": [{"port": 9999}]}}),
    )
    .await;
}

async fn get_svc(c: &Client, ns: &str, name: &str) -> Option<Service> {
    Api::<Service>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .expect("get service")
}

async fn get_slice(c: &Client, ns: &str, name: &str) -> Option<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .expect("get slice")
}

/// Polls `f` until it gives a value; panics with `what` after [`CONVERGE`].
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {CONVERGE:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn wait_svc(c: &Client, ns: &str, name: &str) -> Service {
    poll(&format!("Service {ns}/{name} exists"), || {
        get_svc(c, ns, name)
    })
    .await
}

async fn wait_gone(c: &Client, ns: &str, name: &str) {
    eventually(&format!("Service {ns}/{name} is gone"), || async {
        get_svc(c, ns, name).await.is_none()
    })
    .await;
}

async fn link_status(c: &Client) -> serde_json::Value {
    let link = Api::<Link>::namespaced(c.clone(), "linkerd")
        .get("west")
        .await
        .expect("link");
    serde_json::to_value(link.status).expect("status")
}

fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

fn label<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

// --- cases ---

async fn export_gateway(w: &World) {
    remote_service(&w.west, "shop", "web", "true", false).await;
    remote_slice(&w.west, "shop", "web", &[("10.2.0.1", None)]).await;
    let m = wait_svc(&w.east, "shop", "web-west").await;
    assert_eq!(label(&m, "app"), Some("web"));
    assert_eq!(label(&m, "tier"), Some("backend"));
    assert_eq!(
        label(&m, "mirror.linkerd.io/mirrored-service"),
        Some("true")
    );
    assert_eq!(label(&m, "mirror.linkerd.io/cluster-name"), Some("west"));
    assert_eq!(
        label(&m, "mirror.linkerd.io/exported"),
        None,
        "mirror.linkerd.io* not copied"
    );
    assert_eq!(annotation(&m, "team"), Some("shop"));
    assert_eq!(
        annotation(&m, "mirror.linkerd.io/remote-svc-fq-name"),
        Some("web.shop.svc.cluster.local")
    );
    assert_eq!(
        annotation(&m, "mirror.linkerd.io/remote-gateway-identity"),
        Some(GATEWAY_ID)
    );
    let remote = get_svc(&w.west, "shop", "web").await.expect("remote web");
    assert_eq!(
        annotation(&m, "mirror.linkerd.io/remote-resource-version"),
        remote.metadata.resource_version.as_deref()
    );
    let ports = m
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), 8080)
    );

    let slice = poll("web-west's gateway slice is ready", || async {
        get_slice(&w.east, "shop", "web-west-meshlink")
            .await
            .filter(|s| {
                s.endpoints
                    .as_ref()
                    .and_then(|e| e.first())
                    .and_then(|e| e.conditions.as_ref()?.ready)
                    == Some(true)
            })
    })
    .await;
    assert_eq!(
        slice.endpoints.as_ref().expect("endpoints")[0].addresses,
        vec![w.gateway_ip.clone()]
    );
    let port = &slice.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(4143))
    );
    assert_eq!(
        slice.metadata.labels.as_ref().expect("labels")["kubernetes.io/service-name"],
        "web-west"
    );

    // No ready endpoints in west -> the gateway endpoint is not ready (as Linkerd does).
    apply::<EndpointSlice>(
        &w.west,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "shop", "name": "web-abcde",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.2.0.1"], "conditions": {"ready": false}}]}),
    )
    .await;
    eventually(
        "web-west not ready while west has no ready endpoint",
        || async {
            get_slice(&w.east, "shop", "web-west-meshlink")
                .await
                .and_then(|s| s.endpoints?.first()?.conditions.as_ref()?.ready)
                == Some(false)
        },
    )
    .await;
    remote_slice(&w.west, "shop", "web", &[("10.2.0.1", None)]).await;
    eventually("web-west ready again", || async {
        get_slice(&w.east, "shop", "web-west-meshlink")
            .await
            .and_then(|s| s.endpoints?.first()?.conditions.as_ref()?.ready)
            == Some(true)
    })
    .await;
}

async fn start_serve(w: &World) -> TestServer {
    let kubeconfig = w.env.kubeconfig("east");
    let args = ServeArgs::try_parse_from([
        "serve",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--cluster-name",
        "east",
        "--shutdown-grace",
        "1s",
    ])
    .expect("flags");
    let server = runtime::serve(args).await.expect("serve starts");
    TestServer {
        grpc: server.grpc_addr,
        admin: server.admin_addr,
        server: Some(server),
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

async fn serve_resolves_gateway_mirror(w: &World, server: &TestServer) {
    let gw = gateway_endpoint(w, server, "web-west", "web.shop.svc.cluster.local:8080").await;
    assert_eq!(addr_of(&gw).to_string(), format!("{}:4143", w.gateway_ip));
}

/// Streams `<mirror>.shop.svc.cluster.local:8080` until it holds the gateway's endpoint
/// (which has an identity, so `converge` also waits for it), and checks the gateway's
/// identity and the authority override to the remote service `remote`.
async fn gateway_endpoint(
    w: &World,
    server: &TestServer,
    mirror: &'static str,
    remote: &str,
) -> pb::WeightedAddr {
    let stream = server
        .get(&format!("{mirror}.shop.svc.cluster.local:8080"))
        .await
        .unwrap_or_else(|e| panic!("Get {mirror}: {e}"));
    let mut tracked = Tracked::new(mirror, stream);
    let want = format!("{}:4143", w.gateway_ip);
    tracked.converge(&[want.as_str()]).await;
    let gw = tracked.get(&want).clone();
    assert_eq!(identity(&gw).as_deref(), Some(GATEWAY_ID));
    assert_eq!(
        gw.authority_override
            .as_ref()
            .map(|o| o.authority_override.as_str()),
        Some(remote)
    );
    gw
}

async fn export_remote_discovery(w: &World) {
    remote_service(&w.west, "shop", "api", "remote-discovery", false).await;
    // A meshed pod (its identity is west's), as the destination service streams it later.
    meshed_pod(&w.west, "shop", "api-0", "api", "10.2.0.7").await;
    pod_slice(
        &w.west,
        "shop",
        "api",
        ("http", 8080),
        &[("api-0", "10.2.0.7")],
    )
    .await;
    let m = wait_svc(&w.east, "shop", "api-west").await;
    assert_eq!(
        label(&m, "multicluster.linkerd.io/remote-discovery"),
        Some("west")
    );
    assert_eq!(
        label(&m, "multicluster.linkerd.io/remote-service"),
        Some("api")
    );
    assert_eq!(
        annotation(&m, "mirror.linkerd.io/remote-gateway-identity"),
        None
    );
    assert!(
        get_slice(&w.east, "shop", "api-west-meshlink")
            .await
            .is_none(),
        "no endpoints"
    );
}

async fn headless(w: &World) {
    remote_service(&w.west, "shop", "db", "true", true).await;
    remote_slice(
        &w.west,
        "shop",
        "db",
        &[("10.2.0.20", Some("db-0")), ("10.2.0.21", Some("db-1"))],
    )
    .await;
    // Until west's slice is seen db-west may be a plain mirror; then it is made headless.
    poll("db-west is headless", || async {
        get_svc(&w.east, "shop", "db-west")
            .await
            .filter(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"))
    })
    .await;
    let db0 = wait_svc(&w.east, "shop", "db-0-west").await;
    wait_svc(&w.east, "shop", "db-1-west").await;
    assert_eq!(
        label(&db0, "mirror.linkerd.io/headless-mirror-svc-name"),
        Some("db-west")
    );
    assert_eq!(
        annotation(&db0, "mirror.linkerd.io/remote-svc-fq-name"),
        Some("db-0.db.shop.svc.cluster.local")
    );
    eventually(
        "db-west's slice lists both hosts at their mirrors' cluster IPs",
        || async {
            get_slice(&w.east, "shop", "db-west-meshlink")
                .await
                .and_then(|s| s.endpoints)
                .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e.hostname.is_some()))
        },
    )
    .await;
    // Scale to 1.
    remote_slice(&w.west, "shop", "db", &[("10.2.0.20", Some("db-0"))]).await;
    wait_gone(&w.east, "shop", "db-1-west").await;
    assert!(get_svc(&w.east, "shop", "db-0-west").await.is_some());
    assert!(
        get_slice(&w.east, "shop", "db-1-west-meshlink")
            .await
            .is_none()
    );
}

async fn conflict(w: &World) {
    remote_service(&w.west, "shop", "users", "true", false).await;
    eventually("the conflict is in the Link's status", || async {
        let st = link_status(&w.east).await;
        let ready = condition(&st, "MirrorsReady");
        ready["status"] == "False"
            && st["troubles"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["name"] == "users-west" && t["reason"] == "Conflict")
            })
    })
    .await;
    let user = get_svc(&w.east, "shop", "users-west")
        .await
        .expect("user service");
    assert_eq!(label(&user, "made-by"), Some("user"));
    assert_eq!(
        label(&user, "mirror.linkerd.io/mirrored-service"),
        None,
        "untouched"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.east.clone(), "linkerd")
        .list(&ListParams::default())
        .await
        .expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Conflict")),
        "a Conflict Event on the Link"
    );
    // Other mirrors are fine.
    assert!(get_svc(&w.east, "shop", "web-west").await.is_some());
}

async fn namespace_missing(w: &World) {
    apply::<Namespace>(
        &w.west,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}),
    )
    .await;
    remote_service(&w.west, "late", "cron", "remote-discovery", false).await;
    eventually("the missing namespace is in the Link's status", || async {
        link_status(&w.east).await["troubles"]
            .as_array()
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t["name"] == "cron-west" && t["reason"] == "NamespaceMissing")
            })
    })
    .await;
    apply::<Namespace>(
        &w.east,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}),
    )
    .await;
    wait_svc(&w.east, "late", "cron-west").await;
    eventually("the trouble is gone", || async {
        !link_status(&w.east).await["troubles"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "cron-west"))
    })
    .await;
}

async fn unexport(w: &World) {
    remote_service(&w.west, "shop", "api", "no", false).await;
    wait_gone(&w.east, "shop", "api-west").await;
}

async fn status_counts(w: &World) {
    eventually("counts by kind", || async {
        let st = link_status(&w.east).await;
        // web, db (gateway); cron (remote discovery); db-0 (endpoint mirror).
        st["mirroredServices"]["gateway"] == 2
            && st["mirroredServices"]["remoteDiscovery"] == 1
            && st["mirroredServices"]["headlessEndpoints"] == 1
    })
    .await;
    let st = link_status(&w.east).await;
    assert_eq!(condition(&st, "TargetSynced")["status"], "True");
    assert!(st["lastSyncTime"].is_string(), "{st}");
}

async fn quiet_at_rest(w: &World, mirror: &Mirror) {
    let writes = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("mirror_api_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // Settle (statuses and late watch events), then several resyncs (2 s each) must write nothing.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let before = writes(&support::http_get(mirror.admin_addr, "/metrics").await.1);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let after = writes(&support::http_get(mirror.admin_addr, "/metrics").await.1);
    assert!(before > 0, "the metric counts writes");
    assert_eq!(before, after, "no write when nothing changes");
    let _ = w;
}

async fn dry_run(w: &World) {
    remote_service(&w.west, "shop", "cart", "true", false).await;
    let out = runtime::mirror::once(&mirror_args(w, &["--once", "--dry-run", "-o", "yaml"]))
        .await
        .expect("dry run");
    let doc: serde_json::Value = serde_saphyr::from_str(&out).expect("YAML");
    let applies = doc["apply"].as_array().expect("apply list");
    assert!(
        applies.iter().any(|o| o["metadata"]["name"] == "cart-west"),
        "{out}"
    );
    assert!(
        get_svc(&w.east, "shop", "cart-west").await.is_none(),
        "nothing written"
    );
}

async fn orphan_after_restart(w: &World) -> Mirror {
    // While the mirror is stopped, web is unexported in west.
    remote_service(&w.west, "shop", "web", "no", false).await;
    let m = start_mirror(w).await;
    wait_gone(&w.east, "shop", "web-west").await;
    eventually("web-west's slice is gone", || async {
        get_slice(&w.east, "shop", "web-west-meshlink")
            .await
            .is_none()
    })
    .await;
    wait_svc(&w.east, "shop", "cart-west").await;
    m
}

async fn target_down(w: &World) {
    w.env.stop_apiserver("west").await;
    eventually("status says the target is unreachable", || async {
        let st = link_status(&w.east).await;
        let c = condition(&st, "TargetSynced");
        c["status"] == "False" && c["reason"] == "TargetUnreachable"
    })
    .await;
    assert!(
        get_svc(&w.east, "shop", "cart-west").await.is_some(),
        "mirrors stay"
    );
    assert!(
        get_slice(&w.east, "shop", "cart-west-meshlink")
            .await
            .is_some()
    );
    w.env.start_apiserver("west").await;
    let west = w.env.admin("west").await;
    remote_service(&west, "shop", "cart", "remote-discovery", false).await;
    eventually(
        "a change made after west returned reaches the mirror",
        || async {
            get_svc(&w.east, "shop", "cart-west")
                .await
                .is_some_and(|s| {
                    label(&s, "multicluster.linkerd.io/remote-discovery") == Some("west")
                })
        },
    )
    .await;
}

async fn link_deleted(w: &World) {
    Api::<Link>::namespaced(w.east.clone(), "linkerd")
        .delete("west", &DeleteParams::default())
        .await
        .expect("delete link");
    eventually("the Link is gone (finalizer removed)", || async {
        Api::<Link>::namespaced(w.east.clone(), "linkerd")
            .get_opt("west")
            .await
            .expect("get")
            .is_none()
    })
    .await;
    let owned = Api::<Service>::all(w.east.clone())
        .list(&ListParams::default().labels("meshlink.io/link=west"))
        .await
        .expect("list");
    assert!(
        owned.items.is_empty(),
        "left: {:?}",
        owned
            .items
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let slices = Api::<EndpointSlice>::all(w.east.clone())
        .list(&ListParams::default().labels("meshlink.io/link=west"))
        .await
        .expect("list");
    assert!(slices.items.is_empty());
    assert!(
        get_svc(&w.east, "shop", "users-west").await.is_some(),
        "the user's Service stays"
    );
}

async fn gateway_ready(w: &World) -> Option<bool> {
    get_slice(&w.east, "shop", "web-west-meshlink")
        .await
        .and_then(|s| s.endpoints?.first()?.conditions.as_ref()?.ready)
}

async fn gateway_probe(w: &World) {
    w.probe.set_failing(true);
    eventually(
        "web-west's endpoint not ready while the probe fails",
        || async { gateway_ready(w).await == Some(false) },
    )
    .await;
    eventually("the Link says the gateway is not alive", || async {
        let st = link_status(&w.east).await;
        condition(&st, "GatewayAlive")["status"] == "False"
    })
    .await;
    w.probe.set_failing(false);
    eventually("web-west's endpoint ready again", || async {
        gateway_ready(w).await == Some(true)
    })
    .await;
}

async fn federated_service(c: &Client, member: bool) {
    let mut labels = json!({"app": "cache"});
    if member {
        labels["mirror.linkerd.io/federated"] = json!("member");
    }
    apply::<Service>(
        c,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": "cache", "labels": labels},
            "spec": {"ports": [{"name": "redis", "port": 6379}]}}),
    )
    .await;
}

async fn federated(w: &World, serve: &TestServer) {
    // A member cluster whose API server never answers: the others are written regardless.
    let dead = w.env.file("south.kubeconfig");
    let west_kubeconfig = std::fs::read_to_string(w.env.kubeconfig("west")).expect("kubeconfig");
    let south_kubeconfig = west_kubeconfig.replace(
        &w.env.apiserver_addr("west").to_string(),
        &format!("127.0.0.1:{}", support::free_port()),
    );
    std::fs::write(&dead, &south_kubeconfig).expect("write");
    link_cluster(&w.east, "south", &south_kubeconfig).await;
    link_cluster(
        &w.east,
        "north",
        &std::fs::read_to_string(w.env.kubeconfig("north")).expect("kubeconfig"),
    )
    .await;

    for (c, ip) in [
        (&w.east, "10.1.0.40"),
        (&w.west, "10.2.0.40"),
        (&w.north, "10.3.0.40"),
    ] {
        federated_service(c, true).await;
        meshed_pod(c, "shop", "cache-0", "cache", ip).await;
        pod_slice(c, "shop", "cache", ("redis", 6379), &[("cache-0", ip)]).await;
    }
    let fed = poll(
        "cache-federated lists west, north and the local member",
        || async {
            get_svc(&w.east, "shop", "cache-federated")
                .await
                .filter(|s| {
                    annotation(s, "multicluster.linkerd.io/remote-discovery")
                        == Some("cache@north,cache@west")
                        && annotation(s, "multicluster.linkerd.io/local-discovery") == Some("cache")
                })
        },
    )
    .await;
    assert_eq!(label(&fed, "app"), Some("cache"));
    assert_eq!(
        label(&fed, "mirror.linkerd.io/mirrored-service"),
        Some("true")
    );
    let ports = fed
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    assert_eq!(ports[0].port, 6379);

    let stream = serve
        .get("cache-federated.shop.svc.cluster.local:6379")
        .await
        .expect("Get cache-federated");
    let mut tracked = Tracked::new("cache-federated", stream);
    tracked
        .converge(&["10.1.0.40:6379", "10.2.0.40:6379", "10.3.0.40:6379"])
        .await;
    assert_eq!(
        identity(tracked.get("10.3.0.40:6379")).as_deref(),
        Some("cache.shop.serviceaccount.identity.linkerd.north.example")
    );
    assert_eq!(tracked.removes, 0);

    // West leaves: its entry goes, and the stream drops its address only.
    federated_service(&w.west, false).await;
    poll("west's entry is gone", || async {
        get_svc(&w.east, "shop", "cache-federated")
            .await
            .filter(|s| {
                annotation(s, "multicluster.linkerd.io/remote-discovery") == Some("cache@north")
                    && annotation(s, "multicluster.linkerd.io/local-discovery") == Some("cache")
            })
    })
    .await;
    tracked
        .converge(&["10.1.0.40:6379", "10.3.0.40:6379"])
        .await;
    assert_eq!(tracked.removes, 1, "only west's address was removed");

    // North's Link goes: its entry goes with it.
    for link in ["north", "south"] {
        Api::<Link>::namespaced(w.east.clone(), "linkerd")
            .delete(link, &DeleteParams::default())
            .await
            .expect("delete link");
    }
    poll("north's entry is gone", || async {
        get_svc(&w.east, "shop", "cache-federated")
            .await
            .filter(|s| annotation(s, "multicluster.linkerd.io/remote-discovery").is_none())
    })
    .await;
    tracked.converge(&["10.1.0.40:6379"]).await;
    // The local member leaves too: nothing is federated any more.
    federated_service(&w.east, false).await;
    wait_gone(&w.east, "shop", "cache-federated").await;
}

/// A credentials Secret and a Link (remote discovery and federation, no gateway) for `cluster`.
async fn link_cluster(east: &Client, cluster: &str, kubeconfig: &str) {
    let t = LinkTarget {
        cluster_name: cluster.into(),
        namespace: "linkerd".into(),
        trust_domain: format!("{cluster}.example"),
        cluster_domain: "cluster.local".into(),
        target_linkerd_namespace: "linkerd".into(),
        gateway: None,
    };
    apply::<Secret>(
        east,
        serde_json::to_value(t.credentials_secret(kubeconfig)).expect("secret"),
    )
    .await;
    apply::<Link>(east, serde_json::to_value(t.link()).expect("link")).await;
}

/// A meshed pod (service account `sa`), Running and Ready at `ip`, as a kubelet reports it.
async fn meshed_pod(c: &Client, ns: &str, name: &str, sa: &str, ip: &str) {
    apply::<Pod>(
        c,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name,
                "labels": {"app": sa, "linkerd.io/control-plane-ns": "linkerd"}},
            "spec": {"serviceAccountName": sa, "nodeName": "node-a", "containers": [
                {"name": sa, "image": "app:1"},
                {"name": "linkerd-proxy", "image": "proxy:1"}]}}),
    )
    .await;
    report_running(c, ns, name, ip).await;
}

/// The EndpointSlice of `svc` with the pods `(name, ip)` as ready endpoints on `port`.
async fn pod_slice(c: &Client, ns: &str, svc: &str, port: (&str, u16), pods: &[(&str, &str)]) {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "namespace": ns, "name": name}})
        })
        .collect();
    apply::<EndpointSlice>(
        c,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": format!("{svc}-abcde"),
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
            "endpoints": endpoints}),
    )
    .await;
}

async fn serve_streams_remote_discovery(w: &World, serve: &TestServer) {
    let stream = serve
        .get("api-west.shop.svc.cluster.local:8080")
        .await
        .expect("Get api-west");
    let mut tracked = Tracked::new("api-west", stream);
    tracked.converge(&["10.2.0.7:8080"]).await;
    assert_eq!(
        identity(tracked.get("10.2.0.7:8080")).as_deref(),
        Some("api.shop.serviceaccount.identity.linkerd.west.example")
    );
    // A pod added in west reaches the open stream.
    meshed_pod(&w.west, "shop", "api-1", "api", "10.2.0.8").await;
    pod_slice(
        &w.west,
        "shop",
        "api",
        ("http", 8080),
        &[("api-0", "10.2.0.7"), ("api-1", "10.2.0.8")],
    )
    .await;
    tracked.converge(&["10.2.0.7:8080", "10.2.0.8:8080"]).await;
    assert_eq!(tracked.removes, 0);
}

async fn serve_resolves_headless_host(w: &World, serve: &TestServer) {
    gateway_endpoint(w, serve, "db-0-west", "db-0.db.shop.svc.cluster.local:8080").await;
}

async fn bad_input(w: &World) {
    let links = Api::<Link>::namespaced(w.east.clone(), "linkerd");
    let status_of = |name: &'static str| {
        let links = links.clone();
        async move { serde_json::to_value(links.get(name).await.expect("link").status).expect("status") }
    };
    // A credentials Secret whose kubeconfig does not parse.
    let mut t = target(&w.gateway_ip);
    t.cluster_name = "garbled".into();
    t.gateway = None;
    apply::<Secret>(
        &w.east,
        serde_json::to_value(t.credentials_secret("clusters: [not, a: kubeconfig"))
            .expect("secret"),
    )
    .await;
    apply::<Link>(&w.east, serde_json::to_value(t.link()).expect("link")).await;
    // A probe spec with a bad duration (gateway mode; its selector matches nothing).
    let mut link = serde_json::to_value(target(&w.gateway_ip).link()).expect("link");
    link["metadata"]["name"] = json!("badprobe");
    link["spec"]["targetClusterName"] = json!("badprobe");
    link["spec"]["probeSpec"]["period"] = json!("3x");
    link["spec"]["selector"] = json!({"matchLabels": {"nothing": "here"}});
    apply::<Link>(&w.east, link).await;

    eventually(
        "the garbled Link says its kubeconfig does not parse",
        || async {
            let st = status_of("garbled").await;
            let c = condition(&st, "TargetSynced");
            c["status"] == "False"
                && c["reason"] == "CredentialsInvalid"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("cluster-credentials-garbled") && m.contains("does not parse")
                })
        },
    )
    .await;
    eventually("the bad probe spec is named in status", || async {
        let st = status_of("badprobe").await;
        let c = condition(&st, "GatewayAlive");
        c["reason"] == "InvalidProbeSpec"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains("probeSpec.period") && m.contains("3x"))
    })
    .await;
    // The other Link's mirrors keep working: a new export is mirrored.
    remote_service(&w.west, "shop", "search", "remote-discovery", false).await;
    wait_svc(&w.east, "shop", "search-west").await;
    assert_eq!(
        condition(&link_status(&w.east).await, "TargetSynced")["status"],
        "True"
    );
    for name in ["garbled", "badprobe"] {
        links
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    remote_service(&w.west, "shop", "search", "no", false).await;
    wait_gone(&w.east, "shop", "search-west").await;
}

async fn rbac_mirror(w: &World) -> Mirror {
    // The mirror's own ServiceAccount from deploy/, nothing more.
    let token = service_account_token(&w.east, "linkerd", "meshlink-mirror").await;
    let count = |st: &serde_json::Value| st["mirroredServices"]["remoteDiscovery"].as_u64();
    let before = count(&link_status(&w.east).await).unwrap_or(0);
    let kubeconfig = w
        .env
        .token_kubeconfig("east", &token, "mirror-sa.kubeconfig");
    let m = runtime::mirror::spawn(mirror_args_with(
        &kubeconfig,
        &["--leader-election", "true", "--lease-duration", "6s"],
    ))
    .await
    .expect("mirror starts with its ServiceAccount");
    remote_service(&w.west, "shop", "ledger", "remote-discovery", false).await;
    wait_svc(&w.east, "shop", "ledger-west").await;
    eventually("its status counts the new mirror", || async {
        count(&link_status(&w.east).await) == Some(before + 1)
    })
    .await;
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(w.east.clone(), "linkerd")
            .get("meshlink-mirror")
            .await
            .expect("lease");
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty()),
        "it holds the Lease"
    );
    // The same credential is refused outside the role.
    let sa = token_client(&w.env, "east", &token).await;
    let refused = |r: kube::Result<()>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "sneaky"}})).expect("configmap");
    assert!(refused(
        Api::namespaced(sa.clone(), "linkerd")
            .create(&kube::api::PostParams::default(), &cm)
            .await
            .map(drop)
    ));
    assert!(refused(
        Api::<Secret>::namespaced(sa.clone(), "linkerd")
            .list(&ListParams::default())
            .await
            .map(drop)
    ));
    assert!(refused(
        Api::<Secret>::namespaced(sa, "shop")
            .get("anything")
            .await
            .map(drop)
    ));
    m
}

async fn bad_credentials(w: &World) {
    let mut link = serde_json::to_value(target(&w.gateway_ip).link()).expect("link");
    link["metadata"]["name"] = json!("broken");
    link["spec"]["targetClusterName"] = json!("broken");
    link["spec"]["clusterCredentialsSecret"] = json!("no-such-secret");
    apply::<Link>(&w.east, link).await;
    let api = Api::<Link>::namespaced(w.east.clone(), "linkerd");
    eventually(
        "the broken Link says its credentials are invalid",
        || async {
            let st = serde_json::to_value(api.get("broken").await.expect("link").status)
                .expect("status");
            let c = condition(&st, "TargetSynced");
            c["reason"] == "CredentialsInvalid"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no-such-secret"))
        },
    )
    .await;
    assert_eq!(
        condition(&link_status(&w.east).await, "TargetSynced")["status"],
        "True"
    );
    api.delete("broken", &DeleteParams::default())
        .await
        .expect("delete");
}

fn writes_in(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("mirror_api_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn two_replicas(w: &World) {
    // Both replicas run in this process; each gets its own holder identity.
    let args = || mirror_args(w, &["--leader-election", "true", "--lease-duration", "6s"]);
    let a = runtime::mirror::spawn(args()).await.expect("replica a");
    let b = runtime::mirror::spawn(args()).await.expect("replica b");
    remote_service(&w.west, "shop", "orders", "remote-discovery", false).await;
    wait_svc(&w.east, "shop", "orders-west").await;
    let wa = writes_in(&support::http_get(a.admin_addr, "/metrics").await.1);
    let wb = writes_in(&support::http_get(b.admin_addr, "/metrics").await.1);
    assert!(
        (wa > 0) != (wb > 0),
        "exactly one replica writes: a wrote {wa}, b wrote {wb}"
    );
    a.stop().await;
    b.stop().await;
}
