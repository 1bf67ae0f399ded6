//! Summaries of measured values, shared by the destination and mirror benchmarks.

use serde_json::{Value, json};

/// p50/p99/max (and the count) of values, rounded to hundredths; null when there are none.
pub fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"p50": round(at(0.5)), "p99": round(at(0.99)), "max": round(at(1.0)), "n": v.len()})
}

/// `x` rounded to hundredths, as every figure is reported.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
