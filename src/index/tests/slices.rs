//! EndpointSlices: ports, address families, scaling, moves and deletes.

use super::fixtures::*;

#[test]
fn named_target_port_resolves_per_slice() {
    let mut index = mk_index();
    let svc = with_named_target(mk_service("shop", "web", &[("http", 80, 0)]), 0, "web");
    index.apply_service(&svc);
    // Two versions of the pods name the container port `web` differently.
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-a",
            "web",
            "http",
            8080,
            vec![mk_ep("10.0.0.1", "web-1")],
        ),
    );
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-b",
            "web",
            "http",
            9090,
            vec![mk_ep("10.0.0.2", "web-2")],
        ),
    );

    let snap = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(addrs(&snap), [addr("10.0.0.1:8080"), addr("10.0.0.2:9090")]);
}

#[test]
fn each_service_port_uses_its_own_slice_port() {
    let mut index = mk_index();
    index.apply_service(&mk_service(
        "shop",
        "web",
        &[("http", 80, 8080), ("admin", 9990, 9991)],
    ));
    apply_with_pods(
        &mut index,
        &mk_slice_ports(
            "shop",
            "web-abc",
            "web",
            &[("http", 8080), ("admin", 9991)],
            vec![mk_ep("10.0.0.1", "web-1")],
        ),
    );
    let http = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(addrs(&http), [addr("10.0.0.1:8080")]);
    let admin = snapshot(&mut index, "shop", "web", 9990);
    assert_eq!(addrs(&admin), [addr("10.0.0.1:9991")]);
}

#[test]
fn port_not_in_the_service_uses_the_requested_port() {
    // A lookup of a port the Service does not list targets that port on the pods
    // (as Linkerd does), not whatever port the service's only, unnamed, port targets.
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("", 80, 8080)]));
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-abc",
            "web",
            "",
            8080,
            vec![mk_ep("10.0.0.1", "web-1")],
        ),
    );
    let on_80 = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(addrs(&on_80), [addr("10.0.0.1:8080")]);
    let on_9999 = snapshot(&mut index, "shop", "web", 9999);
    assert_eq!(addrs(&on_9999), [addr("10.0.0.1:9999")]);
}

#[test]
fn dual_stack_pod_is_served_on_ipv6_only() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    index.apply_pod(&with_pod_ip(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "fd00::1",
    ));
    index.apply_pod(&mk_pod("shop", "web-2", "10.0.0.2", "web", true));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-v4",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1"), mk_ep("10.0.0.2", "web-2")],
    ));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-v6",
        "web",
        "http",
        8080,
        vec![mk_ep("fd00::1", "web-1")],
    ));

    let snap = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(
        addrs(&snap),
        [addr("10.0.0.2:8080"), addr("[fd00::1]:8080")],
        "web-1 only by its IPv6 address; web-2 (IPv4 only) kept"
    );
    let e = endpoint(&snap, "[fd00::1]:8080");
    assert_eq!(e.identity.as_deref(), Some(&*identity("web", "shop")));
}

#[test]
fn scale_up_and_down() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.1:8080")]);

    let slice = |eps| mk_slice("shop", "web-abc", "web", "http", 8080, eps);
    apply_with_pods(
        &mut index,
        &slice(vec![
            mk_ep("10.0.0.1", "web-1"),
            mk_ep("10.0.0.2", "web-2"),
            mk_ep("10.0.0.3", "web-3"),
        ]),
    );
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        addrs(&rx.borrow_and_update()),
        [
            addr("10.0.0.1:8080"),
            addr("10.0.0.2:8080"),
            addr("10.0.0.3:8080")
        ]
    );

    index.apply_endpoint_slice(&slice(vec![mk_ep("10.0.0.3", "web-3")]));
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.3:8080")]);

    // An endpoint going not-ready leaves.
    index.apply_endpoint_slice(&slice(vec![not_ready(mk_ep("10.0.0.3", "web-3"))]));
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert!(snap.endpoints.is_empty());
    assert!(snap.service.is_some());
}

#[test]
fn deleting_the_slice_empties_the_snapshot() {
    let mut index = mk_web(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(rx.borrow_and_update().endpoints.len(), 2);
    assert_eq!(index.counts().endpoint_slices, 1);

    index.delete_endpoint_slice("shop", "web-abc");
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert!(snap.endpoints.is_empty());
    assert!(snap.service.is_some(), "the service still exists");
    assert_eq!(index.counts().endpoint_slices, 0);
}

#[test]
fn endpoints_of_several_slices_are_merged() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-def",
            "web",
            "http",
            8080,
            vec![mk_ep("10.0.0.2", "web-2")],
        ),
    );
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(
        addrs(&rx.borrow_and_update()),
        [addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]
    );
    index.delete_endpoint_slice("shop", "web-abc");
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.2:8080")]);
}

#[test]
fn reapplying_an_unchanged_slice_publishes_nothing() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    ));
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn slice_relabelled_to_another_service_moves() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    index.apply_service(&mk_service("shop", "api", &[("http", 80, 8080)]));
    let mut web = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let mut api = index.endpoints_rx(&svc_ref("shop", "api"), 80);
    web.borrow_and_update();
    api.borrow_and_update();

    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "api",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    ));
    assert!(web.borrow_and_update().endpoints.is_empty());
    assert_eq!(addrs(&api.borrow_and_update()), [addr("10.0.0.1:8080")]);
    assert_eq!(index.counts().endpoint_slices, 1);
}

#[test]
fn slice_that_stops_naming_a_service_leaves_it() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();

    let mut slice = mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    );
    slice.metadata.labels = None;
    index.apply_endpoint_slice(&slice);
    assert!(
        rx.borrow_and_update().endpoints.is_empty(),
        "a slice without the service-name label belongs to no service"
    );
    assert_eq!(index.counts().endpoint_slices, 0);
}

#[test]
fn endpoint_without_a_pod_is_served_bare() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "db", &[("pg", 5432, 5432)]));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "db-manual",
        "db",
        "pg",
        5432,
        vec![mk_bare_ep("192.168.1.10")],
    ));
    let snap = snapshot(&mut index, "shop", "db", 5432);
    let e = endpoint(&snap, "192.168.1.10:5432");
    assert_eq!(e.identity, None);
    assert_eq!(e.hint, crate::model::ProtocolHint::Unknown);
    assert!(e.labels.is_empty());
}
