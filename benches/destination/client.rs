//! The client side: a real gRPC client holding many `Get` streams over a few connections,
//! recording when each change reaches each stream.
//!
//! `Get` updates are decoded into [`lean`] messages: the same wire messages, read only
//! for the addresses the benchmark times. Client and server share the machine's two
//! cores, and decoding every identity, hint and label a real proxy keeps was as much CPU
//! as the server spent making the messages, so the client's own cost was in every
//! latency measured.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use linkerd2_proxy_api::destination::{GetDestination, destination_client::DestinationClient};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

use self::lean::update;

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

/// One HTTP/2 connection to a destination server.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

/// The largest message the client takes (a first snapshot of thousands of endpoints).
const MAX_MESSAGE: usize = 64 << 20;

impl Client {
    /// The published client of the destination API on this connection.
    pub fn destination(&self) -> DestinationClient<Channel> {
        DestinationClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// A `Get` stream whose updates are decoded for their addresses only.
    pub async fn get_lean(
        &self,
        req: GetDestination,
    ) -> Result<tonic::Streaming<lean::Update>, tonic::Status> {
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path =
            http::uri::PathAndQuery::from_static("/io.linkerd.proxy.destination.Destination/Get");
        let codec = tonic_prost::ProstCodec::<GetDestination, lean::Update>::default();
        let resp = grpc
            .server_streaming(tonic::Request::new(req), path, codec)
            .await?;
        Ok(resp.into_inner())
    }
}

/// Opens `connections` HTTP/2 connections to `addr`.
pub async fn connect(
    addr: SocketAddr,
    connections: usize,
    stream_window: Option<u32>,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .initial_stream_window_size(stream_window)
            .connect()
            .await?;
        clients.push(Client { channel });
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
    clients: &[Client],
    authorities: Vec<String>,
    watch: Watch,
    stalled: impl Fn(usize) -> bool,
) -> Vec<JoinHandle<StreamRecord>> {
    authorities
        .into_iter()
        .enumerate()
        .map(|(i, authority)| {
            let client = clients[i % clients.len()].clone();
            let watch = watch.clone();
            let stall = stalled(i);
            tokio::spawn(async move { read_stream(&client, authority, watch, stall).await })
        })
        .collect()
}

async fn read_stream(
    client: &Client,
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
    let mut stream = match client.get_lean(req).await {
        Ok(s) => s,
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
    // Made once: a waiter registered and dropped per message showed in the client's profile.
    let stopped = w.stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut stopped => break,
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

fn id_of(a: &lean::TcpAddress) -> Option<u32> {
    world::id_of(a.ip.as_ref()?.ipv4?)
}

/// The destination API's `Update` as the benchmark reads it: the same field numbers as
/// `destination.proto` and `net.proto`, with only the addresses kept; every other field
/// is skipped by the decoder as unknown.
pub mod lean {
    /// `io.linkerd.proxy.destination.Update`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Update {
        #[prost(oneof = "update::Update", tags = "1, 2, 3")]
        pub update: Option<update::Update>,
    }

    pub mod update {
        /// The `update` oneof.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Update {
            #[prost(message, tag = "1")]
            Add(super::WeightedAddrSet),
            #[prost(message, tag = "2")]
            Remove(super::AddrSet),
            #[prost(message, tag = "3")]
            NoEndpoints(super::NoEndpoints),
        }
    }

    /// `WeightedAddrSet`: its addresses, without the set's labels.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WeightedAddrSet {
        #[prost(message, repeated, tag = "1")]
        pub addrs: Vec<WeightedAddr>,
    }

    /// `WeightedAddr`: its address, without weight, labels, identity and hints.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WeightedAddr {
        #[prost(message, optional, tag = "1")]
        pub addr: Option<TcpAddress>,
    }

    /// `AddrSet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AddrSet {
        #[prost(message, repeated, tag = "1")]
        pub addrs: Vec<TcpAddress>,
    }

    /// `NoEndpoints`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NoEndpoints {
        #[prost(bool, tag = "1")]
        pub exists: bool,
    }

    /// `io.linkerd.proxy.net.TcpAddress`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TcpAddress {
        #[prost(message, optional, tag = "1")]
        pub ip: Option<IpAddress>,
        #[prost(uint32, tag = "2")]
        pub port: u32,
    }

    /// `io.linkerd.proxy.net.IPAddress`, IPv4 only (the benchmark's worlds have no other).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IpAddress {
        #[prost(fixed32, optional, tag = "1")]
        pub ipv4: Option<u32>,
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
