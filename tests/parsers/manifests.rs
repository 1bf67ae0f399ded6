//! Manifest files through `parse_manifests`: generated valid and invalid Kubernetes objects,
//! written as YAML by hand (so the properties hold whatever YAML library reads them), and
//! arbitrary YAML-ish text. A bad document costs only itself; valid objects come back with
//! the fields they were written with.

use std::collections::BTreeMap;

use base64::Engine;
use meshlink::{
    k8s::labels,
    sources::manifests::{Object, ObjectKey, parse_manifests},
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::yaml::{Style, quote, render};

/// Metadata of a generated object.
#[derive(Clone, Debug)]
pub struct Meta {
    pub name: String,
    /// Only for namespaced kinds.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    fn json(&self) -> Value {
        let mut meta = json!({ "name": self.name });
        if let Some(ns) = &self.namespace {
            meta["namespace"] = json!(ns);
        }
        if !self.labels.is_empty() {
            meta["labels"] = json!(self.labels);
        }
        if !self.annotations.is_empty() {
            meta["annotations"] = json!(self.annotations);
        }
        meta
    }
}

/// A field of each kind that must come back as it was written.
#[derive(Clone, Debug)]
pub enum Body {
    Namespace,
    Node,
    Pod { port: i32 },
    Secret { kubeconfig: Vec<u8> },
    Service { port: i32 },
    EndpointSlice { address: String, port: i32 },
}

/// A valid object of a kind meshlink reads.
#[derive(Clone, Debug)]
pub struct Good {
    pub meta: Meta,
    pub body: Body,
}

impl Good {
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Namespace => "Namespace",
            Body::Node => "Node",
            Body::Pod { .. } => "Pod",
            Body::Secret { .. } => "Secret",
            Body::Service { .. } => "Service",
            Body::EndpointSlice { .. } => "EndpointSlice",
        }
    }

    fn namespaced(&self) -> bool {
        !matches!(self.body, Body::Namespace | Body::Node)
    }

    /// The key the parser must file the object under.
    fn key(&self) -> (String, String, String) {
        let namespace = if self.namespaced() {
            self.meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        (self.kind().into(), namespace, self.meta.name.clone())
    }

    pub fn json(&self) -> Value {
        let mut v = json!({
            "apiVersion": "v1",
            "kind": self.kind(),
            "metadata": self.meta.json(),
        });
        match &self.body {
            Body::Namespace | Body::Node => {}
            Body::Pod { port } => {
                v["spec"] =
                    json!({"containers": [{"name": "app", "ports": [{"containerPort": port}]}]});
            }
            Body::Secret { kubeconfig } => {
                v["type"] = json!(labels::REMOTE_KUBECONFIG_SECRET_TYPE);
                v["data"] = json!({
                    labels::KUBECONFIG_KEY: base64::engine::general_purpose::STANDARD.encode(kubeconfig),
                });
            }
            Body::Service { port } => {
                v["spec"] = json!({"ports": [{"port": port, "targetPort": port}]});
            }
            Body::EndpointSlice { address, port } => {
                v["apiVersion"] = json!("discovery.k8s.io/v1");
                v["addressType"] = json!("IPv4");
                v["endpoints"] = json!([{ "addresses": [address] }]);
                v["ports"] = json!([{ "port": port }]);
            }
        }
        v
    }

    /// Whether `obj` is this object, with every generated field as written.
    pub fn check(&self, key: &ObjectKey, obj: &Object) -> Result<(), TestCaseError> {
        let (kind, namespace, name) = self.key();
        prop_assert_eq!(format!("{:?}", key.kind), kind);
        prop_assert_eq!(&key.namespace, &namespace);
        prop_assert_eq!(&key.name, &name);
        let meta = match obj {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceProfile(o) => &o.metadata,
        };
        prop_assert_eq!(meta.name.as_ref(), Some(&self.meta.name));
        if self.namespaced() {
            prop_assert_eq!(meta.namespace.as_ref(), Some(&namespace));
        }
        let or_none = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
        prop_assert_eq!(&meta.labels, &or_none(&self.meta.labels));
        prop_assert_eq!(&meta.annotations, &or_none(&self.meta.annotations));
        match (&self.body, obj) {
            (Body::Namespace, Object::Namespace(_)) | (Body::Node, Object::Node(_)) => {}
            (Body::Pod { port }, Object::Pod(pod)) => {
                let got = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.ports.as_ref()?.first())
                    .map(|p| p.container_port);
                prop_assert_eq!(got, Some(*port));
            }
            (Body::Secret { kubeconfig }, Object::Secret(secret)) => {
                let got = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(labels::KUBECONFIG_KEY))
                    .map(|b| &b.0);
                prop_assert_eq!(got, Some(kubeconfig));
            }
            (Body::Service { port }, Object::Service(svc)) => {
                let got = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref()?.first())
                    .map(|p| p.port);
                prop_assert_eq!(got, Some(*port));
            }
            (Body::EndpointSlice { address, port }, Object::EndpointSlice(slice)) => {
                prop_assert_eq!(
                    slice
                        .endpoints
                        .as_ref()
                        .and_then(|e| e.first())
                        .and_then(|e| e.addresses.first()),
                    Some(address)
                );
                prop_assert_eq!(
                    slice
                        .ports
                        .as_ref()
                        .and_then(|p| p.first())
                        .and_then(|p| p.port),
                    Some(*port)
                );
            }
            (body, obj) => prop_assert!(false, "{body:?} came back as {obj:?}"),
        }
        Ok(())
    }
}

