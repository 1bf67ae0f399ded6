//! Real API servers for the Kubernetes tests: `scripts/k8s-test-env.sh` starts one etcd and
//! one kube-apiserver per cluster on loopback, and this module drives them with kube clients.
#![allow(dead_code)]

pub mod proxy;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::Scope,
};
use linkerd2_proxy_api::destination as pb;
use serde::de::DeserializeOwned;
use tonic::Streaming;

use crate::support::{Msg, addr_of, decode};

/// The field manager of everything the tests write.
pub const MANAGER: &str = "meshlink-tests";

/// How long a test waits for the server to converge on what it expects.
pub const CONVERGE: Duration = Duration::from_secs(45);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// API servers started for this test binary; stopped (`down`) when dropped.
pub struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// Starts one API server per cluster (building them first if they are not cached).
    pub async fn up(clusters: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meshlink-k8s-")
            .tempdir()
            .expect("temp dir");
        let env = Self { dir };
        let mut args = vec!["up", env.path_str()];
        args.extend_from_slice(clusters);
        env.script(&args).await;
        env
    }

    fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    /// Runs the harness script, failing the test with its output when it fails.
    async fn script(&self, args: &[&str]) {
        let out = tokio::process::Command::new(repo_root().join("scripts/k8s-test-env.sh"))
            .args(args)
            // Open watches keep a stopping API server up until this many seconds.
            .env("MESHLINK_K8S_STOP_TIMEOUT", "3")
            // Audit logs of list/watch requests, to count LISTs.
            .env("MESHLINK_K8S_AUDIT", "1")
            .output()
            .await
            .expect("run scripts/k8s-test-env.sh");
        assert!(
            out.status.success(),
            "scripts/k8s-test-env.sh {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The admin kubeconfig of a cluster (client certificate in system:masters).
    pub fn kubeconfig(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(cluster).join("kubeconfig")
    }

    /// A file path in the test's directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An admin client of a cluster.
    pub async fn admin(&self, cluster: &str) -> Client {
        client_from_file(&self.kubeconfig(cluster)).await
    }

    pub async fn stop_apiserver(&self, cluster: &str) {
        self.script(&["stop-apiserver", self.path_str(), cluster])
            .await;
    }

    pub async fn start_apiserver(&self, cluster: &str) {
        self.script(&["start-apiserver", self.path_str(), cluster])
            .await;
    }

    pub async fn restart_apiserver(&self, cluster: &str) {
        self.script(&["restart-apiserver", self.path_str(), cluster])
            .await;
    }

    /// The address the API server of `cluster` listens on.
    pub fn apiserver_addr(&self, cluster: &str) -> SocketAddr {
        let env = std::fs::read_to_string(self.dir.path().join(cluster).join("env"))
            .expect("the cluster's env file");
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("APISERVER_PORT="))
            .expect("APISERVER_PORT");
        SocketAddr::from(([127, 0, 0, 1], port.parse().expect("a port")))
    }

    /// How many LIST requests of `resource` the API server of `cluster` answered for
    /// `user`, from its audit log.
    pub fn lists(&self, cluster: &str, user: &str, resource: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join(cluster).join("audit.log"))
            .unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["verb"] == "list"
                    && e["stage"] == "ResponseComplete"
                    && e["user"]["username"] == user
                    && e["objectRef"]["resource"] == resource
            })
            .count()
    }

    /// A kubeconfig for `cluster` that authenticates with `token` (written to a file).
    pub fn token_kubeconfig(&self, cluster: &str, token: &str, file: &str) -> PathBuf {
        self.token_kubeconfig_via(cluster, token, file, None)
    }

    /// Like `token_kubeconfig`, reaching the API server at `via` (a proxy) when given.
    pub fn token_kubeconfig_via(
        &self,
        cluster: &str,
        token: &str,
        file: &str,
        via: Option<SocketAddr>,
    ) -> PathBuf {
        let admin = Kubeconfig::read_from(self.kubeconfig(cluster)).expect("admin kubeconfig");
        let c = admin.clusters[0].cluster.as_ref().expect("cluster");
        let server = match via {
            Some(addr) => format!("https://{addr}"),
            None => c.server.clone().expect("server"),
        };
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: token
  user:
    token: {token}
contexts:
- name: {cluster}
  context: {{cluster: {cluster}, user: token}}
current-context: {cluster}
",
            server = server,
            ca = c.certificate_authority_data.as_deref().expect("CA data"),
        );
        let path = self.file(file);
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/k8s-test-env.sh"))
            .args(["down", self.path_str()])
            .env("MESHLINK_K8S_STOP_TIMEOUT", "3")
            .output();
    }
}

