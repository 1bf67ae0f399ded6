//! Lookup lifecycle: shared channels, and release once every receiver is gone.

use super::fixtures::*;

#[test]
fn same_lookup_shares_one_channel() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let a = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let b = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert!(a.same_channel(&b));
    let c = index.endpoints_rx(&svc_ref("shop", "web"), 81);
    assert!(!a.same_channel(&c));
    let d = index.endpoints_rx(&svc_ref("shop", "nope"), 80);
    assert!(!a.same_channel(&d));
    let counts = index.counts();
    assert_eq!(counts.lookups, 3);
    assert_eq!(
        counts.endpoints_published, 2,
        "web-1 on 80 and on 81; nothing for an unknown service"
    );
}

#[test]
fn dropped_lookup_is_released_after_a_change() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let other = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(index.counts().lookups, 1);
    drop(rx);
    drop(other);

    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1"), mk_ep("10.0.0.2", "web-2")],
    ));
    assert_eq!(index.counts().lookups, 0);
    assert_eq!(index.counts().endpoints_published, 0);
}

#[test]
fn dropped_lookup_is_released_when_the_service_changes() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    drop(index.endpoints_rx(&svc_ref("shop", "web"), 80));
    drop(index.service_rx(&svc_ref("shop", "web")));
    drop(index.addr_rx(addr("10.0.0.1:8080")));

    index.apply_service(&with_cluster_ip(
        mk_service("shop", "web", &[("http", 80, 8080)]),
        "10.96.0.10",
    ));
    assert_eq!(index.counts().lookups, 0);
    // Changes reaching the other dropped watches do not panic either.
    index.delete_service("shop", "web");
    index.delete_pod("shop", "web-1");
    assert_eq!(index.counts().lookups, 0);
}

#[test]
fn gc_releases_dropped_lookups_without_a_change() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let keep = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    drop(index.endpoints_rx(&svc_ref("shop", "web"), 81));
    drop(index.endpoints_rx(&svc_ref("shop", "api"), 80));
    drop(index.service_rx(&svc_ref("shop", "web")));
    drop(index.addr_rx(addr("10.0.0.1:8080")));
    assert_eq!(index.counts().lookups, 3);

    index.gc();
    assert_eq!(index.counts().lookups, 1);
    assert!(keep.same_channel(&index.endpoints_rx(&svc_ref("shop", "web"), 80)));
    // Released watches come back on demand.
    assert!(index.service_rx(&svc_ref("shop", "web")).borrow().is_some());
    assert!(matches!(
        *index.addr_rx(addr("10.0.0.1:8080")).borrow(),
        crate::index::AddrTarget::Pod(_)
    ));
}

#[test]
fn a_live_receiver_keeps_the_lookup() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut keep = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    drop(index.endpoints_rx(&svc_ref("shop", "web"), 81));
    index.delete_endpoint_slice("shop", "web-abc");
    assert_eq!(index.counts().lookups, 1);
    assert!(keep.has_changed().unwrap());
    assert!(keep.borrow_and_update().endpoints.is_empty());
}

#[test]
fn lookup_can_be_reopened_after_every_receiver_is_dropped() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    drop(index.endpoints_rx(&svc_ref("shop", "web"), 80));
    // Before any change: the channel is reused.
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.1:8080")]);
    index.delete_endpoint_slice("shop", "web-abc");
    assert!(rx.has_changed().unwrap(), "the reopened receiver is live");
    drop(rx);

    // After a change released it: a fresh channel with the current state.
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-abc",
            "web",
            "http",
            8080,
            vec![mk_ep("10.0.0.3", "web-3")],
        ),
    );
    assert_eq!(index.counts().lookups, 0);
    let rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(addrs(&rx.borrow()), [addr("10.0.0.3:8080")]);
}

#[test]
fn counts_follow_objects() {
    let mut index = mk_web(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]);
    index.apply_node(&mk_node("node-1", Some("zone-a")));
    let _rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let counts = index.counts();
    assert_eq!(
        (
            counts.services,
            counts.endpoint_slices,
            counts.pods,
            counts.nodes,
            counts.endpoints_published,
            counts.lookups
        ),
        (1, 1, 2, 1, 2, 1)
    );
}
