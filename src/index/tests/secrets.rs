//! Credentials Secrets: which clusters are linked, and which Secrets are rejected.

use super::fixtures::*;
use crate::{
    index::{LinkedClusterSpec, RejectedSecret},
    k8s::labels,
};

#[test]
fn credentials_secret_links_its_cluster() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    assert!(rx.borrow_and_update().is_empty());

    index.apply_secret(&mk_credentials("west"));
    assert!(rx.has_changed().unwrap());
    let linked = rx.borrow_and_update().clone();
    assert_eq!(linked.keys().collect::<Vec<_>>(), ["west"]);
    let west = &linked["west"];
    assert_eq!(west.name, "west");
    assert_eq!(west.trust_domain, "west.trust");
    assert_eq!(west.cluster_domain, "west.local");
    assert_eq!(west.secret, "linkerd/cluster-credentials-west");
    assert_eq!(
        west.kubeconfig.as_deref(),
        Some(&b"apiVersion: v1\nkind: Config\n"[..])
    );
    assert!(index.rejected_secrets().is_empty());
}

#[test]
fn missing_trust_domain_is_rejected_with_a_reason() {
    let mut index = mk_index();
    let rx = index.linked_clusters_rx();
    index.apply_secret(&mk_secret(
        "linkerd",
        "cluster-credentials-west",
        Some("west"),
        None,
        Some("west.local"),
    ));
    assert!(rx.borrow().is_empty(), "not linked");
    let rejected = index.rejected_secrets();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].secret, "linkerd/cluster-credentials-west");
    assert!(
        rejected[0]
            .reason
            .to_string()
            .contains(labels::MC_TRUST_DOMAIN),
        "the reason names the annotation: {}",
        rejected[0].reason
    );
    assert_eq!(rejected[0].metric_label(), "missing_trust_domain");
}

#[test]
fn missing_cluster_domain_or_name_is_rejected() {
    let mut index = mk_index();
    index.apply_secret(&mk_secret(
        "linkerd",
        "creds-a",
        Some("a"),
        Some("a.trust"),
        None,
    ));
    index.apply_secret(&mk_secret(
        "linkerd",
        "creds-b",
        None,
        Some("b.trust"),
        Some("b.local"),
    ));
    assert!(index.linked_clusters_rx().borrow().is_empty());
    let mut rejected = index.rejected_secrets();
    rejected.sort_by(|a, b| a.secret.cmp(&b.secret));
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected[0]
            .reason
            .to_string()
            .contains(labels::MC_CLUSTER_DOMAIN)
    );
    assert!(
        rejected[1]
            .reason
            .to_string()
            .contains(labels::MC_CLUSTER_NAME)
    );
    assert_eq!(rejected[0].metric_label(), "missing_cluster_domain");
    assert_eq!(rejected[1].metric_label(), "missing_cluster_name");
}

#[test]
fn fixing_a_rejected_secret_links_it() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_secret(
        "linkerd",
        "cluster-credentials-west",
        Some("west"),
        None,
        Some("west.local"),
    ));
    rx.borrow_and_update();
    index.apply_secret(&mk_credentials("west"));
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().contains_key("west"));
    assert!(index.rejected_secrets().is_empty());
}

#[test]
fn secret_in_another_namespace_is_ignored() {
    let mut index = mk_index();
    let rx = index.linked_clusters_rx();
    let mut secret = mk_credentials("west");
    secret.metadata.namespace = Some("default".into());
    index.apply_secret(&secret);
    assert!(!rx.has_changed().unwrap());
    assert!(rx.borrow().is_empty());
    assert!(index.rejected_secrets().is_empty());

    // Deleting a same-named Secret elsewhere does not touch ours.
    index.apply_secret(&mk_credentials("west"));
    index.delete_secret("default", "cluster-credentials-west");
    assert!(rx.borrow().contains_key("west"));
}

