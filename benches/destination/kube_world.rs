//! The benchmark's world in a real API server: the in-process world's services, pods and
//! EndpointSlices (same names, addresses and ids), shaped as a Kubernetes cluster with
//! Linkerd's data plane has them, so any destination server can serve it unmodified.
//!
//! Created by concurrent writers, and found again on a later run (`--reuse-world`): the
//! endpoint ids of each service are read back from its EndpointSlices.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Container, EnvVar, Namespace, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use meshlink::k8s::{EndpointSlice, Node, ObjectMeta, Pod, Service, labels};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{
    client::now_nanos,
    world::{self, NAMESPACE, SLICE_SIZE},
};

/// Marks every object a run creates, so a later run finds and removes them.
pub const RUN_LABEL: &str = "meshlink.io/bench";
/// The control plane namespace the pods name, as `linkerd inject` writes it.
pub const CONTROL_PLANE_NS: &str = "linkerd";
/// Nodes, spread over three zones, as in the in-process world.
const NODES: u32 = 12;
/// Linkerd's proxy listens here; a destination server reads the ports from the env.
const PROXY_ENV: [(&str, &str); 3] = [
    (labels::PROXY_INBOUND_LISTEN_ADDR_ENV, "0.0.0.0:4143"),
    ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:4191"),
    ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "0.0.0.0:4190"),
];
/// The proxy version the annotation names (what `linkerd inject` of that release writes).
const PROXY_VERSION: &str = "edge-26.8.3";

/// Endpoint ids of one service, in slice order, and where the next replacement goes.
#[derive(Debug, Default)]
pub struct ServiceIds {
    pub ids: Vec<u32>,
    cursor: usize,
}

/// One change as the client saw it go out.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// The new endpoint's id.
    pub id: u32,
    /// The service it belongs to.
    pub svc: usize,
    /// Just before the EndpointSlice write was sent (ns since the epoch).
    pub sent: u128,
    /// When the API server acknowledged it.
    pub acked: u128,
}

/// The world in the API server, and the ids it holds.
pub struct KubeWorld {
    pods: Api<Pod>,
    slices: Api<EndpointSlice>,
    services: Vec<Mutex<ServiceIds>>,
    next_id: AtomicU32,
    endpoints: usize,
    writers: usize,
}

/// How the world came to be.
pub struct Opened {
    pub world: KubeWorld,
    /// Created now (false: found from an earlier run).
    pub created: bool,
    pub create_ms: f64,
    pub objects_written: usize,
}

fn labelled<T: kube::Resource>(mut obj: T) -> T {
    obj.meta_mut()
        .labels
        .get_or_insert_with(Default::default)
        .insert(RUN_LABEL.into(), "true".into());
    obj
}

