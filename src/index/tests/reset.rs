//! `reset_*` (after a relist): objects absent from the new list are removed.

use super::fixtures::*;
use crate::index::AddrTarget;

#[test]
fn reset_services_removes_missing_ones() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    index.apply_service(&with_cluster_ip(
        mk_service("shop", "old", &[("http", 80, 8080)]),
        "10.96.0.11",
    ));
    let mut old = index.service_rx(&svc_ref("shop", "old"));
    let mut old_ip = index.addr_rx(addr("10.96.0.11:80"));
    old.borrow_and_update();
    old_ip.borrow_and_update();

    index.reset_services(&[
        mk_service("shop", "web", &[("http", 80, 8080)]),
        mk_service("shop", "new", &[("http", 80, 8080)]),
    ]);
    assert_eq!(index.counts().services, 2);
    assert!(old.has_changed().unwrap());
    assert!(old.borrow_and_update().is_none());
    assert_eq!(*old_ip.borrow_and_update(), AddrTarget::Unknown);
    assert!(index.service_rx(&svc_ref("shop", "web")).borrow().is_some());
    assert!(index.service_rx(&svc_ref("shop", "new")).borrow().is_some());
}

#[test]
fn reset_endpoint_slices_removes_missing_ones() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();
    index.apply_pod(&mk_pod("shop", "web-2", "10.0.0.2", "web", true));

    index.reset_endpoint_slices(&[mk_slice(
        "shop",
        "web-def",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.2", "web-2")],
    )]);
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.2:8080")]);
    assert_eq!(index.counts().endpoint_slices, 1);

    index.reset_endpoint_slices(&[]);
    assert!(rx.borrow_and_update().endpoints.is_empty());
    assert_eq!(index.counts().endpoint_slices, 0);
}

#[test]
fn reset_pods_removes_missing_ones() {
    let mut index = mk_web(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let mut ip = index.addr_rx(addr("10.0.0.1:8080"));
    rx.borrow_and_update();
    assert!(matches!(*ip.borrow_and_update(), AddrTarget::Pod(_)));

    index.reset_pods(&[mk_pod("shop", "web-2", "10.0.0.2", "web", true)]);
    assert_eq!(index.counts().pods, 1);
    assert_eq!(*ip.borrow_and_update(), AddrTarget::Unknown);
    let snap = rx.borrow_and_update().clone();
    assert_eq!(
        addrs(&snap),
        [addr("10.0.0.2:8080")],
        "web-1 is no longer known: its endpoint is withheld, not served bare"
    );
    assert!(endpoint(&snap, "10.0.0.2:8080").identity.is_some());
}

#[test]
fn reset_nodes_removes_missing_ones() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![on_node(mk_ep("10.0.0.1", "web-1"), "node-1")],
    ));
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    index.apply_node(&mk_node("node-1", Some("zone-a")));
    index.apply_node(&mk_node("node-2", Some("zone-b")));
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(
        endpoint(&rx.borrow_and_update(), "10.0.0.1:8080")
            .zone
            .as_deref(),
        Some("zone-a")
    );

    index.reset_nodes(&[mk_node("node-2", Some("zone-b"))]);
    assert_eq!(index.counts().nodes, 1);
    assert_eq!(index.node_zone("node-1"), None);
    assert_eq!(index.node_zone("node-2").as_deref(), Some("zone-b"));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        endpoint(&rx.borrow_and_update(), "10.0.0.1:8080").zone,
        None
    );
}

#[test]
fn reset_secrets_removes_missing_ones() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_credentials("west"));
    index.apply_secret(&mk_credentials("east"));
    rx.borrow_and_update();

    index.reset_secrets(&[mk_credentials("east"), mk_credentials("north")]);
    assert!(rx.has_changed().unwrap());
    let linked = rx.borrow_and_update().clone();
    assert_eq!(linked.keys().collect::<Vec<_>>(), ["east", "north"]);
}

#[test]
fn reset_with_the_same_objects_publishes_nothing() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();
    index.reset_services(&[mk_service("shop", "web", &[("http", 80, 8080)])]);
    index.reset_pods(&[mk_pod("shop", "web-1", "10.0.0.1", "web", true)]);
    index.reset_endpoint_slices(&[mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    )]);
    assert!(!rx.has_changed().unwrap());
}

/// Every endpoint of `snap` carries an identity (every pod of `mk_web` is meshed).
fn all_identified(snap: &crate::model::PortSnapshot) -> bool {
    snap.endpoints.values().all(|e| e.identity.is_some())
}

#[test]
fn slices_relisted_before_pods_never_serve_a_bare_endpoint() {
    // While the watches were down web-1 went away and web-2, web-3 came: the slices'
    // relist lands first, naming pods the index does not know yet.
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();

    index.reset_endpoint_slices(&[mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.2", "web-2"), mk_ep("10.0.0.3", "web-3")],
    )]);
    let snap = rx.borrow_and_update().clone();
    assert!(
        snap.endpoints.is_empty(),
        "web-2 and web-3 are withheld until their pods are known, not served bare: {:?}",
        addrs(&snap)
    );

    index.reset_pods(&[
        mk_pod("shop", "web-2", "10.0.0.2", "web", true),
        mk_pod("shop", "web-3", "10.0.0.3", "web", true),
    ]);
    let snap = rx.borrow_and_update().clone();
    assert_eq!(addrs(&snap), [addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]);
    assert!(all_identified(&snap));
}

#[test]
fn a_relist_reaches_readers_as_one_change() {
    // A reset applies object by object; readers must not see the states in between
    // (e.g. a slice's endpoints before the pods that make them whole).
    let mut index = mk_web(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let before = rx.borrow_and_update().version;

    // web-1 went away, web-2 changed its service account, web-3 is new.
    index.reset_pods(&[
        mk_pod("shop", "web-3", "10.0.0.3", "web", true),
        with_service_account(mk_pod("shop", "web-2", "10.0.0.2", "web", true), "web-v2"),
    ]);
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.version.seq, before.seq + 1, "one snapshot per relist");
    assert_eq!(addrs(&snap), [addr("10.0.0.2:8080")]);
    assert_eq!(
        endpoint(&snap, "10.0.0.2:8080").identity.as_deref(),
        Some(&*identity("web-v2", "shop"))
    );

    index.reset_endpoint_slices(&[
        mk_slice(
            "shop",
            "web-abc",
            "web",
            "http",
            8080,
            vec![mk_ep("10.0.0.2", "web-2")],
        ),
        mk_slice(
            "shop",
            "web-def",
            "web",
            "http",
            8080,
            vec![mk_ep("10.0.0.3", "web-3")],
        ),
    ]);
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.version.seq, before.seq + 2, "one snapshot per relist");
    assert_eq!(addrs(&snap), [addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]);
    assert!(all_identified(&snap));
}
