//! The Kubernetes source against real API servers: `scripts/k8s-test-env.sh` starts a
//! kube-apiserver (with etcd) for cluster "local" and one for "west"; meshlink runs in
//! this process with the token of its ServiceAccount under the RBAC of `deploy/`, and
//! reads west with a token bound only to `deploy/remote-access/`.
//!
//! The cases share the API servers (starting them is the slow part) and run in order in
//! one test; each prints its name and time.

mod k8s;
mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use k8s::*;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Secret, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use meshlink::{
    k8s::link::{Link, LinkTarget},
    runtime::{self, cli::LinkArgs, cli::ServeArgs},
};
use serde_json::json;
use support::{TestServer, hint, identity, server_name};

const LOCAL_ID: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";
const WEST_ID: &str = "web.shop.serviceaccount.identity.linkerd.west.example";
const WEB: &str = "web.shop.svc.cluster.local:8080";
const WEB_WEST: &str = "web-west.shop.svc.cluster.local:8080";
const WEB_FED: &str = "web-federated.shop.svc.cluster.local:8080";

/// Everything the cases share.
struct World {
    env: Env,
    local: Client,
    west: Client,
    server: TestServer,
    /// The token meshlink runs with.
    meshlink_token: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_source_against_real_api_servers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "meshlink=info,kube=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let env = Env::up(&["local", "west"]).await;
    println!("API servers up in {:?}", started.elapsed());
    let world = setup(env).await;

