//! The service mirror's operations parts against real things: the gateway prober
//! against an HTTP endpoint inside a network namespace the test makes (root needed),
//! leader election and `meshlink check` against real API servers of
//! `scripts/k8s-test-env.sh`, and the mirror's RBAC from `deploy/`.

mod k8s;
mod mirror_support;
mod support;

use std::{net::SocketAddr, time::Duration};

use k8s::{Env, apply, apply_kustomization, apply_yaml, service_account_token, token_client};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    coordination::v1::Lease,
    core::v1::{Namespace, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use meshlink::{
    k8s::link::{Link, LinkTarget},
    mirror::{
        lease::{LeaseSettings, spawn_leader_election},
        probe::{ProbeMetrics, ProbeSpec, spawn_gateway_probe},
    },
};
use mirror_support::{
    netns::{NetNs, ProbeTarget},
    proxy::Proxy,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use serde_json::json;
use tokio::sync::watch;

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(45);

/// Waits until `check` holds, polling; panics naming `what` after [`WAIT`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the watch says `want`.
async fn until_value(what: &str, rx: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(WAIT, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}"))
        .unwrap_or_else(|_| panic!("{what}: the task ended"));
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("metrics encode");
    text
}

/// The value of a sample line `name{labels} value` in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// --- the gateway prober ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_probe_turns_not_alive_after_the_threshold_and_alive_on_one_success() {
    let ns = NetNs::create();
    let [refusing, answering] = ns.ns_addrs;
    let target = ProbeTarget::serve(ns.bind(SocketAddr::new(answering.into(), 4191)));
    let mut registry = Registry::default();
    let metrics = ProbeMetrics::register(&mut registry);
    let spec = ProbeSpec {
        path: "/ready".into(),
        port: 4191,
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        failure_threshold: 3,
    };
    let (stop, stop_rx) = watch::channel(false);
    // Nothing listens on the first address: alive while any address answers.
    let addrs = vec![refusing.to_string(), answering.to_string()];
    let mut alive = spawn_gateway_probe("west".into(), addrs, spec, metrics.clone(), stop_rx);
    const ALIVE: &str = "gateway_alive{target_cluster=\"west\"}";
    const PROBES: &str = "gateway_probe_latency_ms_count{target_cluster=\"west\"}";

    until("two good probes are measured", || {
        sample(&scrape(&registry), PROBES).unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(*alive.borrow(), "alive while one address answers 200");
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // Failing, one answer at a time: the third failing request is held while the
    // prober has counted two failures; it must still say alive.
    target.set_failing(true);
    target.allow_failures(2);
    until("two 503s sent and a third request held", || {
        target.failed() == 2 && target.waiting() == 1
    })
    .await;
    assert!(*alive.borrow(), "alive after 2 of 3 failures");
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));
    target.allow_failures(1);
    until_value("not alive after the third failure", &mut alive, false).await;
    assert_eq!(
        target.failed(),
        3,
        "no failure beyond the threshold was needed"
    );
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(0.0));

    // One good answer makes it alive again.
    target.set_failing(false);
    until_value("alive after one success", &mut alive, true).await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // The network fails (probes time out or find no route), then comes back.
    ns.set_link(false);
    until_value(
        "not alive while the gateway is unreachable",
        &mut alive,
        false,
    )
    .await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(0.0));
    ns.set_link(true);
    until_value(
        "alive once the gateway is reachable again",
        &mut alive,
        true,
    )
    .await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // Stopping the prober removes its series.
    stop.send_replace(true);
    until("gateway_alive of west removed", || {
        sample(&scrape(&registry), ALIVE).is_none()
    })
    .await;
    assert_eq!(metrics.alive("west"), None);
}

// --- leader election ---