#[test]
fn secret_of_another_type_is_ignored() {
    let mut index = mk_index();
    let rx = index.linked_clusters_rx();
    let mut secret = mk_credentials("west");
    secret.type_ = Some("Opaque".into());
    index.apply_secret(&secret);
    assert!(rx.borrow().is_empty());
    assert!(index.rejected_secrets().is_empty());
}

#[test]
fn secret_changing_type_unlinks_its_cluster() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_credentials("west"));
    rx.borrow_and_update();
    let mut secret = mk_credentials("west");
    secret.type_ = Some("Opaque".into());
    index.apply_secret(&secret);
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().is_empty());
}

#[test]
fn deleting_the_secret_unlinks_its_cluster() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_credentials("west"));
    index.apply_secret(&mk_credentials("east"));
    assert_eq!(rx.borrow_and_update().len(), 2);

    index.delete_secret("linkerd", "cluster-credentials-west");
    assert!(rx.has_changed().unwrap());
    let linked = rx.borrow_and_update().clone();
    assert_eq!(linked.keys().collect::<Vec<_>>(), ["east"]);
}

#[test]
fn updating_domains_is_published() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_credentials("west"));
    rx.borrow_and_update();

    index.apply_secret(&mk_credentials("west"));
    assert!(!rx.has_changed().unwrap(), "no change, nothing published");

    let mut secret = mk_credentials("west");
    set_annotation(
        &mut secret.metadata,
        labels::MC_CLUSTER_DOMAIN,
        "west.example",
    );
    index.apply_secret(&secret);
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        rx.borrow_and_update()["west"].cluster_domain,
        "west.example"
    );
}

#[test]
fn two_secrets_for_one_cluster_link_it_once() {
    let mut index = mk_index();
    let mut rx = index.linked_clusters_rx();
    index.apply_secret(&mk_credentials("west"));
    let mut dup = mk_credentials("west");
    dup.metadata.name = Some("zz-west-again".into());
    index.apply_secret(&dup);

    let linked = rx.borrow_and_update().clone();
    assert_eq!(linked.len(), 1);
    let winner = &linked["west"];
    let rejected = index.rejected_secrets();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_ne!(rejected[0].secret, winner.secret);
    assert!(
        ["linkerd/cluster-credentials-west", "linkerd/zz-west-again"]
            .contains(&rejected[0].secret.as_str())
    );
    assert!(
        rejected[0].reason.to_string().contains("west"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(rejected[0].metric_label(), "duplicate_cluster");

    // Removing the linked one lets the other take over.
    let winner_name = winner.secret.trim_start_matches("linkerd/").to_string();
    let loser = rejected[0].secret.clone();
    index.delete_secret("linkerd", &winner_name);
    assert_eq!(rx.borrow_and_update()["west"].secret, loser);
    assert!(index.rejected_secrets().is_empty());
}

#[test]
fn rejected_secret_disappears_when_deleted() {
    let mut index = mk_index();
    index.apply_secret(&mk_secret(
        "linkerd",
        "cluster-credentials-west",
        Some("west"),
        None,
        None,
    ));
    assert_eq!(index.rejected_secrets().len(), 1);
    index.delete_secret("linkerd", "cluster-credentials-west");
    assert_eq!(index.rejected_secrets(), Vec::<RejectedSecret>::new());
}

#[test]
fn linked_cluster_spec_is_complete() {
    let mut index = mk_index();
    index.apply_secret(&mk_credentials("east"));
    let linked = index.linked_clusters_rx().borrow().clone();
    assert_eq!(
        linked.get("east").map(|s| LinkedClusterSpec {
            kubeconfig: None,
            ..s.clone()
        }),
        Some(LinkedClusterSpec {
            name: "east".into(),
            trust_domain: "east.trust".into(),
            cluster_domain: "east.local".into(),
            kubeconfig: None,
            secret: "linkerd/cluster-credentials-east".into(),
        })
    );
}
