//! Counting the mirror's requests in the local API server's audit log.
//!
//! The mirror runs with a kubeconfig that impersonates [`MIRROR_USER`], so its requests are
//! told apart from the benchmark's own by the audit events' `impersonatedUser`. Each
//! request is counted once: a watch when it opens, anything else when it completes.

use std::{collections::BTreeMap, io::Read, path::PathBuf};

use serde_json::Value;

/// The user the mirror impersonates.
pub const MIRROR_USER: &str = "meshlink-mirror-bench";

/// Verbs that change something.
const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// A read position in the audit log.
pub struct AuditLog {
    path: PathBuf,
    offset: u64,
}

/// The mirror's requests in a span of the audit log.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    /// `verb resource` -> count.
    pub by_kind: BTreeMap<String, u64>,
}

impl Requests {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// Requests that change something.
    pub fn writes(&self) -> u64 {
        self.matching(|verb, _| WRITES.contains(&verb))
    }

    /// Writes other than to Leases (leader election renews its Lease at rest).
    pub fn mirror_writes(&self) -> u64 {
        self.matching(|verb, resource| WRITES.contains(&verb) && resource != "leases")
    }

    fn matching(&self, f: impl Fn(&str, &str) -> bool) -> u64 {
        self.by_kind
            .iter()
            .filter(|(k, _)| {
                let (verb, resource) = k.split_once(' ').unwrap_or((k, ""));
                f(verb, resource)
            })
            .map(|(_, n)| n)
            .sum()
    }
}

impl AuditLog {
    /// Reads `path` from its current end on.
    pub fn at_end(path: PathBuf) -> Self {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self { path, offset }
    }

    /// The mirror's requests logged since the last call (or since [`Self::at_end`]).
    pub fn take(&mut self) -> Requests {
        let mut out = Requests::default();
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return out;
        };
        let mut text = Vec::new();
        if std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(self.offset)).is_err()
            || file.read_to_end(&mut text).is_err()
        {
            return out;
        }
        // Only whole lines; a line being written is read next time.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        for line in text[..whole].split(|b| *b == b'\n') {
            let Ok(ev) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if ev["impersonatedUser"]["username"] != MIRROR_USER {
                continue;
            }
            let verb = ev["verb"].as_str().unwrap_or("?");
            let stage = ev["stage"].as_str().unwrap_or("?");
            let counted = match verb {
                "watch" => stage == "ResponseStarted",
                _ => stage == "ResponseComplete",
            };
            if !counted {
                continue;
            }
            let mut resource = ev["objectRef"]["resource"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if let Some(sub) = ev["objectRef"]["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            *out.by_kind.entry(format!("{verb} {resource}")).or_default() += 1;
        }
        out
    }
}
