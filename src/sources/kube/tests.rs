//! The event translation and trimming of the Kubernetes source, without an API server.

use std::sync::Arc;

use kube::runtime::watcher::Event;
use serde_json::json;

use super::{Change, EventBuffer, Health, Indexed};
use crate::{
    index::{ClusterIndex, ClusterStatus, IndexConfig},
    k8s::{EndpointSlice, Node, Pod, Secret, Service},
    model::PortSet,
};

fn mk_config() -> IndexConfig {
    IndexConfig {
        cluster_name: Arc::from("local"),
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        control_plane_ns: "linkerd".into(),
        default_opaque_ports: Arc::new(PortSet::parse_strict("25,3306").unwrap()),
    }
}

fn mk_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap()
}

/// A pod with everything a real one carries, most of which the index never reads.
fn mk_full_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": "ns", "name": "web-7d9c-abcde", "uid": "u1", "resourceVersion": "42",
            "labels": {"app": "web", "pod-template-hash": "7d9c", "linkerd.io/control-plane-ns": "linkerd"},
            "annotations": {
                "config.linkerd.io/opaque-ports": "3306,http-alt",
                "config.linkerd.io/skip-inbound-ports": "9090",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
                "linkerd.io/proxy-version": "edge",
            },
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c", "uid": "r1", "controller": true},
                {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "o1"},
            ],
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}],
        },
        "spec": {
            "serviceAccountName": "web",
            "nodeName": "node-a",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [
                {"name": "app", "image": "web:1", "args": ["--big"], "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "http-alt", "containerPort": 8081},
                ], "env": [{"name": "SECRET", "value": "x"}]},
                {"name": "linkerd-proxy", "image": "proxy", "env": [
                    {"name": "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "value": "0.0.0.0:4444"},
                    {"name": "LINKERD2_PROXY_LOG", "value": "info"},
                ]},
            ],
            "initContainers": [{"name": "init", "image": "init", "ports": [{"name": "metrics", "containerPort": 9090}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha", "ready": true, "restartCount": 0}],
        },
    }))
    .unwrap()
}

fn mk_node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/zone": zone,
            "kubernetes.io/hostname": name,
        }},
        "status": {"images": [{"names": ["a/very/large:image"], "sizeBytes": 1}]},
    }))
    .unwrap()
}

/// What the index serves for the pod of `mk_full_pod` on each of its ports.
fn served(pod: &Pod) -> Vec<String> {
    let mut index = ClusterIndex::new(mk_config());
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"ports": [
            {"name": "a", "port": 80, "targetPort": "http"},
            {"name": "b", "port": 81, "targetPort": 8081},
            {"name": "c", "port": 82, "targetPort": 9090},
        ]},
    }))
    .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "a", "port": 8080}, {"name": "b", "port": 8081}, {"name": "c", "port": 9090}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "namespace": "ns", "name": "web-7d9c-abcde"}}],
    }))
    .unwrap();
    index.apply_node(&mk_node("node-a", "zone-1"));
    index.apply_pod(pod);
    index.apply_service(&svc);
    index.apply_endpoint_slice(&slice);
    let web = crate::model::ServiceRef::new("ns", "web");
    let mut out: Vec<String> = [80, 81, 82]
        .into_iter()
        .map(|port| format!("{:?}", index.endpoints_rx(&web, port).borrow().endpoints))
        .collect();
    for port in [8080, 8081, 9090] {
        let addr = std::net::SocketAddr::from(([10, 0, 0, 1], port));
        out.push(format!("{:?}", index.addr_rx(addr).borrow()));
    }
    out
}

#[test]
fn trimmed_pods_describe_the_same_endpoints() {
    let pod = mk_full_pod();
    let trimmed = pod.clone().trim();
    let (full, lean) = (served(&pod), served(&trimmed));
    assert!(full[0].contains("web.ns.serviceaccount"), "{}", full[0]);
    assert_eq!(full, lean);
    let spec = trimmed.spec.as_ref().unwrap();
    assert!(spec.volumes.is_none());
    assert_eq!(spec.containers[0].image, None);
    assert_eq!(spec.containers[0].env, None, "only the proxy's env is kept");
    assert_eq!(
        spec.containers[1].env.as_ref().unwrap().len(),
        1,
        "only the inbound listener of the proxy is kept"
    );
    let meta = &trimmed.metadata;
    assert!(meta.managed_fields.is_none());
    assert_eq!(meta.annotations.as_ref().unwrap().len(), 2);
    assert_eq!(meta.owner_references.as_ref().unwrap().len(), 1);
    let status = trimmed.status.as_ref().unwrap();
    assert!(status.conditions.is_none() && status.container_statuses.is_none());
}