/// Any text, often plain.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a-z0-9.-]{1,12}", 1 => any::<String>()].boxed()
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(text(), text(), 0..3)
}

fn body() -> impl Strategy<Value = Body> {
    let port = 1..65536i32;
    prop_oneof![
        Just(Body::Namespace),
        Just(Body::Node),
        port.clone().prop_map(|port| Body::Pod { port }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|kubeconfig| Body::Secret { kubeconfig }),
        port.clone().prop_map(|port| Body::Service { port }),
        (text(), port).prop_map(|(address, port)| Body::EndpointSlice { address, port }),
    ]
}

/// A valid object; `i` makes its name unique within a file.
fn good(i: usize) -> impl Strategy<Value = Good> {
    (
        body(),
        text().prop_filter("a name", |n| !n.is_empty()),
        proptest::option::of(text()),
        map(),
        map(),
    )
        .prop_map(move |(body, name, namespace, labels, annotations)| {
            let namespaced = !matches!(body, Body::Namespace | Body::Node);
            Good {
                meta: Meta {
                    name: format!("{name}-{i}"),
                    namespace: namespace.filter(|_| namespaced),
                    labels,
                    annotations,
                },
                body,
            }
        })
}

/// A well-formed YAML document that is not a valid object of a kind meshlink reads.
fn bad() -> impl Strategy<Value = Value> {
    let kind = proptest::sample::select(&["Namespace", "Node", "Pod", "Secret", "Service"][..]);
    prop_oneof![
        text().prop_map(|n| json!({"kind": "Pod", "metadata": {"name": n}})),
        text().prop_map(|n| json!({"apiVersion": "v1", "metadata": {"name": n}})),
        kind.clone().prop_map(|k| json!({"apiVersion": "v1", "kind": k, "metadata": {}})),
        kind.clone().prop_map(|k| json!({"apiVersion": "v1", "kind": k, "metadata": [1, 2]})),
        kind.clone().prop_map(|k| json!({"apiVersion": "v1", "kind": k, "metadata": {"name": {"a": 1}}})),
        (kind, text()).prop_map(|(k, n)| json!({"apiVersion": "v1", "kind": k, "metadata": {"name": n, "labels": ["x"]}})),
        text().prop_map(|n| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n}, "spec": {"containers": 42}})),
        text().prop_map(|n| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n},
            "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1u64 << 40}]}]}})),
        text().prop_map(|n| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n}, "spec": {"ports": "80"}})),
        text().prop_map(|n| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n},
            "data": {"kubeconfig": "!! not base64 !!"}})),
        text().prop_map(|n| json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": n}, "addressType": "IPv4", "endpoints": {"x": 1}})),
        text().prop_map(|s| json!(s)),
        Just(json!([1, 2, 3])),
    ]
}

