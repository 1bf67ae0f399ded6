//! The client side: a real gRPC client holding many `Get` streams over a few connections,
//! recording when each change reaches each stream.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use linkerd2_proxy_api::{
    destination::{GetDestination, destination_client::DestinationClient, update},
    net,
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

use crate::world;

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// What one stream saw.
#[derive(Debug, Default)]
pub struct StreamRecord {
    /// When the first message arrived, and how many endpoints it held.
    pub first: Option<(u128, usize)>,
    /// (endpoint id, arrival) for every added endpoint with id >= the watch floor.
    pub events: Vec<(u32, u128)>,
    /// When the set first reached the convergence target.
    pub converged: Option<u128>,
    pub error: Option<String>,
}

/// Opens `connections` HTTP/2 connections to `addr`.
pub async fn connect(
    addr: SocketAddr,
    connections: usize,
    stream_window: Option<u32>,
) -> anyhow::Result<Vec<DestinationClient<Channel>>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .initial_stream_window_size(stream_window)
            .connect()
            .await?;
        clients.push(DestinationClient::new(channel).max_decoding_message_size(64 << 20));
    }
    Ok(clients)
}

/// Live counters, to know when every stream got there.
#[derive(Debug, Default)]
pub struct Progress {
    /// Streams whose first message arrived.
    pub firsts: AtomicUsize,
    /// Streams whose set reached the convergence target.
    pub converged: AtomicUsize,
    /// Streams that saw `final_id`.
    pub saw_final: AtomicUsize,
    pub final_id: AtomicU32,
}

/// Shared knobs of the stream readers.
#[derive(Clone)]
pub struct Watch {
    /// Ids from here on are changes worth timing.
    pub floor: u32,
    /// Set size that counts as converged (0: none).
    pub converge_to: Arc<AtomicUsize>,
    pub progress: Arc<Progress>,
    pub stop: watch::Receiver<bool>,
}

/// Opens one stream per authority, spread over `clients`; `stalled(i)` streams never read.
pub fn open_streams(
    clients: &[DestinationClient<Channel>],
    authorities: Vec<String>,
    watch: Watch,
    stalled: impl Fn(usize) -> bool,
) -> Vec<JoinHandle<StreamRecord>> {
    authorities
        .into_iter()
        .enumerate()
        .map(|(i, authority)| {
            let mut client = clients[i % clients.len()].clone();
            let watch = watch.clone();
            let stall = stalled(i);
            tokio::spawn(async move { read_stream(&mut client, authority, watch, stall).await })
        })
        .collect()
}

async fn read_stream(
    client: &mut DestinationClient<Channel>,
    authority: String,
    mut w: Watch,
    stall: bool,
) -> StreamRecord {
    let mut record = StreamRecord::default();
    let req = GetDestination {
        scheme: "k8s".into(),
        path: authority,
        context_token: r#"{"ns":"bench","nodeName":"node-1"}"#.into(),
    };
    let mut stream = match client.get(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            record.error = Some(e.to_string());
            return record;
        }
    };
    if stall {
        let _ = w.stop.wait_for(|s| *s).await;
        return record;
    }
    let mut ids: HashSet<u32> = HashSet::new();
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = w.stop.wait_for(|s| *s) => break,
        };
        let at = now_nanos();
        let update = match msg {
            Ok(Some(u)) => u,
            Ok(None) => break,
            Err(e) => {
                record.error = Some(e.to_string());
                break;
            }
        };
        match update.update {
            Some(update::Update::Add(set)) => {
                for a in set.addrs {
                    if let Some(id) = a.addr.as_ref().and_then(id_of) {
                        ids.insert(id);
                        if id >= w.floor {
                            record.events.push((id, at));
                        }
                        if id == w.progress.final_id.load(Ordering::Relaxed) {
                            w.progress.saw_final.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Some(update::Update::Remove(set)) => {
                for a in &set.addrs {
                    if let Some(id) = id_of(a) {
                        ids.remove(&id);
                    }
                }
            }
            Some(update::Update::NoEndpoints(_)) => ids.clear(),
            None => {}
        }
        if record.first.is_none() {
            record.first = Some((at, ids.len()));
            w.progress.firsts.fetch_add(1, Ordering::Relaxed);
        }
        let target = w.converge_to.load(Ordering::Relaxed);
        if target > 0 && ids.len() == target && record.converged.is_none() {
            record.converged = Some(at);
            w.progress.converged.fetch_add(1, Ordering::Relaxed);
        }
    }
    record
}

fn id_of(a: &net::TcpAddress) -> Option<u32> {
    match a.ip.as_ref()?.ip.as_ref()? {
        net::ip_address::Ip::Ipv4(v4) => world::id_of(*v4),
        _ => None,
    }
}

/// Waits until `done` holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
