//! Parsing YAML documents into the object kinds the index reads.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::k8s::{EndpointSlice, Namespace, Node, Pod, Secret, Service};

/// The kinds the manifest source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Secret,
    Service,
    EndpointSlice,
}

impl Kind {
    /// Objects are applied in this order so that slices find their pods and nodes.
    pub fn apply_order(self) -> u8 {
        self as u8
    }
}

/// An object's identity within one cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// One object read from a manifest (boxed: the kinds differ a lot in size).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl ObjectKey {
    /// The key of an object (namespaced objects without a namespace are in `default`).
    pub fn of(obj: &Object) -> Self {
        let (kind, meta) = match obj {
            Object::Namespace(o) => (Kind::Namespace, &o.metadata),
            Object::Node(o) => (Kind::Node, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::Secret(o) => (Kind::Secret, &o.metadata),
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
        };
        let namespace = match kind {
            Kind::Namespace | Kind::Node => String::new(),
            _ => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        };
        Self {
            kind,
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Parses every YAML document of `text`. Returns the objects read and one message per
/// document that could not be read; documents of other kinds are skipped silently.
pub fn parse_manifests(text: &str) -> (BTreeMap<ObjectKey, Object>, Vec<String>) {
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("document {n}: invalid YAML: {e}"));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        match to_object(value) {
            Ok(Some(obj)) => {
                let key = ObjectKey::of(&obj);
                if key.name.is_empty() {
                    errors.push(format!("document {n}: {:?} has no metadata.name", key.kind));
                    continue;
                }
                objects.insert(key, normalize(obj));
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("document {n}: {e}")),
        }
    }
    (objects, errors)
}

fn to_object(value: serde_yaml::Value) -> Result<Option<Object>, String> {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let api_version = field("apiVersion").ok_or("missing apiVersion")?;
    let kind = field("kind").ok_or("missing kind")?;
    fn de<T: serde::de::DeserializeOwned>(
        value: serde_yaml::Value,
        what: &str,
    ) -> Result<T, String> {
        serde_yaml::from_value(value).map_err(|e| format!("invalid {what}: {e}"))
    }
    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(Box::new(de(value, "Namespace")?)),
        ("v1", "Node") => Object::Node(Box::new(de(value, "Node")?)),
        ("v1", "Pod") => Object::Pod(Box::new(de(value, "Pod")?)),
        ("v1", "Secret") => Object::Secret(Box::new(de(value, "Secret")?)),
        ("v1", "Service") => Object::Service(Box::new(de(value, "Service")?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Box::new(de(value, "EndpointSlice")?))
        }
        _ => {
            tracing::debug!(%api_version, %kind, "skipping a kind meshlink does not read");
            return Ok(None);
        }
    };
    Ok(Some(obj))
}

/// Gives namespaced objects their default namespace and drops what is never read.
fn normalize(mut obj: Object) -> Object {
    let meta = match &mut obj {
        Object::Namespace(o) => &mut o.metadata,
        Object::Node(o) => &mut o.metadata,
        Object::Pod(o) => &mut o.metadata,
        Object::Secret(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
    };
    meta.managed_fields = None;
    if !matches!(obj, Object::Namespace(_) | Object::Node(_)) {
        let meta = match &mut obj {
            Object::Pod(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            _ => unreachable!("cluster-scoped kinds are excluded above"),
        };
        meta.namespace.get_or_insert_with(|| "default".into());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_kinds_and_reports_bad_documents() {
        let text = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
kind: Pod
metadata: {name: nope}
---
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec: {containers: 42}
---
apiVersion: v1
kind: Node
metadata: {}
";
        let (objects, errors) = parse_manifests(text);
        assert_eq!(objects.len(), 1, "{objects:?}");
        let key = objects.keys().next().unwrap();
        assert_eq!(
            (key.kind, key.namespace.as_str(), key.name.as_str()),
            (Kind::Service, "shop", "web")
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("document 3") && errors[0].contains("apiVersion"),
            "{errors:?}"
        );
        assert!(errors[1].contains("invalid Pod"), "{errors:?}");
        assert!(errors[2].contains("no metadata.name"), "{errors:?}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let (objects, errors) = parse_manifests("apiVersion: v1\nkind: [unclosed\n");
        assert!(objects.is_empty());
        assert!(errors[0].contains("invalid YAML"), "{errors:?}");
    }
}
