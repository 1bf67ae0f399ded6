//! Parsing YAML documents into the object kinds the index reads.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::k8s::{EndpointSlice, Namespace, Node, Pod, Secret, Service, profile::ServiceProfile};

/// The kinds the manifest source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Secret,
    Service,
    EndpointSlice,
    ServiceProfile,
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
    /// Checked by [`crate::sources::profile::parse_profile`] when read.
    ServiceProfile(Box<ServiceProfile>),
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
            Object::ServiceProfile(o) => (Kind::ServiceProfile, &o.metadata),
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

/// Why a document of a manifest file was not read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not YAML, or not a mapping.
    #[error("document {doc}: invalid YAML: {message}")]
    Syntax { doc: usize, message: String },
    /// `apiVersion` or `kind` is missing.
    #[error("document {doc}: missing {field}")]
    MissingField { doc: usize, field: &'static str },
    /// A kind meshlink reads, whose fields do not fit it.
    #[error("document {doc}: invalid {kind:?}: {message}")]
    InvalidObject {
        doc: usize,
        kind: Kind,
        message: String,
    },
    /// An object without a name.
    #[error("document {doc}: {kind:?} has no metadata.name")]
    NoName { doc: usize, kind: Kind },
}

impl DocumentError {
    /// A fixed value for a metric label (the message holds the details).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "invalid_yaml",
            Self::MissingField { .. } => "missing_field",
            Self::InvalidObject { .. } => "invalid_object",
            Self::NoName { .. } => "missing_name",
        }
    }
}

/// The two fields that say what a document is.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses every YAML document of `text`. Returns the objects read and one error per
/// document that could not be read (the others are read all the same); documents of
/// other kinds are skipped silently.
pub fn parse_manifests(text: &str) -> (BTreeMap<ObjectKey, Object>, Vec<DocumentError>) {
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for doc in documents(text) {
        match read_document(&doc) {
            Ok(Some(obj)) => {
                let key = ObjectKey::of(&obj);
                if key.name.is_empty() {
                    errors.push(DocumentError::NoName {
                        doc: doc.number,
                        kind: key.kind,
                    });
                    continue;
                }
                objects.insert(key, normalize(obj));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (objects, errors)
}

/// One YAML document of a file.
struct Document<'a> {
    /// 1-based, counting empty documents as YAML does.
    number: usize,
    /// Lines of the file before the document, so that error positions are the file's.
    line_offset: usize,
    /// The document's text, borrowed from the file.
    text: &'a str,
}

/// Splits `text` into its documents. A line starting with `---` begins one: YAML forbids
/// such a line inside any scalar, so the split is exact, and a syntax error in one
/// document does not hide the next ones.
fn documents(text: &str) -> Vec<Document<'_>> {
    let is_marker = |line: &str| {
        line.strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    // (first line, byte offset) of each document.
    let mut starts = vec![(0, 0)];
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line.trim_end_matches('\n')) {
            starts.push((i, offset));
        }
        offset += line.len();
    }
    // Before the first marker there is a document only if something other than comments
    // and directives is written there.
    let preamble = &text[..starts.get(1).map_or(text.len(), |s| s.1)];
    let has_content = |t: &str| {
        t.lines().any(|l| {
            let l = l.trim();
            !(l.is_empty() || l.starts_with('#') || l.starts_with('%'))
        })
    };
    if starts.len() > 1 && !has_content(preamble) {
        starts.remove(0);
    }
    let ends = starts.iter().skip(1).map(|s| s.1).chain([text.len()]);
    starts
        .iter()
        .zip(ends)
        .enumerate()
        .map(|(i, (&(line, from), to))| Document {
            number: i + 1,
            line_offset: line,
            text: &text[from..to],
        })
        .collect()
}

