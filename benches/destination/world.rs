//! The server side: a child process that builds a synthetic world through the index
//! API, serves it over gRPC, and applies changes it is told to on stdin.
//!
//! Endpoint `id`s are global and encoded in the address (`11.0.0.0 + id`), so a client
//! can tell which change an update carries.

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{
    core::v1::{ObjectReference, PodSpec, PodStatus, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
};
use meshlink::{
    grpc::StreamSettings,
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig},
    k8s::{EndpointSlice, Node, ObjectMeta, Pod, Service},
    metrics::Metrics,
    model::PortSet,
};
use tokio::sync::watch;

pub const NAMESPACE: &str = "bench";
pub const PORT: u16 = 8080;
/// Endpoints per EndpointSlice, as Kubernetes' controller does.
pub const SLICE_SIZE: usize = 100;
const ADDR_BASE: u32 = 0x0B00_0000;

/// The address of endpoint `id`.
pub fn addr_of(id: u32) -> Ipv4Addr {
    Ipv4Addr::from(ADDR_BASE + id)
}

/// The endpoint id of an address, if it is one of ours.
pub fn id_of(ip: u32) -> Option<u32> {
    ip.checked_sub(ADDR_BASE)
}

/// The authority of service `i`: local services by name, linked ones through their mirror.
pub fn authority(i: usize, clusters: usize) -> String {
    let c = i % clusters;
    if c == 0 {
        format!("svc-{i}.{NAMESPACE}.svc.cluster.local:{PORT}")
    } else {
        format!("svc-{i}-c{c}.{NAMESPACE}.svc.cluster.local:{PORT}")
    }
}

/// What the child is asked to build.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub services: usize,
    pub endpoints: usize,
    pub clusters: usize,
    pub send_timeout: Duration,
}

impl WorldSpec {
    /// As child process arguments.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--child".into(),
            self.services.to_string(),
            self.endpoints.to_string(),
            self.clusters.to_string(),
            self.send_timeout.as_millis().to_string(),
        ]
    }

    /// From child process arguments (after `--child`).
    pub fn from_args(args: &[String]) -> Option<Self> {
        Some(Self {
            services: args.first()?.parse().ok()?,
            endpoints: args.get(1)?.parse().ok()?,
            clusters: args.get(2)?.parse().ok()?,
            send_timeout: Duration::from_millis(args.get(3)?.parse().ok()?),
        })
    }
}

struct ServiceState {
    cluster: usize,
    /// Endpoint ids in slice order.
    ids: Vec<u32>,
}

/// The world as the child keeps it, to derive the objects a change touches.
struct World {
    clusters: Vec<ClusterHandle>,
    services: Vec<ServiceState>,
    next_id: u32,
    replace_cursor: BTreeMap<usize, usize>,
}

fn config(name: &str) -> IndexConfig {
    IndexConfig {
        cluster_name: Arc::from(name),
        cluster_domain: "cluster.local".into(),
        trust_domain: if name == "local" {
            "cluster.local".into()
        } else {
            format!("{name}.example")
        },
        control_plane_ns: "linkerd".into(),
        default_opaque_ports: Arc::new(
            PortSet::parse_strict("25,587,3306,4444,5432,6379,9300,11211").unwrap_or_default(),
        ),
    }
}

fn meta(name: String, labels: &[(&str, String)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(NAMESPACE.into()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        }),
        ..Default::default()
    }
}

/// Pod `id` of service `svc`: meshed, with its service's account.
pub fn mk_pod(svc: usize, id: u32) -> Pod {
    Pod {
        metadata: meta(
            format!("svc-{svc}-{id}"),
            &[
                ("app", format!("svc-{svc}")),
                ("linkerd.io/control-plane-ns", "linkerd".into()),
            ],
        ),
        spec: Some(PodSpec {
            service_account_name: Some(format!("svc-{svc}")),
            node_name: Some(format!("node-{}", id % 12)),
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(addr_of(id).to_string()),
            ..Default::default()
        }),
    }
}

/// The `chunk`th EndpointSlice of service `svc`, holding endpoints `ids`.
pub fn mk_slice(svc: usize, chunk: usize, ids: &[u32]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            format!("svc-{svc}-{chunk}"),
            &[("kubernetes.io/service-name", format!("svc-{svc}"))],
        ),
        address_type: "IPv4".into(),
        endpoints: Some(
            ids.iter()
                .map(|id| Endpoint {
                    addresses: vec![addr_of(*id).to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    node_name: Some(format!("node-{}", id % 12)),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(NAMESPACE.into()),
                        name: Some(format!("svc-{svc}-{id}")),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(PORT)),
            ..Default::default()
        }]),
    }
}

