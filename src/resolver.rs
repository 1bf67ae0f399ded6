//! Resolution: from an authority to one merged, live endpoint set.
//!
//! The local Service decides the plan (its own endpoints, a linked cluster's service,
//! a host's endpoint mirror, or the union of federated members); the stream follows
//! the root lookup, each member's lookup and the set of linked clusters, and yields
//! a new merged [`EndpointSet`] whenever any of them changes.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
};

use tokio::sync::watch;

mod profile;

pub use crate::index::{AddrTarget, PodInfo};
use crate::{
    index::{ClusterHandle, ClusterIndex, ClusterSet},
    model::{
        ClientLocality, ContextToken, EndpointAddrs, EndpointSet, FederatedMember, PortSnapshot,
        ServiceAuthority, ServiceInfo, ServiceKind, ServiceRef,
    },
};
pub use profile::ProfileStream;

/// Why an authority cannot be resolved; the gRPC layer maps it to a status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{service} is an ExternalName service; resolve its external name instead")]
    ExternalName { service: ServiceRef },
    #[error(
        "{service} is a remote-discovery mirror without the multicluster.linkerd.io/remote-service label"
    )]
    MissingRemoteService { service: ServiceRef },
}

/// Resolves authorities against the local cluster and the linked clusters.
#[derive(Clone)]
pub struct Resolver {
    clusters: Arc<ClusterSet>,
}

impl Resolver {
    /// A resolver over `clusters`.
    pub fn new(clusters: Arc<ClusterSet>) -> Self {
        Self { clusters }
    }

    /// The clusters this resolver reads.
    pub fn clusters(&self) -> &Arc<ClusterSet> {
        &self.clusters
    }

    /// The local cluster's name, for labelling endpoints by where they came from.
    pub fn local_cluster_name(&self) -> Arc<str> {
        Arc::clone(&self.clusters.local().name)
    }

    /// Where a caller is, from its context token: its node and that node's zone.
    pub fn client_locality(&self, token: &ContextToken) -> ClientLocality {
        let zone = token
            .node_name
            .as_deref()
            .and_then(|n| self.clusters.local().index.lock().node_zone(n));
        ClientLocality {
            node_name: token.node_name.clone(),
            zone,
        }
    }

    /// Follows the local Service that `authority` names, for `GetProfile`.
    pub fn service_info_rx(
        &self,
        authority: &ServiceAuthority,
    ) -> watch::Receiver<Option<Arc<ServiceInfo>>> {
        let svc = ServiceRef::new(&authority.namespace, &authority.service);
        self.clusters.local().index.lock().service_rx(&svc)
    }

    /// Follows what an IP address and port are in the local cluster, for `GetProfile`.
    pub fn addr_target_rx(&self, addr: SocketAddr) -> watch::Receiver<AddrTarget> {
        self.clusters.local().index.lock().addr_rx(addr)
    }

    /// Follows a pod of the local cluster by name, for inbound policy.
    pub fn pod_rx(&self, namespace: &str, name: &str) -> watch::Receiver<Option<Arc<PodInfo>>> {
        self.clusters.local().index.lock().pod_rx(namespace, name)
    }

    /// Opens a live endpoint stream for `authority`.
    pub fn resolve(&self, authority: &ServiceAuthority) -> EndpointStream {
        let svc = ServiceRef::new(&authority.namespace, &authority.service);
        let local = self.clusters.local().clone();
        let root = local.index.lock().endpoints_rx(&svc, authority.port);
        EndpointStream {
            authority: authority.clone(),
            local,
            root,
            linked: self.clusters.linked_rx(),
            plan: Plan::default(),
            members: Vec::new(),
            set_labels: Arc::default(),
            started: false,
            relink: false,
            planned_for: None,
        }
    }
}

