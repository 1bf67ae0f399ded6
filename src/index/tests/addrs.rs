//! `addr_rx`: what an IP address and port belong to.

use super::fixtures::*;
use crate::{index::AddrTarget, model::ProtocolHint};

#[test]
fn cluster_ip_is_the_service() {
    let mut index = mk_index();
    index.apply_service(&with_cluster_ip(
        mk_service("shop", "web", &[("http", 80, 8080)]),
        "10.96.0.10",
    ));
    let target = index.addr_rx(addr("10.96.0.10:80")).borrow().clone();
    let AddrTarget::Service(info) = target else {
        panic!("expected a service, got {target:?}");
    };
    assert_eq!(info.service, svc_ref("shop", "web"));
    assert_eq!(info.cluster_ips, [addr("10.96.0.10:80").ip()]);
}

#[test]
fn pod_ip_is_the_pod_with_its_identity() {
    let mut index = mk_index();
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    let target = index.addr_rx(addr("10.0.0.1:8080")).borrow().clone();
    let AddrTarget::Pod(e) = target else {
        panic!("expected a pod, got {target:?}");
    };
    assert_eq!(e.addr, addr("10.0.0.1:8080"));
    assert_eq!(e.identity.as_deref(), Some(&*identity("web", "shop")));
    assert_eq!(e.hint, ProtocolHint::H2);
    assert_eq!(e.pod.as_deref(), Some("web-1"));
}

#[test]
fn pod_ip_on_an_opaque_port() {
    let mut index = mk_index();
    index.apply_pod(&mk_pod("shop", "db-1", "10.0.0.1", "db", true));
    let target = index.addr_rx(addr("10.0.0.1:5432")).borrow().clone();
    let AddrTarget::Pod(e) = target else {
        panic!("expected a pod, got {target:?}");
    };
    assert_eq!(e.hint, ProtocolHint::Opaque { inbound_port: 4143 });
}

#[test]
fn pod_ip_zone_from_its_node() {
    let mut index = mk_index();
    index.apply_node(&mk_node("node-1", Some("zone-a")));
    index.apply_pod(&with_node(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "node-1",
    ));
    let target = index.addr_rx(addr("10.0.0.1:8080")).borrow().clone();
    let AddrTarget::Pod(e) = target else {
        panic!("expected a pod, got {target:?}");
    };
    assert_eq!(e.zone.as_deref(), Some("zone-a"));
}

#[test]
fn unknown_ip_is_unknown() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    assert_eq!(
        *index.addr_rx(addr("10.9.9.9:80")).borrow(),
        AddrTarget::Unknown
    );
}

#[test]
fn deleting_the_pod_makes_its_ip_unknown() {
    let mut index = mk_index();
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    let mut rx = index.addr_rx(addr("10.0.0.1:8080"));
    assert!(matches!(*rx.borrow_and_update(), AddrTarget::Pod(_)));

    index.delete_pod("shop", "web-1");
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), AddrTarget::Unknown);
    assert_eq!(index.counts().pods, 0);
}

#[test]
fn pod_appearing_after_the_lookup_is_published() {
    let mut index = mk_index();
    let mut rx = index.addr_rx(addr("10.0.0.1:8080"));
    assert_eq!(*rx.borrow_and_update(), AddrTarget::Unknown);

    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    assert!(rx.has_changed().unwrap());
    assert!(matches!(*rx.borrow_and_update(), AddrTarget::Pod(_)));
}

#[test]
fn pod_identity_change_is_published() {
    let mut index = mk_index();
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    let mut rx = index.addr_rx(addr("10.0.0.1:8080"));
    rx.borrow_and_update();

    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web-v2", true));
    assert!(rx.has_changed().unwrap());
    let AddrTarget::Pod(e) = rx.borrow_and_update().clone() else {
        panic!("expected a pod");
    };
    assert_eq!(e.identity.as_deref(), Some(&*identity("web-v2", "shop")));
}

#[test]
fn deleting_the_service_makes_its_cluster_ip_unknown() {
    let mut index = mk_index();
    index.apply_service(&with_cluster_ip(
        mk_service("shop", "web", &[("http", 80, 8080)]),
        "10.96.0.10",
    ));
    let mut rx = index.addr_rx(addr("10.96.0.10:80"));
    assert!(matches!(*rx.borrow_and_update(), AddrTarget::Service(_)));

    index.delete_service("shop", "web");
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), AddrTarget::Unknown);
}

#[test]
fn ip_reused_by_a_new_pod_belongs_to_the_new_pod() {
    let mut index = mk_index();
    index.apply_pod(&mk_pod("shop", "old", "10.0.0.1", "old-sa", true));
    let mut rx = index.addr_rx(addr("10.0.0.1:8080"));
    rx.borrow_and_update();

    // The new pod shows up before the old one's delete event.
    index.apply_pod(&mk_pod("shop", "new", "10.0.0.1", "new-sa", true));
    index.delete_pod("shop", "old");
    let AddrTarget::Pod(e) = rx.borrow_and_update().clone() else {
        panic!("expected the new pod");
    };
    assert_eq!(e.identity.as_deref(), Some(&*identity("new-sa", "shop")));
}