/// A client of `cluster` that reaches its API server through a proxy the test can cut.
async fn client_through(env: &Env, cluster: &str) -> (Client, Proxy) {
    let file = Kubeconfig::read_from(env.kubeconfig(cluster)).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    let upstream: SocketAddr = config
        .cluster_url
        .authority()
        .expect("server address")
        .as_str()
        .parse()
        .expect("API server at an IP:port");
    let proxy = Proxy::start(upstream).await;
    config.cluster_url = format!("https://{}", proxy.addr).parse().expect("URL");
    (Client::try_from(config).expect("client"), proxy)
}

async fn ensure_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(k8s::MANAGER),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            ),
        )
        .await
        .expect("namespace");
}

/// One replica taking part in the election.
struct Replica {
    name: &'static str,
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    proxy: Proxy,
}

async fn replica(env: &Env, name: &'static str) -> Replica {
    let (client, proxy) = client_through(env, "local").await;
    let (stop, stop_rx) = watch::channel(false);
    let settings = LeaseSettings {
        namespace: "linkerd".into(),
        name: "meshlink-mirror".into(),
        holder: name.into(),
        lease_duration: Duration::from_secs(4),
        renew_every: Duration::from_millis(500),
    };
    let leader = spawn_leader_election(client, settings, stop_rx);
    Replica {
        name,
        leader,
        stop,
        proxy,
    }
}

/// Holder and transitions of the Lease, as the API server has it.
async fn lease_state(leases: &Api<Lease>) -> (Option<String>, i32, Option<String>) {
    let lease = leases.get("meshlink-mirror").await.expect("get Lease");
    let spec = lease.spec.unwrap_or_default();
    (
        spec.holder_identity,
        spec.lease_transitions.unwrap_or(0),
        spec.renew_time.map(|t| t.0.to_string()),
    )
}