    let mut web = step("local endpoints with identities", local_endpoints(&world)).await;
    step(
        "scaling the slice streams diffs",
        scale_local(&world, &mut web),
    )
    .await;
    let (mut west, mut fed) = step(
        "refused credentials leave west stale; `meshlink link` links it (remote discovery, federated)",
        link_west(&world),
    )
    .await;
    step(
        "a rotated token keeps west flowing",
        rotate_token(&world, &mut west, &mut fed),
    )
    .await;
    step(
        "deleting the Secret unlinks west; recreating it links again",
        unlink_and_relink(&world, &mut west, &mut fed),
    )
    .await;
    step(
        "west's API server stops: local flows, west's endpoints stay, west is stale",
        west_down(&world, &mut web, &mut west, &mut fed),
    )
    .await;
    step(
        "west's API server starts with changed endpoints: streams converge",
        west_back(&world, &mut west, &mut fed),
    )
    .await;
    step(
        "the local API server restarts under open streams: they converge",
        local_restart(&world, &mut web, &mut fed),
    )
    .await;
    step(
        "the RBAC of deploy/ is enough and refuses the rest",
        rbac(&world),
    )
    .await;
    println!("all cases passed in {:?}", started.elapsed());
    world.server.stop().await;
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
    let local = env.admin("local").await;
    let west = env.admin("west").await;
    apply_kustomization(&local, &root.join("deploy")).await;
    apply_kustomization(&west, &root.join("deploy/remote-access")).await;
    for c in [&local, &west] {
        apply::<Namespace>(
            c,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        )
        .await;
    }
    apply::<Node>(
        &local,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
            "labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    )
    .await;

    // meshlink runs as the ServiceAccount of deploy/, with nothing but its RBAC.
    let meshlink_token = service_account_token(&local, "linkerd", "meshlink").await;
    let kubeconfig = env.token_kubeconfig("local", &meshlink_token, "meshlink.kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_string();
    let args = ServeArgs::try_parse_from([
        "serve",
        "--kubeconfig",
        &kubeconfig,
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
    World {
        env,
        local,
        west,
        server,
        meshlink_token,
    }
}

// --- objects ---

async fn service(
    c: &Client,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) {
    apply::<Service>(
        c,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": name, "labels": labels, "annotations": annotations},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}),
    )
    .await;
}

/// A meshed pod of `web`, Running and Ready at `ip`.
async fn pod(c: &Client, name: &str, ip: &str) {
    apply::<Pod>(
        c,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "shop", "name": name,
                "labels": {"app": "web", "linkerd.io/control-plane-ns": "linkerd"}},
            "spec": {"serviceAccountName": "web", "nodeName": "node-a", "containers": [
                {"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "linkerd-proxy", "image": "proxy:1"}]}}),
    )
    .await;
    // Nothing runs here to report status: patch it as a kubelet would.
    Api::<Pod>::namespaced(c.clone(), "shop")
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .expect("patch pod status");
}

/// The EndpointSlice of `service` with the pods `(name, ip)` as ready endpoints.
async fn slice(c: &Client, service: &str, pods: &[(&str, &str)]) {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": name}})
        })
        .collect();
    apply::<EndpointSlice>(
        c,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "shop", "name": format!("{service}-1"),
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}),
    )
    .await;
}

async fn get(world: &World, name: &'static str, authority: &str) -> Tracked {
    Tracked::new(name, world.server.get(authority).await.expect("Get"))
}

async fn metric(world: &World, line: &str) -> bool {
    world.server.metrics().await.lines().any(|l| l == line)
}

// --- cases ---

async fn local_endpoints(world: &World) -> Tracked {
    service(&world.local, "web", json!({}), json!({})).await;
    pod(&world.local, "web-0", "10.1.0.1").await;
    pod(&world.local, "web-1", "10.1.0.2").await;
    slice(
        &world.local,
        "web",
        &[("web-0", "10.1.0.1"), ("web-1", "10.1.0.2")],
    )
    .await;
    let mut web = get(world, "web", WEB).await;
    web.converge(&["10.1.0.1:8080", "10.1.0.2:8080"]).await;
    for addr in ["10.1.0.1:8080", "10.1.0.2:8080"] {
        let a = web.get(addr);
        assert_eq!(identity(a).as_deref(), Some(LOCAL_ID));
        assert_eq!(server_name(a).as_deref(), Some(LOCAL_ID));
        assert_eq!(hint(a), Some("h2"));
        assert_eq!(
            a.metric_labels.get("zone").map(String::as_str),
            Some("zone-a")
        );
        assert_eq!(
            a.metric_labels.get("pod").map(String::as_str),
            Some(&a_pod(addr)[..])
        );
    }
    web
}

fn a_pod(addr: &str) -> String {
    match addr {
        "10.1.0.1:8080" => "web-0".into(),
        _ => "web-1".into(),
    }
}

async fn scale_local(world: &World, web: &mut Tracked) {
    pod(&world.local, "web-2", "10.1.0.3").await;
    slice(
        &world.local,
        "web",
        &[
            ("web-0", "10.1.0.1"),
            ("web-1", "10.1.0.2"),
            ("web-2", "10.1.0.3"),
        ],
    )
    .await;
    let removes = web.removes;
    web.converge(&["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"])
        .await;
    assert_eq!(web.removes, removes, "scaling up removes nothing");
    slice(
        &world.local,
        "web",
        &[("web-1", "10.1.0.2"), ("web-2", "10.1.0.3")],
    )
    .await;
    web.converge(&["10.1.0.2:8080", "10.1.0.3:8080"]).await;
    assert_eq!(
        web.removes,
        removes + 1,
        "scaling down removes only what left"
    );
}

/// Links west with `meshlink link` run against west's API server; returns its output.
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

async fn link_west(world: &World) -> (Tracked, Tracked) {
    let west = &world.west;
    service(
        west,
        "web",
        json!({"mirror.linkerd.io/exported": "remote-discovery", "mirror.linkerd.io/federated": "member"}),
        json!({}),
    )
    .await;
    pod(west, "web-w0", "10.2.0.1").await;
    pod(west, "web-w1", "10.2.0.2").await;
    slice(
        west,
        "web",
        &[("web-w0", "10.2.0.1"), ("web-w1", "10.2.0.2")],
    )
    .await;

    // The mirrors the service mirror would write for west (not part of this test).
    service(
        &world.local,
        "web-west",
        json!({"mirror.linkerd.io/mirrored-service": "true", "mirror.linkerd.io/cluster-name": "west",
            "multicluster.linkerd.io/remote-discovery": "west", "multicluster.linkerd.io/remote-service": "web"}),
        json!({"mirror.linkerd.io/remote-svc-fq-name": "web.shop.svc.cluster.local"}),
    )
    .await;
    service(
        &world.local,
        "web-federated",
        json!({}),
        json!({"multicluster.linkerd.io/remote-discovery": "web@west",
            "multicluster.linkerd.io/local-discovery": "web"}),
    )
    .await;
    let mut remote = get(world, "web-west", WEB_WEST).await;
    let mut fed = get(world, "web-federated", WEB_FED).await;
    fed.converge(&["10.1.0.2:8080", "10.1.0.3:8080"]).await;

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
        metric(world, "meshlink_cluster_linked{cluster=\"west\"} 1").await
            && metric(world, "meshlink_cluster_stale{cluster=\"west\"} 1").await
    })
    .await;
    assert!(remote.endpoints.is_empty());

