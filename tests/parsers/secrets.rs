//! Credentials Secrets: how the index turns a Secret into a linked cluster, for any labels,
//! annotations and data (kubeconfig bytes need not be UTF-8), alone and in sequences of
//! applies, deletes and relists; and the same Secret arriving as JSON or as a manifest.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use meshlink::{
    index::{ClusterIndex, IndexConfig, LinkedClusterSpec},
    k8s::{ObjectMeta, Secret, labels},
    sources::manifests::{Object, parse_manifests},
};
use proptest::prelude::*;

use crate::{
    manifests::text,
    yaml::{Style, render},
};

/// The control plane's namespace, where credentials Secrets count.
const NS: &str = "linkerd";

fn index() -> ClusterIndex {
    ClusterIndex::new(IndexConfig {
        cluster_name: "local".into(),
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        control_plane_ns: NS.into(),
        default_opaque_ports: Default::default(),
    })
}

/// A generated Secret, field by field.
#[derive(Clone, Debug)]
struct Creds {
    name: Option<String>,
    namespace: Option<String>,
    type_: Option<String>,
    cluster: Option<String>,
    trust_domain: Option<String>,
    cluster_domain: Option<String>,
    other_labels: BTreeMap<String, String>,
    other_annotations: BTreeMap<String, String>,
    kubeconfig: Option<Vec<u8>>,
    kubeconfig_string: Option<String>,
    other_data: BTreeMap<String, Vec<u8>>,
}

impl Creds {
    fn secret(&self) -> Secret {
        let mut labels_map = self.other_labels.clone();
        if let Some(c) = &self.cluster {
            labels_map.insert(labels::MC_CLUSTER_NAME.into(), c.clone());
        }
        let mut annotations = self.other_annotations.clone();
        for (key, value) in [
            (labels::MC_TRUST_DOMAIN, &self.trust_domain),
            (labels::MC_CLUSTER_DOMAIN, &self.cluster_domain),
        ] {
            if let Some(v) = value {
                annotations.insert(key.into(), v.clone());
            }
        }
        let mut data: BTreeMap<String, ByteString> = self
            .other_data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        if let Some(k) = &self.kubeconfig {
            data.insert(labels::KUBECONFIG_KEY.into(), ByteString(k.clone()));
        }
        let some = |empty: bool| !empty;
        Secret {
            metadata: ObjectMeta {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                labels: some(labels_map.is_empty()).then_some(labels_map),
                annotations: some(annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            type_: self.type_.clone(),
            data: some(data.is_empty()).then_some(data),
            string_data: self
                .kubeconfig_string
                .as_ref()
                .map(|s| BTreeMap::from([(labels::KUBECONFIG_KEY.to_string(), s.clone())])),
            ..Secret::default()
        }
    }

    /// Whether the index reads this Secret at all (named, in its namespace, of the type).
    fn read(&self) -> Option<&str> {
        let name = self.name.as_deref()?;
        (self.namespace.as_deref().unwrap_or("default") == NS).then_some(name)
    }

    fn is_credentials(&self) -> bool {
        self.type_.as_deref() == Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE)
    }

    /// The linked cluster this Secret defines, or the keys it lacks.
    fn spec(&self) -> Result<LinkedClusterSpec, Vec<&'static str>> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let (cluster, trust, domain) = (
            set(&self.cluster),
            set(&self.trust_domain),
            set(&self.cluster_domain),
        );
        match (cluster, trust, domain) {
            (Some(name), Some(trust_domain), Some(cluster_domain)) => Ok(LinkedClusterSpec {
                name,
                trust_domain,
                cluster_domain,
                kubeconfig: self
                    .kubeconfig
                    .clone()
                    .or_else(|| self.kubeconfig_string.clone().map(String::into_bytes))
                    .map(Into::into),
                secret: format!("{NS}/{}", self.name.as_deref().unwrap_or_default()),
            }),
            (c, t, d) => Err([
                (c, labels::MC_CLUSTER_NAME),
                (t, labels::MC_TRUST_DOMAIN),
                (d, labels::MC_CLUSTER_DOMAIN),
            ]
            .into_iter()
            .filter(|(v, _)| v.is_none())
            .map(|(_, key)| key)
            .collect()),
        }
    }
}

