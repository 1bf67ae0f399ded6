//! Small builders for the Kubernetes objects and index the tests use.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{
            Container, ContainerPort, EnvVar, ObjectReference, PodIP, PodSpec, PodStatus,
            ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointPort},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};

use crate::{
    index::{ClusterIndex, IndexConfig},
    k8s::{EndpointSlice, Node, ObjectMeta, Pod, Secret, Service, labels},
    model::{Endpoint, PortSet, PortSnapshot, ServiceRef},
};

pub const CONTROL_PLANE_NS: &str = "linkerd";

/// The index of cluster "local": domain and trust domain `cluster.local`, control plane
/// in `linkerd`, Linkerd's default opaque ports.
pub fn mk_config() -> IndexConfig {
    IndexConfig {
        cluster_name: Arc::from("local"),
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        control_plane_ns: CONTROL_PLANE_NS.into(),
        default_opaque_ports: Arc::new(
            PortSet::parse_strict("25,587,3306,4444,5432,6379,9300,11211").unwrap(),
        ),
    }
}

pub fn mk_index() -> ClusterIndex {
    ClusterIndex::new(mk_config())
}

pub fn svc_ref(ns: &str, name: &str) -> ServiceRef {
    ServiceRef::new(ns, name)
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The identity our control plane gives a meshed pod.
pub fn identity(sa: &str, ns: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.linkerd.cluster.local")
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

pub fn set_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

pub fn set_annotation(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

// --- Services ---

/// A ClusterIP Service (without a cluster IP) with `(port name, port, targetPort)`s.
pub fn mk_service(ns: &str, name: &str, ports: &[(&str, u16, u16)]) -> Service {
    let ports = ports
        .iter()
        .map(|&(pname, port, target)| ServicePort {
            name: (!pname.is_empty()).then(|| pname.to_string()),
            port: port.into(),
            target_port: Some(IntOrString::Int(target.into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_cluster_ip(mut svc: Service, ip: &str) -> Service {
    let spec = svc.spec.get_or_insert_with(Default::default);
    spec.cluster_ip = Some(ip.into());
    spec.cluster_ips = Some(vec![ip.into()]);
    svc
}

/// Makes the `index`th port's targetPort the container port name `target`.
pub fn with_named_target(mut svc: Service, index: usize, target: &str) -> Service {
    let ports = svc.spec.as_mut().and_then(|s| s.ports.as_mut()).unwrap();
    ports[index].target_port = Some(IntOrString::String(target.into()));
    svc
}

// --- EndpointSlices ---

/// A ready endpoint of a pod (in the slice's namespace).
pub fn mk_ep(ip: &str, pod: &str) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A ready endpoint that is not a pod (e.g. a gateway address).
pub fn mk_bare_ep(ip: &str) -> SliceEndpoint {
    SliceEndpoint {
        target_ref: None,
        ..mk_ep(ip, "unused")
    }
}

pub fn not_ready(mut ep: SliceEndpoint) -> SliceEndpoint {
    ep.conditions = Some(EndpointConditions {
        ready: Some(false),
        serving: Some(false),
        terminating: Some(true),
    });
    ep
}

pub fn on_node(mut ep: SliceEndpoint, node: &str) -> SliceEndpoint {
    ep.node_name = Some(node.into());
    ep
}

pub fn in_zone(mut ep: SliceEndpoint, zone: &str) -> SliceEndpoint {
    ep.zone = Some(zone.into());
    ep
}

/// An EndpointSlice of `svc` with one port; the address type follows the first address.
pub fn mk_slice(
    ns: &str,
    name: &str,
    svc: &str,
    port_name: &str,
    port: u16,
    endpoints: Vec<SliceEndpoint>,
) -> EndpointSlice {
    mk_slice_ports(ns, name, svc, &[(port_name, port)], endpoints)
}

/// An EndpointSlice of `svc` with several `(port name, port)`s.
pub fn mk_slice_ports(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, u16)],
    endpoints: Vec<SliceEndpoint>,
) -> EndpointSlice {
    let v6 = endpoints
        .first()
        .and_then(|e| e.addresses.first())
        .is_some_and(|a| a.contains(':'));
    let mut metadata = meta(ns, name);
    set_label(&mut metadata, labels::SLICE_SERVICE_NAME, svc);
    EndpointSlice {
        metadata,
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .iter()
                .map(|&(pname, port)| EndpointPort {
                    name: Some(pname.into()),
                    port: Some(port.into()),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

// --- Pods ---

/// A running pod with one IP and one app container; `meshed` adds the proxy container
/// and the label naming our control plane.
pub fn mk_pod(ns: &str, name: &str, ip: &str, sa: &str, meshed: bool) -> Pod {
    let mut metadata = meta(ns, name);
    let mut containers = vec![Container {
        name: "app".into(),
        ..Default::default()
    }];
    if meshed {
        set_label(&mut metadata, labels::CONTROL_PLANE_NS, CONTROL_PLANE_NS);
        containers.push(Container {
            name: labels::PROXY_CONTAINER.into(),
            ..Default::default()
        });
    }
    Pod {
        metadata,
        spec: Some(PodSpec {
            service_account_name: Some(sa.into()),
            containers,
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

pub fn with_pod_ip(mut pod: Pod, ip: &str) -> Pod {
    let status = pod.status.get_or_insert_with(Default::default);
    status
        .pod_ips
        .get_or_insert_with(Vec::new)
        .push(PodIP { ip: ip.into() });
    pod
}

pub fn with_node(mut pod: Pod, node: &str) -> Pod {
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    pod
}

pub fn with_service_account(mut pod: Pod, sa: &str) -> Pod {
    pod.spec
        .get_or_insert_with(Default::default)
        .service_account_name = Some(sa.into());
    pod
}

/// Adds a named port to the app container.
pub fn with_container_port(mut pod: Pod, name: &str, port: u16) -> Pod {
    let spec = pod.spec.get_or_insert_with(Default::default);
    let app = spec
        .containers
        .iter_mut()
        .find(|c| c.name == "app")
        .unwrap();
    app.ports.get_or_insert_with(Vec::new).push(ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    pod
}

/// Sets an env var on the `linkerd-proxy` container.
pub fn with_proxy_env(mut pod: Pod, name: &str, value: &str) -> Pod {
    let spec = pod.spec.get_or_insert_with(Default::default);
    let proxy = spec
        .containers
        .iter_mut()
        .find(|c| c.name == labels::PROXY_CONTAINER)
        .expect("a meshed pod");
    proxy.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    });
    pod
}

pub fn with_owner(mut pod: Pod, kind: &str, name: &str) -> Pod {
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    pod
}

// --- Nodes ---

pub fn mk_node(name: &str, zone: Option<&str>) -> Node {
    let mut metadata = ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    if let Some(zone) = zone {
        set_label(&mut metadata, labels::TOPOLOGY_ZONE, zone);
    }
    Node {
        metadata,
        ..Default::default()
    }
}

// --- Secrets ---

/// A credentials Secret for `cluster`; `None` leaves the label or annotation out.
pub fn mk_secret(
    ns: &str,
    name: &str,
    cluster: Option<&str>,
    trust_domain: Option<&str>,
    cluster_domain: Option<&str>,
) -> Secret {
    let mut metadata = meta(ns, name);
    if let Some(cluster) = cluster {
        set_label(&mut metadata, labels::MC_CLUSTER_NAME, cluster);
    }
    if let Some(td) = trust_domain {
        set_annotation(&mut metadata, labels::MC_TRUST_DOMAIN, td);
    }
    if let Some(cd) = cluster_domain {
        set_annotation(&mut metadata, labels::MC_CLUSTER_DOMAIN, cd);
    }
    Secret {
        metadata,
        type_: Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE.into()),
        data: Some(BTreeMap::from([(
            labels::KUBECONFIG_KEY.to_string(),
            ByteString(b"apiVersion: v1\nkind: Config\n".to_vec()),
        )])),
        ..Default::default()
    }
}

/// A well-formed credentials Secret of `cluster` in the control-plane namespace.
pub fn mk_credentials(cluster: &str) -> Secret {
    mk_secret(
        CONTROL_PLANE_NS,
        &format!("cluster-credentials-{cluster}"),
        Some(cluster),
        Some(&format!("{cluster}.trust")),
        Some(&format!("{cluster}.local")),
    )
}

// --- snapshots ---

/// The addresses of a snapshot, in order.
/// The current snapshot of a service port (opening the lookup if needed).
pub fn snapshot(index: &mut ClusterIndex, ns: &str, name: &str, port: u16) -> Arc<PortSnapshot> {
    Arc::clone(&index.endpoints_rx(&svc_ref(ns, name), port).borrow())
}

pub fn addrs(snapshot: &PortSnapshot) -> Vec<SocketAddr> {
    snapshot.endpoints.keys().copied().collect()
}

/// The endpoint at `a`, which must be in the snapshot.
pub fn endpoint(snapshot: &PortSnapshot, a: &str) -> Arc<Endpoint> {
    let a = addr(a);
    match snapshot.endpoints.get(&a) {
        Some(e) => Arc::clone(e),
        None => panic!("{a} not in {:?}", addrs(snapshot)),
    }
}

/// Applies a meshed pod (service account `web`, at the endpoint's first address) for each
/// endpoint of `slice` that names one, then the slice: endpoints of unknown pods are withheld.
pub fn apply_with_pods(index: &mut ClusterIndex, slice: &EndpointSlice) {
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    for ep in slice.endpoints.iter().flatten() {
        if let (Some(pod), Some(ip)) = (&ep.target_ref, ep.addresses.first()) {
            let name = pod.name.as_deref().expect("a pod name");
            index.apply_pod(&mk_pod(ns, name, ip, "web", true));
        }
    }
    index.apply_endpoint_slice(slice);
}

/// A service `shop/web` on port 80 (`http`, to 8080) with one slice of `pods` (name, ip),
/// every pod meshed with service account `web`.
pub fn mk_web(pods: &[(&str, &str)]) -> ClusterIndex {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    for &(name, ip) in pods {
        index.apply_pod(&mk_pod("shop", name, ip, "web", true));
    }
    let eps = pods.iter().map(|&(name, ip)| mk_ep(ip, name)).collect();
    index.apply_endpoint_slice(&mk_slice("shop", "web-abc", "web", "http", 8080, eps));
    index
}