#[test]
fn trimmed_nodes_keep_only_their_zone() {
    let node = mk_node("node-a", "zone-1").trim();
    assert_eq!(node.metadata.labels.as_ref().unwrap().len(), 1);
    assert!(node.status.is_none());
    let mut index = ClusterIndex::new(mk_config());
    Node::apply(&mut index, &node);
    assert_eq!(index.node_zone("node-a").as_deref(), Some("zone-1"));
}

#[test]
fn trimmed_secrets_keep_only_the_kubeconfig() {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"namespace": "linkerd", "name": "s", "managedFields": []},
        "type": "mirror.linkerd.io/remote-kubeconfig",
        "data": {"kubeconfig": "YQ==", "other": "Yg=="},
    }))
    .unwrap();
    let trimmed = secret.trim();
    assert!(trimmed.metadata.managed_fields.is_none());
    let keys: Vec<_> = trimmed.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["kubeconfig"]);
}

#[test]
fn trimmed_services_and_slices_drop_managed_fields() {
    let mut svc = mk_service("web");
    svc.metadata.managed_fields = Some(vec![Default::default()]);
    assert!(svc.trim().metadata.managed_fields.is_none());
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "web-1", "managedFields": [{}],
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
    }))
    .unwrap();
    let trimmed = slice.trim();
    assert!(trimmed.metadata.managed_fields.is_none());
    assert_eq!(trimmed.endpoints.map(|e| e.len()), Some(1));
}

/// Feeds events to the index as the source does; returns how many full lists came.
fn feed<K: Indexed>(
    index: &mut ClusterIndex,
    buffer: &mut EventBuffer<K>,
    events: impl IntoIterator<Item = Event<K>>,
) -> usize {
    let mut lists = 0;
    for e in events {
        if let Some(change) = buffer.push(e) {
            change.apply_to(index);
            lists += usize::from(matches!(change, Change::Reset(_)));
        }
    }
    lists
}

#[test]
fn a_relist_replaces_the_kind_at_init_done() {
    let mut index = ClusterIndex::new(mk_config());
    let mut buffer = EventBuffer::<Service>::default();
    let listing = [
        Event::Init,
        Event::InitApply(mk_service("a")),
        Event::InitApply(mk_service("b")),
    ];
    assert_eq!(feed(&mut index, &mut buffer, listing), 0);
    assert_eq!(
        index.counts().services,
        0,
        "nothing applied before InitDone"
    );
    assert_eq!(feed(&mut index, &mut buffer, [Event::InitDone]), 1);
    assert_eq!(index.counts().services, 2);

    let changes = [
        Event::Apply(mk_service("c")),
        Event::Delete(mk_service("a")),
    ];
    assert_eq!(feed(&mut index, &mut buffer, changes), 0);
    assert_eq!(index.counts().services, 2);

    // A relist after a broken watch: "b" was deleted meanwhile, "d" created.
    let mut buffer = EventBuffer::<Service>::default();
    let relist = [
        Event::Init,
        Event::InitApply(mk_service("c")),
        Event::InitApply(mk_service("d")),
    ];
    feed(&mut index, &mut buffer, relist);
    assert_eq!(
        index.counts().services,
        2,
        "old objects serve until the list is in"
    );
    feed(&mut index, &mut buffer, [Event::InitDone]);
    assert_eq!(index.counts().services, 2);
    let mut b = index.service_rx(&crate::model::ServiceRef::new("ns", "b"));
    assert!(b.borrow_and_update().is_none());
    let mut d = index.service_rx(&crate::model::ServiceRef::new("ns", "d"));
    assert!(d.borrow_and_update().is_some());
}

#[test]
fn an_empty_relist_removes_everything() {
    let mut index = ClusterIndex::new(mk_config());
    let mut buffer = EventBuffer::<Node>::default();
    feed(&mut index, &mut buffer, [Event::Apply(mk_node("n1", "z"))]);
    assert_eq!(index.counts().nodes, 1);
    feed(&mut index, &mut buffer, [Event::Init, Event::InitDone]);
    assert_eq!(index.counts().nodes, 0);
}

#[test]
fn pods_are_deleted_by_name() {
    let mut index = ClusterIndex::new(mk_config());
    let mut buffer = EventBuffer::<Pod>::default();
    feed(&mut index, &mut buffer, [Event::Apply(mk_full_pod())]);
    assert_eq!(index.counts().pods, 1);
    feed(&mut index, &mut buffer, [Event::Delete(mk_full_pod())]);
    assert_eq!(index.counts().pods, 0);
}