/// Reads one document as an object of a kind meshlink reads; `None` for an empty
/// document or another kind.
fn read_document(doc: &Document<'_>) -> Result<Option<Object>, DocumentError> {
    let n = doc.number;
    let header: Option<Header> = from_yaml(doc.text, doc.line_offset)
        .map_err(|message| DocumentError::Syntax { doc: n, message })?;
    let Some(header) = header else {
        return Ok(None);
    };
    let missing = |field| DocumentError::MissingField { doc: n, field };
    let api_version = header.api_version.ok_or(missing("apiVersion"))?;
    let kind = header.kind.ok_or(missing("kind"))?;
    fn de<T: serde::de::DeserializeOwned>(
        doc: &Document<'_>,
        kind: Kind,
    ) -> Result<Box<T>, DocumentError> {
        from_yaml(doc.text, doc.line_offset)
            .map(Box::new)
            .map_err(|message| DocumentError::InvalidObject {
                doc: doc.number,
                kind,
                message,
            })
    }
    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(de(doc, Kind::Namespace)?),
        ("v1", "Node") => Object::Node(de(doc, Kind::Node)?),
        ("v1", "Pod") => Object::Pod(de(doc, Kind::Pod)?),
        ("v1", "Secret") => Object::Secret(de(doc, Kind::Secret)?),
        ("v1", "Service") => Object::Service(de(doc, Kind::Service)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(de(doc, Kind::EndpointSlice)?)
        }
        ("linkerd.io/v1alpha2", "ServiceProfile") => {
            let sp: Box<ServiceProfile> = de(doc, Kind::ServiceProfile)?;
            // A profile that would not be served is reported with its file, like any
            // other invalid object.
            let mut checked = (*sp).clone();
            checked.metadata.name.get_or_insert_with(String::new);
            if let Err(e) = crate::sources::profile::parse_profile(&checked) {
                return Err(DocumentError::InvalidObject {
                    doc: n,
                    kind: Kind::ServiceProfile,
                    message: e.to_string(),
                });
            }
            Object::ServiceProfile(sp)
        }
        _ => {
            tracing::debug!(%api_version, %kind, "skipping a kind meshlink does not read");
            return Ok(None);
        }
    };
    Ok(Some(obj))
}

/// One YAML document as `T`; the error on one line, with its position in the file.
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, line_offset: usize) -> Result<T, String> {
    // Kubernetes objects rarely use anchors: a tight budget for them keeps an alias bomb
    // (a few hundred bytes expanding to millions of nodes) to a few MiB.
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 10_000,
            max_recorded_anchor_bytes: 1024 * 1024,
            max_events: 200_000,
        },
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        // Positions counted from the file's first line: the document is parsed on its own
        // (padding it with the lines before it cost memory quadratic in the documents).
        let options = serde_saphyr::render_options! { line_offset: line_offset as u64 };
        let rendered = e.render_with_options(options);
        rendered.lines().collect::<Vec<_>>().join(" ")
    })
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
        Object::ServiceProfile(o) => &mut o.metadata,
    };
    meta.managed_fields = None;
    if !matches!(obj, Object::Namespace(_) | Object::Node(_)) {
        let meta = match &mut obj {
            Object::Pod(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::ServiceProfile(o) => &mut o.metadata,
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
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("document 3") && errors[0].contains("apiVersion"),
            "{errors:?}"
        );
        assert!(errors[1].contains("document 4: invalid Pod"), "{errors:?}");
        assert!(errors[2].contains("no metadata.name"), "{errors:?}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let (objects, errors) = parse_manifests("apiVersion: v1\nkind: [unclosed\n");
        assert!(objects.is_empty());
        assert!(errors[0].to_string().contains("invalid YAML"), "{errors:?}");
    }

    #[test]
    fn a_syntax_error_spares_the_next_documents_and_says_where() {
        let text = "# leading comment
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
---
apiVersion: v1
kind: Namespace
metadata: {name: [oops
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {zone: \"a --- b\"}
data: |
  --- not a marker: indented
";
        let (objects, errors) = parse_manifests(text);
        let names: Vec<&str> = objects.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["shop", "node-a"], "{errors:?}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let DocumentError::Syntax { doc, message } = &errors[0] else {
            panic!("{errors:?}");
        };
        assert_eq!(*doc, 3, "{message}");
        assert!(message.contains("line 10"), "{message}");
    }
}
