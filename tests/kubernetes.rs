//! The Kubernetes source against real API servers: `scripts/k8s-test-env.sh` starts a
//! kube-apiserver (with etcd) for cluster "local" and one for "west"; meshlink runs in
//! this process with the token of its ServiceAccount under the RBAC of `deploy/`, and
//! reads west with a token bound only to `deploy/remote-access/`. A second meshlink
//! ("relister", its own ServiceAccount and ClusterRole) reads local through a TCP proxy
//! the tests can cut, and the API servers' audit logs count its LIST requests.
//!
//! A test binary with its own harness: the API servers and both meshlinks start once and
//! every case shares them, each case in its own namespace (or owning the west link while
//! it runs). Cases run one after the other; a failing case is reported and the next one
//! runs. The cases that stop or restart an API server run last. Run one case with
//! `cargo test --test kubernetes -- NAME_PART`; the last line is `N passed, N failed`.

mod k8s;
mod support;

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use futures::future::BoxFuture;
use k8s::{proxy::Proxy, *};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Secret, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use meshlink::{
    k8s::{
        link::{Link, LinkTarget},
        profile::ServiceProfile,
    },
    runtime::{self, cli::LinkArgs, cli::ServeArgs},
};
use serde_json::json;
use support::{TestServer, hint, identity, server_name};

const WEST_ID: &str = "web.shop.serviceaccount.identity.linkerd.west.example";
const WEB_WEST: &str = "web-west.shop.svc.cluster.local:8080";
const WEB_FED: &str = "web-federated.shop.svc.cluster.local:8080";
/// The user the relister authenticates as, in the audit log.
const RELISTER: &str = "system:serviceaccount:linkerd:relister";
/// The kinds meshlink lists, as the audit log names them.
const LISTED: [&str; 5] = ["services", "endpointslices", "pods", "nodes", "secrets"];

/// Everything the cases share.
struct World {
    env: Env,
    local: Client,
    west: Client,
    /// meshlink with the ServiceAccount and RBAC of deploy/.
    server: TestServer,
    /// The token `server` runs with.
    meshlink_token: String,
    /// A second meshlink reading local through `proxy`.
    relister: TestServer,
    proxy: Proxy,
}

/// A named case; `restarts` ones stop or restart an API server and run last.
struct Case {
    name: &'static str,
    restarts: bool,
    run: fn(Arc<World>) -> BoxFuture<'static, ()>,
}

macro_rules! case {
    ($f:ident) => {
        Case {
            name: stringify!($f),
            restarts: false,
            run: |w| Box::pin($f(w)),
        }
    };
    ($f:ident, restarts) => {
        Case {
            name: stringify!($f),
            restarts: true,
            run: |w| Box::pin($f(w)),
        }
    };
}

fn cases() -> Vec<Case> {
    vec![
        case!(local_endpoints_carry_identities_hints_and_zones),
        case!(scaling_a_slice_streams_only_the_difference),
        case!(refused_credentials_leave_west_linked_but_stale),
        case!(meshlink_link_links_west_for_remote_discovery_and_federation),
        case!(a_rotated_token_keeps_west_flowing_without_a_gap),
        case!(deleting_the_credentials_secret_unlinks_west_and_recreating_it_links_again),
        case!(rbac_of_deploy_is_enough_and_refuses_the_rest),
        case!(a_failover_profile_follows_ready_endpoints_in_both_clusters),
        case!(a_broken_watch_resumes_without_a_new_list),
        case!(certify_reviews_the_token_with_the_api_server),
        case!(
            west_api_server_down_keeps_its_endpoints_then_changes_converge,
            restarts
        ),
        case!(
            a_410_gone_relists_and_slices_before_pods_expose_no_bare_endpoint,
            restarts
        ),
    ]
}