/// A document of a kind meshlink does not read: neither an object nor an error.
fn other_kind() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&[("apps/v1", "Deployment"), ("v1", "ConfigMap"), ("v2", "Pod"), ("discovery.k8s.io/v1beta1", "EndpointSlice")][..]),
        text(),
    )
        .prop_map(|((api, kind), name)| json!({"apiVersion": api, "kind": kind, "metadata": {"name": name}}))
}

#[derive(Clone, Debug)]
enum Doc {
    Good(Good),
    Bad(Value),
    Other(Value),
}

fn docs(max: usize) -> impl Strategy<Value = Vec<Doc>> {
    proptest::collection::vec(0..7u8, 0..max).prop_flat_map(|picks| {
        picks
            .into_iter()
            .enumerate()
            .map(|(i, pick)| match pick {
                0..=3 => good(i).prop_map(Doc::Good).boxed(),
                4 | 5 => bad().prop_map(Doc::Bad).boxed(),
                _ => other_kind().prop_map(Doc::Other).boxed(),
            })
            .collect::<Vec<_>>()
    })
}

/// Up to `max` valid objects with names unique from `first` on.
fn goods(first: usize, max: usize) -> impl Strategy<Value = Vec<Good>> {
    (0..max).prop_flat_map(move |n| (first..first + n).map(good).collect::<Vec<_>>())
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![Just(Style::Block), Just(Style::Flow)]
}

/// Documents joined into one file, each in its style, some after a comment.
fn file(values: &[Value], styles: &[Style], leading_marker: bool) -> String {
    let docs: Vec<String> = values
        .iter()
        .zip(styles.iter().cycle())
        .enumerate()
        .map(|(i, (v, s))| {
            let comment = if i % 3 == 1 {
                "# a comment: 'with' \"quotes\"\n"
            } else {
                ""
            };
            format!("{comment}{}", render(v, *s))
        })
        .collect();
    let marker = if leading_marker { "---\n" } else { "" };
    format!("{marker}{}", docs.join("---\n"))
}

