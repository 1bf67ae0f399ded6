//! Starts, restarts and stops one reconciler per Link as Links come, change and go, and
//! removes what a Link created when it is deleted (its finalizer holds it until then).

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument;

use super::reconcile::{self, FIELD_MANAGER, Shared};
use crate::k8s::{EndpointSlice, Namespace, Service, labels, link::Link};

/// A running reconciler.
struct Running {
    spec: crate::k8s::link::LinkSpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Watches the local cluster's Services, owned EndpointSlices and Namespaces into stores
/// the reconcilers share; returns once they hold a full list.
pub async fn local_stores(
    client: &Client,
    shutdown: watch::Receiver<bool>,
) -> (
    reflector::Store<Service>,
    reflector::Store<EndpointSlice>,
    reflector::Store<Namespace>,
    watch::Receiver<u64>,
) {
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let (services, w) = reflector::store::<Service>();
    spawn_local(
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        Arc::clone(&tx),
        shutdown.clone(),
    );
    let (slices, w) = reflector::store::<EndpointSlice>();
    spawn_local(
        Api::all(client.clone()),
        watcher::Config::default().labels(labels::MESHLINK_LINK),
        w,
        Arc::clone(&tx),
        shutdown.clone(),
    );
    let (namespaces, w) = reflector::store::<Namespace>();
    spawn_local(
        Api::all(client.clone()),
        watcher::Config::default(),
        w,
        tx,
        shutdown,
    );
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let _ = namespaces.wait_until_ready().await;
    (services, slices, namespaces, rx)
}

fn spawn_local<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    changed: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + super::slim::Slim
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, config)
        .default_backoff()
        .modify(K::slim)
        .reflect(writer);
    tokio::spawn(
        async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    ev = stream.next() => match ev {
                        None => return,
                        Some(Err(e)) => tracing::warn!(error = %e, "local watch failed; retrying"),
                        Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                        Some(Ok(_)) => { changed.send_modify(|n| *n += 1); }
                    },
                    _ = crate::mirror::until_true(&mut shutdown) => return,
                }
            }
        }
        .instrument(tracing::info_span!("local_watch", kind = %K::kind(&()))),
    );
}

/// Runs one reconciler per Link of `namespace` until `shutdown` turns true.
/// `listed` turns true once every Link has been seen (federated services wait for it).
pub async fn run(
    shared: Shared,
    namespace: String,
    listed: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Link> = Api::namespaced(shared.client.clone(), &namespace);
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen_in_list: Vec<String> = Vec::new();
    let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = crate::mirror::until_true(&mut shutdown) => break,
        };
        match ev {
            None => break,
            Some(Err(e)) => tracing::warn!(error = %e, "cannot watch Links; retrying"),
            Some(Ok(watcher::Event::Init)) => seen_in_list.clear(),
            Some(Ok(watcher::Event::InitApply(link) | watcher::Event::Apply(link))) => {
                seen_in_list.push(link.name_any());
                on_link(&shared, &api, &mut running, link).await;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let gone: Vec<String> = running
                    .keys()
                    .filter(|n| !seen_in_list.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    stop_and_clean(&shared, &namespace, &mut running, &name).await;
                }
                listed.send_replace(true);
            }
            Some(Ok(watcher::Event::Delete(link))) => {
                stop_and_clean(&shared, &namespace, &mut running, &link.name_any()).await;
            }
        }
    }
    // Stopping (shutdown or lost leadership): reconcilers end, mirrors stay.
    for (_, r) in running.drain() {
        r.stop().await;
    }
}

async fn on_link(
    shared: &Shared,
    api: &Api<Link>,
    running: &mut HashMap<String, Running>,
    link: Link,
) {
    let name = link.name_any();
    if link.metadata.deletion_timestamp.is_some() {
        let ns = link.namespace().unwrap_or_default();
        stop_and_clean(shared, &ns, running, &name).await;
        if has_finalizer(&link) {
            set_finalizer(api, &name, false).await;
        }
        return;
    }
    if !has_finalizer(&link) {
        set_finalizer(api, &name, true).await;
    }
    if running.get(&name).is_some_and(|r| r.spec == link.spec) {
        return;
    }
    if let Some(r) = running.remove(&name) {
        tracing::info!(link = %name, "the Link changed; restarting its reconciler");
        r.stop().await;
    }
    // Known to the federation before the reconciler runs, so its cluster's entries are
    // kept, not dropped, by a federation pass that comes first.
    if let Ok(cfg) = super::desired::LinkConfig::from_link(&link) {
        shared
            .federation
            .publish(&name, super::federated::Contribution { cfg, members: None });
    }
    let (stop, stop_rx) = watch::channel(false);
    let spec = link.spec.clone();
    let task = tokio::spawn(
        reconcile::run_link(shared.clone(), Arc::new(link), false, stop_rx)
            .instrument(tracing::info_span!("link", link = %name)),
    );
    running.insert(name, Running { spec, stop, task });
}

fn has_finalizer(link: &Link) -> bool {
    link.finalizers()
        .iter()
        .any(|f| f == labels::MIRROR_FINALIZER)
}

/// Adds or removes our finalizer with a server-side apply of just that list entry.
async fn set_finalizer(api: &Api<Link>, name: &str, present: bool) {
    let finalizers: Vec<&str> = if present {
        vec![labels::MIRROR_FINALIZER]
    } else {
        vec![]
    };
    let patch = serde_json::json!({
        "apiVersion": "multicluster.linkerd.io/v1alpha3",
        "kind": "Link",
        "metadata": { "name": name, "finalizers": finalizers },
    });
    let params = PatchParams::apply(&format!("{FIELD_MANAGER}-finalizer")).force();
    if let Err(e) = api.patch(name, &params, &Patch::Apply(&patch)).await {
        match &e {
            kube::Error::Api(ae) if ae.code == 404 => {}
            _ => tracing::warn!(link = %name, error = %e, "cannot update the Link's finalizer"),
        }
    }
}

async fn stop_and_clean(
    shared: &Shared,
    namespace: &str,
    running: &mut HashMap<String, Running>,
    name: &str,
) {
    if let Some(r) = running.remove(name) {
        r.stop().await;
    }
    match reconcile::remove_all(&shared.client, namespace, name).await {
        Ok(n) => {
            tracing::info!(link = %name, removed = n, "the Link is gone; removed what it created")
        }
        Err(e) => {
            shared.metrics.error(name, "cleanup");
            tracing::error!(link = %name, error = %e, "cannot remove what the Link created");
        }
    }
    shared.metrics.forget(name);
    shared.federation.forget(name);
}