fn main() -> ExitCode {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--skip" => skips.extend(args.next()),
            // libtest flags with a value, accepted and ignored.
            "--test-threads" | "--format" | "--color" | "-Z" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    let mut cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .filter(|c| !skips.iter().any(|s| c.name.contains(s.as_str())))
        .collect();
    // Stable: the order above, with the cases that restart API servers last.
    cases.sort_by_key(|c| c.restarts);
    if list {
        for c in &cases {
            println!("{}: test", c.name);
        }
        return ExitCode::SUCCESS;
    }
    if cases.is_empty() {
        println!("0 passed, 0 failed");
        return ExitCode::SUCCESS;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "meshlink=info,kube=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failed = rt.block_on(run(cases));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `cases` against one world; returns how many failed.
async fn run(cases: Vec<Case>) -> usize {
    let started = Instant::now();
    let env = Env::up(&["local", "west"]).await;
    println!("API servers up in {:.1}s", started.elapsed().as_secs_f64());
    let world = Arc::new(setup(env).await);
    println!("world set up in {:.1}s", started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    for case in &cases {
        let t = Instant::now();
        println!("case {} ...", case.name);
        // A panic fails the case only: the next case runs.
        let outcome = tokio::spawn((case.run)(Arc::clone(&world))).await;
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!(
            "case {} ... {verdict} ({:.1}s)",
            case.name,
            t.elapsed().as_secs_f64()
        );
        if outcome.is_err() {
            failed.push(case.name);
        }
    }
    if let Ok(world) = Arc::try_unwrap(world) {
        world.server.stop().await;
        world.relister.stop().await;
    }
    for name in &failed {
        println!("failed: {name}");
    }
    println!(
        "{} passed, {} failed ({:.1}s)",
        cases.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    failed.len()
}

// --- setup ---

async fn setup(env: Env) -> World {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = env.admin("local").await;
    let west = env.admin("west").await;
    apply_kustomization(&local, &root.join("deploy")).await;
    apply_kustomization(&west, &root.join("deploy/remote-access")).await;
    namespace(&west, "shop").await;
    apply::<Node>(
        &local,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
            "labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    )
    .await;

    install_service_profile_crd(&local).await;

    // meshlink runs as the ServiceAccount of deploy/, with nothing but its RBAC.
    let meshlink_token = service_account_token(&local, "linkerd", "meshlink").await;
    let kubeconfig = env.token_kubeconfig("local", &meshlink_token, "meshlink.kubeconfig");
    let server = start_meshlink(&kubeconfig).await;

    // The relister: the same grants through its own ClusterRole (which a case edits),
    // reaching the API server through a proxy (which a case cuts).
    apply_yaml(
        &local,
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: relister, namespace: linkerd}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: relister}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: relister}
subjects: [{kind: ServiceAccount, name: relister, namespace: linkerd}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: relister-credentials, namespace: linkerd}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshlink-credentials}
subjects: [{kind: ServiceAccount, name: relister, namespace: linkerd}]
",
    )
    .await;
    relister_role(&local, true).await;
    let proxy = Proxy::start(env.apiserver_addr("local")).await;
    let token = service_account_token(&local, "linkerd", "relister").await;
    let kubeconfig =
        env.token_kubeconfig_via("local", &token, "relister.kubeconfig", Some(proxy.addr));
    let relister = start_meshlink(&kubeconfig).await;
    World {
        env,
        local,
        west,
        server,
        meshlink_token,
        relister,
        proxy,
    }
}

/// Installs meshlink's ServiceProfile CRD unless one (Linkerd's) is there already.
async fn install_service_profile_crd(local: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds = Api::<CustomResourceDefinition>::all(local.clone());
    let present = crds
        .get_opt("serviceprofiles.linkerd.io")
        .await
        .expect("read CRDs");
    if present.is_none() {
        apply_yaml(local, &meshlink::k8s::profile::crd_yaml()).await;
    }
    eventually("ServiceProfiles are served", || async {
        Api::<ServiceProfile>::all(local.clone())
            .list(&ListParams::default())
            .await
            .is_ok()
    })
    .await;
}

async fn start_meshlink(kubeconfig: &std::path::Path) -> TestServer {
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let args = ServeArgs::try_parse_from([
        "serve",
        "--kubeconfig",
        kubeconfig,
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--shutdown-grace",
        "2s",
    ])
    .expect("flags");
    let server = runtime::serve(args).await.expect("meshlink starts");
    let server = TestServer {
        grpc: server.grpc_addr,
        admin: server.admin_addr,
        server: Some(server),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    assert_eq!(server.admin_get("/ready").await.0, 200);
    server
}

/// The relister's ClusterRole: the rules of deploy/'s, without Pods when `pods` is false.
async fn relister_role(local: &Client, pods: bool) {
    let core = if pods {
        json!(["services", "pods", "nodes"])
    } else {
        json!(["services", "nodes"])
    };
    apply_dynamic(
        local,
        serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "relister"},
            "rules": [
                {"apiGroups": [""], "resources": core, "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                {"apiGroups": ["linkerd.io"], "resources": ["serviceprofiles"], "verbs": ["list", "watch"]},
            ]}))
        .expect("ClusterRole"),
    )
    .await;
}

// --- objects ---

async fn namespace(c: &Client, name: &str) {
    apply::<Namespace>(
        c,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
}

async fn service(
    c: &Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) {
    apply::<Service>(
        c,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name, "labels": labels, "annotations": annotations},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}),
    )
    .await;
}

