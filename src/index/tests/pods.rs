//! Pods: identities, protocol hints, opaque ports and updates.

use std::sync::Arc;

use super::fixtures::*;
use crate::{
    index::ClusterIndex,
    k8s::{Pod, labels},
    model::{Endpoint, ProtocolHint},
};

/// Serves `pod` (ns `shop`) behind `shop/web` port 80, targeting `port` on the pod,
/// and returns the pod's endpoint.
fn serve(pod: Pod, ip: &str, port: u16) -> Arc<Endpoint> {
    let mut index = mk_index();
    serve_in(&mut index, pod, ip, port)
}

fn serve_in(index: &mut ClusterIndex, pod: Pod, ip: &str, port: u16) -> Arc<Endpoint> {
    let name = pod.metadata.name.clone().unwrap();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, port)]));
    index.apply_pod(&pod);
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        port,
        vec![mk_ep(ip, &name)],
    ));
    let snap = snapshot(index, "shop", "web", 80);
    endpoint(&snap, &format!("{ip}:{port}"))
}

#[test]
fn meshed_pod_gets_identity_and_h2() {
    let e = serve(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "10.0.0.1",
        8080,
    );
    assert_eq!(
        e.identity.as_deref(),
        Some("web.shop.serviceaccount.identity.linkerd.cluster.local")
    );
    assert_eq!(e.hint, ProtocolHint::H2);
}

#[test]
fn empty_service_account_is_default() {
    let e = serve(
        mk_pod("shop", "web-1", "10.0.0.1", "", true),
        "10.0.0.1",
        8080,
    );
    assert_eq!(e.identity.as_deref(), Some(&*identity("default", "shop")));
    assert_eq!(
        e.labels.get("serviceaccount").map(String::as_str),
        Some("default")
    );
}

#[test]
fn pod_meshed_by_another_control_plane_gets_a_hint_but_no_identity() {
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_label(&mut pod.metadata, labels::CONTROL_PLANE_NS, "other-linkerd");
    let e = serve(pod, "10.0.0.1", 8080);
    assert_eq!(e.identity, None);
    assert_eq!(e.hint, ProtocolHint::H2);
}

#[test]
fn unmeshed_pod_has_no_identity_and_no_hint() {
    let e = serve(
        mk_pod("shop", "web-1", "10.0.0.1", "web", false),
        "10.0.0.1",
        8080,
    );
    assert_eq!(e.identity, None);
    assert_eq!(e.hint, ProtocolHint::Unknown);
    // Unmeshed pods still get their metric labels.
    assert_eq!(e.pod.as_deref(), Some("web-1"));
}

#[test]
fn unmeshed_pod_on_a_default_opaque_port_has_no_hint() {
    let e = serve(
        mk_pod("shop", "db-1", "10.0.0.1", "db", false),
        "10.0.0.1",
        5432,
    );
    assert_eq!(e.hint, ProtocolHint::Unknown);
}

#[test]
fn skipped_inbound_port_has_neither_identity_nor_hint() {
    let mut index = mk_index();
    index.apply_service(&mk_service(
        "shop",
        "web",
        &[("http", 80, 8080), ("admin", 9990, 9990)],
    ));
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_annotation(
        &mut pod.metadata,
        labels::SKIP_INBOUND_PORTS,
        "8080,3000-3005",
    );
    index.apply_pod(&pod);
    index.apply_endpoint_slice(&mk_slice_ports(
        "shop",
        "web-abc",
        "web",
        &[("http", 8080), ("admin", 9990)],
        vec![mk_ep("10.0.0.1", "web-1")],
    ));

    let http = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&http, "10.0.0.1:8080");
    assert_eq!(e.identity, None);
    assert_eq!(e.hint, ProtocolHint::Unknown);

    let admin = snapshot(&mut index, "shop", "web", 9990);
    let e = endpoint(&admin, "10.0.0.1:9990");
    assert_eq!(e.identity.as_deref(), Some(&*identity("web", "shop")));
    assert_eq!(e.hint, ProtocolHint::H2);
}

#[test]
fn skipped_inbound_port_by_range() {
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_annotation(&mut pod.metadata, labels::SKIP_INBOUND_PORTS, "3000-3005");
    let e = serve(pod, "10.0.0.1", 3003);
    assert_eq!((e.identity.clone(), e.hint), (None, ProtocolHint::Unknown));
}

const OPAQUE_4143: ProtocolHint = ProtocolHint::Opaque { inbound_port: 4143 };

#[test]
fn opaque_port_by_number() {
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_annotation(&mut pod.metadata, labels::OPAQUE_PORTS, "8080");
    let e = serve(pod, "10.0.0.1", 8080);
    assert_eq!(e.hint, OPAQUE_4143);
    assert_eq!(e.identity.as_deref(), Some(&*identity("web", "shop")));
}

