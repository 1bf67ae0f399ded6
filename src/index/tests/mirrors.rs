//! Gateway mirrors: the gateway's address, identity and the remote authority.

use super::fixtures::*;
use crate::{
    k8s::{Service, labels},
    model::{MirrorInfo, ProtocolHint, ServiceKind},
};

const GATEWAY_IDENTITY: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.west.trust";

/// `shop/foo-west`, a gateway mirror of `foo.ns.svc.cluster.local` in cluster `west`.
fn mk_gateway_mirror() -> Service {
    let mut svc = mk_service("shop", "foo-west", &[("http", 8080, 8080)]);
    set_label(&mut svc.metadata, labels::MIRRORED_SERVICE, "true");
    set_label(&mut svc.metadata, labels::MIRROR_CLUSTER_NAME, "west");
    set_annotation(
        &mut svc.metadata,
        labels::REMOTE_GATEWAY_IDENTITY,
        GATEWAY_IDENTITY,
    );
    set_annotation(
        &mut svc.metadata,
        labels::REMOTE_SVC_FQ_NAME,
        "foo.ns.svc.cluster.local",
    );
    svc
}

#[test]
fn gateway_mirror_endpoint_is_the_gateway() {
    let mut index = mk_index();
    index.apply_service(&mk_gateway_mirror());
    index.apply_endpoint_slice(&mk_slice(
        "shop",
        "foo-west-gw",
        "foo-west",
        "http",
        4143,
        vec![mk_bare_ep("172.18.0.5")],
    ));

    let snap = snapshot(&mut index, "shop", "foo-west", 8080);
    let info = snap.service.as_ref().unwrap();
    assert_eq!(info.kind, ServiceKind::Local);
    assert_eq!(
        info.mirror,
        Some(MirrorInfo {
            cluster: "west".into(),
            remote_fqn: Some("foo.ns.svc.cluster.local".into()),
        })
    );
    assert_eq!(addrs(&snap), [addr("172.18.0.5:4143")]);
    let e = endpoint(&snap, "172.18.0.5:4143");
    assert_eq!(e.identity.as_deref(), Some(GATEWAY_IDENTITY));
    assert_eq!(
        e.authority_override.as_deref(),
        Some("foo.ns.svc.cluster.local:8080")
    );
    assert_eq!(e.hint, ProtocolHint::H2);
}

#[test]
fn gateway_annotations_on_the_slice_are_enough() {
    let mut index = mk_index();
    index.apply_service(&mk_service("shop", "foo-west", &[("http", 9000, 9000)]));
    let mut slice = mk_slice(
        "shop",
        "foo-west-gw",
        "foo-west",
        "http",
        4143,
        vec![mk_bare_ep("172.18.0.5")],
    );
    set_annotation(
        &mut slice.metadata,
        labels::REMOTE_GATEWAY_IDENTITY,
        GATEWAY_IDENTITY,
    );
    set_annotation(
        &mut slice.metadata,
        labels::REMOTE_SVC_FQ_NAME,
        "foo.ns.svc.cluster.local",
    );
    index.apply_endpoint_slice(&slice);

    let snap = snapshot(&mut index, "shop", "foo-west", 9000);
    let e = endpoint(&snap, "172.18.0.5:4143");
    assert_eq!(e.identity.as_deref(), Some(GATEWAY_IDENTITY));
    assert_eq!(
        e.authority_override.as_deref(),
        Some("foo.ns.svc.cluster.local:9000")
    );
}

#[test]
fn plain_service_has_no_authority_override() {
    let mut index = mk_web(&[("web-1", "10.0.0.1")]);
    let snap = snapshot(&mut index, "shop", "web", 80);
    let e = endpoint(&snap, "10.0.0.1:8080");
    assert_eq!(e.authority_override, None);
    assert!(snap.service.as_ref().unwrap().mirror.is_none());
}