/// A Service with one port, `http` 8080.
pub fn mk_service(name: String, labels: &[(&str, String)]) -> Service {
    Service {
        metadata: meta(name, labels),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(PORT),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl World {
    fn build(spec: &WorldSpec) -> Self {
        let mut names = vec!["local".to_string()];
        names.extend((1..spec.clusters).map(|c| format!("c{c}")));
        let clusters: Vec<ClusterHandle> = names
            .iter()
            .map(|n| ClusterHandle::new(ClusterIndex::shared(config(n))))
            .collect();
        let mut world = Self {
            clusters,
            services: Vec::new(),
            next_id: 0,
            replace_cursor: BTreeMap::new(),
        };
        for cluster in &world.clusters {
            let mut index = cluster.index.lock();
            for n in 0..12 {
                index.apply_node(&Node {
                    metadata: ObjectMeta {
                        name: Some(format!("node-{n}")),
                        labels: Some(
                            [(
                                "topology.kubernetes.io/zone".to_string(),
                                format!("zone-{}", n % 3),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            }
        }
        for i in 0..spec.services {
            let cluster = i % spec.clusters;
            let ids: Vec<u32> = (0..spec.endpoints).map(|_| world.alloc()).collect();
            {
                let mut index = world.clusters[cluster].index.lock();
                index.apply_service(&mk_service(format!("svc-{i}"), &[]));
                for id in &ids {
                    index.apply_pod(&mk_pod(i, *id));
                }
                for (chunk, part) in ids.chunks(SLICE_SIZE).enumerate() {
                    index.apply_endpoint_slice(&mk_slice(i, chunk, part));
                }
            }
            if cluster > 0 {
                let name = &names[cluster];
                world.clusters[0].index.lock().apply_service(&mk_service(
                    format!("svc-{i}-{name}"),
                    &[
                        ("multicluster.linkerd.io/remote-discovery", name.clone()),
                        ("multicluster.linkerd.io/remote-service", format!("svc-{i}")),
                    ],
                ));
            }
            world.services.push(ServiceState { cluster, ids });
        }
        world
    }

    fn alloc(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds `n` endpoints to service `svc`; returns the first new id.
    fn add(&mut self, svc: usize, n: usize) -> u32 {
        let first = self.next_id;
        let new: Vec<u32> = (0..n).map(|_| self.alloc()).collect();
        let state = &mut self.services[svc];
        let first_chunk = state.ids.len() / SLICE_SIZE;
        state.ids.extend(&new);
        let mut index = self.clusters[state.cluster].index.lock();
        for id in &new {
            index.apply_pod(&mk_pod(svc, *id));
        }
        for (chunk, part) in state.ids.chunks(SLICE_SIZE).enumerate().skip(first_chunk) {
            index.apply_endpoint_slice(&mk_slice(svc, chunk, part));
        }
        first
    }

    /// Replaces one endpoint of `svc` (round robin) by a new one; returns the new id.
    fn replace(&mut self, svc: usize) -> u32 {
        let id = self.alloc();
        let cursor = self.replace_cursor.entry(svc).or_default();
        let state = &mut self.services[svc];
        let pos = *cursor % state.ids.len().max(1);
        *cursor += 1;
        let old = std::mem::replace(&mut state.ids[pos], id);
        let chunk = pos / SLICE_SIZE;
        let mut index = self.clusters[state.cluster].index.lock();
        index.apply_pod(&mk_pod(svc, id));
        index.apply_endpoint_slice(&mk_slice(
            svc,
            chunk,
            &state.ids[chunk * SLICE_SIZE..((chunk + 1) * SLICE_SIZE).min(state.ids.len())],
        ));
        index.delete_pod(NAMESPACE, &format!("svc-{svc}-{old}"));
        id
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The child process: build, serve, obey stdin.
pub fn run_child(spec: WorldSpec) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rss_before = crate::proc::rss_kib(std::process::id()).0;
    let started = Instant::now();
    let mut world = World::build(&spec);
    let clusters = Arc::new(ClusterSet::new(world.clusters[0].clone()));
    for c in &world.clusters[1..] {
        clusters.insert(c.clone());
    }
    world.clusters[0].status.set_synced();
    let load = started.elapsed();
    let metrics = Arc::new(Metrics::new());
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        meshlink::runtime::spawn_grpc(
            listener,
            Arc::clone(&clusters),
            StreamSettings {
                cluster_domain: "cluster.local".into(),
                default_opaque_ports: Arc::new(PortSet::default()),
                send_timeout: spec.send_timeout,
                request_timeout: Duration::from_secs(10),
                max_pending_requests: meshlink::grpc::server::DEFAULT_MAX_PENDING_REQUESTS,
            },
            meshlink::grpc::server::ConnectionLimits {
                max_streams_per_connection:
                    meshlink::grpc::server::DEFAULT_MAX_STREAMS_PER_CONNECTION,
                preface_timeout: Duration::from_secs(10),
                shutdown_grace: Duration::from_secs(5),
            },
            Arc::clone(&metrics),
            shutdown_rx,
        )
        .await?;
        anyhow::Ok(addr)
    })?;
    let gc = Arc::clone(&clusters);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            gc.local().index.lock().gc();
        }
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {addr} {} {rss_before}", load.as_micros())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["add", svc, n] => {
                let id = world.add(svc.parse()?, n.parse()?);
                format!("applied {id} {}", now_nanos())
            }
            ["replace", svc] => {
                let id = world.replace(svc.parse()?);
                format!("applied {id} {}", now_nanos())
            }
            ["timeouts"] => format!("timeouts {}", metrics.stream_send_timeouts.get()),
            ["quit"] => break,
            other => format!("error unknown command {other:?}"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    drop(runtime);
    Ok(())
}
