//! Prometheus metrics of the mirror's reconcilers: mirrors by kind and reconcile errors
//! per Link (bounded reason labels), and writes sent.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::k8s::link::MirroredServices;

/// Labels of the mirrored-services gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The Link's name.
    pub link: String,
    /// `gateway`, `remote_discovery`, `federated`, `headless_endpoints` or `trouble`.
    pub kind: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The Link's name.
    pub link: String,
    /// A short, bounded reason (`credentials`, `apply_failed`, ...).
    pub reason: &'static str,
}

/// Labels of the writes counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The Link's name.
    pub link: String,
    /// `apply`, `delete` or `status`.
    pub verb: &'static str,
}

/// Every reason label of the error counter (so that a Link's series can be removed).
pub const ERROR_REASONS: &[&str] = &[
    "invalid_link",
    "credentials",
    "invalid_probe_spec",
    "gateway_dns",
    "apply_failed",
    "namespace_missing",
    "status_write",
    "cleanup",
];

/// Every verb label of the writes counter.
pub const WRITE_VERBS: &[&str] = &["apply", "delete", "status"];

/// The kind labels of the mirrored-services gauge.
const KINDS: &[&str] = &[
    "gateway",
    "remote_discovery",
    "federated",
    "headless_endpoints",
    "trouble",
];

/// The reconcilers' metric families.
#[derive(Debug, Default)]
pub struct MirrorMetrics {
    services: Family<KindLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
}

impl MirrorMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let m = Self::default();
        registry.register(
            "mirror_services",
            "Mirrors a Link keeps, by kind (trouble: services that could not be mirrored)",
            m.services.clone(),
        );
        registry.register(
            "mirror_reconcile_errors",
            "Errors of a Link's reconciler, by reason",
            m.errors.clone(),
        );
        registry.register(
            "mirror_api_writes",
            "Writes sent to the local API server, by verb",
            m.writes.clone(),
        );
        std::sync::Arc::new(m)
    }

    /// Sets a Link's counts.
    pub fn set_counts(&self, link: &str, counts: &MirroredServices, troubles: usize) {
        let set = |kind, v: u32| {
            self.services
                .get_or_create(&KindLabels {
                    link: link.into(),
                    kind,
                })
                .set(i64::from(v));
        };
        set("gateway", counts.gateway);
        set("remote_discovery", counts.remote_discovery);
        set("federated", counts.federated);
        set("headless_endpoints", counts.headless_endpoints);
        set("trouble", u32::try_from(troubles).unwrap_or(u32::MAX));
    }

    /// Counts an error; `reason` is one of [`ERROR_REASONS`].
    pub fn error(&self, link: &str, reason: &'static str) {
        debug_assert!(ERROR_REASONS.contains(&reason), "unlisted reason {reason}");
        self.errors
            .get_or_create(&ErrorLabels {
                link: link.into(),
                reason,
            })
            .inc();
    }

    /// Counts a write; `verb` is one of [`WRITE_VERBS`].
    pub fn write(&self, link: &str, verb: &'static str) {
        debug_assert!(WRITE_VERBS.contains(&verb), "unlisted verb {verb}");
        self.writes
            .get_or_create(&WriteLabels {
                link: link.into(),
                verb,
            })
            .inc();
    }

    /// Forgets a Link that is gone: every series it had, so they do not pile up.
    pub fn forget(&self, link: &str) {
        for &kind in KINDS {
            self.services.remove(&KindLabels {
                link: link.into(),
                kind,
            });
        }
        for &reason in ERROR_REASONS {
            self.errors.remove(&ErrorLabels {
                link: link.into(),
                reason,
            });
        }
        for &verb in WRITE_VERBS {
            self.writes.remove(&WriteLabels {
                link: link.into(),
                verb,
            });
        }
    }
}

/// The registry in the text exposition format.
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_that_goes_leaves_no_series() {
        let mut registry = Registry::default();
        let m = MirrorMetrics::register(&mut registry);
        m.set_counts("west", &MirroredServices::default(), 0);
        m.set_counts("north", &MirroredServices::default(), 0);
        for &reason in ERROR_REASONS {
            m.error("west", reason);
        }
        for &verb in WRITE_VERBS {
            m.write("west", verb);
        }
        m.forget("west");
        let text = encode_registry(&registry);
        assert!(!text.contains("link=\"west\""), "{text}");
        assert!(text.contains("link=\"north\""), "{text}");
    }
}
