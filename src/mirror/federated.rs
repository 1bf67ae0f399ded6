//! Federated services: one `<svc>-federated` per federated service name, listing every
//! member cluster (`remote-discovery: svc@west,svc@north`, `local-discovery: svc` when the
//! local cluster exports it). Members come from every Link, so this reconciler is shared.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::{
    desired::{LinkConfig, ObjKey},
    reconcile::{FIELD_MANAGER, Shared},
};
use crate::k8s::{ObjectMeta, Service, labels};

/// One Link's contribution: its config (for the local-member selector) and its cluster's
/// federated members; `None` members until its first full sync.
#[derive(Clone)]
pub struct Contribution {
    /// The Link's parsed spec.
    pub cfg: LinkConfig,
    /// Members of the target cluster by (namespace, service).
    pub members: Option<BTreeMap<ObjKey, Arc<Service>>>,
}

/// What every Link contributes, by Link name; the federation reconciler reads it.
#[derive(Default)]
pub struct Federation {
    links: Mutex<BTreeMap<String, Contribution>>,
    changed: Notify,
}

impl Federation {
    /// Records a Link's members (replacing what it said before).
    pub fn publish(&self, link: &str, contribution: Contribution) {
        self.links.lock().insert(link.to_string(), contribution);
        self.changed.notify_one();
    }

    /// Forgets a deleted Link: its cluster leaves every federated service.
    pub fn forget(&self, link: &str) {
        if self.links.lock().remove(link).is_some() {
            self.changed.notify_one();
        }
    }
}

/// The `<svc>-federated` Services every contribution and the local members call for.
/// A Link that has not synced (yet) keeps its cluster's entries of the live federated
/// Services in `local`, so it neither holds the others back nor has its members dropped.
pub fn desired(
    links: &BTreeMap<String, Contribution>,
    local: &[Arc<Service>],
) -> BTreeMap<ObjKey, Service> {
    // (ns, svc) -> (remote "svc@cluster" entries, member Services for ports and labels)
    let mut remote: BTreeMap<ObjKey, (BTreeSet<String>, Vec<Arc<Service>>)> = BTreeMap::new();
    let mut unsynced: BTreeSet<&str> = BTreeSet::new();
    for c in links.values() {
        let Some(members) = c.members.as_ref() else {
            unsynced.insert(c.cfg.cluster.as_str());
            continue;
        };
        for (key, svc) in members {
            let e = remote.entry(key.clone()).or_default();
            e.0.insert(format!("{}@{}", key.1, c.cfg.cluster));
            e.1.push(Arc::clone(svc));
        }
    }
    if !unsynced.is_empty() {
        carry_unsynced(local, &unsynced, &mut remote);
    }
    let mut locals: BTreeMap<ObjKey, Arc<Service>> = BTreeMap::new();
    for svc in local {
        let is_mirror = svc
            .labels()
            .get(labels::MIRRORED_SERVICE)
            .is_some_and(|v| v == "true");
        if !is_mirror && links.values().any(|c| c.cfg.is_federated_member(svc)) {
            locals.insert(
                (svc.namespace().unwrap_or_default(), svc.name_any()),
                Arc::clone(svc),
            );
        }
    }
    let keys: BTreeSet<ObjKey> = remote.keys().chain(locals.keys()).cloned().collect();
    let mut out = BTreeMap::new();
    for key in keys {
        let (ns, name) = &key;
        let (entries, mut members) = remote.remove(&key).unwrap_or_default();
        let local_member = locals.get(&key);
        if let Some(l) = local_member {
            members.insert(0, Arc::clone(l));
        }
        let mut ports: BTreeMap<i32, ServicePort> = BTreeMap::new();
        for m in &members {
            for p in m
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
            {
                ports.entry(p.port).or_insert_with(|| ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.clone(),
                    target_port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port),
                    ),
                    ..ServicePort::default()
                });
            }
        }
        let mut l: BTreeMap<String, String> = members
            .first()
            .map(|m| m.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                !k.starts_with(labels::MIRROR_PREFIX) && !k.starts_with(labels::MESHLINK_PREFIX)
            })
            .collect();
        l.insert(labels::MIRRORED_SERVICE.into(), "true".into());
        l.insert(labels::MESHLINK_FEDERATED.into(), "true".into());
        let mut a = BTreeMap::new();
        if !entries.is_empty() {
            a.insert(
                labels::MC_REMOTE_DISCOVERY.to_string(),
                entries.into_iter().collect::<Vec<_>>().join(","),
            );
        }
        if local_member.is_some() {
            a.insert(labels::MC_LOCAL_DISCOVERY.to_string(), name.clone());
        }
        let fed_name = federated_name(name);
        out.insert(
            (ns.clone(), fed_name.clone()),
            Service {
                metadata: ObjectMeta {
                    name: Some(fed_name),
                    namespace: Some(ns.clone()),
                    labels: Some(l),
                    annotations: Some(a),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    ports: Some(ports.into_values().collect()),
                    ..ServiceSpec::default()
                }),
                status: None,
            },
        );
    }
    out
}

