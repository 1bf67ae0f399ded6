//! Services: existence, ready endpoints and kinds.

use super::fixtures::*;
use crate::{
    k8s::labels,
    model::{FederatedMember, ServiceKind},
};

#[test]
fn ready_endpoints_are_listed_at_the_slice_port() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "web-abc",
            "web",
            "http",
            8080,
            vec![
                mk_ep("10.0.0.1", "web-1"),
                mk_ep("10.0.0.2", "web-2"),
                not_ready(mk_ep("10.0.0.3", "web-3")),
            ],
        ),
    );

    let snap = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(
        addrs(&snap),
        [addr("10.0.0.1:8080"), addr("10.0.0.2:8080")],
        "ready addresses only, at the slice's port"
    );
    let info = snap.service.as_ref().expect("the service exists");
    assert_eq!(info.service, svc_ref("shop", "web"));
    assert_eq!(info.kind, ServiceKind::Local);
    assert_eq!(&*endpoint(&snap, "10.0.0.1:8080").cluster, "local");
}

#[test]
fn endpoints_without_a_ready_condition_are_ready() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    let mut ep = mk_ep("10.0.0.1", "web-1");
    ep.conditions = None;
    apply_with_pods(
        &mut index,
        &mk_slice("shop", "web-abc", "web", "http", 8080, vec![ep]),
    );

    let snap = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(addrs(&snap), [addr("10.0.0.1:8080")]);
}

#[test]
fn unknown_service_has_no_service() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let snap = snapshot(&mut index, "shop", "nope", 80);
    assert!(snap.service.is_none());
    assert!(snap.endpoints.is_empty());
    assert!(
        index
            .service_rx(&svc_ref("shop", "nope"))
            .borrow()
            .is_none()
    );
}

#[test]
fn service_without_endpoints_exists_and_is_empty() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    let snap = snapshot(&mut index, "shop", "web", 80);
    assert!(snap.service.is_some());
    assert!(snap.endpoints.is_empty());
}

#[test]
fn slices_of_another_service_are_not_listed() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    index.apply_service(&mk_service("shop", "api", &[("http", 80, 8080)]));
    apply_with_pods(
        &mut index,
        &mk_slice(
            "shop",
            "api-xyz",
            "api",
            "http",
            8080,
            vec![mk_ep("10.0.0.9", "api-1")],
        ),
    );
    let web = snapshot(&mut index, "shop", "web", 80);
    assert_eq!(addrs(&web), [addr("10.0.0.1:8080")]);
    let api = snapshot(&mut index, "shop", "api", 80);
    assert_eq!(addrs(&api), [addr("10.0.0.9:8080")]);
}

#[test]
fn same_name_in_another_namespace_is_another_service() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let snap = snapshot(&mut index, "other", "web", 80);
    assert!(snap.service.is_none());
    assert!(snap.endpoints.is_empty());
}

#[test]
fn service_rx_follows_apply_and_delete() {
    let mut index = mk_index();
    let web = svc_ref("shop", "web");
    let mut rx = index.service_rx(&web);
    assert!(rx.borrow_and_update().is_none());

    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().as_ref().unwrap().service, web);

    index.delete_service("shop", "web");
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().is_none());
}

#[test]
fn deleting_the_service_empties_its_lookups() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    assert_eq!(rx.borrow_and_update().endpoints.len(), 1);

    index.delete_service("shop", "web");
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert!(snap.service.is_none());
    assert!(snap.endpoints.is_empty(), "no service, no endpoints");

    // The slice is still there: the service coming back brings its endpoints back.
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&rx.borrow_and_update()), [addr("10.0.0.1:8080")]);
}

#[test]
fn reapplying_an_unchanged_service_publishes_nothing() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    let mut info_rx = index.service_rx(&svc_ref("shop", "web"));
    rx.borrow_and_update();
    info_rx.borrow_and_update();
    index.apply_service(&mk_service("shop", "web", &[("http", 80, 8080)]));
    assert!(!rx.has_changed().unwrap());
    assert!(!info_rx.has_changed().unwrap());
}

#[test]
fn external_name_service() {
    let mut index = mk_index();
    let mut svc = mk_service("shop", "ext", &[("http", 80, 80)]);
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("example.com".into());
    index.apply_service(&svc);

    let info = index
        .service_rx(&svc_ref("shop", "ext"))
        .borrow()
        .clone()
        .unwrap();
    assert_eq!(info.kind, ServiceKind::ExternalName);
    let snap = snapshot(&mut index, "shop", "ext", 80);
    assert_eq!(
        snap.service.as_ref().unwrap().kind,
        ServiceKind::ExternalName
    );
    assert!(snap.endpoints.is_empty());
}

#[test]
fn remote_discovery_labels() {
    let mut index = mk_index();
    let mut svc = mk_service("shop", "foo-west", &[("http", 8080, 8080)]);
    set_label(&mut svc.metadata, labels::MC_REMOTE_DISCOVERY, "west");
    set_label(&mut svc.metadata, labels::MC_REMOTE_SERVICE, "foo");
    index.apply_service(&svc);

    let info = index
        .service_rx(&svc_ref("shop", "foo-west"))
        .borrow()
        .clone()
        .unwrap();
    assert_eq!(
        info.kind,
        ServiceKind::RemoteDiscovery {
            cluster: "west".into(),
            service: Some("foo".into()),
        }
    );
    // Its endpoints live in the other cluster: none here, but it exists.
    let snap = snapshot(&mut index, "shop", "foo-west", 8080);
    assert!(snap.service.is_some());
    assert!(snap.endpoints.is_empty());
}

#[test]
fn federated_annotations() {
    let mut index = mk_index();
    let mut svc = mk_service("shop", "foo-federated", &[("http", 8080, 8080)]);
    set_annotation(
        &mut svc.metadata,
        labels::MC_REMOTE_DISCOVERY,
        "foo@east,foo@west",
    );
    set_annotation(&mut svc.metadata, labels::MC_LOCAL_DISCOVERY, "foo");
    index.apply_service(&svc);

    let info = index
        .service_rx(&svc_ref("shop", "foo-federated"))
        .borrow()
        .clone()
        .unwrap();
    let ServiceKind::Federated { members } = &info.kind else {
        panic!("expected a federated service, got {:?}", info.kind);
    };
    let member = |cluster: Option<&str>| FederatedMember {
        cluster: cluster.map(String::from),
        service: "foo".into(),
    };
    assert_eq!(members.len(), 3);
    assert!(members.contains(&member(None)), "{members:?}");
    assert!(members.contains(&member(Some("east"))), "{members:?}");
    assert!(members.contains(&member(Some("west"))), "{members:?}");
}

#[test]
fn service_becoming_external_name_loses_its_endpoints() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let mut rx = index.endpoints_rx(&svc_ref("shop", "web"), 80);
    rx.borrow_and_update();

    let mut svc = mk_service("shop", "web", &[("http", 80, 8080)]);
    svc.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    index.apply_service(&svc);
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone();
    assert_eq!(
        snap.service.as_ref().unwrap().kind,
        ServiceKind::ExternalName
    );
    assert!(snap.endpoints.is_empty());
}