/// A meshed pod of `web` in `ns` (service account `web`), Running and Ready at `ip`.
async fn pod(c: &Client, ns: &str, name: &str, ip: &str) {
    apply::<Pod>(
        c,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name,
                "labels": {"app": "web", "linkerd.io/control-plane-ns": "linkerd"}},
            "spec": {"serviceAccountName": "web", "nodeName": "node-a", "containers": [
                {"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "linkerd-proxy", "image": "proxy:1"}]}}),
    )
    .await;
    report_running(c, ns, name, ip).await;
}

async fn delete_pod(c: &Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(c.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete a pod");
}

/// The EndpointSlice of `service` in `ns` with the pods `(name, ip)` as ready endpoints.
async fn slice(c: &Client, ns: &str, service: &str, pods: &[(&str, &str)]) {
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
            "metadata": {"namespace": ns, "name": format!("{service}-1"),
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}),
    )
    .await;
}

/// Namespace `ns` on local with service `web` backed by the meshed pods `(name, ip)`.
async fn local_web(world: &World, ns: &str, pods: &[(&str, &str)]) {
    namespace(&world.local, ns).await;
    service(&world.local, ns, "web", json!({}), json!({})).await;
    for (name, ip) in pods {
        pod(&world.local, ns, name, ip).await;
    }
    slice(&world.local, ns, "web", pods).await;
}

fn web(ns: &str) -> String {
    format!("web.{ns}.svc.cluster.local:8080")
}

fn local_id(ns: &str) -> String {
    format!("web.{ns}.serviceaccount.identity.linkerd.cluster.local")
}

async fn get(server: &TestServer, name: &str, authority: &str) -> Tracked {
    Tracked::new(name, server.get(authority).await.expect("Get"))
}

async fn metric(server: &TestServer, line: &str) -> bool {
    server.metrics().await.lines().any(|l| l == line)
}

/// LIST requests of the relister per kind, from the local API server's audit log.
fn relister_lists(world: &World) -> Vec<(&'static str, usize)> {
    LISTED
        .iter()
        .map(|r| (*r, world.env.lists("local", RELISTER, r)))
        .collect()
}

// --- cases: local ---

async fn local_endpoints_carry_identities_hints_and_zones(world: Arc<World>) {
    let ns = "endpoints";
    local_web(&world, ns, &[("web-0", "10.1.0.1"), ("web-1", "10.1.0.2")]).await;
    let mut web = get(&world.server, "web", &web(ns)).await;
    web.converge(&["10.1.0.1:8080", "10.1.0.2:8080"]).await;
    for (addr, pod) in [("10.1.0.1:8080", "web-0"), ("10.1.0.2:8080", "web-1")] {
        let a = web.get(addr);
        assert_eq!(identity(a), Some(local_id(ns)));
        assert_eq!(server_name(a), Some(local_id(ns)));
        assert_eq!(hint(a), Some("h2"));
        assert_eq!(
            a.metric_labels.get("zone").map(String::as_str),
            Some("zone-a")
        );
        assert_eq!(a.metric_labels.get("pod").map(String::as_str), Some(pod));
    }
}

async fn scaling_a_slice_streams_only_the_difference(world: Arc<World>) {
    let ns = "scaling";
    local_web(&world, ns, &[("web-0", "10.1.1.1"), ("web-1", "10.1.1.2")]).await;
    let mut web = get(&world.server, "web", &web(ns)).await;
    web.converge(&["10.1.1.1:8080", "10.1.1.2:8080"]).await;
    pod(&world.local, ns, "web-2", "10.1.1.3").await;
    let three = [
        ("web-0", "10.1.1.1"),
        ("web-1", "10.1.1.2"),
        ("web-2", "10.1.1.3"),
    ];
    slice(&world.local, ns, "web", &three).await;
    let removes = web.removes;
    web.converge(&["10.1.1.1:8080", "10.1.1.2:8080", "10.1.1.3:8080"])
        .await;
    assert_eq!(web.removes, removes, "scaling up removes nothing");
    slice(&world.local, ns, "web", &three[1..]).await;
    web.converge(&["10.1.1.2:8080", "10.1.1.3:8080"]).await;
    assert_eq!(
        web.removes,
        removes + 1,
        "scaling down removes only what left"
    );
}

// --- cases: west ---

/// West's pods of `web` (exported for remote discovery and federation) and local's
/// mirrors of it (as the service mirror would write them) and local's `web` in `shop`.
const WEST_PODS: [(&str, &str); 2] = [("web-w0", "10.2.0.1"), ("web-w1", "10.2.0.2")];
const LOCAL_SHOP_PODS: [(&str, &str); 2] = [("web-0", "10.1.2.1"), ("web-1", "10.1.2.2")];

async fn west_world(world: &World) {
    let west = &world.west;
    service(
        west,
        "shop",
        "web",
        json!({"mirror.linkerd.io/exported": "remote-discovery", "mirror.linkerd.io/federated": "member"}),
        json!({}),
    )
    .await;
    for (name, ip) in WEST_PODS {
        pod(west, "shop", name, ip).await;
    }
    slice(west, "shop", "web", &WEST_PODS).await;
    local_web(world, "shop", &LOCAL_SHOP_PODS).await;
    service(
        &world.local,
        "shop",
        "web-west",
        json!({"mirror.linkerd.io/mirrored-service": "true", "mirror.linkerd.io/cluster-name": "west",
            "multicluster.linkerd.io/remote-discovery": "west", "multicluster.linkerd.io/remote-service": "web"}),
        json!({"mirror.linkerd.io/remote-svc-fq-name": "web.shop.svc.cluster.local"}),
    )
    .await;
    service(
        &world.local,
        "shop",
        "web-federated",
        json!({}),
        json!({"multicluster.linkerd.io/remote-discovery": "web@west",
            "multicluster.linkerd.io/local-discovery": "web"}),
    )
    .await;
}

const WEST_ADDRS: [&str; 2] = ["10.2.0.1:8080", "10.2.0.2:8080"];
const FED_ADDRS: [&str; 4] = [
    "10.1.2.1:8080",
    "10.1.2.2:8080",
    "10.2.0.1:8080",
    "10.2.0.2:8080",
];

/// Runs `meshlink link` against west's API server for `service_account`; its output.
async fn link_output(world: &World, service_account: &str) -> String {
    let kubeconfig = world.env.kubeconfig("west");
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let args = LinkArgs::try_parse_from([
        "link",
        "--cluster-name",
        "west",
        "--kubeconfig",
        kubeconfig,
        "--trust-domain",
        "west.example",
        "--service-account",
        service_account,
        "--token-duration",
        "1h",
    ])
    .expect("link flags");
    runtime::link::render(&args).await.expect("meshlink link")
}

/// Links west with working credentials and waits until it is read.
async fn link_west(world: &World, service_account: &str) {
    let output = link_output(world, service_account).await;
    assert!(output.contains("kind: Link"), "{output}");
    apply_yaml(&world.local, &output).await;
    eventually("west is linked and fresh", || async {
        metric(&world.server, "meshlink_cluster_linked{cluster=\"west\"} 1").await
            && metric(&world.server, "meshlink_cluster_stale{cluster=\"west\"} 0").await
    })
    .await;
}

/// West's objects in place, west linked, and streams of its mirror and the federated
/// service at their expected endpoints.
async fn linked_west(world: &World) -> (Tracked, Tracked) {
    west_world(world).await;
    link_west(world, "meshlink-remote-access").await;
    let mut remote = get(&world.server, "web-west", WEB_WEST).await;
    let mut fed = get(&world.server, "web-federated", WEB_FED).await;
    remote.converge(&WEST_ADDRS).await;
    fed.converge(&FED_ADDRS).await;
    (remote, fed)
}

async fn unlink_west(world: &World) {
    let secrets = Api::<Secret>::namespaced(world.local.clone(), "linkerd");
    match secrets
        .delete("cluster-credentials-west", &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete the Secret: {e}"),
    }
    eventually("west is no longer linked", || async {
        !world.server.metrics().await.contains("cluster=\"west\"")
    })
    .await;
}

async fn refused_credentials_leave_west_linked_but_stale(world: Arc<World>) {
    west_world(&world).await;
    unlink_west(&world).await;
    let mut remote = get(&world.server, "web-west", WEB_WEST).await;
    let mut fed = get(&world.server, "web-federated", WEB_FED).await;
    fed.converge(&["10.1.2.1:8080", "10.1.2.2:8080"]).await;

    // Credentials west refuses (401): west is linked but stale, and serves nothing.
    let bogus = world
        .env
        .token_kubeconfig("west", "not-a-token", "bogus.kubeconfig");
    let target = LinkTarget {
        cluster_name: "west".into(),
        namespace: "linkerd".into(),
        trust_domain: "west.example".into(),
        cluster_domain: "cluster.local".into(),
        target_linkerd_namespace: "linkerd".into(),
        gateway: None,
    };
    let secret = target.credentials_secret(&std::fs::read_to_string(bogus).expect("kubeconfig"));
    apply::<Secret>(&world.local, serde_json::to_value(&secret).expect("JSON")).await;
    eventually("west is linked, stale", || async {
        metric(&world.server, "meshlink_cluster_linked{cluster=\"west\"} 1").await
            && metric(&world.server, "meshlink_cluster_stale{cluster=\"west\"} 1").await
    })
    .await;
    remote.drain_for(Duration::from_secs(1)).await;
    assert!(remote.endpoints.is_empty());
    assert_eq!(fed.addrs(), ["10.1.2.1:8080", "10.1.2.2:8080"]);
}

async fn meshlink_link_links_west_for_remote_discovery_and_federation(world: Arc<World>) {
    west_world(&world).await;
    let mut remote = get(&world.server, "web-west", WEB_WEST).await;
    let mut fed = get(&world.server, "web-federated", WEB_FED).await;
    link_west(&world, "meshlink-remote-access").await;
    let link = Api::<Link>::namespaced(world.local.clone(), "linkerd")
        .get("west")
        .await
        .expect("the Link is stored");
    assert_eq!(
        link.spec.cluster_credentials_secret.as_deref(),
        Some("cluster-credentials-west")
    );
    remote.converge(&WEST_ADDRS).await;
    for addr in WEST_ADDRS {
        assert_eq!(identity(remote.get(addr)).as_deref(), Some(WEST_ID));
    }
    fed.converge(&FED_ADDRS).await;
    assert_eq!(identity(fed.get("10.2.0.1:8080")).as_deref(), Some(WEST_ID));
    assert_eq!(identity(fed.get("10.1.2.1:8080")), Some(local_id("shop")));
}

async fn a_rotated_token_keeps_west_flowing_without_a_gap(world: Arc<World>) {
    // Two accounts with the same grant: west is linked with the first, then with the
    // second, and the first goes away, so its tokens stop working: west is only read on
    // if the new token is used.
    apply_yaml(
        &world.west,
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: rotate-old, namespace: linkerd}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: rotate-new, namespace: linkerd}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: meshlink-remote-access-rotate}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshlink-remote-access}
subjects:
- {kind: ServiceAccount, name: rotate-old, namespace: linkerd}
- {kind: ServiceAccount, name: rotate-new, namespace: linkerd}
",
    )
    .await;
    west_world(&world).await;
    link_west(&world, "rotate-old").await;
    let mut remote = get(&world.server, "web-west", WEB_WEST).await;
    let mut fed = get(&world.server, "web-federated", WEB_FED).await;
    remote.converge(&WEST_ADDRS).await;
    fed.converge(&FED_ADDRS).await;

    let before = (remote.removes, fed.removes);
    let output = link_output(&world, "rotate-new").await;
    apply_yaml(&world.local, &output).await;
    Api::<ServiceAccount>::namespaced(world.west.clone(), "linkerd")
        .delete("rotate-old", &DeleteParams::default())
        .await
        .expect("delete the old account");
    // Streams keep their endpoints through the switch...
    remote.drain_for(Duration::from_secs(2)).await;
    assert_eq!(
        (remote.removes, fed.removes),
        before,
        "rotation flapped endpoints"
    );
    assert_eq!(remote.addrs(), WEST_ADDRS);
    // ...and west's changes keep coming, read with the new token.
    pod(&world.west, "shop", "web-w2", "10.2.0.3").await;
    let three = [WEST_PODS[0], WEST_PODS[1], ("web-w2", "10.2.0.3")];
    slice(&world.west, "shop", "web", &three).await;
    remote
        .converge(&["10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"])
        .await;
    fed.converge(&[
        "10.1.2.1:8080",
        "10.1.2.2:8080",
        "10.2.0.1:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
    ])
    .await;
    assert!(metric(&world.server, "meshlink_cluster_stale{cluster=\"west\"} 0").await);
    delete_pod(&world.west, "shop", "web-w2").await;
}

