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

    /// Counts an error.
    pub fn error(&self, link: &str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                link: link.into(),
                reason,
            })
            .inc();
    }

    /// Counts a write.
    pub fn write(&self, link: &str, verb: &'static str) {
        self.writes
            .get_or_create(&WriteLabels {
                link: link.into(),
                verb,
            })
            .inc();
    }

    /// Forgets a Link that is gone.
    pub fn forget(&self, link: &str) {
        for kind in [
            "gateway",
            "remote_discovery",
            "federated",
            "headless_endpoints",
            "trouble",
        ] {
            self.services.remove(&KindLabels {
                link: link.into(),
                kind,
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
