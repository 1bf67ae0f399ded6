//! A service's profile as the caller sees it: the caller's namespace's ServiceProfile over
//! the service's own, and a failover profile's split computed live from the endpoint sets
//! of its destinations (local services, mirrors or federated services, in any cluster).

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::watch;
use tracing::debug;

use super::{EndpointStream, Resolver};
use crate::model::{
    Authority, ContextToken, Profile, ServiceAuthority, ServiceInfo, ServiceProfileView,
    profile::{WeightedDst, authority_has_port as has_port, failover_split},
};

/// A live [`ServiceProfileView`] for one service port and caller.
pub struct ProfileStream {
    resolver: Resolver,
    port: u16,
    cluster_domain: String,
    service: watch::Receiver<Option<Arc<ServiceInfo>>>,
    server: watch::Receiver<Option<Arc<Profile>>>,
    /// The caller's namespace's profile, when the caller is in another namespace.
    client: Option<watch::Receiver<Option<Arc<Profile>>>>,
    failover: Option<FailoverWatch>,
    started: bool,
}

/// The endpoint streams of a failover profile's destinations.
struct FailoverWatch {
    profile: Arc<Profile>,
    dsts: Vec<DstReadiness>,
}

struct DstReadiness {
    /// `None` for an authority that is not a service here, or once the index is gone.
    stream: Option<EndpointStream>,
    ready: bool,
}

enum Changed {
    Lookup(bool),
    Dst(usize, Option<bool>),
}

type ChangedFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Changed> + Send + 'a>>;

impl Resolver {
    /// Follows the profile of `authority`'s service for the caller that `token` describes.
    pub fn profile(&self, authority: &ServiceAuthority, token: &ContextToken) -> ProfileStream {
        let local = self.clusters.local();
        let mut index = local.index.lock();
        let cluster_domain = index.config().cluster_domain.clone();
        let svc = crate::model::ServiceRef::new(&authority.namespace, &authority.service);
        let fqn = format!(
            "{}.{}.svc.{cluster_domain}",
            authority.service, authority.namespace
        );
        let service = index.service_rx(&svc);
        let server = index.profile_rx(&authority.namespace, &fqn);
        let client = token
            .ns
            .as_deref()
            .filter(|ns| *ns != authority.namespace)
            .map(|ns| index.profile_rx(ns, &fqn));
        drop(index);
        ProfileStream {
            resolver: self.clone(),
            port: authority.port,
            cluster_domain,
            service,
            server,
            client,
            failover: None,
            started: false,
        }
    }
}

impl ProfileStream {
    /// The current view on the first call; afterwards waits for a change and returns the
    /// new view. `None` once the local index is gone (shutdown).
    pub async fn next(&mut self) -> Option<Arc<ServiceProfileView>> {
        if self.started {
            self.changed().await?;
        }
        self.started = true;
        Some(self.current())
    }

    async fn changed(&mut self) -> Option<()> {
        let changed = {
            let Self {
                service,
                server,
                client,
                failover,
                ..
            } = self;
            let mut futures: Vec<ChangedFuture<'_>> = vec![
                Box::pin(async { Changed::Lookup(service.changed().await.is_ok()) }),
                Box::pin(async { Changed::Lookup(server.changed().await.is_ok()) }),
            ];
            if let Some(client) = client {
                futures.push(Box::pin(async {
                    Changed::Lookup(client.changed().await.is_ok())
                }));
            }
            for (i, dst) in failover
                .iter_mut()
                .flat_map(|f| f.dsts.iter_mut())
                .enumerate()
            {
                if let Some(stream) = dst.stream.as_mut() {
                    futures.push(Box::pin(async move {
                        let ready = stream.next().await.map(|r| is_ready(r.ok().as_deref()));
                        Changed::Dst(i, ready)
                    }));
                }
            }
            futures::future::select_all(futures).await.0
        };
        match changed {
            Changed::Lookup(false) => return None,
            Changed::Lookup(true) => {}
            Changed::Dst(i, ready) => {
                if let Some(dst) = self.failover.as_mut().and_then(|f| f.dsts.get_mut(i)) {
                    if ready.is_none() {
                        dst.stream = None;
                    }
                    dst.ready = ready.unwrap_or(false);
                }
            }
        }
        Some(())
    }

    fn current(&mut self) -> Arc<ServiceProfileView> {
        let service = self.service.borrow_and_update().clone();
        let server = self.server.borrow_and_update().clone();
        let client = self
            .client
            .as_mut()
            .and_then(|rx| rx.borrow_and_update().clone());
        let profile = client.or(server);
        let dst_overrides: Arc<[WeightedDst]> = match &profile {
            Some(p) => match &p.failover {
                Some(failover) => {
                    let ready = self.readiness(p);
                    failover_split(&p.dst_overrides, failover.primary, &ready).into()
                }
                None => {
                    self.failover = None;
                    p.dst_overrides.clone().into()
                }
            },
            None => {
                self.failover = None;
                Arc::from([])
            }
        };
        Arc::new(ServiceProfileView {
            service,
            profile,
            dst_overrides,
        })
    }

    /// Whether each destination of failover profile `p` has ready endpoints, opening
    /// their endpoint streams when `p` is new.
    fn readiness(&mut self, p: &Arc<Profile>) -> Vec<bool> {
        let current = self
            .failover
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(&f.profile, p));
        if !current {
            let dsts = p
                .dst_overrides
                .iter()
                .map(|d| self.open_dst(&d.authority))
                .collect();
            self.failover = Some(FailoverWatch {
                profile: Arc::clone(p),
                dsts,
            });
        }
        self.failover
            .as_ref()
            .map(|f| f.dsts.iter().map(|d| d.ready).collect())
            .unwrap_or_default()
    }

    fn open_dst(&self, authority: &str) -> DstReadiness {
        let with_port = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:{}", self.port)
        };
        let Ok(Authority::Service(svc)) = Authority::parse(&with_port, &self.cluster_domain) else {
            debug!(%authority, "failover destination is not a service here; it counts as not ready");
            return DstReadiness {
                stream: None,
                ready: false,
            };
        };
        let mut stream = self.resolver.resolve(&svc);
        // The first set is at hand: `next` answers it without waiting.
        let ready = match stream.next().now_or_never() {
            Some(Some(set)) => is_ready(set.ok().as_deref()),
            _ => false,
        };
        DstReadiness {
            stream: Some(stream),
            ready,
        }
    }
}

/// A destination is ready when it exists and has an endpoint to send to.
fn is_ready(set: Option<&crate::model::EndpointSet>) -> bool {
    set.is_some_and(|s| s.exists && !s.endpoints.is_empty())
}