#[test]
fn opaque_port_by_range() {
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_annotation(&mut pod.metadata, labels::OPAQUE_PORTS, "25, 8000-8100");
    assert_eq!(serve(pod.clone(), "10.0.0.1", 8080).hint, OPAQUE_4143);
    assert_eq!(serve(pod, "10.0.0.1", 8101).hint, ProtocolHint::H2);
}

#[test]
fn opaque_port_by_container_port_name() {
    let mut pod = with_container_port(
        mk_pod("shop", "db-1", "10.0.0.1", "db", true),
        "mysql",
        3307,
    );
    set_annotation(&mut pod.metadata, labels::OPAQUE_PORTS, "mysql");
    assert_eq!(serve(pod.clone(), "10.0.0.1", 3307).hint, OPAQUE_4143);
    assert_eq!(
        serve(pod, "10.0.0.1", 3308).hint,
        ProtocolHint::H2,
        "another port of the pod is not named mysql"
    );
}

#[test]
fn default_opaque_port() {
    let e = serve(
        mk_pod("shop", "db-1", "10.0.0.1", "db", true),
        "10.0.0.1",
        5432,
    );
    assert_eq!(e.hint, OPAQUE_4143);
    assert_eq!(e.identity.as_deref(), Some(&*identity("db", "shop")));
}

#[test]
fn pod_opaque_ports_replace_the_defaults() {
    let mut pod = mk_pod("shop", "db-1", "10.0.0.1", "db", true);
    set_annotation(&mut pod.metadata, labels::OPAQUE_PORTS, "3000");
    assert_eq!(serve(pod, "10.0.0.1", 5432).hint, ProtocolHint::H2);
}

#[test]
fn opaque_inbound_port_comes_from_the_proxy_env() {
    let pod = with_proxy_env(
        mk_pod("shop", "db-1", "10.0.0.1", "db", true),
        labels::PROXY_INBOUND_LISTEN_ADDR_ENV,
        "0.0.0.0:4999",
    );
    assert_eq!(
        serve(pod.clone(), "10.0.0.1", 5432).hint,
        ProtocolHint::Opaque { inbound_port: 4999 }
    );
    assert_eq!(serve(pod, "10.0.0.1", 8080).hint, ProtocolHint::H2);
}

#[test]
fn inbound_port_env_of_another_container_is_ignored() {
    let mut pod = mk_pod("shop", "db-1", "10.0.0.1", "db", true);
    pod.spec.as_mut().unwrap().containers[0].env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
        name: labels::PROXY_INBOUND_LISTEN_ADDR_ENV.into(),
        value: Some("0.0.0.0:4999".into()),
        ..Default::default()
    }]);
    assert_eq!(serve(pod, "10.0.0.1", 5432).hint, OPAQUE_4143);
}

#[test]
fn endpoint_of_a_pod_not_known_yet_is_withheld_until_the_pod_arrives() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    ));
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert!(
        rx.borrow_and_update().endpoints.is_empty(),
        "an endpoint of a pod not known yet is withheld, not served bare"
    );

    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    assert!(rx.has_changed().unwrap());
    let e = endpoint(&rx.borrow_and_update(), "10.0.0.1:8080");
    assert_eq!(e.identity.as_deref(), Some(&*identity("web", "shop")));
    assert_eq!(e.hint, ProtocolHint::H2);
}

#[test]
fn service_account_change_publishes_a_new_identity_and_keeps_the_rest() {
    let mut index = mk_web(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let before = rx.borrow_and_update().clone();

    index.apply_pod(&with_service_account(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "web-v2",
    ));
    assert!(rx.has_changed().unwrap(), "a new snapshot is published");
    let after = rx.borrow_and_update().clone();
    assert_eq!(
        endpoint(&after, "10.0.0.1:8080").identity.as_deref(),
        Some(&*identity("web-v2", "shop"))
    );
    assert_eq!(
        endpoint(&after, "10.0.0.1:8080")
            .labels
            .get("serviceaccount")
            .map(String::as_str),
        Some("web-v2")
    );
    assert!(
        !Arc::ptr_eq(
            &endpoint(&before, "10.0.0.1:8080"),
            &endpoint(&after, "10.0.0.1:8080")
        ),
        "the changed endpoint is a new one"
    );
    assert!(
        Arc::ptr_eq(
            &endpoint(&before, "10.0.0.2:8080"),
            &endpoint(&after, "10.0.0.2:8080")
        ),
        "the unchanged endpoint is shared between snapshots"
    );
}

#[test]
fn pod_change_that_does_not_matter_publishes_nothing() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();

    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_label(&mut pod.metadata, "app", "web");
    index.apply_pod(&pod);
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn pod_change_reaches_every_service_it_backs() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    index.apply_service(&mk_service("shop", "web-canary", &[("http", 80, 8080)]));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-canary-abc",
        "web-canary",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    ));
    let mut web = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let mut canary = index.endpoints_rx(&svc_ref("shop", "web-canary"), 80);
    web.borrow_and_update();
    canary.borrow_and_update();

    index.apply_pod(&with_service_account(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "web-v2",
    ));
    for rx in [&mut web, &mut canary] {
        assert!(rx.has_changed().unwrap());
        let e = endpoint(&rx.borrow_and_update(), "10.0.0.1:8080");
        assert_eq!(e.identity.as_deref(), Some(&*identity("web-v2", "shop")));
    }
}