async fn deleting_the_credentials_secret_unlinks_west_and_recreating_it_links_again(
    world: Arc<World>,
) {
    let (mut remote, mut fed) = linked_west(&world).await;
    let secrets = Api::<Secret>::namespaced(world.local.clone(), "linkerd");
    let secret = secrets
        .get("cluster-credentials-west")
        .await
        .expect("the Secret");
    unlink_west(&world).await;
    remote.converge(&[]).await;
    fed.converge(&["10.1.2.1:8080", "10.1.2.2:8080"]).await;

    let mut secret = secret;
    secret.metadata.resource_version = None;
    secret.metadata.uid = None;
    secret.metadata.managed_fields = None;
    secret.metadata.creation_timestamp = None;
    let value = serde_json::to_value(&secret).expect("Secret JSON");
    apply::<Secret>(&world.local, value).await;
    remote.converge(&WEST_ADDRS).await;
    fed.converge(&FED_ADDRS).await;
}

async fn rbac_of_deploy_is_enough_and_refuses_the_rest(world: Arc<World>) {
    let world = &*world;
    // Everything meshlink reads with its token worked: the local cluster is fresh.
    assert!(metric(&world.server, "meshlink_cluster_stale{cluster=\"local\"} 0").await);
    let c = token_client(&world.env, "local", &world.meshlink_token).await;
    let lp = ListParams::default().limit(1);
    Api::<Secret>::namespaced(c.clone(), "linkerd")
        .list(&lp)
        .await
        .expect("Secrets of its own namespace are readable");
    Api::<Service>::all(c.clone())
        .list(&lp)
        .await
        .expect("Services");
    Api::<EndpointSlice>::all(c.clone())
        .list(&lp)
        .await
        .expect("EndpointSlices");
    Api::<Pod>::all(c.clone()).list(&lp).await.expect("Pods");
    Api::<Node>::all(c.clone()).list(&lp).await.expect("Nodes");
    Api::<ServiceProfile>::all(c.clone())
        .list(&lp)
        .await
        .expect("ServiceProfiles");
    assert_forbidden(Api::<Secret>::namespaced(c.clone(), "shop").list(&lp).await);
    assert_forbidden(Api::<Secret>::all(c.clone()).list(&lp).await);
    assert_forbidden(
        Api::<Secret>::namespaced(c.clone(), "linkerd")
            .get("cluster-credentials-west")
            .await,
    );
    assert_forbidden(
        Api::<Service>::namespaced(c.clone(), "shop")
            .delete("web", &DeleteParams::default())
            .await,
    );

    // West's credentials read endpoints there and nothing else.
    let output = link_output(world, "meshlink-remote-access").await;
    let token = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("kubeconfig: "))
        .map(|b64| {
            use base64::Engine;
            let kc = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 kubeconfig");
            let kc: serde_json::Value = serde_saphyr::from_slice(&kc).expect("kubeconfig YAML");
            kc["users"][0]["user"]["token"]
                .as_str()
                .expect("a token")
                .to_string()
        })
        .expect("a kubeconfig in the Secret");
    let w = token_client(&world.env, "west", &token).await;
    Api::<Pod>::all(w.clone())
        .list(&lp)
        .await
        .expect("west Pods");
    assert_forbidden(Api::<Secret>::all(w.clone()).list(&lp).await);
    assert_forbidden(
        Api::<Secret>::namespaced(w.clone(), "linkerd")
            .list(&lp)
            .await,
    );
}