/// Where a member's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// The root lookup itself.
    Root,
    /// Another service in the local cluster.
    Local(ServiceRef),
    /// A service in a linked cluster.
    Linked {
        cluster: String,
        service: ServiceRef,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Plan {
    members: Vec<Source>,
    hostname: Option<String>,
    uses_linked: bool,
}

struct Member {
    source: Source,
    rx: Option<watch::Receiver<Arc<PortSnapshot>>>,
    /// The index the lookup was opened on: a relinked cluster gets a new index.
    index: Weak<parking_lot::Mutex<ClusterIndex>>,
}

/// A live, merged endpoint set for one authority.
pub struct EndpointStream {
    authority: ServiceAuthority,
    local: ClusterHandle,
    root: watch::Receiver<Arc<PortSnapshot>>,
    linked: watch::Receiver<Arc<BTreeMap<String, ClusterHandle>>>,
    plan: Plan,
    members: Vec<Member>,
    set_labels: Arc<BTreeMap<String, String>>,
    started: bool,
    /// The linked clusters changed since members were last opened.
    relink: bool,
    /// The Service the current plan was made for.
    planned_for: Option<Arc<ServiceInfo>>,
}

type ChangedFuture<'a> = Pin<Box<dyn Future<Output = Changed> + Send + 'a>>;

enum Changed {
    Root(bool),
    Linked(bool),
    Member(usize, bool),
}

impl EndpointStream {
    /// The current set on the first call; afterwards waits for a change and returns the
    /// new set. `None` once the local index is gone (shutdown).
    pub async fn next(&mut self) -> Option<Result<Arc<EndpointSet>, ResolveError>> {
        if self.started {
            self.changed().await?;
        }
        self.started = true;
        Some(self.current())
    }

    /// Waits until the root, a member or the linked clusters change.
    async fn changed(&mut self) -> Option<()> {
        // The common case, a service's own endpoints, waits on one channel without allocating.
        if !self.plan.uses_linked && self.members.iter().all(|m| m.rx.is_none()) {
            return self.root.changed().await.ok();
        }
        let Self {
            root,
            linked,
            members,
            plan,
            ..
        } = self;
        let mut futures: Vec<ChangedFuture<'_>> = Vec::with_capacity(2 + members.len());
        futures.push(Box::pin(async {
            Changed::Root(root.changed().await.is_ok())
        }));
        if plan.uses_linked {
            futures.push(Box::pin(async {
                Changed::Linked(linked.changed().await.is_ok())
            }));
        }
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(rx) = m.rx.as_mut() {
                futures.push(Box::pin(async move {
                    Changed::Member(i, rx.changed().await.is_ok())
                }));
            }
        }
        let (changed, _, _) = futures::future::select_all(futures).await;
        match changed {
            Changed::Root(false) => return None,
            Changed::Member(i, false) => {
                // The member's cluster went away: it contributes nothing until it is back.
                self.members[i].rx = None;
            }
            Changed::Linked(false) => self.plan.uses_linked = false,
            Changed::Linked(true) => self.relink = true,
            _ => {}
        }
        Some(())
    }

    fn current(&mut self) -> Result<Arc<EndpointSet>, ResolveError> {
        let root = Arc::clone(&self.root.borrow_and_update());
        let Some(service) = root.service.clone() else {
            self.set_plan(Plan::default());
            self.planned_for = None;
            return Ok(Arc::new(EndpointSet::default()));
        };
        // The plan depends only on the Service (and on which clusters are linked).
        let same_service = self
            .planned_for
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &service));
        let relink = std::mem::take(&mut self.relink);
        if !same_service || relink {
            let plan = self.plan_for(&service)?;
            if plan != self.plan || !same_service {
                self.set_labels = Arc::clone(&service.labels);
            }
            self.set_plan(plan);
            self.planned_for = Some(Arc::clone(&service));
        }
        let mut set = self.merge(&root);
        set.exists = true;
        set.labels = Arc::clone(&self.set_labels);
        set.internal_traffic_local = service.internal_traffic_local;
        Ok(Arc::new(set))
    }

    fn plan_for(&self, service: &ServiceInfo) -> Result<Plan, ResolveError> {
        let ns = &service.service.namespace;
        let hostname = self.authority.hostname.clone();
        let plan = match &service.kind {
            ServiceKind::ExternalName => {
                return Err(ResolveError::ExternalName {
                    service: service.service.clone(),
                });
            }
            ServiceKind::RemoteDiscovery { service: None, .. } => {
                return Err(ResolveError::MissingRemoteService {
                    service: service.service.clone(),
                });
            }
            ServiceKind::RemoteDiscovery {
                cluster,
                service: Some(remote),
            } => Plan {
                members: vec![Source::Linked {
                    cluster: cluster.clone(),
                    service: ServiceRef::new(ns, remote),
                }],
                hostname,
                uses_linked: true,
            },
            ServiceKind::Federated { members } => Plan {
                members: members
                    .iter()
                    .map(|FederatedMember { cluster, service }| match cluster {
                        None => Source::Local(ServiceRef::new(ns, service)),
                        Some(cluster) => Source::Linked {
                            cluster: cluster.clone(),
                            service: ServiceRef::new(ns, service),
                        },
                    })
                    .collect(),
                hostname,
                uses_linked: members.iter().any(|m| m.cluster.is_some()),
            },
            ServiceKind::Local => match (&hostname, &service.mirror) {
                // A host of a headless mirror resolves to that host's endpoint mirror.
                (Some(host), Some(mirror)) if service.headless => Plan {
                    members: vec![Source::Local(ServiceRef::new(
                        ns,
                        format!("{host}-{}", mirror.cluster),
                    ))],
                    hostname: None,
                    uses_linked: false,
                },
                _ => Plan {
                    members: vec![Source::Root],
                    hostname,
                    uses_linked: false,
                },
            },
        };
        Ok(plan)
    }

    /// Opens the member lookups of `plan`, keeping those it already has.
    fn set_plan(&mut self, plan: Plan) {
        let port = self.authority.port;
        let linked = self.linked.borrow_and_update().clone();
        let mut old: Vec<Member> = std::mem::take(&mut self.members);
        self.members = plan
            .members
            .iter()
            .map(|source| {
                let index = match source {
                    Source::Root | Source::Local(_) => Some(&self.local.index),
                    Source::Linked { cluster, .. } => linked.get(cluster).map(|c| &c.index),
                };
                let same_index = |m: &Member| match index {
                    Some(index) => m.index.ptr_eq(&Arc::downgrade(index)),
                    None => m.index.strong_count() == 0,
                };
                if let Some(pos) = old
                    .iter()
                    .position(|m| &m.source == source && same_index(m))
                {
                    return old.swap_remove(pos);
                }
                let rx = match (source, index) {
                    (Source::Root, _) | (_, None) => None,
                    (Source::Local(svc), Some(index)) => Some(index.lock().endpoints_rx(svc, port)),
                    (Source::Linked { service, .. }, Some(index)) => {
                        Some(index.lock().endpoints_rx(service, port))
                    }
                };
                Member {
                    source: source.clone(),
                    rx,
                    index: index.map(Arc::downgrade).unwrap_or_default(),
                }
            })
            .collect();
        self.plan = plan;
    }

    /// One lookup's snapshot as it is: streams may reuse its precomputed delta.
    fn as_is(only: &PortSnapshot) -> EndpointSet {
        EndpointSet {
            endpoints: Arc::clone(&only.endpoints),
            all_hinted: only.all_hinted,
            version: Some(only.version),
            delta: only.delta.clone(),
            ..EndpointSet::default()
        }
    }

    /// The union of every member's endpoints; an address in two members counts once.
    /// Endpoints, versions and hints of the merged set (labels and flags are the caller's).
    fn merge(&mut self, root: &Arc<PortSnapshot>) -> EndpointSet {
        // A service's own endpoints, the common case, without collecting the members.
        if let ([member], None) = (self.members.as_slice(), &self.plan.hostname)
            && member.source == Source::Root
        {
            return Self::as_is(root);
        }
        let snapshots: Vec<Arc<PortSnapshot>> = self
            .members
            .iter_mut()
            .filter_map(|m| match (&m.source, m.rx.as_mut()) {
                (Source::Root, _) => Some(Arc::clone(root)),
                (_, Some(rx)) => Some(Arc::clone(&rx.borrow_and_update())),
                (_, None) => None,
            })
            .collect();
        let host = self.plan.hostname.as_deref();
        if let ([only], None) = (snapshots.as_slice(), host) {
            return Self::as_is(only);
        }
        let mut merged = EndpointAddrs::new();
        for snapshot in &snapshots {
            for (addr, e) in snapshot.endpoints.iter() {
                if host.is_some_and(|h| e.hostname.as_deref() != Some(h)) {
                    continue;
                }
                merged.entry(*addr).or_insert_with(|| Arc::clone(e));
            }
        }
        EndpointSet {
            all_hinted: crate::model::all_hinted(&merged),
            endpoints: Arc::new(merged),
            ..EndpointSet::default()
        }
    }
}
