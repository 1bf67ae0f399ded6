//! Link objects (`links.multicluster.linkerd.io`) as the API server sends them, and what
//! `meshlink link` writes: every spec field is a string kept as written, so the properties
//! are that any spec survives a round trip and that any JSON is a Link or an error.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use meshlink::{
    index::{ClusterIndex, IndexConfig},
    k8s::link::{Link, LinkSpec, LinkTarget, ProbeSpec},
};
use proptest::prelude::*;
use serde_json::Value;

use crate::manifests::text;

fn opt() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn selector() -> impl Strategy<Value = Option<LabelSelector>> {
    let requirement = (
        text(),
        text(),
        proptest::option::of(proptest::collection::vec(text(), 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        });
    proptest::option::of(
        (
            proptest::option::of(proptest::collection::btree_map(text(), text(), 0..3)),
            proptest::option::of(proptest::collection::vec(requirement, 0..3)),
        )
            .prop_map(|(match_labels, match_expressions)| LabelSelector {
                match_labels,
                match_expressions,
            }),
    )
}

fn probe() -> impl Strategy<Value = Option<ProbeSpec>> {
    proptest::option::of((opt(), opt(), opt(), opt(), opt()).prop_map(
        |(path, port, period, timeout, failure_threshold)| ProbeSpec {
            path,
            port,
            period,
            timeout,
            failure_threshold,
        },
    ))
}

fn spec() -> impl Strategy<Value = LinkSpec> {
    (
        (opt(), opt(), opt(), opt(), opt(), opt(), opt()),
        (probe(), selector(), selector(), selector()),
        (
            proptest::option::of(proptest::collection::vec(text(), 0..3)),
            proptest::option::of(proptest::collection::vec(text(), 0..3)),
        ),
    )
        .prop_map(
            |(
                (name, domain, linkerd_ns, secret, address, port, identity),
                (probe_spec, selector, remote_discovery_selector, federated_service_selector),
                (excluded_labels, excluded_annotations),
            )| LinkSpec {
                target_cluster_name: name,
                target_cluster_domain: domain,
                target_cluster_linkerd_namespace: linkerd_ns,
                cluster_credentials_secret: secret,
                gateway_address: address,
                gateway_port: port,
                gateway_identity: identity,
                probe_spec,
                selector,
                remote_discovery_selector,
                federated_service_selector,
                excluded_labels,
                excluded_annotations,
            },
        )
}

fn json_err(e: serde_json::Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// JSON shaped like a Link, with values of any type where strings belong.
fn link_ish() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let key = proptest::sample::select(
        &[
            "targetClusterName",
            "gatewayAddress",
            "gatewayPort",
            "gatewayIdentity",
            "probeSpec",
            "selector",
            "remoteDiscoverySelector",
            "federatedServiceSelector",
            "excludedLabels",
            "matchLabels",
            "matchExpressions",
            "period",
            "timeout",
            "failureThreshold",
            "other",
        ][..],
    );
    proptest::collection::btree_map(key, value, 0..6).prop_map(|spec| {
        serde_json::json!({
            "apiVersion": "multicluster.linkerd.io/v1alpha3",
            "kind": "Link",
            "metadata": {"name": "west", "namespace": "linkerd"},
            "spec": spec,
        })
    })
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn any_link_spec_round_trips_through_the_api_json(spec in spec(), name in text()) {
        let mut link = Link::new(&name, spec);
        link.metadata.namespace = Some("linkerd".into());
        let json = serde_json::to_string(&link).map_err(json_err)?;
        let back: Link = serde_json::from_str(&json).map_err(json_err)?;
        prop_assert_eq!(&back.spec, &link.spec);
        prop_assert_eq!(&back.metadata, &link.metadata);
    }

    #[test]
    fn any_link_shaped_json_is_a_link_or_an_error(json in link_ish()) {
        if let Ok(link) = serde_json::from_value::<Link>(json) {
            let again: Link = serde_json::from_value(serde_json::to_value(&link).map_err(json_err)?)
                .map_err(json_err)?;
            prop_assert_eq!(again.spec, link.spec);
        }
    }

    #[test]
    fn what_meshlink_link_writes_reads_back_and_links_the_cluster(
        cluster_name in text(),
        namespace in text(),
        trust_domain in text(),
        cluster_domain in text(),
        target_linkerd_namespace in text(),
        gateway in proptest::option::of((text(), any::<u16>(), text())),
        kubeconfig in any::<String>(),
    ) {
        let target = LinkTarget {
            cluster_name: cluster_name.clone(),
            namespace: namespace.clone(),
            trust_domain: trust_domain.clone(),
            cluster_domain: cluster_domain.clone(),
            target_linkerd_namespace,
            gateway: gateway.clone(),
        };
        let link: Link = serde_json::from_str(&serde_json::to_string(&target.link()).map_err(json_err)?)
            .map_err(json_err)?;
        prop_assert_eq!(link.spec.target_cluster_name.as_ref(), Some(&cluster_name));
        prop_assert_eq!(link.spec.cluster_credentials_secret, Some(target.secret_name()));
        prop_assert_eq!(link.metadata.namespace.as_ref(), Some(&namespace));
        let gateway_port = link.spec.gateway_port.as_deref().map(str::parse::<u16>);
        prop_assert_eq!(gateway_port, gateway.as_ref().map(|g| Ok(g.1)));
        prop_assert_eq!(link.spec.gateway_address, gateway.as_ref().map(|g| g.0.clone()));

        let mut index = ClusterIndex::new(IndexConfig {
            cluster_name: "local".into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: namespace.clone(),
            default_opaque_ports: Default::default(),
        });
        index.apply_secret(&target.credentials_secret(&kubeconfig));
        let linked = index.linked_clusters_rx().borrow().clone();
        let complete = [&cluster_name, &trust_domain, &cluster_domain].iter().all(|s| !s.is_empty());
        if complete {
            let spec = linked.get(&cluster_name);
            prop_assert!(spec.is_some(), "{:?} not linked: {:?}", cluster_name, index.rejected_secrets());
            if let Some(spec) = spec {
                prop_assert_eq!(&spec.trust_domain, &trust_domain);
                prop_assert_eq!(&spec.cluster_domain, &cluster_domain);
                prop_assert_eq!(spec.kubeconfig.as_deref(), Some(kubeconfig.as_bytes()));
            }
        } else {
            prop_assert_eq!(&*linked, &BTreeMap::new());
            prop_assert_eq!(index.rejected_secrets().len(), 1);
        }
    }
}