/// A GetProfile stream and the split of its latest message.
struct ProfileSplit {
    stream: tonic::Streaming<linkerd2_proxy_api::destination::DestinationProfile>,
    /// `None` before the first message.
    split: Option<Vec<(String, u32)>>,
}

impl ProfileSplit {
    /// Waits until the latest split is `want` ((authority, weight) pairs).
    async fn converge(&mut self, want: &[(&str, u32)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(split) = &self.split
                && split
                    .iter()
                    .map(|(a, w)| (a.as_str(), *w))
                    .eq(want.iter().copied())
            {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.message()).await {
                Ok(Ok(Some(p))) => {
                    self.split = Some(
                        p.dst_overrides
                            .iter()
                            .map(|d| (d.authority.clone(), d.weight))
                            .collect(),
                    );
                }
                Ok(other) => panic!("profile stream ended: {other:?}"),
                Err(_) => panic!("split is {:?}, not {want:?}", self.split),
            }
        }
    }
}

async fn a_failover_profile_follows_ready_endpoints_in_both_clusters(world: Arc<World>) {
    let _streams = linked_west(&world).await;
    let profile = "apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: web.shop.svc.cluster.local
  namespace: shop
  annotations: {failover.linkerd.io/primary-service: web}
spec:
  routes:
  - {name: all, condition: {pathRegex: '/.*'}}
  dstOverrides:
  - {authority: web.shop.svc.cluster.local:8080, weight: 1}
  - {authority: web-west.shop.svc.cluster.local:8080, weight: 1}
";
    apply_yaml(&world.local, profile).await;
    let mut s = ProfileSplit {
        stream: world.server.get_profile(&web("shop")).await,
        split: None,
    };
    let (local, west) = (web("shop"), WEB_WEST);
    s.converge(&[(&local, 10_000), (west, 0)]).await;

    // The primary's endpoints go: west's mirror takes the traffic.
    slice(&world.local, "shop", "web", &[]).await;
    s.converge(&[(&local, 0), (west, 10_000)]).await;
    // West's go too: nothing is ready, the primary keeps the weight.
    slice(&world.west, "shop", "web", &[]).await;
    s.converge(&[(&local, 10_000), (west, 0)]).await;
    // West is back, then the primary.
    slice(&world.west, "shop", "web", &WEST_PODS).await;
    s.converge(&[(&local, 0), (west, 10_000)]).await;
    slice(&world.local, "shop", "web", &LOCAL_SHOP_PODS).await;
    s.converge(&[(&local, 10_000), (west, 0)]).await;

    // Deleting the profile leaves the default one: no split.
    Api::<ServiceProfile>::namespaced(world.local.clone(), "shop")
        .delete("web.shop.svc.cluster.local", &DeleteParams::default())
        .await
        .expect("delete the ServiceProfile");
    s.converge(&[]).await;
}