/// Pod `id` of service `svc` as a meshed pod is: the app and Linkerd's proxy container
/// with its listen addresses, Linkerd's labels and annotations. No status: writing it is
/// a second request per pod, and destination servers read addresses from the slices.
pub fn meshed_pod(svc: usize, id: u32) -> Pod {
    let mut pod = world::mk_pod(svc, id);
    let name = format!("svc-{svc}");
    let meta = &mut pod.metadata;
    let l = meta.labels.get_or_insert_with(Default::default);
    l.insert(labels::CONTROL_PLANE_NS.into(), CONTROL_PLANE_NS.into());
    l.insert("linkerd.io/proxy-deployment".into(), name.clone());
    l.insert("linkerd.io/workload-ns".into(), NAMESPACE.into());
    l.insert(labels::POD_TEMPLATE_HASH.into(), "bench".into());
    meta.annotations = Some(
        [
            ("linkerd.io/created-by", "linkerd/proxy-injector bench"),
            ("linkerd.io/inject", "enabled"),
            ("linkerd.io/identity-mode", "default"),
            ("linkerd.io/proxy-version", PROXY_VERSION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers = vec![
            Container {
                name: "app".into(),
                image: Some("registry.invalid/bench:0".into()),
                ..Default::default()
            },
            Container {
                name: labels::PROXY_CONTAINER.into(),
                image: Some(format!("cr.l5d.io/linkerd/proxy:{PROXY_VERSION}")),
                env: Some(
                    PROXY_ENV
                        .iter()
                        .map(|(k, v)| EnvVar {
                            name: k.to_string(),
                            value: Some(v.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
        ];
    }
    pod.status = None;
    labelled(pod)
}

fn node(n: u32) -> Node {
    labelled(Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{n}")),
            labels: Some([(labels::TOPOLOGY_ZONE.to_string(), format!("zone-{}", n % 3))].into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// `default/kubernetes` as a cluster has it: an API server on loopback publishes no
/// EndpointSlice for itself (loopback is not a valid endpoint), and some servers (Linkerd's)
/// refuse to start while no EndpointSlice exists. The address is a documentation one
/// (RFC 5737): nothing connects to it.
fn kubernetes_slice() -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            labels: Some([(labels::SLICE_SERVICE_NAME.to_string(), "kubernetes".into())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec!["192.0.2.1".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(6443),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn kubernetes_service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6443),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `obj`; one that already exists counts as created.
async fn create<T>(api: &Api<T>, obj: &T) -> Result<()>
where
    T: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot create {}",
                obj.meta().name.as_deref().unwrap_or("an object")
            )
        }),
    }
}

/// Runs `f` on every item with `writers` requests in flight.
async fn each<I, F, Fut>(items: I, writers: usize, f: F) -> Result<usize>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut n = 0;
    let mut s = stream::iter(items).map(f).buffer_unordered(writers.max(1));
    while let Some(r) = s.next().await {
        r?;
        n += 1;
    }
    Ok(n)
}

fn svc_of_slice(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("svc-")?;
    let (svc, chunk) = rest.rsplit_once('-')?;
    Some((svc.parse().ok()?, chunk.parse().ok()?))
}

impl KubeWorld {
    /// Makes sure a world of `services` x `endpoints` exists: found again when `reuse` and
    /// the API server holds one of that size, else created anew by `writers` writers.
    pub async fn open(
        client: &Client,
        services: usize,
        endpoints: usize,
        writers: usize,
        reuse: bool,
    ) -> Result<Opened> {
        let namespaces = Api::<Namespace>::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        create(&namespaces, &ns).await?;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(CONTROL_PLANE_NS.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        create(&namespaces, &ns).await?;
        let mut world = Self {
            pods: Api::namespaced(client.clone(), NAMESPACE),
            slices: Api::namespaced(client.clone(), NAMESPACE),
            services: Vec::new(),
            next_id: AtomicU32::new(0),
            endpoints,
            writers,
        };
        let started = Instant::now();
        let mut written = 0;
        written += each(0..NODES, writers, |n| {
            let api = Api::<Node>::all(client.clone());
            async move { create(&api, &node(n)).await }
        })
        .await?;
        create(
            &Api::<Service>::namespaced(client.clone(), "default"),
            &kubernetes_service(),
        )
        .await?;
        create(
            &Api::<EndpointSlice>::namespaced(client.clone(), "default"),
            &kubernetes_slice(),
        )
        .await?;
        written += 2;
        if reuse {
            match world.read_back(services, endpoints).await? {
                Some(ids) => {
                    world.adopt(ids);
                    return Ok(Opened {
                        world,
                        created: false,
                        create_ms: started.elapsed().as_secs_f64() * 1e3,
                        objects_written: written,
                    });
                }
                None => eprintln!(
                    "no world of {services} x {endpoints} in the API server: creating one"
                ),
            }
        }
        clean(client, writers).await?;
        let ids: Vec<Vec<u32>> = (0..services)
            .map(|i| (0..endpoints).map(|k| (i * endpoints + k) as u32).collect())
            .collect();
        let service_api = Api::<Service>::namespaced(client.clone(), NAMESPACE);
        written += each(0..services, writers, |i| {
            let api = service_api.clone();
            async move { create(&api, &labelled(world::mk_service(format!("svc-{i}"), &[]))).await }
        })
        .await?;
        let pods = ids
            .iter()
            .enumerate()
            .flat_map(|(svc, ids)| ids.iter().map(move |id| (svc, *id)));
        written += each(pods, writers, |(svc, id)| {
            let api = world.pods.clone();
            async move { create(&api, &meshed_pod(svc, id)).await }
        })
        .await?;
        let slices = ids.iter().enumerate().flat_map(|(svc, ids)| {
            ids.chunks(SLICE_SIZE)
                .enumerate()
                .map(move |(chunk, part)| (svc, chunk, part))
        });
        written += each(slices, writers, |(svc, chunk, part)| {
            let api = world.slices.clone();
            async move { create(&api, &labelled(world::mk_slice(svc, chunk, part))).await }
        })
        .await?;
        world.adopt(ids);
        Ok(Opened {
            world,
            created: true,
            create_ms: started.elapsed().as_secs_f64() * 1e3,
            objects_written: written,
        })
    }

    fn adopt(&mut self, ids: Vec<Vec<u32>>) {
        let next = ids.iter().flatten().max().map_or(0, |m| m + 1);
        self.next_id.store(next, Ordering::Relaxed);
        self.services = ids
            .into_iter()
            .map(|ids| Mutex::new(ServiceIds { ids, cursor: 0 }))
            .collect();
    }

    /// The ids of an earlier run's world, if it has exactly this size.
    async fn read_back(&self, services: usize, endpoints: usize) -> Result<Option<Vec<Vec<u32>>>> {
        let mut chunks: BTreeMap<(usize, usize), Vec<u32>> = BTreeMap::new();
        let mut lp = ListParams::default()
            .labels(&format!("{RUN_LABEL}=true"))
            .limit(200);
        loop {
            let page = self.slices.list(&lp).await?;
            for s in &page.items {
                let Some(key) = s.metadata.name.as_deref().and_then(svc_of_slice) else {
                    continue;
                };
                let ids = s
                    .endpoints
                    .iter()
                    .flatten()
                    .filter_map(|e| e.addresses.first()?.parse::<std::net::Ipv4Addr>().ok())
                    .filter_map(|a| world::id_of(u32::from(a)))
                    .collect();
                chunks.insert(key, ids);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        let mut out = vec![Vec::new(); services];
        for ((svc, _), ids) in chunks {
            if svc >= services {
                return Ok(None);
            }
            out[svc].extend(ids);
        }
        Ok(out.iter().all(|ids| ids.len() == endpoints).then_some(out))
    }

    /// Services in the world.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Endpoints per service when the world was opened.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// The next id a change will take: every id from here on is new.
    pub fn floor(&self) -> u32 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// The slice write of `svc`'s chunk `chunk`: a merge patch of its endpoints, or a
    /// create when the chunk is new.
    async fn write_slice(&self, svc: usize, chunk: usize, ids: &[u32], exists: bool) -> Result<()> {
        let slice = labelled(world::mk_slice(svc, chunk, ids));
        if exists {
            self.slices
                .patch(
                    &format!("svc-{svc}-{chunk}"),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"endpoints": slice.endpoints})),
                )
                .await
                .with_context(|| format!("cannot patch slice svc-{svc}-{chunk}"))?;
        } else {
            create(&self.slices, &slice).await?;
        }
        Ok(())
    }

    async fn delete_pod(&self, svc: usize, id: u32) -> Result<()> {
        match self.pods.delete(&format!("svc-{svc}-{id}"), &now()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).context("cannot delete a replaced pod"),
        }
    }

    /// Replaces one endpoint of `svc` (round robin) as a rollout does: a new pod, the
    /// slice update that swaps it in (timed), then the old pod's deletion.
    pub async fn replace(&self, svc: usize) -> Result<Change> {
        let (change, old) = {
            let mut state = self
                .services
                .get(svc)
                .context("no such service")?
                .lock()
                .await;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let pos = state.cursor % state.ids.len().max(1);
            state.cursor += 1;
            let old = std::mem::replace(&mut state.ids[pos], id);
            create(&self.pods, &meshed_pod(svc, id)).await?;
            let chunk = pos / SLICE_SIZE;
            let end = ((chunk + 1) * SLICE_SIZE).min(state.ids.len());
            let sent = now_nanos();
            self.write_slice(svc, chunk, &state.ids[chunk * SLICE_SIZE..end], true)
                .await?;
            let acked = now_nanos();
            (
                Change {
                    id,
                    svc,
                    sent,
                    acked,
                },
                old,
            )
        };
        self.delete_pod(svc, old).await?;
        Ok(change)
    }

    /// Scales `svc` to `to` endpoints: new pods first, then the slice writes; removed ones
    /// leave the slices first, then their pods go. Returns when the first slice write was
    /// sent (ns since the epoch).
    pub async fn scale(&self, svc: usize, to: usize) -> Result<u128> {
        let mut state = self
            .services
            .get(svc)
            .context("no such service")?
            .lock()
            .await;
        let from = state.ids.len();
        let old_chunks = from.div_ceil(SLICE_SIZE);
        if to >= from {
            let first = self
                .next_id
                .fetch_add((to - from) as u32, Ordering::Relaxed);
            let new: Vec<u32> = (first..first + (to - from) as u32).collect();
            each(new.iter().copied(), self.writers, |id| async move {
                create(&self.pods, &meshed_pod(svc, id)).await
            })
            .await?;
            state.ids.extend(new);
            let sent = now_nanos();
            let first_chunk = from / SLICE_SIZE;
            let ids = &state.ids;
            let chunks: Vec<(usize, &[u32])> = ids
                .chunks(SLICE_SIZE)
                .enumerate()
                .skip(first_chunk)
                .collect();
            each(chunks, self.writers, |(chunk, part)| async move {
                self.write_slice(svc, chunk, part, chunk < old_chunks).await
            })
            .await?;
            Ok(sent)
        } else {
            let gone: Vec<u32> = state.ids.split_off(to);
            let sent = now_nanos();
            let new_chunks = to.div_ceil(SLICE_SIZE);
            if !to.is_multiple_of(SLICE_SIZE) {
                let chunk = to / SLICE_SIZE;
                self.write_slice(svc, chunk, &state.ids[chunk * SLICE_SIZE..], true)
                    .await?;
            }
            each(new_chunks..old_chunks, self.writers, |chunk| async move {
                match self
                    .slices
                    .delete(&format!("svc-{svc}-{chunk}"), &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e).context("cannot delete a slice"),
                }
            })
            .await?;
            each(gone, self.writers, |id| self.delete_pod(svc, id)).await?;
            Ok(sent)
        }
    }
}

/// Deletes at once: without a kubelet, a pod bound to a node would wait for one forever.
fn now() -> DeleteParams {
    DeleteParams::default().grace_period(0)
}

/// Removes what an earlier run left in namespace `bench` (namespaces, nodes and
/// `default/kubernetes` stay: they are the same for every world).
pub async fn clean(client: &Client, writers: usize) -> Result<()> {
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}=true"));
    let dp = DeleteParams::default();
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .delete_collection(&dp, &lp)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    // Page by page: one deletecollection of 100,000 pods outlasts the request timeout.
    loop {
        let page = pods.list_metadata(&lp.clone().limit(2000)).await?;
        if page.items.is_empty() {
            break;
        }
        let names: Vec<String> = page
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        each(names, writers, |name| {
            let pods = pods.clone();
            async move {
                match pods.delete(&name, &now()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e).context("cannot delete a pod"),
                }
            }
        })
        .await?;
    }
    // Services have no deletecollection.
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let names: Vec<String> = services
        .list_metadata(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    each(names, writers, |name| {
        let services = services.clone();
        async move {
            services
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
                .context("cannot delete a service")
        }
    })
    .await?;
    let left = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list_metadata(&lp.clone().limit(1))
        .await?;
    if !left.items.is_empty() {
        bail!("pods of an earlier run are still there after cleaning");
    }
    Ok(())
}