    // The real credentials: the same cluster is read with them.
    let output = link_output(world, "meshlink-remote-access").await;
    assert!(output.contains("kind: Link"), "{output}");
    apply_yaml(&world.local, &output).await;
    let link = Api::<Link>::namespaced(world.local.clone(), "linkerd")
        .get("west")
        .await
        .expect("the Link is stored");
    assert_eq!(
        link.spec.cluster_credentials_secret.as_deref(),
        Some("cluster-credentials-west")
    );

    remote.converge(&["10.2.0.1:8080", "10.2.0.2:8080"]).await;
    for addr in ["10.2.0.1:8080", "10.2.0.2:8080"] {
        assert_eq!(identity(remote.get(addr)).as_deref(), Some(WEST_ID));
    }
    fed.converge(&[
        "10.1.0.2:8080",
        "10.1.0.3:8080",
        "10.2.0.1:8080",
        "10.2.0.2:8080",
    ])
    .await;
    assert_eq!(identity(fed.get("10.2.0.1:8080")).as_deref(), Some(WEST_ID));
    assert_eq!(
        identity(fed.get("10.1.0.2:8080")).as_deref(),
        Some(LOCAL_ID)
    );
    eventually("west is linked and fresh", || async {
        metric(world, "meshlink_cluster_linked{cluster=\"west\"} 1").await
            && metric(world, "meshlink_cluster_stale{cluster=\"west\"} 0").await
    })
    .await;
    (remote, fed)
}

async fn rotate_token(world: &World, remote: &mut Tracked, fed: &mut Tracked) {
    // New credentials from another account with the same grant; then the first account
    // goes away, so its tokens stop working: west is only read on if the new token is used.
    apply_yaml(
        &world.west,
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: rotated, namespace: linkerd}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: meshlink-remote-access-rotated}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshlink-remote-access}
subjects: [{kind: ServiceAccount, name: rotated, namespace: linkerd}]
",
    )
    .await;
    let before = (remote.removes, fed.removes);
    let output = link_output(world, "rotated").await;
    apply_yaml(&world.local, &output).await;
    Api::<ServiceAccount>::namespaced(world.west.clone(), "linkerd")
        .delete("meshlink-remote-access", &DeleteParams::default())
        .await
        .expect("delete the old account");
    // Streams keep their endpoints through the switch...
    remote.drain_for(Duration::from_secs(2)).await;
    assert_eq!(
        (remote.removes, fed.removes),
        before,
        "rotation flapped endpoints"
    );
    assert_eq!(remote.addrs(), ["10.2.0.1:8080", "10.2.0.2:8080"]);
    // ...and west's changes keep coming, read with the new token.
    pod(&world.west, "web-w2", "10.2.0.3").await;
    slice(
        &world.west,
        "web",
        &[
            ("web-w0", "10.2.0.1"),
            ("web-w1", "10.2.0.2"),
            ("web-w2", "10.2.0.3"),
        ],
    )
    .await;
    remote
        .converge(&["10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"])
        .await;
    fed.converge(&[
        "10.1.0.2:8080",
        "10.1.0.3:8080",
        "10.2.0.1:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
    ])
    .await;
    assert!(metric(world, "meshlink_cluster_stale{cluster=\"west\"} 0").await);
}