// --- cases: watches that break ---

async fn a_broken_watch_resumes_without_a_new_list(world: Arc<World>) {
    let ns = "resume";
    local_web(&world, ns, &[("web-0", "10.1.3.1"), ("web-1", "10.1.3.2")]).await;
    let mut web = get(&world.relister, "web", &web(ns)).await;
    web.converge(&["10.1.3.1:8080", "10.1.3.2:8080"]).await;
    let lists = relister_lists(&world);
    assert!(
        lists.iter().all(|(_, n)| *n >= 1),
        "the audit log counts the relister's lists: {lists:?}"
    );

    // A network blip: every watch of the relister breaks and cannot reconnect for a while.
    world.proxy.cut();
    eventually("the relister's cluster is stale", || async {
        metric(
            &world.relister,
            "meshlink_cluster_stale{cluster=\"local\"} 1",
        )
        .await
    })
    .await;
    // Changed meanwhile: the resumed watches must bring it.
    pod(&world.local, ns, "web-2", "10.1.3.3").await;
    slice(
        &world.local,
        ns,
        "web",
        &[("web-1", "10.1.3.2"), ("web-2", "10.1.3.3")],
    )
    .await;
    delete_pod(&world.local, ns, "web-0").await;
    world.proxy.restore();
    web.converge(&["10.1.3.2:8080", "10.1.3.3:8080"]).await;
    eventually("the relister's cluster is fresh again", || async {
        metric(
            &world.relister,
            "meshlink_cluster_stale{cluster=\"local\"} 0",
        )
        .await
    })
    .await;
    assert_eq!(
        relister_lists(&world),
        lists,
        "a broken watch resumes from its resourceVersion, without a new LIST"
    );
}

