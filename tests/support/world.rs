//! YAML builders for the objects tests put in manifests folders.

/// A ClusterIP Service selecting `app: <name>` with `ports` as (port, targetPort, name).
pub fn service(ns: &str, name: &str, ports: &[(u16, &str, &str)]) -> String {
    service_with(ns, name, ports, "")
}

/// A Service with extra YAML under `spec:` (indented by 2).
pub fn service_with(ns: &str, name: &str, ports: &[(u16, &str, &str)], extra_spec: &str) -> String {
    let ports: String = ports
        .iter()
        .map(|(port, target, pname)| {
            format!("  - {{name: {pname}, port: {port}, targetPort: {target}}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
{extra_spec}  ports:
{ports}"
    )
}

/// Options for a pod.
#[derive(Clone)]
pub struct PodOpts<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub app: &'a str,
    pub ips: &'a [&'a str],
    pub meshed: bool,
    pub service_account: &'a str,
    pub node: &'a str,
    pub ready: bool,
    /// (name, containerPort)
    pub ports: &'a [(&'a str, u16)],
    /// Extra annotations as `key: value` lines.
    pub annotations: &'a [(&'a str, &'a str)],
    pub hostname: Option<&'a str>,
    /// Env of a `linkerd-proxy` container (none when empty), as (name, value).
    pub proxy_env: &'a [(&'a str, &'a str)],
}

impl Default for PodOpts<'_> {
    fn default() -> Self {
        Self {
            ns: "shop",
            name: "web-1",
            app: "web",
            ips: &["10.1.0.1"],
            meshed: true,
            service_account: "web",
            node: "node-a",
            ready: true,
            ports: &[("http", 8080)],
            annotations: &[],
            hostname: None,
            proxy_env: &[],
        }
    }
}

/// A pod as YAML.
pub fn pod(o: &PodOpts) -> String {
    let mesh_label = if o.meshed {
        "\n    linkerd.io/control-plane-ns: linkerd"
    } else {
        ""
    };
    let annotations: String = o
        .annotations
        .iter()
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .collect();
    let ports: String = o
        .ports
        .iter()
        .map(|(n, p)| format!("\n    - {{name: {n}, containerPort: {p}}}"))
        .collect();
    let pod_ips: String = o
        .ips
        .iter()
        .map(|ip| format!("\n  - ip: \"{ip}\""))
        .collect();
    let proxy = if o.proxy_env.is_empty() {
        String::new()
    } else {
        let env: String = o
            .proxy_env
            .iter()
            .map(|(k, v)| format!("\n    - {{name: {k}, value: \"{v}\"}}"))
            .collect();
        format!("\n  - name: linkerd-proxy\n    image: proxy\n    env:{env}")
    };
    let hostname = o
        .hostname
        .map(|h| format!("\n  hostname: {h}\n  subdomain: {}", o.app))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {app}{mesh_label}
  annotations:
    test: \"yes\"{annotations}
spec:
  serviceAccountName: {sa}
  nodeName: {node}{hostname}
  containers:
  - name: main
    image: example
    ports:{ports}{proxy}
status:
  phase: Running
  podIP: \"{ip0}\"
  podIPs:{pod_ips}
  conditions:
  - {{type: Ready, status: \"{ready}\"}}
",
        name = o.name,
        ns = o.ns,
        app = o.app,
        sa = o.service_account,
        node = o.node,
        ip0 = o.ips[0],
        ready = if o.ready { "True" } else { "False" },
    )
}

/// A node in `zone`.
pub fn node(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{topology.kubernetes.io/zone: {zone}}}
"
    )
}

/// Joins documents into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// The credentials Secret linking `cluster`, as `linkerd multicluster link` writes it.
pub fn credentials(cluster: &str, trust_domain: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: cluster-credentials-{cluster}
  namespace: linkerd
  labels: {{multicluster.linkerd.io/cluster-name: {cluster}}}
  annotations:
    multicluster.linkerd.io/trust-domain: {trust_domain}
    multicluster.linkerd.io/cluster-domain: cluster.local
type: mirror.linkerd.io/remote-kubeconfig
data: {{kubeconfig: dW51c2Vk}}
"
    )
}

/// The remote-discovery mirror `<svc>-<cluster>` of `ns/svc` (one `http` port).
pub fn remote_discovery_mirror(ns: &str, svc: &str, cluster: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {svc}-{cluster}
  namespace: {ns}
  labels:
    mirror.linkerd.io/mirrored-service: \"true\"
    mirror.linkerd.io/cluster-name: {cluster}
    multicluster.linkerd.io/remote-discovery: {cluster}
    multicluster.linkerd.io/remote-service: {svc}
  annotations:
    mirror.linkerd.io/remote-svc-fq-name: {svc}.{ns}.svc.cluster.local
spec:
  ports: [{{name: http, port: {port}}}]
"
    )
}
