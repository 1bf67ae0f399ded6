//! `--compare a.json b.json`: two runs' figures side by side, with the ratio b / a, so
//! two destination servers measured on the same world read as one table.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

/// Every number under `v`, by its JSON pointer below `prefix`.
fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(x, &format!("{prefix}/{k}"), out);
            }
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        Value::Bool(b) => {
            out.insert(prefix.to_string(), f64::from(u8::from(*b)));
        }
        _ => {}
    }
}

fn read(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("{path} is not a benchmark report"))
}

fn name(v: &Value, path: &str) -> String {
    v.pointer("/machine/label")
        .and_then(Value::as_str)
        .map_or_else(|| path.to_string(), str::to_string)
}

/// The two reports as a table: one line per figure either of them has.
pub fn table(a_path: &str, b_path: &str) -> Result<String> {
    let (a, b) = (read(a_path)?, read(b_path)?);
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    for (v, f) in [(&a, &mut fa), (&b, &mut fb)] {
        for part in ["world", "scenarios"] {
            if let Some(x) = v.get(part) {
                flatten(x, part, f);
            }
        }
    }
    let (na, nb) = (name(&a, a_path), name(&b, b_path));
    let mut out = String::new();
    for (n, v) in [(&na, &a), (&nb, &b)] {
        let get = |p: &str| {
            v.pointer(p)
                .map(|x| x.to_string().trim_matches('"').to_string())
                .unwrap_or_else(|| "?".into())
        };
        out += &format!(
            "{n}: target {} on {} ({} cpus)\n",
            get("/machine/target"),
            get("/machine/cpu_model"),
            get("/machine/cpus")
        );
    }
    let width = fa
        .keys()
        .chain(fb.keys())
        .map(String::len)
        .max()
        .unwrap_or(6);
    out += &format!("{:<width$} {:>12} {:>12} {:>8}\n", "figure", na, nb, "b/a");
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let show = |x: Option<&f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x}"));
    for k in keys {
        let (x, y) = (fa.get(k), fb.get(k));
        let ratio = match (x, y) {
            (Some(x), Some(y)) if *x != 0.0 => format!("{:.2}", y / x),
            _ => "-".into(),
        };
        out += &format!("{k:<width$} {:>12} {:>12} {ratio:>8}\n", show(x), show(y));
    }
    Ok(out)
}
