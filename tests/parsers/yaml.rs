//! Writes JSON values as YAML text by hand, so the manifest properties do not depend on
//! the YAML library the parser uses: every string is double-quoted with every character
//! outside printable ASCII escaped, which any YAML 1.1 or 1.2 parser reads the same way.

use serde_json::Value;

/// YAML styles a manifest may be written in.
#[derive(Clone, Copy, Debug)]
pub enum Style {
    /// Indented mappings and `- ` sequences.
    Block,
    /// `{...}` and `[...]` on one line.
    Flow,
}

/// `value` as one YAML document's content (no `---`), ending in a newline.
pub fn render(value: &Value, style: Style) -> String {
    match style {
        Style::Block if is_nested(value) => block(value, 0),
        _ => format!("{}\n", flow(value)),
    }
}

/// A double-quoted YAML scalar holding exactly `s`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

fn is_nested(value: &Value) -> bool {
    match value {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn flow(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

fn block(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if is_nested(v) {
                    out.push_str(&format!("{pad}{}:\n{}", quote(k), block(v, indent + 2)));
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", quote(k), flow(v)));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if is_nested(item) {
                    // The item's first line starts with `indent + 2` spaces: `- ` takes the last two.
                    let nested = block(item, indent + 2);
                    out.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
                } else {
                    out.push_str(&format!("{pad}- {}\n", flow(item)));
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", flow(scalar))),
    }
    out
}
