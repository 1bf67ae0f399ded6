//! The Link's status: conditions, counts by kind, services in trouble, last full sync.
//! Pure functions; the reconciler writes the result only when it changed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::k8s::link::{
    CONDITION_GATEWAY_ALIVE, CONDITION_MIRRORS_READY, CONDITION_TARGET_SYNCED, Link, LinkStatus,
    MirrorTrouble, MirroredServices,
};

/// How the watches of the target cluster are doing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// The last error of each failing watch, by what it watches.
    pub failing: BTreeMap<&'static str, String>,
    /// When both watches last completed a full list.
    pub last_full_sync: Option<Time>,
    full_lists: BTreeMap<&'static str, Time>,
}

impl Health {
    /// A watch failed.
    pub fn failed(&mut self, what: &'static str, error: &str) {
        self.failing.insert(what, error.to_string());
    }

    /// A watch delivered an event; `full` when it completed a full list.
    pub fn ok(&mut self, what: &'static str, full: bool) {
        self.failing.remove(what);
        if full {
            self.full_lists.insert(what, super::reconcile::now());
            if self.full_lists.len() == 2 {
                self.last_full_sync = self.full_lists.values().min().cloned();
            }
        }
    }

    /// Whether the target cluster answers.
    pub fn reachable(&self) -> bool {
        self.failing.is_empty()
    }
}

/// A condition, keeping its transition time when its status did not change.
fn condition(
    previous: Option<&LinkStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(super::reconcile::now);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// The status after a reconcile.
pub fn build(
    link: &Link,
    previous: Option<&LinkStatus>,
    counts: &MirroredServices,
    troubles: Vec<MirrorTrouble>,
    health: &Health,
    gateway: Option<(bool, Option<String>)>,
) -> LinkStatus {
    let generation = link.metadata.generation;
    let mut conditions = vec![target_synced(previous, health, generation)];
    let (ok, reason, message) = match troubles.first() {
        None => (
            true,
            "Ready",
            "every selected service is mirrored".to_string(),
        ),
        Some(t) => (
            false,
            t.reason.as_str(),
            format!(
                "{} service(s) in trouble; first: {}",
                troubles.len(),
                t.message
            ),
        ),
    };
    conditions.push(condition(
        previous,
        CONDITION_MIRRORS_READY,
        ok,
        reason,
        message,
        generation,
    ));
    if let Some((alive, probe_error)) = gateway {
        let (ok, reason, message) = match probe_error {
            Some(e) => (
                true,
                "InvalidProbeSpec",
                format!("the gateway is not probed: {e}"),
            ),
            None if alive => (true, "Alive", "the gateway answers its probe".into()),
            None => (false, "ProbeFailing", "the gateway's probe fails".into()),
        };
        conditions.push(condition(
            previous,
            CONDITION_GATEWAY_ALIVE,
            ok,
            reason,
            message,
            generation,
        ));
    }
    LinkStatus {
        conditions,
        mirrored_services: counts.clone(),
        troubles,
        last_sync_time: health
            .last_full_sync
            .clone()
            .or_else(|| previous.and_then(|p| p.last_sync_time.clone())),
    }
}

fn target_synced(
    previous: Option<&LinkStatus>,
    health: &Health,
    generation: Option<i64>,
) -> Condition {
    match health.failing.iter().next() {
        None => condition(
            previous,
            CONDITION_TARGET_SYNCED,
            true,
            "Synced",
            "watching the target cluster".into(),
            generation,
        ),
        Some((what, e)) => condition(
            previous,
            CONDITION_TARGET_SYNCED,
            false,
            "TargetUnreachable",
            format!("cannot watch {what} of the target cluster (mirrors kept): {e}"),
            generation,
        ),
    }
}

/// The status of a Link that cannot be mirrored at all (bad spec or credentials); what
/// was mirrored before is kept.
pub fn invalid(link: &Link, reason: &str, message: &str) -> LinkStatus {
    let previous = link.status.as_ref();
    LinkStatus {
        conditions: vec![condition(
            previous,
            CONDITION_TARGET_SYNCED,
            false,
            reason,
            message.to_string(),
            link.metadata.generation,
        )],
        mirrored_services: previous
            .map(|p| p.mirrored_services.clone())
            .unwrap_or_default(),
        troubles: previous.map(|p| p.troubles.clone()).unwrap_or_default(),
        last_sync_time: previous.and_then(|p| p.last_sync_time.clone()),
    }
}

/// The status while the target cluster has not been listed yet.
pub fn unsynced(link: &Link, health: &Health) -> LinkStatus {
    let previous = link.status.as_ref();
    let mut st = invalid(link, "TargetUnreachable", "");
    st.conditions = vec![target_synced(previous, health, link.metadata.generation)];
    if health.reachable() {
        st.conditions[0].status = "Unknown".into();
        st.conditions[0].reason = "TargetUnreachable".into();
        st.conditions[0].message = "the target cluster has not been listed yet".into();
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn troubled() -> MirrorTrouble {
        MirrorTrouble {
            namespace: "shop".into(),
            name: "web-west".into(),
            reason: "Conflict".into(),
            message: "not ours".into(),
        }
    }

    #[test]
    fn a_conflict_sets_mirrors_ready_false_and_keeps_counts() {
        let link = Link::new("west", Default::default());
        let counts = MirroredServices {
            gateway: 3,
            ..Default::default()
        };
        let st = build(
            &link,
            None,
            &counts,
            vec![troubled()],
            &Health::default(),
            None,
        );
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "MirrorsReady")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Conflict")
        );
        assert_eq!(st.mirrored_services.gateway, 3);
        assert_eq!(st.troubles.len(), 1);
    }

    #[test]
    fn an_unchanged_status_is_equal_so_it_is_not_written() {
        let link = Link::new("west", Default::default());
        let counts = MirroredServices::default();
        let first = build(
            &link,
            None,
            &counts,
            vec![],
            &Health::default(),
            Some((true, None)),
        );
        let again = build(
            &link,
            Some(&first),
            &counts,
            vec![],
            &Health::default(),
            Some((true, None)),
        );
        assert_eq!(first, again);
    }

    #[test]
    fn an_unreachable_target_says_so() {
        let link = Link::new("west", Default::default());
        let mut health = Health::default();
        health.failed("services", "connection refused");
        let st = build(
            &link,
            None,
            &MirroredServices::default(),
            vec![],
            &health,
            None,
        );
        let c = &st.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("TargetSynced", "False", "TargetUnreachable")
        );
    }
}
