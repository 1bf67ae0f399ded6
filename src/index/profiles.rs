//! ServiceProfiles of one cluster, by namespace and name, with a watch per looked-up profile.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tokio::sync::watch;

use crate::model::Profile;

/// A profile's key: (namespace, name).
type Key = (String, String);

/// The profiles of one cluster and the lookups open on them.
#[derive(Default)]
pub(super) struct ProfileState {
    profiles: HashMap<Key, Arc<Profile>>,
    watches: HashMap<Key, watch::Sender<Option<Arc<Profile>>>>,
    /// Profiles whose current version does not parse, with the reason's metric label.
    rejected: HashMap<Key, &'static str>,
}

impl ProfileState {
    pub(super) fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Adds or replaces a profile; open lookups see it unless it is unchanged.
    pub(super) fn apply(&mut self, profile: Profile) {
        let key = (profile.namespace.clone(), profile.name.clone());
        self.rejected.remove(&key);
        if self.profiles.get(&key).is_some_and(|p| **p == profile) {
            return;
        }
        let profile = Arc::new(profile);
        self.profiles.insert(key.clone(), Arc::clone(&profile));
        self.publish(&key, Some(profile));
    }

    /// Removes a profile.
    pub(super) fn delete(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.rejected.remove(&key);
        if self.profiles.remove(&key).is_some() {
            self.publish(&key, None);
        }
    }

    /// Records that the current version of a profile does not parse; its last good
    /// version stays.
    pub(super) fn reject(&mut self, namespace: &str, name: &str, reason: &'static str) {
        self.rejected
            .insert((namespace.to_string(), name.to_string()), reason);
    }

    /// Profiles rejected now: (`namespace/name`, reason).
    pub(super) fn rejected(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<_> = self
            .rejected
            .iter()
            .map(|((ns, name), reason)| (format!("{ns}/{name}"), *reason))
            .collect();
        out.sort();
        out
    }

    /// Replaces every profile with `profiles`; those in `invalid` (listed, but not
    /// parsing) keep their last good version.
    pub(super) fn reset(&mut self, profiles: Vec<Profile>, invalid: Vec<(Key, &'static str)>) {
        let keep: HashSet<Key> = profiles
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .chain(invalid.iter().map(|(k, _)| k.clone()))
            .collect();
        let gone: Vec<Key> = self
            .profiles
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete(&ns, &name);
        }
        for p in profiles {
            self.apply(p);
        }
        self.rejected = invalid.into_iter().collect();
    }

    /// The profile `namespace/name`, kept current (`None` while there is none).
    pub(super) fn rx(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> watch::Receiver<Option<Arc<Profile>>> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(tx) = self.watches.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(self.profiles.get(&key).cloned());
        self.watches.insert(key, tx);
        rx
    }

    /// Drops lookups nobody follows any more.
    pub(super) fn gc(&mut self) {
        self.watches.retain(|_, tx| !tx.is_closed());
    }

    fn publish(&mut self, key: &Key, profile: Option<Arc<Profile>>) {
        let Some(tx) = self.watches.get(key) else {
            return;
        };
        if tx.is_closed() {
            self.watches.remove(key);
            return;
        }
        tx.send_replace(profile);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_profile(ns: &str, name: &str, routes: usize) -> Profile {
        Profile {
            namespace: ns.into(),
            name: name.into(),
            routes: (0..routes)
                .map(|i| crate::model::profile::Route {
                    name: format!("r{i}"),
                    condition: crate::model::profile::RequestMatch::Method("GET".into()),
                    response_classes: Vec::new(),
                    is_retryable: false,
                    timeout: None,
                })
                .collect(),
            ..Profile::default()
        }
    }

    const WEB: &str = "web.shop.svc.cluster.local";

    #[test]
    fn lookups_follow_create_change_delete() {
        let mut state = ProfileState::default();
        let mut rx = state.rx("shop", WEB);
        assert!(rx.borrow_and_update().is_none());

        state.apply(mk_profile("shop", WEB, 1));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(
            rx.borrow_and_update().as_ref().map(|p| p.routes.len()),
            Some(1)
        );

        // The same profile again is no change.
        state.apply(mk_profile("shop", WEB, 1));
        assert!(!rx.has_changed().unwrap_or(true));

        state.apply(mk_profile("shop", WEB, 2));
        assert_eq!(
            rx.borrow_and_update().as_ref().map(|p| p.routes.len()),
            Some(2)
        );

        // Another namespace's profile of the same name is another lookup.
        state.apply(mk_profile("other", WEB, 3));
        assert!(!rx.has_changed().unwrap_or(true));

        state.delete("shop", WEB);
        assert!(rx.borrow_and_update().is_none());
    }

    #[test]
    fn reset_removes_what_is_not_listed_and_gc_drops_unwatched_lookups() {
        let mut state = ProfileState::default();
        state.apply(mk_profile("shop", WEB, 1));
        state.apply(mk_profile("shop", "db.shop.svc.cluster.local", 1));
        let rx = state.rx("shop", "db.shop.svc.cluster.local");
        state.reset(vec![mk_profile("shop", WEB, 4)], Vec::new());
        assert!(rx.borrow().is_none());
        assert_eq!(state.len(), 1);
        drop(rx);
        state.gc();
        assert!(state.watches.is_empty());
    }

    #[test]
    fn a_rejected_profile_keeps_its_last_good_version_through_a_relist() {
        let mut state = ProfileState::default();
        state.apply(mk_profile("shop", WEB, 2));
        let rx = state.rx("shop", WEB);
        state.reject("shop", WEB, "bad_regex");
        let key = ("shop".to_string(), WEB.to_string());
        state.reset(Vec::new(), vec![(key, "bad_regex")]);
        assert_eq!(rx.borrow().as_ref().map(|p| p.routes.len()), Some(2));
        assert_eq!(state.rejected(), [(format!("shop/{WEB}"), "bad_regex")]);
        // A good version clears the rejection.
        state.apply(mk_profile("shop", WEB, 1));
        assert!(state.rejected().is_empty());
        assert_eq!(rx.borrow().as_ref().map(|p| p.routes.len()), Some(1));
    }
}