/// Whether `error` names document `n` (and not, say, document `n`0).
fn names_document(error: &str, n: usize) -> bool {
    let needle = format!("document {n}");
    error
        .match_indices(&needle)
        .any(|(at, _)| !error[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Invariants of any parse: objects are filed under their own key, named, namespaced.
fn check_invariants(objects: &BTreeMap<ObjectKey, Object>) -> Result<(), TestCaseError> {
    for (key, obj) in objects {
        prop_assert_eq!(&ObjectKey::of(obj), key);
        prop_assert!(!key.name.is_empty());
        let namespace = match obj {
            Object::Pod(o) => Some(&o.metadata.namespace),
            Object::Secret(o) => Some(&o.metadata.namespace),
            Object::Service(o) => Some(&o.metadata.namespace),
            Object::EndpointSlice(o) => Some(&o.metadata.namespace),
            Object::ServiceProfile(o) => Some(&o.metadata.namespace),
            Object::Namespace(_) | Object::Node(_) => None,
        };
        if let Some(namespace) = namespace {
            prop_assert!(namespace.is_some(), "{key:?} has no namespace");
        }
    }
    Ok(())
}

/// Lines that no YAML parser accepts.
const BROKEN: &[&str] = &[
    "apiVersion: v1\nkind: [unclosed\n",
    "metadata: {name: x\n",
    "a:\n  b: 1\n c: 2\n",
    "key: value: other\n",
    "- a\nb: 1\n",
    "a:\n\tb: 1\n",
    "\"a\": 1\n\"b\n",
];

const TOKENS: &[&str] = &[
    "---\n",
    "...\n",
    "apiVersion: v1\n",
    "apiVersion: discovery.k8s.io/v1\n",
    "kind: Pod\n",
    "kind: Secret\n",
    "kind: Service\n",
    "kind: Node\n",
    "kind: EndpointSlice\n",
    "metadata:\n",
    "  name: x\n",
    "  namespace: y\n",
    "metadata: {name: a}\n",
    "data: {kubeconfig: AAAA}\n",
    "spec:\n",
    "  ports:\n",
    "  - port: 80\n",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!str ",
    "!!map ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "#",
    "\t",
    "  ",
    "\n",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    "\u{feff}",
    "~",
    "null",
    "0x1F",
    "1e99999",
    ".nan",
    "-.inf",
    "\\",
    "\\x00",
    "\r\n",
];

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn each_valid_object_is_read_and_each_bad_document_reported_alone(
        docs in docs(10),
        styles in proptest::collection::vec(style(), 1..4),
        leading_marker in any::<bool>(),
    ) {
        let values: Vec<Value> = docs.iter().map(|d| match d {
            Doc::Good(g) => g.json(),
            Doc::Bad(v) | Doc::Other(v) => v.clone(),
        }).collect();
        let text = file(&values, &styles, leading_marker);
        let (objects, errors) = parse_manifests(&text);

        let goods: Vec<&Good> = docs.iter().filter_map(|d| match d { Doc::Good(g) => Some(g), _ => None }).collect();
        prop_assert_eq!(objects.len(), goods.len(), "{}\nerrors: {:?}", text, errors);
        for good in &goods {
            let (kind, namespace, name) = good.key();
            let found = objects.iter().find(|(k, _)| format!("{:?}", k.kind) == kind && k.namespace == namespace && k.name == name);
            prop_assert!(found.is_some(), "{} {:?} missing from\n{}\nerrors: {:?}", kind, name, text, errors);
            if let Some((key, obj)) = found {
                good.check(key, obj)?;
            }
        }
        let bad_docs: Vec<usize> = docs.iter().enumerate().filter(|(_, d)| matches!(d, Doc::Bad(_))).map(|(i, _)| i + 1).collect();
        prop_assert_eq!(errors.len(), bad_docs.len(), "{}\nerrors: {:?}", text, errors);
        for (error, n) in errors.iter().zip(&bad_docs) {
            prop_assert!(names_document(&error.to_string(), *n), "{:?} should name document {}", error, n);
        }
        check_invariants(&objects)?;
    }

    #[test]
    fn empty_documents_and_comments_are_neither_objects_nor_errors(
        goods in goods(0, 5),
        empties in proptest::collection::vec(
            proptest::sample::select(&["", "# nothing here\n", "~\n", "null\n", "\n\n"][..]),
            1..5,
        ),
        style in style(),
    ) {
        let mut parts: Vec<String> = Vec::new();
        let mut seen = BTreeMap::new();
        for (i, good) in goods.iter().enumerate() {
            parts.push(empties[i % empties.len()].to_string());
            parts.push(render(&good.json(), style));
            seen.insert(good.key(), good);
        }
        parts.push(empties[0].to_string());
        let text = parts.join("---\n");
        let (objects, errors) = parse_manifests(&text);
        prop_assert!(errors.is_empty(), "{}\nerrors: {:?}", text, errors);
        prop_assert_eq!(objects.len(), seen.len());
        for (key, obj) in &objects {
            let want = (format!("{:?}", key.kind), key.namespace.clone(), key.name.clone());
            let good = seen.get(&want);
            prop_assert!(good.is_some(), "unexpected {:?}", key);
            if let Some(good) = good {
                good.check(key, obj)?;
            }
        }
    }

    #[test]
    fn a_syntax_error_keeps_the_objects_before_it(
        before in goods(0, 4),
        broken in proptest::sample::select(BROKEN),
        after in goods(100, 3),
        style in style(),
    ) {
        let mut parts: Vec<String> = before.iter().map(|g| render(&g.json(), style)).collect();
        parts.push(broken.to_string());
        parts.extend(after.iter().map(|g| render(&g.json(), style)));
        let text = parts.join("---\n");
        let (objects, errors) = parse_manifests(&text);
        prop_assert!(!errors.is_empty(), "{}", text);
        let before_keys: BTreeMap<_, _> = before.iter().map(|g| (g.key(), g)).collect();
        let after_keys: BTreeMap<_, _> = after.iter().map(|g| (g.key(), g)).collect();
        for good in before_keys.values() {
            let (kind, namespace, name) = good.key();
            let found = objects.iter().find(|(k, _)| format!("{:?}", k.kind) == kind && k.namespace == namespace && k.name == name);
            prop_assert!(found.is_some(), "{} {:?} before the error is lost:\n{}", kind, name, text);
            if let Some((key, obj)) = found {
                good.check(key, obj)?;
            }
        }
        for key in objects.keys() {
            let k = (format!("{:?}", key.kind), key.namespace.clone(), key.name.clone());
            prop_assert!(before_keys.contains_key(&k) || after_keys.contains_key(&k), "unexpected {:?}", key);
        }
    }

    #[test]
    fn any_yaml_ish_text_is_read_without_panic(
        text in crate::text_of(TOKENS, 48),
        valid in proptest::option::of((0usize..10, style()).prop_flat_map(|(i, s)| good(i).prop_map(move |g| render(&g.json(), s)))),
    ) {
        let text = match valid {
            Some(doc) => format!("{doc}---\n{text}"),
            None => text,
        };
        let (objects, _errors) = parse_manifests(&text);
        check_invariants(&objects)?;
    }
}

/// `[[[...]]]`, `{a: {a: ...}}`, `- - - x` or indented mappings, `depth` deep.
fn nested(style: u8, depth: usize) -> String {
    match style {
        0 => format!("deep: {}x{}\n", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("deep: {}x{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
        2 => format!("deep:\n  {}x\n", "- ".repeat(depth)),
        _ => {
            let depth = depth.min(400);
            let mut s = String::from("deep:\n");
            for level in 1..=depth {
                s.push_str(&format!("{}a:\n", "  ".repeat(level)));
            }
            s.push_str(&format!("{}x\n", "  ".repeat(depth + 1)));
            s
        }
    }
}

/// Aliases that expand to `fanout^levels` scalars if a parser expands them.
pub fn laughs(levels: usize, fanout: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: lol\n  annotations:\n");
    s.push_str(&format!("    l0: &l0 {}\n", quote("lol")));
    for level in 1..=levels {
        let refs = vec![format!("*l{}", level - 1); fanout].join(", ");
        s.push_str(&format!("    l{level}: &l{level} [{refs}]\n"));
    }
    s
}

proptest! {
    #![proptest_config(crate::config(32))]

    #[test]
    fn deep_nesting_and_alias_bombs_are_errors_that_keep_earlier_objects(
        good in good(0),
        hostile in prop_oneof![
            // Past any parser's depth limit; flow nesting is kept shallower because
            // serde_yaml takes time quadratic in it (50,000 deep: a minute in debug).
            (0u8..2, 1usize..1_500).prop_map(|(style, depth)| nested(style, depth)),
            (2u8..4, 1usize..100_000).prop_map(|(style, depth)| nested(style, depth)),
            (1usize..12, 2usize..12).prop_map(|(levels, fanout)| laughs(levels, fanout)),
        ],
    ) {
        let text = format!("{}---\n{hostile}", render(&good.json(), Style::Block));
        let (objects, errors) = parse_manifests(&text);
        prop_assert!(!errors.is_empty(), "{}", &text[..text.len().min(300)]);
        let (kind, namespace, name) = good.key();
        let found = objects.iter().find(|(k, _)| format!("{:?}", k.kind) == kind && k.namespace == namespace && k.name == name);
        prop_assert!(found.is_some());
        if let Some((key, obj)) = found {
            good.check(key, obj)?;
        }
        check_invariants(&objects)?;
    }
}
