//! The context token a proxy sends to describe itself.

use serde::Deserialize;

/// Who is asking: the proxy's namespace, node and pod, when it says so.
///
/// A token that does not parse is treated as empty, never as an error, so an old
/// or odd proxy still gets answers (without locality).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ContextToken {
    #[serde(default)]
    pub ns: Option<String>,
    #[serde(default, rename = "nodeName")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
}

impl ContextToken {
    /// Parses the JSON form or the legacy `ns:<namespace>` form.
    pub fn parse(token: &str) -> Self {
        let token = token.trim();
        if let Some(ns) = token.strip_prefix("ns:") {
            return Self {
                ns: Some(ns.to_string()).filter(|s| !s.is_empty()),
                ..Self::default()
            };
        }
        // Only an object: serde would also read a JSON array as the fields in order.
        if !token.starts_with('{') {
            return Self::default();
        }
        let mut parsed: Self = serde_json::from_str(token).unwrap_or_default();
        parsed.node_name = parsed.node_name.filter(|s| !s.is_empty());
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_token() {
        let t = ContextToken::parse(r#"{"ns":"shop","nodeName":"node-a","pod":"web-1"}"#);
        assert_eq!(t.ns.as_deref(), Some("shop"));
        assert_eq!(t.node_name.as_deref(), Some("node-a"));
        assert_eq!(t.pod.as_deref(), Some("web-1"));
    }

    #[test]
    fn legacy_token() {
        assert_eq!(ContextToken::parse("ns:shop").ns.as_deref(), Some("shop"));
    }

    #[test]
    fn garbage_is_empty() {
        assert_eq!(ContextToken::parse("{not json"), ContextToken::default());
        assert_eq!(ContextToken::parse(""), ContextToken::default());
        assert_eq!(ContextToken::parse("[1,2]"), ContextToken::default());
        assert_eq!(
            ContextToken::parse(r#"["shop","node-a"]"#),
            ContextToken::default()
        );
    }
}