async fn unlink_and_relink(world: &World, remote: &mut Tracked, fed: &mut Tracked) {
    let secrets = Api::<Secret>::namespaced(world.local.clone(), "linkerd");
    let secret = secrets
        .get("cluster-credentials-west")
        .await
        .expect("the Secret");
    secrets
        .delete("cluster-credentials-west", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    remote.converge(&[]).await;
    fed.converge(&["10.1.0.2:8080", "10.1.0.3:8080"]).await;
    eventually("west is no longer linked", || async {
        !world.server.metrics().await.contains("cluster=\"west\"")
    })
    .await;

    let mut secret = secret;
    secret.metadata.resource_version = None;
    secret.metadata.uid = None;
    secret.metadata.managed_fields = None;
    secret.metadata.creation_timestamp = None;
    let value = serde_json::to_value(&secret).expect("Secret JSON");
    apply::<Secret>(&world.local, value).await;
    let west = ["10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"];
    remote.converge(&west).await;
    fed.converge(&[
        "10.1.0.2:8080",
        "10.1.0.3:8080",
        "10.2.0.1:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
    ])
    .await;
}

async fn west_down(world: &World, web: &mut Tracked, remote: &mut Tracked, fed: &mut Tracked) {
    world.env.stop_apiserver("west").await;
    eventually("west is stale", || async {
        metric(world, "meshlink_cluster_stale{cluster=\"west\"} 1").await
    })
    .await;
    assert!(metric(world, "meshlink_cluster_stale{cluster=\"local\"} 0").await);
    assert_eq!(
        world.server.admin_get("/ready").await.0,
        200,
        "a linked cluster never gates readiness"
    );

    // Local changes keep flowing to local and federated streams.
    pod(&world.local, "web-3", "10.1.0.4").await;
    slice(
        &world.local,
        "web",
        &[
            ("web-1", "10.1.0.2"),
            ("web-2", "10.1.0.3"),
            ("web-3", "10.1.0.4"),
        ],
    )
    .await;
    web.converge(&["10.1.0.2:8080", "10.1.0.3:8080", "10.1.0.4:8080"])
        .await;
    fed.converge(&[
        "10.1.0.2:8080",
        "10.1.0.3:8080",
        "10.1.0.4:8080",
        "10.2.0.1:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
    ])
    .await;
    // West's last endpoints stay.
    let removes = remote.removes;
    remote.drain_for(Duration::from_secs(2)).await;
    assert_eq!(remote.removes, removes);
    assert_eq!(
        remote.addrs(),
        ["10.2.0.1:8080", "10.2.0.2:8080", "10.2.0.3:8080"]
    );
}

async fn west_back(world: &World, remote: &mut Tracked, fed: &mut Tracked) {
    world.env.start_apiserver("west").await;
    // Changed right away, most likely before meshlink's next attempt: the relist finds it.
    Api::<Pod>::namespaced(world.west.clone(), "shop")
        .delete("web-w0", &DeleteParams::default())
        .await
        .expect("delete a west pod");
    pod(&world.west, "web-w3", "10.2.0.4").await;
    slice(
        &world.west,
        "web",
        &[
            ("web-w1", "10.2.0.2"),
            ("web-w2", "10.2.0.3"),
            ("web-w3", "10.2.0.4"),
        ],
    )
    .await;
    remote
        .converge(&["10.2.0.2:8080", "10.2.0.3:8080", "10.2.0.4:8080"])
        .await;
    fed.converge(&[
        "10.1.0.2:8080",
        "10.1.0.3:8080",
        "10.1.0.4:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
        "10.2.0.4:8080",
    ])
    .await;
    eventually("west is fresh again", || async {
        metric(world, "meshlink_cluster_stale{cluster=\"west\"} 0").await
    })
    .await;
}

async fn local_restart(world: &World, web: &mut Tracked, fed: &mut Tracked) {
    world.env.restart_apiserver("local").await;
    Api::<Pod>::namespaced(world.local.clone(), "shop")
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("delete a local pod");
    pod(&world.local, "web-4", "10.1.0.5").await;
    slice(
        &world.local,
        "web",
        &[
            ("web-2", "10.1.0.3"),
            ("web-3", "10.1.0.4"),
            ("web-4", "10.1.0.5"),
        ],
    )
    .await;
    web.converge(&["10.1.0.3:8080", "10.1.0.4:8080", "10.1.0.5:8080"])
        .await;
    assert_eq!(
        identity(web.get("10.1.0.5:8080")).as_deref(),
        Some(LOCAL_ID)
    );
    fed.converge(&[
        "10.1.0.3:8080",
        "10.1.0.4:8080",
        "10.1.0.5:8080",
        "10.2.0.2:8080",
        "10.2.0.3:8080",
        "10.2.0.4:8080",
    ])
    .await;
    eventually("local is fresh again", || async {
        metric(world, "meshlink_cluster_stale{cluster=\"local\"} 0").await
    })
    .await;
    assert_eq!(world.server.admin_get("/ready").await.0, 200);
    // A stream opened now sees the same.
    let mut fresh = get(world, "web (new stream)", WEB).await;
    fresh
        .converge(&["10.1.0.3:8080", "10.1.0.4:8080", "10.1.0.5:8080"])
        .await;
}

async fn rbac(world: &World) {
    // Everything meshlink reads with its token worked: the local cluster is fresh.
    assert!(metric(world, "meshlink_cluster_stale{cluster=\"local\"} 0").await);
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
    let output = link_output(world, "rotated").await;
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

fn assert_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}