/// `<svc>-federated`.
fn federated_name(svc: &str) -> String {
    format!("{svc}-federated")
}

/// Adds the entries of clusters whose Links have not synced, as the live federated
/// Services list them; the live Service stands in as a member (for its ports).
fn carry_unsynced(
    local: &[Arc<Service>],
    unsynced: &BTreeSet<&str>,
    remote: &mut BTreeMap<ObjKey, (BTreeSet<String>, Vec<Arc<Service>>)>,
) {
    for live in local.iter().filter(|s| owned(s)) {
        let Some(listed) = live.annotations().get(labels::MC_REMOTE_DISCOVERY) else {
            continue;
        };
        let ns = live.namespace().unwrap_or_default();
        for entry in listed.split(',') {
            let Some((svc, cluster)) = entry.trim().split_once('@') else {
                continue;
            };
            if !unsynced.contains(cluster) || federated_name(svc) != live.name_any() {
                continue;
            }
            let e = remote.entry((ns.clone(), svc.to_string())).or_default();
            e.0.insert(entry.trim().to_string());
            e.1.push(Arc::clone(live));
        }
    }
}

fn owned(svc: &Service) -> bool {
    svc.labels()
        .get(labels::MESHLINK_FEDERATED)
        .is_some_and(|v| v == "true")
}

