//! `GetDestination.context_token`: `ContextToken::parse` never fails; what does not parse is
//! an empty token.

use meshlink::model::ContextToken;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// A JSON value of bounded depth and size.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field of a token: absent, `null`, or a string.
fn field() -> impl Strategy<Value = Option<Option<String>>> {
    proptest::option::of(proptest::option::of(prop_oneof![
        3 => "[a-z0-9-]{0,12}",
        1 => any::<String>(),
    ]))
}

const FIELDS: [&str; 3] = ["ns", "nodeName", "pod"];
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "ns",
    "\"ns\"",
    "\"nodeName\"",
    "\"pod\"",
    "ns:",
    "null",
    "true",
    "1e999",
    "\\u0000",
    "\\ud800",
    " ",
    "\n",
];

/// `[[[...]]]` nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn a_json_token_parses_to_its_fields(
        ns in field(),
        node_name in field(),
        pod in field(),
        extra in proptest::collection::btree_map("[a-zA-Z]{1,8}", json(), 0..4),
        padding in "[ \t\r\n]{0,3}",
    ) {
        let mut object = Map::new();
        for (key, value) in extra {
            if !FIELDS.contains(&key.as_str()) {
                object.insert(key, value);
            }
        }
        for (key, value) in FIELDS.iter().zip([&ns, &node_name, &pod]) {
            if let Some(value) = value {
                object.insert(key.to_string(), value.clone().map_or(Value::Null, Value::String));
            }
        }
        let token = format!("{padding}{}{padding}", Value::Object(object));
        let want = ContextToken {
            ns: ns.flatten(),
            // An empty node name is no node.
            node_name: node_name.flatten().filter(|n| !n.is_empty()),
            pod: pod.flatten(),
        };
        prop_assert_eq!(ContextToken::parse(&token), want, "{}", token);
    }

    #[test]
    fn a_legacy_token_names_its_namespace(ns in any::<String>(), padding in "[ \t]{0,3}") {
        let token = format!("{padding}ns:{ns}{padding}");
        let want = Some(ns.trim_end().to_string()).filter(|n| !n.is_empty());
        prop_assert_eq!(ContextToken::parse(&token), ContextToken { ns: want, ..Default::default() });
    }

    #[test]
    fn a_token_with_a_field_of_the_wrong_type_is_empty(
        field in proptest::sample::select(&FIELDS[..]),
        value in json().prop_filter("not a string or null", |v| !v.is_string() && !v.is_null()),
    ) {
        let token = serde_json::json!({ field: value }).to_string();
        prop_assert_eq!(ContextToken::parse(&token), ContextToken::default(), "{}", token);
    }

    #[test]
    fn any_text_that_is_not_a_json_object_is_an_empty_token(
        token in prop_oneof![
            crate::text_of(TOKENS, 16),
            json().prop_map(|v| v.to_string()),
            (0usize..100_000).prop_map(nested),
            (0usize..100_000).prop_map(|d| format!("{{\"ns\":{}}}", nested(d))),
        ],
    ) {
        let parsed = ContextToken::parse(&token);
        let is_object = serde_json::from_str::<Value>(token.trim()).is_ok_and(|v| v.is_object());
        if !token.trim().starts_with("ns:") && !is_object {
            prop_assert_eq!(parsed, ContextToken::default(), "{}", token);
        }
    }
}