#[test]
fn objects_are_trimmed_before_they_are_held() {
    let mut buffer = EventBuffer::<Pod>::default();
    assert!(matches!(
        buffer.push(Event::Init),
        Some(Change::BeginRelist)
    ));
    assert!(buffer.push(Event::InitApply(mk_full_pod())).is_none());
    match buffer.push(Event::InitDone) {
        Some(Change::Reset(pods)) => {
            assert_eq!(pods.len(), 1);
            assert!(pods[0].metadata.managed_fields.is_none());
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

fn mk_named_pod(name: &str) -> Pod {
    let mut pod = mk_full_pod();
    pod.metadata.name = Some(name.to_string());
    pod
}

#[test]
fn a_pod_relist_is_staged_in_parts_and_replaces_the_pods_only_when_whole() {
    let mut index = ClusterIndex::new(mk_config());
    let mut buffer = EventBuffer::<Pod>::default();
    feed(&mut index, &mut buffer, [Event::Apply(mk_named_pod("old"))]);
    // A relist that breaks off after two parts were staged, then a whole one.
    let mut broken = vec![Event::Init];
    broken.extend((0..600).map(|i| Event::InitApply(mk_named_pod(&format!("gone-{i}")))));
    let mut staged = 0;
    for e in broken {
        if let Some(change) = buffer.push(e) {
            staged += usize::from(matches!(change, Change::Stage(ref p) if p.len() == 256));
            change.apply_to(&mut index);
        }
    }
    assert_eq!(
        staged, 2,
        "600 pods are handed over as two parts of 256 (and 88 held)"
    );
    assert_eq!(
        index.counts().pods,
        1,
        "the old pods serve while the relist is under way"
    );
    let mut whole = vec![Event::Init];
    whole.extend((0..300).map(|i| Event::InitApply(mk_named_pod(&format!("new-{i}")))));
    whole.push(Event::InitDone);
    assert_eq!(feed(&mut index, &mut buffer, whole), 1);
    assert_eq!(
        index.counts().pods,
        300,
        "exactly the whole relist: not the old pod, nothing of the broken one"
    );
}

#[test]
fn synced_once_every_kind_was_listed_and_stale_while_one_fails() {
    let status = Arc::new(ClusterStatus::default());
    let health = Health::new(Arc::clone(&status), ["Service", "Pod"]);
    health.listed("Service");
    assert!(!status.is_synced());
    health.failed("Pod", "connection refused");
    assert!(status.is_stale());
    health.listed("Pod");
    assert!(status.is_synced());
    assert!(!status.is_stale());

    health.failed("Service", "gone");
    health.failed("Pod", "refused");
    health.listed("Service");
    assert!(status.is_stale(), "Pods still fail");
    assert_eq!(status.last_error().as_deref(), Some("Pod: refused"));
    health.listed("Pod");
    assert!(!status.is_stale());
    assert!(status.is_synced(), "a synced cluster stays synced");
}

#[test]
fn a_new_source_clears_what_made_the_cluster_stale_once_it_listed_everything() {
    let status = Arc::new(ClusterStatus::default());
    status.set_stale("cannot use the kubeconfig".into());
    let health = Health::new(Arc::clone(&status), ["Service", "Pod"]);
    health.listed("Service");
    assert!(status.is_stale(), "Pods are not listed yet");
    health.listed("Pod");
    assert!(!status.is_stale());
}

#[test]
fn a_relist_is_stale_until_its_list_is_in() {
    let status = Arc::new(ClusterStatus::default());
    let health = Health::new(Arc::clone(&status), ["Service", "Pod"]);
    health.relisting("Service");
    assert!(!status.is_stale(), "the first list is not a relist");
    health.listed("Service");
    health.listed("Pod");
    assert!(status.is_synced() && !status.is_stale());

    // A 410 Gone: the error, then the relist.
    health.failed("Pod", "too old resource version");
    health.relisting("Pod");
    assert!(status.is_stale());
    assert_eq!(
        status.last_error().as_deref(),
        Some("Pod: too old resource version"),
        "the error that caused the relist stays the reason"
    );
    health.listed("Pod");
    assert!(!status.is_stale());

    // A relist without an error before it still counts as stale.
    health.relisting("Service");
    assert!(status.is_stale());
    assert_eq!(
        status.last_error().as_deref(),
        Some("Service: listing again")
    );
    health.listed("Service");
    assert!(!status.is_stale());
}

#[test]
fn a_resumed_watch_makes_its_kind_fresh_without_a_relist() {
    let status = Arc::new(ClusterStatus::default());
    let health = Health::new(Arc::clone(&status), ["Service", "Pod"]);
    health.listed("Service");
    health.listed("Pod");
    health.failed("Service", "connection refused");
    health.failed("Pod", "connection refused");
    assert!(health.is_failing("Pod"));
    health.resumed("Pod");
    assert!(!health.is_failing("Pod"));
    assert!(status.is_stale(), "Services still fail");
    assert_eq!(
        status.last_error().as_deref(),
        Some("Service: connection refused")
    );
    health.resumed("Service");
    assert!(!status.is_stale());
    health.resumed("Service");
    assert!(
        !status.is_stale(),
        "resuming a working watch changes nothing"
    );
}