/// Keeps the `<svc>-federated` Services as the contributions say, until `shutdown`.
/// `links_listed` turns true once the controller has seen every Link.
pub async fn run(
    shared: Shared,
    federation: Arc<Federation>,
    mut links_listed: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = super::until_true(&mut links_listed) => {}
        _ = super::until_true(&mut shutdown) => return,
    }
    let mut local = shared.local_changed.clone();
    let mut written: BTreeMap<ObjKey, Service> = BTreeMap::new();
    loop {
        pass(&shared, &federation, &mut written).await;
        tokio::select! {
            _ = federation.changed.notified() => {}
            r = local.changed() => if r.is_err() { return },
            _ = super::until_true(&mut shutdown) => return,
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes the federated services once, as every contribution so far says (`--once`).
pub async fn once(shared: &Shared, federation: &Federation) {
    pass(shared, federation, &mut BTreeMap::new()).await;
}

async fn pass(shared: &Shared, federation: &Federation, written: &mut BTreeMap<ObjKey, Service>) {
    let want = {
        let links = federation.links.lock();
        desired(&links, &shared.services.state())
    };
    apply(shared, &want, written).await;
}

async fn apply(
    shared: &Shared,
    want: &BTreeMap<ObjKey, Service>,
    written: &mut BTreeMap<ObjKey, Service>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (key, svc) in want {
        let live = shared.services.get(&ObjectRef::new(&key.1).within(&key.0));
        if let Some(live) = &live
            && !owned(live)
        {
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), "a Service exists that meshlink does not own; federated service not written");
            continue;
        }
        if shared.namespaces.get(&ObjectRef::new(&key.0)).is_none() {
            continue;
        }
        let same_live = live.as_ref().is_some_and(|l| {
            l.labels() == svc.labels()
                && l.annotations().get(labels::MC_REMOTE_DISCOVERY)
                    == svc.annotations().get(labels::MC_REMOTE_DISCOVERY)
                && l.annotations().get(labels::MC_LOCAL_DISCOVERY)
                    == svc.annotations().get(labels::MC_LOCAL_DISCOVERY)
                && l.spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .map(|p| p.iter().map(|p| p.port).collect::<Vec<_>>())
                    == svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .map(|p| p.iter().map(|p| p.port).collect::<Vec<_>>())
        });
        if same_live || written.get(key) == Some(svc) && live.is_some() {
            continue;
        }
        if let Some(dry) = &shared.dry_run {
            dry.lock()
                .apply
                .push(serde_json::to_value(svc).unwrap_or_default());
            written.insert(key.clone(), svc.clone());
            continue;
        }
        let api: Api<Service> = Api::namespaced(shared.client.clone(), &key.0);
        let _permit = shared.writes.acquire().await;
        match api.patch(&key.1, &params, &Patch::Apply(svc)).await {
            Ok(_) => {
                shared.metrics.write("federated", "apply");
                written.insert(key.clone(), svc.clone());
            }
            Err(e) => {
                shared.metrics.error("federated", "apply_failed");
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), error = %e, "cannot write a federated service");
            }
        }
    }
    for live in shared.services.state() {
        let key = (live.namespace().unwrap_or_default(), live.name_any());
        if owned(&live) && !want.contains_key(&key) {
            if let Some(dry) = &shared.dry_run {
                dry.lock()
                    .delete
                    .push(format!("Service {}/{}", key.0, key.1));
                continue;
            }
            let api: Api<Service> = Api::namespaced(shared.client.clone(), &key.0);
            let _permit = shared.writes.acquire().await;
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => shared.metrics.write("federated", "delete"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(error = %e, "cannot delete a federated service"),
            }
            written.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::link::{Link, LinkSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn mk_cfg(cluster: &str) -> LinkConfig {
        let mut link = Link::new(
            cluster,
            LinkSpec {
                target_cluster_name: Some(cluster.into()),
                cluster_credentials_secret: Some("s".into()),
                federated_service_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        labels::FEDERATED.into(),
                        labels::FEDERATED_MEMBER.into(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..LinkSpec::default()
            },
        );
        link.metadata.namespace = Some("linkerd".into());
        LinkConfig::from_link(&link).unwrap()
    }

    fn mk_member(name: &str) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([(
                    labels::FEDERATED.into(),
                    labels::FEDERATED_MEMBER.into(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        })
    }

    fn contribution(cluster: &str, members: &[&str]) -> Contribution {
        Contribution {
            cfg: mk_cfg(cluster),
            members: Some(
                members
                    .iter()
                    .map(|m| (("shop".to_string(), m.to_string()), mk_member(m)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn every_member_cluster_is_listed_and_the_local_one_too() {
        let links = BTreeMap::from([
            ("west".to_string(), contribution("west", &["web"])),
            ("north".to_string(), contribution("north", &["web"])),
        ]);
        let want = desired(&links, &[mk_member("web")]);
        let svc = &want[&("shop".to_string(), "web-federated".to_string())];
        let a = svc.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[labels::MC_REMOTE_DISCOVERY], "web@north,web@west");
        assert_eq!(a[labels::MC_LOCAL_DISCOVERY], "web");
        assert_eq!(
            svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            80
        );
    }

    /// A federated service as written before, listing `entries`.
    fn mk_live(name: &str, entries: &str) -> Arc<Service> {
        let mut svc = (*mk_member(name)).clone();
        svc.metadata.labels = Some(BTreeMap::from([(
            labels::MESHLINK_FEDERATED.into(),
            "true".into(),
        )]));
        svc.metadata.annotations = Some(BTreeMap::from([(
            labels::MC_REMOTE_DISCOVERY.into(),
            entries.into(),
        )]));
        Arc::new(svc)
    }

    fn remote_discovery(want: &BTreeMap<ObjKey, Service>, name: &str) -> Option<String> {
        want.get(&("shop".to_string(), name.to_string()))?
            .metadata
            .annotations
            .as_ref()?
            .get(labels::MC_REMOTE_DISCOVERY)
            .cloned()
    }

    #[test]
    fn a_link_not_synced_keeps_its_entries_and_holds_no_one_back() {
        let mut links = BTreeMap::from([("west".to_string(), contribution("west", &["api"]))]);
        links.insert(
            "north".into(),
            Contribution {
                cfg: mk_cfg("north"),
                members: None,
            },
        );
        let live = [
            mk_live("web-federated", "web@north,web@west"),
            mk_live("db-federated", "db@north"),
        ];
        let want = desired(&links, &live);
        // West synced: its new member is written although north never listed.
        assert_eq!(
            remote_discovery(&want, "api-federated").unwrap(),
            "api@west"
        );
        // North's entries stay as they were; west's stale one goes.
        assert_eq!(
            remote_discovery(&want, "web-federated").unwrap(),
            "web@north"
        );
        assert_eq!(remote_discovery(&want, "db-federated").unwrap(), "db@north");
        let ports = want[&("shop".to_string(), "db-federated".to_string())]
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap();
        assert_eq!(ports[0].port, 80);
    }

    #[test]
    fn once_every_link_synced_a_member_that_left_is_dropped() {
        let links = BTreeMap::from([
            ("west".to_string(), contribution("west", &["web"])),
            ("north".to_string(), contribution("north", &[])),
        ]);
        let live = [mk_live("web-federated", "web@north,web@west")];
        let want = desired(&links, &live);
        assert_eq!(
            remote_discovery(&want, "web-federated").unwrap(),
            "web@west"
        );
    }
}