#[test]
fn pod_that_left_the_slice_no_longer_updates_the_service() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.2", "web-2")],
    ));
    rx.borrow_and_update();

    index.apply_pod(&with_service_account(
        mk_pod("shop", "web-1", "10.0.0.1", "web", true),
        "web-v2",
    ));
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn same_pod_name_in_another_namespace_is_another_pod() {
    let mut index = mk_web(&[]);
    index.apply_pod(&mk_pod("other", "web-1", "10.0.0.1", "other-sa", true));
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "web-abc",
        "web",
        "http",
        8080,
        vec![mk_ep("10.0.0.1", "web-1")],
    ));
    let snap = snapshot(&mut index, "shop", "web", 80);
    assert!(
        snap.endpoints.is_empty(),
        "shop/web-1 is not known: other/web-1 does not stand in for it"
    );
}

#[test]
fn a_pod_looked_up_by_name_follows_apply_delete_and_reset() {
    let mut index = mk_index();
    let mut rx = index.pod_rx("shop", "web-1");
    assert!(rx.borrow_and_update().is_none(), "not known yet");
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.1", "web", true));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        rx.borrow_and_update().as_ref().map(|p| &*p.name),
        Some("web-1")
    );
    // A relist without the pod removes it; a later lookup shares the same channel.
    index.reset_pods(&[]);
    assert!(rx.borrow_and_update().is_none());
    index.apply_pod(&mk_pod("shop", "web-1", "10.0.0.2", "web", true));
    let again = index.pod_rx("shop", "web-1");
    assert_eq!(
        again.borrow().as_ref().map(|p| p.ips.to_vec()),
        Some(vec!["10.0.0.2".parse().unwrap()])
    );
    index.delete_pod("shop", "web-1");
    assert!(rx.borrow_and_update().is_none());
}

#[test]
fn inbound_port_env_in_ipv6_form() {
    let pod = with_proxy_env(
        mk_pod("shop", "db-1", "10.0.0.1", "db", true),
        labels::PROXY_INBOUND_LISTEN_ADDR_ENV,
        "[::]:4999",
    );
    assert_eq!(
        serve(pod, "10.0.0.1", 5432).hint,
        ProtocolHint::Opaque { inbound_port: 4999 }
    );
}

#[test]
fn inbound_port_env_that_does_not_parse_falls_back_to_4143() {
    for value in ["0.0.0.0", "0.0.0.0:http", "0.0.0.0:0", "0.0.0.0:70000", ""] {
        let pod = with_proxy_env(
            mk_pod("shop", "db-1", "10.0.0.1", "db", true),
            labels::PROXY_INBOUND_LISTEN_ADDR_ENV,
            value,
        );
        assert_eq!(serve(pod, "10.0.0.1", 5432).hint, OPAQUE_4143, "{value:?}");
    }
}

#[test]
fn inbound_port_of_a_native_sidecar_proxy() {
    // Linkerd's native sidecar mode runs the proxy as an init container that keeps running.
    let mut pod = mk_pod("shop", "db-1", "10.0.0.1", "db", true);
    let spec = pod.spec.as_mut().unwrap();
    let mut proxy = spec.containers.pop().unwrap();
    assert_eq!(proxy.name, labels::PROXY_CONTAINER);
    proxy.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
        name: labels::PROXY_INBOUND_LISTEN_ADDR_ENV.into(),
        value: Some("0.0.0.0:4888".into()),
        ..Default::default()
    }]);
    spec.init_containers = Some(vec![proxy]);
    assert_eq!(
        serve(pod, "10.0.0.1", 5432).hint,
        ProtocolHint::Opaque { inbound_port: 4888 }
    );
}

#[test]
fn empty_control_plane_label_is_not_meshed() {
    let mut pod = mk_pod("shop", "web-1", "10.0.0.1", "web", true);
    set_label(&mut pod.metadata, labels::CONTROL_PLANE_NS, "");
    let e = serve(pod, "10.0.0.1", 8080);
    assert_eq!(e.identity, None);
    assert_eq!(e.hint, ProtocolHint::Unknown);
    assert_eq!(e.labels.get("control_plane_ns"), None);
}