fn option_of(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => proptest::sample::select(values).prop_map(|v| Some(v.to_string())),
        1 => Just(None),
        1 => Just(Some(String::new())),
        1 => any::<String>().prop_map(Some),
    ]
}

fn creds() -> impl Strategy<Value = Creds> {
    let map = || proptest::collection::btree_map(text(), text(), 0..3);
    (
        (
            option_of(&["a", "b", "c"]),
            option_of(&[NS, NS, NS, "default"]),
            option_of(&[
                labels::REMOTE_KUBECONFIG_SECRET_TYPE,
                labels::REMOTE_KUBECONFIG_SECRET_TYPE,
                "Opaque",
            ]),
            option_of(&["west", "east"]),
            option_of(&["west.example", "cluster.local"]),
            option_of(&["cluster.local"]),
        ),
        (
            map(),
            map(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of(any::<String>()),
            proptest::collection::btree_map(
                text(),
                proptest::collection::vec(any::<u8>(), 0..8),
                0..2,
            ),
        ),
    )
        .prop_map(
            |(
                (name, namespace, type_, cluster, trust_domain, cluster_domain),
                (other_labels, other_annotations, kubeconfig, kubeconfig_string, other_data),
            )| {
                Creds {
                    name,
                    namespace,
                    type_,
                    cluster,
                    trust_domain,
                    cluster_domain,
                    other_labels: without(other_labels, &[labels::MC_CLUSTER_NAME]),
                    other_annotations: without(
                        other_annotations,
                        &[labels::MC_TRUST_DOMAIN, labels::MC_CLUSTER_DOMAIN],
                    ),
                    kubeconfig,
                    kubeconfig_string,
                    other_data: without(other_data, &[labels::KUBECONFIG_KEY]),
                }
            },
        )
}

/// `m` without `keys`, which the generator sets on its own.
fn without<V>(mut m: BTreeMap<String, V>, keys: &[&str]) -> BTreeMap<String, V> {
    m.retain(|k, _| !keys.contains(&k.as_str()));
    m
}

#[derive(Clone, Debug)]
enum Op {
    Apply(Box<Creds>),
    Delete(String, String),
    Reset(Vec<Creds>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => creds().prop_map(|c| Op::Apply(Box::new(c))),
        1 => (option_of(&[NS]), option_of(&["a", "b", "c"]))
            .prop_map(|(ns, name)| Op::Delete(ns.unwrap_or_default(), name.unwrap_or_default())),
        1 => proptest::collection::vec(creds(), 0..4).prop_map(Op::Reset),
    ]
}

/// What the index must hold: each credentials Secret read, by name.
#[derive(Default)]
struct Model {
    secrets: BTreeMap<String, Result<LinkedClusterSpec, Vec<&'static str>>>,
}

impl Model {
    fn apply(&mut self, c: &Creds) {
        let Some(name) = c.read() else { return };
        if c.is_credentials() {
            self.secrets.insert(name.to_string(), c.spec());
        } else {
            // A Secret that stopped being credentials unlinks its cluster.
            self.secrets.remove(name);
        }
    }

    fn reset(&mut self, all: &[Creds]) {
        let keep: Vec<&str> = all.iter().filter_map(Creds::read).collect();
        self.secrets.retain(|name, _| keep.contains(&name.as_str()));
        for c in all {
            self.apply(c);
        }
    }

    /// The linked clusters (the first Secret by name wins a cluster name) and the
    /// Secrets rejected, each with the keys that would explain it.
    fn linked(
        &self,
    ) -> (
        BTreeMap<String, LinkedClusterSpec>,
        BTreeMap<String, Vec<&'static str>>,
    ) {
        let mut linked = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        for (name, r) in &self.secrets {
            match r {
                Ok(spec) if linked.contains_key(&spec.name) => {
                    rejected.insert(spec.secret.clone(), vec![]);
                }
                Ok(spec) => {
                    linked.insert(spec.name.clone(), spec.clone());
                }
                Err(missing) => {
                    rejected.insert(format!("{NS}/{name}"), missing.clone());
                }
            }
        }
        (linked, rejected)
    }
}

fn check(index: &ClusterIndex, model: &Model) -> Result<(), TestCaseError> {
    let (want_linked, want_rejected) = model.linked();
    let linked = index.linked_clusters_rx().borrow().clone();
    prop_assert_eq!(&*linked, &want_linked);
    let rejected = index.rejected_secrets();
    let got: Vec<&str> = {
        let mut v: Vec<&str> = rejected.iter().map(|r| r.secret.as_str()).collect();
        v.sort_unstable();
        v
    };
    prop_assert_eq!(
        got,
        want_rejected.keys().map(String::as_str).collect::<Vec<_>>()
    );
    for r in &rejected {
        let missing = &want_rejected[&r.secret];
        prop_assert!(
            missing.is_empty() || missing.iter().any(|key| r.reason.to_string().contains(key)),
            "{:?} should name one of {:?}",
            r.reason,
            missing
        );
        prop_assert!(!r.reason.to_string().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn a_secret_links_its_cluster_exactly_when_it_is_complete(c in creds()) {
        let mut index = index();
        let mut model = Model::default();
        index.apply_secret(&c.secret());
        model.apply(&c);
        check(&index, &model)?;
    }

}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn applies_deletes_and_relists_converge_on_the_secrets_present(
        ops in proptest::collection::vec(op(), 1..8),
    ) {
        let mut index = index();
        let mut model = Model::default();
        for op in &ops {
            match op {
                Op::Apply(c) => {
                    index.apply_secret(&c.secret());
                    model.apply(c);
                }
                Op::Delete(ns, name) => {
                    index.delete_secret(ns, name);
                    if ns == NS {
                        model.secrets.remove(name);
                    }
                }
                Op::Reset(all) => {
                    let secrets: Vec<Secret> = all.iter().map(Creds::secret).collect();
                    index.reset_secrets(&secrets);
                    model.reset(all);
                }
            }
            check(&index, &model)?;
        }
    }

    #[test]
    fn a_secret_from_the_api_server_or_a_manifest_reads_as_it_was_written(
        c in creds(),
        style in prop_oneof![Just(Style::Block), Just(Style::Flow)],
    ) {
        let secret = c.secret();
        let json = serde_json::to_string(&secret).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_api: Secret = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_api, &secret);

        let value = serde_json::to_value(&secret).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (objects, errors) = parse_manifests(&render(&value, style));
        if secret.metadata.name.as_deref().is_none_or(str::is_empty) {
            prop_assert_eq!(errors.len(), 1, "{:?}", errors);
            return Ok(());
        }
        prop_assert!(errors.is_empty(), "{:?}", errors);
        let Some(Object::Secret(from_file)) = objects.values().next() else {
            return Err(TestCaseError::fail(format!("no Secret in {objects:?}")));
        };
        let mut want = secret.clone();
        want.metadata.namespace.get_or_insert_with(|| "default".into());
        prop_assert_eq!(&**from_file, &want);

        let mut index = index();
        let mut model = Model::default();
        index.apply_secret(from_file);
        model.apply(&c);
        check(&index, &model)?;
    }

    #[test]
    fn any_json_is_a_secret_or_an_error(
        json in prop_oneof![
            any::<Vec<u8>>(),
            crate::text_of(&[
                "{", "}", "\"data\":", "\"kubeconfig\":", "\"metadata\":", "\"labels\":", "\"type\":",
                "\"name\":", "\"a\"", "\"AAAA\"", "\"!!\"", ":", ",", "null", "[", "]", "1",
            ], 24).prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(secret) = serde_json::from_slice::<Secret>(&json) {
            index().apply_secret(&secret);
        }
    }

    #[test]
    fn any_kubeconfig_text_is_a_kubeconfig_or_an_error(
        text in crate::text_of(&[
            "apiVersion: v1\n", "kind: Config\n", "clusters:\n", "- name: x\n", "  cluster:\n",
            "    server: https://127.0.0.1:6443\n", "users:\n", "contexts:\n", "current-context: x\n",
            "&a ", "*a", "---\n", "{", "}", "[", "]", ": ", "- ", "\n", "  ",
        ], 32),
    ) {
        // The runtime builds a linked cluster's client from this; bad text is an error.
        let _ = kube::config::Kubeconfig::from_yaml(&text);
    }
}