async fn west_api_server_down_keeps_its_endpoints_then_changes_converge(world: Arc<World>) {
    let (mut remote, mut fed) = linked_west(&world).await;
    let ns = "westdown";
    local_web(&world, ns, &[("web-0", "10.1.4.1")]).await;
    let mut local = get(&world.server, "web", &web(ns)).await;
    local.converge(&["10.1.4.1:8080"]).await;

    world.env.stop_apiserver("west").await;
    eventually("west is stale", || async {
        metric(&world.server, "meshlink_cluster_stale{cluster=\"west\"} 1").await
    })
    .await;
    assert!(metric(&world.server, "meshlink_cluster_stale{cluster=\"local\"} 0").await);
    assert_eq!(
        world.server.admin_get("/ready").await.0,
        200,
        "a linked cluster never gates readiness"
    );
    // Local changes keep flowing to local and federated streams.
    pod(&world.local, ns, "web-1", "10.1.4.2").await;
    slice(
        &world.local,
        ns,
        "web",
        &[("web-0", "10.1.4.1"), ("web-1", "10.1.4.2")],
    )
    .await;
    local.converge(&["10.1.4.1:8080", "10.1.4.2:8080"]).await;
    pod(&world.local, "shop", "web-2", "10.1.2.3").await;
    let shop3 = [
        LOCAL_SHOP_PODS[0],
        LOCAL_SHOP_PODS[1],
        ("web-2", "10.1.2.3"),
    ];
    slice(&world.local, "shop", "web", &shop3).await;
    let mut fed_now: Vec<&str> = FED_ADDRS.to_vec();
    fed_now.push("10.1.2.3:8080");
    fed.converge(&fed_now).await;
    // West's last endpoints stay.
    let removes = remote.removes;
    remote.drain_for(Duration::from_secs(2)).await;
    assert_eq!(remote.removes, removes);
    assert_eq!(remote.addrs(), WEST_ADDRS);

    world.env.start_apiserver("west").await;
    // Changed right away, most likely before meshlink's next attempt.
    delete_pod(&world.west, "shop", "web-w0").await;
    pod(&world.west, "shop", "web-w3", "10.2.0.4").await;
    slice(
        &world.west,
        "shop",
        "web",
        &[("web-w1", "10.2.0.2"), ("web-w3", "10.2.0.4")],
    )
    .await;
    remote.converge(&["10.2.0.2:8080", "10.2.0.4:8080"]).await;
    fed.converge(&[
        "10.1.2.1:8080",
        "10.1.2.2:8080",
        "10.1.2.3:8080",
        "10.2.0.2:8080",
        "10.2.0.4:8080",
    ])
    .await;
    eventually("west is fresh again", || async {
        metric(&world.server, "meshlink_cluster_stale{cluster=\"west\"} 0").await
    })
    .await;
    // Back to the objects the west cases start from.
    delete_pod(&world.west, "shop", "web-w3").await;
    delete_pod(&world.local, "shop", "web-2").await;
}