/// Waits until the holder has renewed the Lease `n` more times, checking on the way
/// that it stays `holder`.
async fn renewals(leases: &Api<Lease>, holder: &str, n: usize) {
    let mut last = lease_state(leases).await.2;
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{holder} did not renew {n} times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (now_holder, _, renewed) = lease_state(leases).await;
        assert_eq!(
            now_holder.as_deref(),
            Some(holder),
            "the Lease changed hands"
        );
        if renewed != last {
            seen += 1;
            last = renewed;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_one_leader_takeover_after_expiry_and_release() {
    let env = Env::up(&["local"]).await;
    let admin = env.admin("local").await;
    ensure_namespace(&admin, "linkerd").await;
    let leases = Api::<Lease>::namespaced(admin.clone(), "linkerd");
    let a = replica(&env, "a").await;
    let b = replica(&env, "b").await;

    // Every change of either replica's view is checked: never two leaders at once.
    let (mut ra, mut rb) = (a.leader.clone(), b.leader.clone());
    let monitor = tokio::spawn(async move {
        let mut history = vec![];
        // A replica whose task ended keeps its last value.
        let (mut a_on, mut b_on) = (true, true);
        while a_on || b_on {
            let snapshot = (*ra.borrow_and_update(), *rb.borrow_and_update());
            assert!(
                !(snapshot.0 && snapshot.1),
                "two leaders at once: {history:?}"
            );
            if history.last() != Some(&snapshot) {
                history.push(snapshot);
            }
            tokio::select! {
                r = ra.changed(), if a_on => a_on = r.is_ok(),
                r = rb.changed(), if b_on => b_on = r.is_ok(),
            }
        }
        history
    });

    until("one replica leads", || {
        *a.leader.borrow() || *b.leader.borrow()
    })
    .await;
    let (leader, follower) = if *a.leader.borrow() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(lease_state(&leases).await.0.as_deref(), Some(leader.name));
    renewals(&leases, leader.name, 3).await;
    assert!(*leader.leader.borrow() && !*follower.leader.borrow());

    // The leader loses the API server (its requests hang): it steps down by itself, and
    // only then (the monitor checks) the other takes over, once the lease expired.
    leader.proxy.set_cut(true);
    let mut f = follower.leader.clone();
    until_value("the follower takes over the expired lease", &mut f, true).await;
    assert!(!*leader.leader.borrow(), "the cut-off leader stepped down");
    let (holder, transitions, _) = lease_state(&leases).await;
    assert_eq!(holder.as_deref(), Some(follower.name));
    assert_eq!(transitions, 1);

    // Reconnected, the old leader stays a follower while the new one renews.
    leader.proxy.set_cut(false);
    renewals(&leases, follower.name, 4).await;
    assert!(!*leader.leader.borrow());

    // The new leader shuts down and releases the Lease: the other acquires it.
    follower.stop.send_replace(true);
    let mut l = leader.leader.clone();
    until_value(
        "the other replica acquires the released lease",
        &mut l,
        true,
    )
    .await;
    assert!(!*follower.leader.borrow());
    let (holder, transitions, _) = lease_state(&leases).await;
    assert_eq!(holder.as_deref(), Some(leader.name));
    assert_eq!(transitions, 2);

    leader.stop.send_replace(true);
    let mut released = false;
    until_value("the last leader stops leading", &mut l, false).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if lease_state(&leases).await.0.is_none() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the Lease is released on shutdown");
    drop((a, b));
    let history = tokio::time::timeout(WAIT, monitor)
        .await
        .expect("the leader-election tasks end on stop")
        .expect("monitor");
    println!("leadership (a, b) over time: {history:?}");
}

// --- meshlink check ---

/// A gateway-mode Link to `cluster` with credentials Secret `secret` holding `kubeconfig`.
async fn link_with_secret(local: &Client, cluster: &str, kubeconfig: &str) {
    let target = LinkTarget {
        cluster_name: cluster.into(),
        namespace: "linkerd".into(),
        trust_domain: format!("{cluster}.example"),
        cluster_domain: "cluster.local".into(),
        target_linkerd_namespace: "linkerd".into(),
        gateway: Some(("192.0.2.10".into(), 4143, "gateway.example".into())),
    };
    let secret = serde_json::to_value(target.credentials_secret(kubeconfig)).expect("JSON");
    apply::<Secret>(local, with_kind(secret, "v1", "Secret")).await;
    let link = serde_json::to_value(target.link()).expect("JSON");
    apply::<Link>(local, link).await;
}

fn with_kind(mut value: serde_json::Value, api_version: &str, kind: &str) -> serde_json::Value {
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    value
}

/// Writes a Link's status on the status subresource, as the mirror would.
async fn link_status(local: &Client, name: &str, status: serde_json::Value) {
    Api::<Link>::namespaced(local.clone(), "linkerd")
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("status subresource");
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-11-27T18:00:00Z"})
}

fn healthy_status(synced_ago: Duration) -> serde_json::Value {
    let at = k8s_openapi::jiff::Timestamp::now() - synced_ago;
    json!({
        "conditions": [
            condition("TargetSynced", "True", "Synced", ""),
            condition("MirrorsReady", "True", "Ready", ""),
            condition("GatewayAlive", "True", "Alive", ""),
        ],
        "mirroredServices": {"gateway": 1, "remoteDiscovery": 0, "federated": 0, "headlessEndpoints": 0},
        "lastSyncTime": at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

/// A gateway mirror Service of `cluster`, with an EndpointSlice whose one endpoint is
/// ready or not (addresses are only data here: nothing is sent to them).
async fn gateway_mirror(local: &Client, name: &str, cluster: &str, ready: Option<bool>) {
    apply::<Service>(
        local,
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": name, "labels": {
                "mirror.linkerd.io/mirrored-service": "true",
                "mirror.linkerd.io/cluster-name": cluster}},
            "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    )
    .await;
    if let Some(ready) = ready {
        apply::<EndpointSlice>(
            local,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "shop", "name": format!("{name}-gw"),
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": ready}}],
                "ports": [{"name": "http", "port": 4143}]}),
        )
        .await;
    }
}

/// Runs the `meshlink` binary's `check`; returns its exit code and stdout.
async fn meshlink_check(env: &Env, output: &str) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlink"))
        .args(["check", "--kubeconfig"])
        .arg(env.kubeconfig("local"))
        .args(["--timeout", "5s", "-o", output])
        .output()
        .await
        .expect("run meshlink check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.is_empty(),
        "meshlink check printed no report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), stdout)
}

/// The `(link, check)` pairs of the problems a JSON report lists.
fn json_problems(stdout: &str) -> Vec<(String, String, String)> {
    let report: serde_json::Value = serde_json::from_str(stdout).expect("JSON report");
    let mut problems: Vec<_> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "problem")
        .map(|c| {
            (
                c["link"].as_str().unwrap_or_default().to_string(),
                c["check"].as_str().unwrap_or_default().to_string(),
                c["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    problems.sort();
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_problem_and_exits_1_and_0_when_all_is_fine() {
    let env = Env::up(&["local", "west"]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = env.admin("local").await;
    let west = env.admin("west").await;
    ensure_namespace(&local, "linkerd").await;
    ensure_namespace(&local, "shop").await;
    apply_yaml(
        &local,
        &std::fs::read_to_string(root.join("deploy/crds/link.yaml")).expect("CRD"),
    )
    .await;
    apply_kustomization(&west, &root.join("deploy/remote-access")).await;

    // A healthy Link: west reads with a token of deploy/remote-access's account.
    let token = service_account_token(&west, "linkerd", "meshlink-remote-access").await;
    let kubeconfig = std::fs::read_to_string(env.token_kubeconfig("west", &token, "west.kc"))
        .expect("kubeconfig");
    link_with_secret(&local, "west", &kubeconfig).await;
    link_status(&local, "west", healthy_status(Duration::from_secs(30))).await;
    gateway_mirror(&local, "web-west", "west", Some(true)).await;

    let (code, table) = meshlink_check(&env, "table").await;
    println!("{table}");
    assert_eq!(code, 0, "all fine: exit 0\n{table}");
    assert!(table.ends_with("\nall checks passed\n"), "{table}");
    assert!(table.contains("west  target API"), "{table}");

    // Now break one thing per Link, and west's status and mirrors.
    link_with_secret(&local, "east", "this: [is not a kubeconfig").await;
    link_with_secret(&local, "north", &kubeconfig.replace(&token, "not-a-token")).await;
    link_with_secret(&local, "south", &kubeconfig).await;
    Api::<Secret>::namespaced(local.clone(), "linkerd")
        .delete("cluster-credentials-south", &Default::default())
        .await
        .expect("delete Secret");
    let mut stale = healthy_status(Duration::from_secs(600));
    stale["conditions"][1] = condition("MirrorsReady", "False", "Conflict", "1 conflict");
    stale["conditions"][2] = condition("GatewayAlive", "False", "ProbeFailing", "3 failures");
    stale["troubles"] = json!([{"namespace": "shop", "name": "api-west", "reason": "Conflict",
        "message": "a Service shop/api-west exists that meshlink does not own; left untouched"}]);
    link_status(&local, "west", stale).await;
    gateway_mirror(&local, "db-west", "west", Some(false)).await;
    gateway_mirror(&local, "cache-west", "west", None).await;

    let (code, stdout) = meshlink_check(&env, "json").await;
    assert_eq!(code, 1, "problems: exit 1\n{stdout}");
    let problems = json_problems(&stdout);
    let pairs: Vec<(&str, &str)> = problems
        .iter()
        .map(|(l, c, _)| (l.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("east", "credentials"),
            ("east", "last sync"),
            ("north", "last sync"),
            ("north", "target API"),
            ("south", "credentials"),
            ("south", "last sync"),
            ("west", "conflicts"),
            ("west", "gateway alive"),
            ("west", "last sync"),
            ("west", "mirror endpoints"),
        ],
        "{problems:#?}"
    );
    let detail = |link: &str, check: &str| {
        problems
            .iter()
            .find(|p| p.0 == link && p.1 == check)
            .map(|p| p.2.clone())
            .unwrap_or_default()
    };
    assert!(detail("east", "credentials").contains("does not parse"));
    assert!(
        detail("north", "target API").contains("refuses"),
        "{problems:#?}"
    );
    assert!(detail("south", "credentials").contains("does not exist"));
    assert!(detail("west", "last sync").contains("stale after 5m"));
    assert!(detail("west", "gateway alive").contains("ProbeFailing"));
    assert!(detail("west", "conflicts").starts_with("shop/api-west: Conflict"));
    assert!(detail("west", "mirror endpoints").contains(
        "2 of 3 gateway mirror(s) have no ready endpoint: shop/cache-west, shop/db-west"
    ));

    // The table ends with the same problems, one line each.
    let (code, table) = meshlink_check(&env, "table").await;
    println!("{table}");
    assert_eq!(code, 1);
    let (_, tail) = table
        .split_once("\n10 problems:\n")
        .expect("problem summary");
    assert_eq!(tail.lines().count(), 10, "{table}");
    assert!(
        tail.contains(
            "  ✗ link south: credentials: Secret linkerd/cluster-credentials-south does not exist\n"
        ),
        "{table}"
    );
}

// --- deploy/ and the mirror's RBAC ---

/// Whether the mirror's ServiceAccount may `verb` on `resource` (as `group/resource/sub`)
/// in `namespace` (None: cluster-wide), asked of the API server's authorizer.
async fn mirror_may(
    admin: &Client,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (group, rest) = resource.split_once('/').unwrap_or(("", resource));
    let (resource, sub) = rest
        .split_once('/')
        .map_or((rest, None), |(r, s)| (r, Some(s)));
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("system:serviceaccount:linkerd:meshlink-mirror".into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:linkerd".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_is_accepted_and_the_mirror_account_may_do_exactly_what_it_needs() {
    let env = Env::up(&["local"]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let admin = env.admin("local").await;
    apply_kustomization(&admin, &root.join("deploy")).await;
    ensure_namespace(&admin, "shop").await;

    // Both Deployments run two replicas, spread over nodes, under a disruption budget.
    let deployments = Api::<Deployment>::namespaced(admin.clone(), "linkerd");
    for name in ["meshlink", "meshlink-mirror"] {
        let d = deployments.get(name).await.expect("Deployment");
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(2), "{name}");
        let pod = spec.template.spec.expect("pod spec");
        let anti = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .expect("pod anti-affinity");
        assert_eq!(
            anti[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        let pdb = Api::<PodDisruptionBudget>::namespaced(admin.clone(), "linkerd")
            .get(name)
            .await
            .expect("PodDisruptionBudget");
        let selector = pdb
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.match_labels);
        assert_eq!(
            selector
                .and_then(|l| l.get("app.kubernetes.io/name").cloned())
                .as_deref(),
            Some(name)
        );
    }
    let mirror = deployments
        .get("meshlink-mirror")
        .await
        .expect("Deployment");
    let container = &mirror.spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(container.args.as_deref(), Some(&["mirror".to_string()][..]));

    // Real requests with the mirror's token.
    let token = service_account_token(&admin, "linkerd", "meshlink-mirror").await;
    let mirror = token_client(&env, "local", &token).await;
    let apply = PatchParams::apply("meshlink-mirror");
    let services = Api::<Service>::namespaced(mirror.clone(), "shop");
    services
        .patch(
            "web-west",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web-west", "labels": {"mirror.linkerd.io/mirrored-service": "true"}},
                "spec": {"ports": [{"name": "http", "port": 8080}]}})),
        )
        .await
        .expect("the mirror writes a Service in the remote service's namespace");
    Api::<EndpointSlice>::namespaced(mirror.clone(), "shop")
        .patch(
            "web-west-gw",
            &apply,
            &Patch::Apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-west-gw", "labels": {"kubernetes.io/service-name": "web-west"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["192.0.2.10"]}],
                "ports": [{"name": "http", "port": 4143}]})),
        )
        .await
        .expect("the mirror writes an EndpointSlice");
    services
        .delete("web-west", &Default::default())
        .await
        .expect("the mirror deletes its Service");

    link_with_secret(&admin, "west", "apiVersion: v1\nkind: Config\n").await;
    let links = Api::<Link>::namespaced(mirror.clone(), "linkerd");
    links
        .patch(
            "west",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["meshlink.io/mirror-cleanup"]}})),
        )
        .await
        .expect("the mirror adds its finalizer");
    links
        .patch_status(
            "west",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": healthy_status(Duration::from_secs(1))})),
        )
        .await
        .expect("the mirror writes Link status");
    Api::<Secret>::namespaced(mirror.clone(), "linkerd")
        .get("cluster-credentials-west")
        .await
        .expect("the mirror reads a credentials Secret in its namespace");
    assert!(forbidden(
        Api::<Secret>::namespaced(mirror.clone(), "linkerd")
            .list(&ListParams::default())
            .await
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(mirror.clone(), "shop")
            .get("anything")
            .await
    ));
    assert!(forbidden(
        Api::<Pod>::namespaced(mirror.clone(), "shop")
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}))
                .expect("pod")
            )
            .await
    ));

    // The leader election runs under this RBAC.
    let (stop, stop_rx) = watch::channel(false);
    let settings = LeaseSettings {
        namespace: "linkerd".into(),
        name: "meshlink-mirror".into(),
        holder: "meshlink-mirror-0".into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
    };
    let mut leader = spawn_leader_election(mirror.clone(), settings, stop_rx);
    until_value("the mirror's account holds the Lease", &mut leader, true).await;
    stop.send_replace(true);

    // And the authorizer agrees on the rest, namespace by namespace.
    for (verb, resource, ns, name) in [
        ("create", "services", Some("any-namespace"), None),
        (
            "delete",
            "discovery.k8s.io/endpointslices",
            Some("any-namespace"),
            None,
        ),
        ("watch", "services", None, None),
        ("list", "namespaces", None, None),
        (
            "update",
            "multicluster.linkerd.io/links/status",
            Some("linkerd"),
            None,
        ),
        (
            "update",
            "multicluster.linkerd.io/links/finalizers",
            Some("linkerd"),
            None,
        ),
        ("create", "events.k8s.io/events", Some("linkerd"), None),
        (
            "update",
            "coordination.k8s.io/leases",
            Some("linkerd"),
            Some("meshlink-mirror"),
        ),
    ] {
        assert!(
            mirror_may(&admin, verb, resource, ns, name).await,
            "the mirror may {verb} {resource} in {ns:?} {name:?}"
        );
    }
    for (verb, resource, ns, name) in [
        ("get", "secrets", Some("shop"), None),
        ("list", "secrets", Some("linkerd"), None),
        ("watch", "secrets", Some("linkerd"), None),
        ("update", "secrets", Some("linkerd"), None),
        ("create", "pods", Some("linkerd"), None),
        ("update", "apps/deployments", Some("linkerd"), None),
        ("get", "configmaps", Some("linkerd"), None),
        (
            "update",
            "multicluster.linkerd.io/links/status",
            Some("shop"),
            None,
        ),
        (
            "update",
            "multicluster.linkerd.io/links",
            Some("shop"),
            None,
        ),
        (
            "delete",
            "multicluster.linkerd.io/links",
            Some("linkerd"),
            None,
        ),
        (
            "update",
            "coordination.k8s.io/leases",
            Some("linkerd"),
            Some("someone-else"),
        ),
        ("create", "coordination.k8s.io/leases", Some("shop"), None),
        ("create", "events.k8s.io/events", Some("shop"), None),
        ("delete", "namespaces", None, None),
    ] {
        assert!(
            !mirror_may(&admin, verb, resource, ns, name).await,
            "the mirror may not {verb} {resource} in {ns:?} {name:?}"
        );
    }
}
