//! Per-endpoint metric labels, nodes and zones.

use std::collections::BTreeMap;

use super::fixtures::*;
use crate::{index::ClusterIndex, k8s::labels};

fn label_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `shop/web` on port 80 → 8080, with one slice of `eps`.
fn web_with(eps: Vec<k8s_openapi::api::discovery::v1::Endpoint>) -> ClusterIndex {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    index.apply_endpoint_slice(&mk_slice("shop", "web-abc", "web", "http", 8080, eps));
    index
}

#[test]
fn deployment_pod_labels() {
    let mut pod = with_owner(
        mk_pod("shop", "web-5d4f8b7c9-x2x7q", "10.0.0.1", "web-sa", true),
        "ReplicaSet",
        "web-5d4f8b7c9",
    );
    set_label(&mut pod.metadata, labels::POD_TEMPLATE_HASH, "5d4f8b7c9");
    let mut index = web_with(vec![mk_ep("10.0.0.1", "web-5d4f8b7c9-x2x7q")]);
    index.apply_pod(&pod);

    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.pod.as_deref(), Some("web-5d4f8b7c9-x2x7q"));
    assert_eq!(
        *e.labels,
        label_map(&[
            ("control_plane_ns", "linkerd"),
            ("deployment", "web"),
            ("namespace", "shop"),
            ("pod_template_hash", "5d4f8b7c9"),
            ("serviceaccount", "web-sa"),
        ])
    );
}

#[test]
fn replicaset_without_template_hash_is_a_replicaset() {
    let pod = with_owner(
        mk_pod("shop", "web-x2x7q", "10.0.0.1", "web", true),
        "ReplicaSet",
        "web-rs",
    );
    let mut index = web_with(vec![mk_ep("10.0.0.1", "web-x2x7q")]);
    index.apply_pod(&pod);
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(
        e.labels.get("replicaset").map(String::as_str),
        Some("web-rs")
    );
    assert_eq!(e.labels.get("deployment"), None);
}

#[test]
fn statefulset_pod_labels() {
    let pod = with_owner(
        mk_pod("shop", "db-0", "10.0.0.1", "db", true),
        "StatefulSet",
        "db",
    );
    let mut index = web_with(vec![mk_ep("10.0.0.1", "db-0")]);
    index.apply_pod(&pod);
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.pod.as_deref(), Some("db-0"));
    assert_eq!(
        *e.labels,
        label_map(&[
            ("control_plane_ns", "linkerd"),
            ("namespace", "shop"),
            ("serviceaccount", "db"),
            ("statefulset", "db")
        ])
    );
}

#[test]
fn unmeshed_pod_has_no_control_plane_label() {
    let pod = with_owner(
        mk_pod("shop", "db-0", "10.0.0.1", "db", false),
        "StatefulSet",
        "db",
    );
    let mut index = web_with(vec![mk_ep("10.0.0.1", "db-0")]);
    index.apply_pod(&pod);
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.labels.get("control_plane_ns"), None);
    assert_eq!(e.labels.get("pod_template_hash"), None);
}

#[test]
fn pod_of_another_control_plane_is_labelled_with_it() {
    let mut pod = mk_pod("shop", "db-0", "10.0.0.1", "db", true);
    set_label(&mut pod.metadata, labels::CONTROL_PLANE_NS, "other-linkerd");
    let mut index = web_with(vec![mk_ep("10.0.0.1", "db-0")]);
    index.apply_pod(&pod);
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(
        e.labels.get("control_plane_ns").map(String::as_str),
        Some("other-linkerd")
    );
}

#[test]
fn zone_comes_from_the_slice_first() {
    let mut index = web_with(vec![in_zone(
        on_node(mk_ep("10.0.0.1", "web-1"), "node-1"),
        "zone-a",
    )]);
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    index.apply_node(&mk_node("node-1", Some("zone-b")));
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.zone.as_deref(), Some("zone-a"));
    assert_eq!(e.node_name.as_deref(), Some("node-1"));
}

#[test]
fn zone_comes_from_the_node_label_otherwise() {
    let mut index = web_with(vec![on_node(mk_ep("10.0.0.1", "web-1"), "node-1")]);
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(
        endpoint(&rx.borrow_and_update(), "10.0.0.1:8080").zone,
        None
    );

    index.apply_node(&mk_node("node-1", Some("zone-b")));
    assert_eq!(index.node_zone("node-1").as_deref(), Some("zone-b"));
    assert!(
        rx.has_changed().unwrap(),
        "a node's zone reaches open lookups"
    );
    let e = endpoint(&rx.borrow_and_update(), "10.0.0.1:8080");
    assert_eq!(e.zone.as_deref(), Some("zone-b"));

    index.apply_node(&mk_node("node-1", Some("zone-c")));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        endpoint(&rx.borrow_and_update(), "10.0.0.1:8080")
            .zone
            .as_deref(),
        Some("zone-c")
    );

    index.delete_node("node-1");
    assert_eq!(index.node_zone("node-1"), None);
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        endpoint(&rx.borrow_and_update(), "10.0.0.1:8080").zone,
        None
    );
}

#[test]
fn zone_of_the_pods_node_when_the_slice_names_none() {
    let mut index = web_with(vec![mk_ep("10.0.0.1", "web-1")]);
    index.apply_pod(&with_node(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "node-2",
    ));
    index.apply_node(&mk_node("node-2", Some("zone-d")));
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.node_name.as_deref(), Some("node-2"));
    assert_eq!(e.zone.as_deref(), Some("zone-d"));
}

#[test]
fn node_without_a_zone_label() {
    let mut index = mk_index();
    index.apply_node(&mk_node("node-1", None));
    assert_eq!(index.node_zone("node-1"), None);
    assert_eq!(index.node_zone("unknown"), None);
    assert_eq!(index.counts().nodes, 1);
}

#[test]
fn unrelated_node_update_publishes_nothing() {
    let mut index = web_with(vec![in_zone(mk_ep("10.0.0.1", "web-1"), "zone-a")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();
    index.apply_node(&mk_node("node-9", Some("zone-z")));
    assert!(!rx.has_changed().unwrap());
}