pub async fn client_from_file(path: &Path) -> Client {
    let file = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A client that authenticates with `token`, for RBAC checks.
pub async fn token_client(env: &Env, cluster: &str, token: &str) -> Client {
    let path = env.token_kubeconfig(cluster, token, &format!("{cluster}-probe.kubeconfig"));
    client_from_file(&path).await
}

/// A token of a service account, from the TokenRequest API.
pub async fn service_account_token(admin: &Client, ns: &str, name: &str) -> String {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(name, &PostParams::default(), &req)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// Applies every document of every file a kustomization lists (server-side apply), as
/// `kubectl apply -k` would for plain resource lists.
pub async fn apply_kustomization(client: &Client, dir: &Path) {
    #[derive(serde::Deserialize)]
    struct Kustomization {
        resources: Vec<String>,
    }
    let k: Kustomization = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("kustomization parses");
    for r in k.resources {
        let path = dir.join(r);
        let text = std::fs::read_to_string(&path).expect("resource file");
        apply_yaml(client, &text).await;
    }
}

/// Applies each YAML document of `text` (empty documents are skipped).
pub async fn apply_yaml(client: &Client, text: &str) {
    let objects: Vec<DynamicObject> =
        serde_saphyr::from_multiple(text).expect("Kubernetes objects");
    for obj in objects {
        apply_dynamic(client, obj).await;
    }
}

pub async fn apply_dynamic(client: &Client, obj: DynamicObject) {
    let types = obj.types.clone().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(&types).expect("group/version/kind");
    let name = obj.metadata.name.clone().expect("name");
    // A CRD just applied may take a moment to be served.
    let mut tries = 0;
    let (ar, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{gvk:?} is not served: {e}"),
        }
    };
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.metadata.namespace.as_deref().unwrap_or("default"),
            &ar,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
}

/// Server-side applies an object given as JSON (with apiVersion and kind), checking that
/// it is a valid `K` first.
pub async fn apply<K: DeserializeOwned>(client: &Client, value: serde_json::Value) {
    let _: K = serde_json::from_value(value.clone()).expect("object JSON");
    let obj: DynamicObject = serde_json::from_value(value).expect("object JSON");
    apply_dynamic(client, obj).await;
}

/// Reports a Pod Running and Ready at `ip`, as a kubelet would (nothing runs pods here).
pub async fn report_running(c: &Client, ns: &str, name: &str, ip: &str) {
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .expect("patch pod status");
}

/// A `Get` stream and the endpoint set its updates add up to.
pub struct Tracked {
    pub name: String,
    stream: Streaming<pb::Update>,
    pub endpoints: BTreeMap<SocketAddr, pb::WeightedAddr>,
    pub removes: usize,
}

impl Tracked {
    pub fn new(name: impl Into<String>, stream: Streaming<pb::Update>) -> Self {
        Self {
            name: name.into(),
            stream,
            endpoints: BTreeMap::new(),
            removes: 0,
        }
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Add(addrs) => {
                for a in addrs {
                    // Every pod of these tests is meshed: an address without its
                    // identity would make a proxy connect without mTLS.
                    assert!(
                        crate::support::identity(&a).is_some(),
                        "{}: {} sent without its identity",
                        self.name,
                        addr_of(&a)
                    );
                    self.endpoints.insert(addr_of(&a), a);
                }
            }
            Msg::Remove(addrs) => {
                self.removes += addrs.len();
                for a in addrs {
                    assert!(
                        self.endpoints.remove(&a).is_some(),
                        "{}: removed {a}, which was not there",
                        self.name
                    );
                }
            }
            Msg::NoEndpoints { .. } => {
                assert!(
                    self.endpoints.is_empty(),
                    "{}: no_endpoints while {:?} were there",
                    self.name,
                    self.endpoints.keys()
                );
            }
        }
    }

    /// The addresses now.
    pub fn addrs(&self) -> Vec<String> {
        self.endpoints.keys().map(ToString::to_string).collect()
    }

    /// Reads updates until the set is exactly `want` (each endpoint with its identity:
    /// `apply` checks every message).
    pub async fn converge(&mut self, want: &[&str]) {
        self.converge_within(want, CONVERGE).await;
    }

    /// Like `converge`, waiting up to `within`.
    pub async fn converge_within(&mut self, want: &[&str], within: Duration) {
        let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
        want.sort_by_key(|a| a.parse::<SocketAddr>().expect("address"));
        let deadline = tokio::time::Instant::now() + within;
        while self.addrs() != want {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Ok(Ok(Some(u))) => self.apply(decode(u)),
                Ok(Ok(None)) => panic!("{}: stream ended", self.name),
                Ok(Err(status)) => panic!("{}: stream failed: {status}", self.name),
                Err(_) => panic!(
                    "{}: not {want:?} within {within:?}; have {:?}",
                    self.name,
                    self.addrs()
                ),
            }
        }
    }

    /// Reads whatever arrives for `d`; returns how many messages came.
    pub async fn drain_for(&mut self, d: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + d;
        let mut n = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Ok(Ok(Some(u))) => {
                    n += 1;
                    self.apply(decode(u));
                }
                Ok(Ok(None)) => panic!("{}: stream ended", self.name),
                Ok(Err(status)) => panic!("{}: stream failed: {status}", self.name),
                Err(_) => return n,
            }
        }
    }

    /// The endpoint at `addr`.
    pub fn get(&self, addr: &str) -> &pb::WeightedAddr {
        let a: SocketAddr = addr.parse().expect("address");
        self.endpoints
            .get(&a)
            .unwrap_or_else(|| panic!("{}: {addr} not in {:?}", self.name, self.addrs()))
    }
}

/// Waits until `check` holds, polling; panics with `what` after [`CONVERGE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {CONVERGE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
