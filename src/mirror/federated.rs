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
/// `None` while some Link has not synced yet (a partial member list would drop members).
pub fn desired(
    links: &BTreeMap<String, Contribution>,
    local: &[Arc<Service>],
) -> Option<BTreeMap<ObjKey, Service>> {
    // (ns, svc) -> (remote "svc@cluster" entries, a member Service for ports and labels)
    let mut remote: BTreeMap<ObjKey, (BTreeSet<String>, Vec<Arc<Service>>)> = BTreeMap::new();
    for c in links.values() {
        for (key, svc) in c.members.as_ref()? {
            let e = remote.entry(key.clone()).or_default();
            e.0.insert(format!("{}@{}", key.1, c.cfg.cluster));
            e.1.push(Arc::clone(svc));
        }
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
                !k.starts_with(labels::MIRROR_PREFIX) && !k.starts_with("meshlink.io/")
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
        let fed_name = format!("{name}-federated");
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
    Some(out)
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
        let want = {
            let links = federation.links.lock();
            desired(&links, &shared.services.state())
        };
        if let Some(want) = want {
            apply(&shared, &want, &mut written).await;
        }
        tokio::select! {
            _ = federation.changed.notified() => {}
            r = local.changed() => if r.is_err() { return },
            _ = super::until_true(&mut shutdown) => return,
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
        let want = desired(&links, &[mk_member("web")]).unwrap();
        let svc = &want[&("shop".to_string(), "web-federated".to_string())];
        let a = svc.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[labels::MC_REMOTE_DISCOVERY], "web@north,web@west");
        assert_eq!(a[labels::MC_LOCAL_DISCOVERY], "web");
        assert_eq!(
            svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            80
        );
    }

    #[test]
    fn a_link_not_synced_yet_holds_the_federation_back() {
        let mut links = BTreeMap::from([("west".to_string(), contribution("west", &["web"]))]);
        links.insert(
            "north".into(),
            Contribution {
                cfg: mk_cfg("north"),
                members: None,
            },
        );
        assert!(desired(&links, &[]).is_none());
    }
}