async fn a_410_gone_relists_and_slices_before_pods_expose_no_bare_endpoint(world: Arc<World>) {
    let ns = "relist";
    local_web(&world, ns, &[("web-0", "10.1.5.1"), ("web-1", "10.1.5.2")]).await;
    let mut relisted = get(&world.relister, "web (relister)", &web(ns)).await;
    let mut direct = get(&world.server, "web", &web(ns)).await;
    relisted.converge(&["10.1.5.1:8080", "10.1.5.2:8080"]).await;
    direct.converge(&["10.1.5.1:8080", "10.1.5.2:8080"]).await;
    let lists = relister_lists(&world);
    let slice_lists = world.env.lists("local", RELISTER, "endpointslices");

    // The relister's watches break; while they are down web-2 comes and web-0 goes, and
    // the API server restarts: its watch cache starts anew, past the relister's
    // resourceVersions, so every kind of the relister gets 410 Gone and lists again.
    // Pods may not be listed for now: the EndpointSlices' list lands first, naming web-2.
    world.proxy.cut();
    relister_role(&world.local, false).await;
    pod(&world.local, ns, "web-2", "10.1.5.3").await;
    slice(
        &world.local,
        ns,
        "web",
        &[("web-1", "10.1.5.2"), ("web-2", "10.1.5.3")],
    )
    .await;
    delete_pod(&world.local, ns, "web-0").await;
    world.env.restart_apiserver("local").await;
    world.proxy.restore();

    eventually("the relister listed EndpointSlices again", || async {
        world.env.lists("local", RELISTER, "endpointslices") > slice_lists
    })
    .await;
    // Every message is checked for identities (Tracked): web-2 must be withheld.
    relisted.drain_for(Duration::from_secs(2)).await;
    assert_eq!(
        relisted.addrs(),
        ["10.1.5.2:8080"],
        "web-2's pod is not known yet: withheld, not served bare"
    );
    assert!(
        metric(
            &world.relister,
            "meshlink_cluster_stale{cluster=\"local\"} 1"
        )
        .await
    );

    relister_role(&world.local, true).await;
    // The forbidden Pod watch has been backing off: up to the default backoff's 30 s
    // cap passes before it is tried again (then the 410 relists at once).
    relisted
        .converge_within(&["10.1.5.2:8080", "10.1.5.3:8080"], Duration::from_secs(75))
        .await;
    assert_eq!(identity(relisted.get("10.1.5.3:8080")), Some(local_id(ns)));
    eventually("the relister's cluster is fresh again", || async {
        metric(
            &world.relister,
            "meshlink_cluster_stale{cluster=\"local\"} 0",
        )
        .await
    })
    .await;
    let after = relister_lists(&world);
    for ((kind, before), (_, now)) in lists.iter().zip(&after) {
        assert!(
            now > before,
            "a 410 Gone makes {kind} listed again: {after:?}"
        );
    }

    // meshlink reading local directly converges too, as does a stream opened now.
    direct.converge(&["10.1.5.2:8080", "10.1.5.3:8080"]).await;
    eventually("local is fresh again", || async {
        metric(&world.server, "meshlink_cluster_stale{cluster=\"local\"} 0").await
    })
    .await;
    assert_eq!(world.server.admin_get("/ready").await.0, 200);
    let mut fresh = get(&world.server, "web (new stream)", &web(ns)).await;
    fresh.converge(&["10.1.5.2:8080", "10.1.5.3:8080"]).await;
}

fn assert_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

// --- identity ---

/// A token of `sa` for `audience` (Linkerd's proxies get `identity.l5d.io` ones).
async fn audience_token(admin: &Client, ns: &str, sa: &str, audience: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &kube::api::PostParams::default(), &req)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// Certify with a P-256 CSR for `identity`, as a proxy sends it.
async fn certify(
    srv: &TestServer,
    identity: &str,
    token: &str,
) -> Result<linkerd2_proxy_api::identity::CertifyResponse, tonic::Status> {
    use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::DnsName(
        identity.to_string().try_into().expect("dns name"),
    )];
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", srv.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    IdentityClient::new(channel)
        .certify(CertifyRequest {
            identity: identity.into(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: csr,
        })
        .await
        .map(|r| r.into_inner())
}

async fn certify_reviews_the_token_with_the_api_server(world: Arc<World>) {
    let world = &*world;
    let ns = "certify";
    namespace(&world.local, ns).await;
    namespace(&world.west, ns).await;
    for client in [&world.local, &world.west] {
        apply::<ServiceAccount>(
            client,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "web", "namespace": ns}}),
        )
        .await;
    }
    let id = format!("web.{ns}.serviceaccount.identity.linkerd.cluster.local");
    let token = audience_token(&world.local, ns, "web", "identity.l5d.io").await;
    let issued = certify(&world.server, &id, &token)
        .await
        .expect("the service account's own identity is certified");
    assert!(!issued.leaf_certificate.is_empty());

    let refused = |r: Result<_, tonic::Status>, says: &str| {
        let status = r.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(says),
            "{status:?} should say {says:?}"
        );
    };
    // Another service account's identity with web's token.
    let db = format!("db.{ns}.serviceaccount.identity.linkerd.cluster.local");
    refused(
        certify(&world.server, &db, &token).await,
        "whose identity is",
    );
    // A token for the API server's own audience, one from west's API server, and garbage.
    let api_token = service_account_token(&world.local, ns, "web").await;
    refused(
        certify(&world.server, &id, &api_token).await,
        "not authenticated",
    );
    let foreign = audience_token(&world.west, ns, "web", "identity.l5d.io").await;
    refused(
        certify(&world.server, &id, &foreign).await,
        "not authenticated",
    );
    refused(
        certify(&world.server, &id, "not-a-token").await,
        "not authenticated",
    );
}
