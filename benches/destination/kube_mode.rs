//! The Kubernetes mode: changes go through a real API server, and the streams are held
//! against any destination server (`--target`), so meshlink and any other implementation
//! of the destination API are measured by the same client on the same world.
//!
//! The world is the in-process one (same names, addresses and labels), created as
//! Services, Pods and EndpointSlices in namespace `bench`; each change replaces one
//! endpoint of `svc-0` (a new Pod and an EndpointSlice update). Latency runs from the API
//! server acknowledging the slice update to each stream receiving the new address.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Container, Namespace};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use meshlink::k8s::{EndpointSlice, ObjectMeta, Pod, Service};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    client::{self, Progress, Watch},
    latencies, round,
    world::{self, NAMESPACE},
};

/// What to measure against whom.
pub struct KubeOptions {
    pub kubeconfig: PathBuf,
    pub target: SocketAddr,
    pub services: usize,
    pub endpoints: usize,
    pub streams: usize,
    pub connections: usize,
    pub changes: usize,
    pub interval: Duration,
}

const RUN_LABEL: &str = "meshlink.io/bench";

fn labelled<T: kube::Resource>(mut obj: T) -> T {
    obj.meta_mut()
        .labels
        .get_or_insert_with(Default::default)
        .insert(RUN_LABEL.into(), "true".into());
    obj
}

fn pod(svc: usize, id: u32) -> Pod {
    let mut pod = world::mk_pod(svc, id);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers = vec![Container {
            name: "app".into(),
            image: Some("registry.invalid/bench:0".into()),
            ..Default::default()
        }];
    }
    pod.status = None;
    labelled(pod)
}

async fn client(kubeconfig: &PathBuf) -> Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Removes what an earlier run left (the namespace itself stays: deleting one needs a
/// controller that bare API servers do not run).
async fn clean(client: &Client) -> Result<()> {
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}=true"));
    let dp = DeleteParams::default();
    Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE)
        .delete_collection(&dp, &lp)
        .await?;
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .delete_collection(&dp, &lp)
        .await?;
    // Services have no deletecollection; delete them one by one.
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    for s in services.list(&lp).await? {
        if let Some(name) = s.metadata.name {
            services.delete(&name, &dp).await?;
        }
    }
    Ok(())
}

/// Creates the world, holds the streams on `target`, and times changes made through the API.
pub async fn run(o: KubeOptions) -> Result<Value> {
    let client = client(&o.kubeconfig).await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e).context("cannot create namespace bench"),
    }
    clean(&client).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE);
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let pp = PostParams::default();
    let started = Instant::now();
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut next_id = 0u32;
    for i in 0..o.services {
        services
            .create(&pp, &labelled(world::mk_service(format!("svc-{i}"), &[])))
            .await?;
        let mine: Vec<u32> = (0..o.endpoints).map(|k| next_id + k as u32).collect();
        next_id += o.endpoints as u32;
        for id in &mine {
            pods.create(&pp, &pod(i, *id)).await?;
        }
        for (chunk, part) in mine.chunks(world::SLICE_SIZE).enumerate() {
            slices
                .create(&pp, &labelled(world::mk_slice(i, chunk, part)))
                .await?;
        }
        ids.push(mine);
    }
    let create_ms = started.elapsed().as_secs_f64() * 1e3;

    let clients = client::connect(o.target, o.connections, None).await?;
    let (stop, stop_rx) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    let floor = next_id;
    progress
        .final_id
        .store(floor + o.changes as u32 - 1, Ordering::Relaxed);
    let authorities: Vec<String> = (0..o.streams)
        .map(|i| world::authority(i % o.services, 1))
        .collect();
    let opened = Instant::now();
    let tasks = client::open_streams(
        &clients,
        authorities,
        Watch {
            floor,
            converge_to: Arc::default(),
            progress: Arc::clone(&progress),
            stop: stop_rx,
        },
        |_| false,
    );
    // Wait for every stream to hold its service's whole set.
    let all_first = client::wait_until(Duration::from_secs(60), || {
        progress.firsts.load(Ordering::Relaxed) >= o.streams
    })
    .await;
    let first_ms = opened.elapsed().as_secs_f64() * 1e3;

    let mut applied = BTreeMap::new();
    let svc0 = &mut ids[0];
    for k in 0..o.changes {
        let id = next_id;
        next_id += 1;
        let pos = k % svc0.len();
        svc0[pos] = id;
        pods.create(&pp, &pod(0, id)).await?;
        let chunk = pos / world::SLICE_SIZE;
        let part =
            &svc0[chunk * world::SLICE_SIZE..((chunk + 1) * world::SLICE_SIZE).min(svc0.len())];
        let slice = world::mk_slice(0, chunk, part);
        let patch = json!({"endpoints": slice.endpoints});
        slices
            .patch(
                &format!("svc-0-{chunk}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        applied.insert(id, client::now_nanos());
        tokio::time::sleep(o.interval).await;
    }
    let readers = o.streams.div_ceil(o.services);
    let all_final = client::wait_until(Duration::from_secs(30), || {
        progress.saw_final.load(Ordering::Relaxed) >= readers
    })
    .await;
    let _ = stop.send(true);
    let mut records = Vec::new();
    for t in tasks {
        records.push(t.await?);
    }
    let errors = records.iter().filter(|r| r.error.is_some()).count();
    clean(&client).await?;
    let (each, to_last, n) = latencies(&records, &applied);
    let full = records
        .iter()
        .filter(|r| r.first.is_some_and(|(_, count)| count == o.endpoints))
        .count();
    Ok(json!({
        "target": o.target.to_string(),
        "world_created_in_api_ms": round(create_ms),
        "all_first_snapshots_ms": round(first_ms),
        "all_streams_got_a_first_message": all_first,
        "streams_with_full_first_snapshot": full,
        "stream_errors": errors,
        "changes": o.changes,
        "every_watcher_saw_the_last_change": all_final,
        "latency_ms": each,
        "to_last_stream_ms": to_last,
        "updates_received": n,
    }))
}
