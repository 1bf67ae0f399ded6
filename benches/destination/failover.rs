//! The failover scenario: many `GetProfile` streams on a failover ServiceProfile; the
//! primary's last ready endpoint goes away, and comes back. Timed from the change in the
//! child's index to the moment the last stream holds the new split; and the memory per
//! `GetProfile` stream with a 20-route profile.
//!
//! The child (this program with `--failover-child`) holds `svc-0` (the primary, local)
//! and `svc-1` in a linked cluster `c1`, mirrored locally as `svc-1-c1` (pod-to-pod), and
//! the profile of `svc-0` with `dstOverrides` on both.

use std::{
    io::{BufRead, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use linkerd2_proxy_api::destination::GetDestination;
use meshlink::{
    grpc::StreamSettings,
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig},
    metrics::Metrics,
    model::{
        PortSet, Profile,
        profile::{Failover, RequestMatch, ResponseClass, ResponseMatch, Route, WeightedDst},
    },
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::watch,
};

use crate::{client, percentiles, proc, round, world};

const PRIMARY: &str = "svc-0.bench.svc.cluster.local";
const FALLBACK: &str = "svc-1-c1.bench.svc.cluster.local";
const ENDPOINTS: usize = 10;

/// Runs the scenario: `streams` streams over `connections` connections, `runs` flips each way.
pub async fn scenario(streams: usize, connections: usize, runs: usize) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--failover-child")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the failover child")?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let pid = child.id().context("child pid")?;
    let line = stdout.next_line().await?.context("child exited")?;
    let addr = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["ready", addr] => addr.parse()?,
        _ => bail!("unexpected child output {line:?}"),
    };
    let mut command = async |line: &str| -> Result<u128> {
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        let reply = stdout.next_line().await?.context("child exited")?;
        match reply.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["applied", at] => Ok(at.parse()?),
            _ => bail!("{line}: {reply:?}"),
        }
    };

    let rss_before = proc::rss_kib(pid).0;
    let clients = client::connect(addr, connections, None).await?;
    // Per stream: whether it holds the primary-only split, and when that last changed.
    let state: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..streams)
            .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
            .collect(),
    );
    let firsts = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let mut c = clients[i % clients.len()].destination();
        let (state, firsts, mut stop) = (Arc::clone(&state), Arc::clone(&firsts), stop.clone());
        tasks.push(tokio::spawn(async move {
            let req = GetDestination {
                scheme: "k8s".into(),
                path: format!("{PRIMARY}:{}", world::PORT),
                context_token: String::new(),
            };
            let Ok(resp) = c.get_profile(req).await else {
                return;
            };
            let mut s = resp.into_inner();
            let mut first = true;
            loop {
                let msg = tokio::select! {
                    m = s.message() => m,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok(Some(p)) = msg else { return };
                let primary = p
                    .dst_overrides
                    .iter()
                    .find(|d| d.authority.starts_with(PRIMARY))
                    .map_or(0, |d| u64::from(d.weight > 0));
                let at = client::now_nanos() as u64;
                state[i].1.store(at, Ordering::Release);
                state[i].0.store(primary, Ordering::Release);
                if std::mem::take(&mut first) {
                    firsts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let all = client::wait_until(Duration::from_secs(60), || {
        firsts.load(Ordering::Relaxed) >= streams
    })
    .await;
    if !all {
        bail!("not every GetProfile stream got its first profile");
    }
    // Let the first messages' buffers go before measuring what streams hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_streams = proc::rss_kib(pid).0;

    // Each flip: time from the change to the moment the last stream holds the new split.
    let mut to_last = [Vec::new(), Vec::new()];
    let mut each = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (k, (cmd, want)) in [("down", 0u64), ("up", 1u64)].into_iter().enumerate() {
            let at = command(cmd).await?;
            let state_ref = Arc::clone(&state);
            let done = client::wait_until(Duration::from_secs(10), || {
                state_ref
                    .iter()
                    .all(|(s, _)| s.load(Ordering::Acquire) == want)
            })
            .await;
            if !done {
                bail!("not every stream got the {cmd} split within 10 s");
            }
            let times: Vec<f64> = state
                .iter()
                .map(|(_, t)| (t.load(Ordering::Acquire) as i128 - at as i128) as f64 / 1e6)
                .collect();
            to_last[k].push(times.iter().copied().fold(0.0, f64::max));
            each[k].extend(times);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = command("quit").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let [down_last, up_last] = to_last;
    let [down_each, up_each] = each;
    Ok(json!({
        "streams": streams,
        "runs": runs,
        "primary_gone_every_stream_ms": percentiles(down_last),
        "primary_back_every_stream_ms": percentiles(up_last),
        "primary_gone_each_stream_ms": percentiles(down_each),
        "primary_back_each_stream_ms": percentiles(up_each),
        "routes": 20,
        "bytes_per_profile_stream": round(rss_streams.saturating_sub(rss_before) as f64 * 1024.0 / streams as f64),
    }))
}

fn config(name: &str) -> IndexConfig {
    IndexConfig {
        cluster_name: Arc::from(name),
        cluster_domain: "cluster.local".into(),
        trust_domain: format!("{name}.example"),
        control_plane_ns: "linkerd".into(),
        default_opaque_ports: Arc::new(PortSet::default()),
    }
}

/// The failover profile of `svc-0`, with 20 routes.
fn profile() -> Profile {
    let routes = (0..20)
        .map(|i| Route {
            name: format!("GET /api/v1/resource-{i}/{{id}}"),
            condition: RequestMatch::All(vec![
                RequestMatch::Method("GET".into()),
                RequestMatch::Path(format!("/api/v1/resource-{i}/[^/]+")),
            ]),
            response_classes: vec![ResponseClass {
                condition: ResponseMatch::Status { min: 500, max: 599 },
                is_failure: true,
            }],
            is_retryable: i % 2 == 0,
            timeout: Some(Duration::from_millis(250)),
        })
        .collect();
    let port = world::PORT;
    Profile {
        namespace: world::NAMESPACE.into(),
        name: PRIMARY.into(),
        routes,
        retry_budget: None,
        dst_overrides: vec![
            WeightedDst {
                authority: format!("{PRIMARY}:{port}"),
                weight: 10_000,
            },
            WeightedDst {
                authority: format!("{FALLBACK}:{port}"),
                weight: 10_000,
            },
        ],
        opaque_ports: Default::default(),
        failover: Some(Failover { primary: 0 }),
    }
}

/// The child: builds the two clusters, serves them, flips the primary on stdin.
pub fn run_child() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let local = ClusterHandle::new(ClusterIndex::shared(config("local")));
    let c1 = ClusterHandle::new(ClusterIndex::shared(config("c1")));
    let primary_ids: Vec<u32> = (0..ENDPOINTS as u32).collect();
    let fallback_ids: Vec<u32> = (ENDPOINTS as u32..2 * ENDPOINTS as u32).collect();
    {
        let mut index = local.index.lock();
        index.apply_service(&world::mk_service("svc-0".into(), &[]));
        for id in &primary_ids {
            index.apply_pod(&world::mk_pod(0, *id));
        }
        index.apply_endpoint_slice(&world::mk_slice(0, 0, &primary_ids));
        index.apply_service(&world::mk_service(
            "svc-1-c1".into(),
            &[
                ("multicluster.linkerd.io/remote-discovery", "c1".into()),
                ("multicluster.linkerd.io/remote-service", "svc-1".into()),
            ],
        ));
        index.apply_profile(profile());
    }
    {
        let mut index = c1.index.lock();
        index.apply_service(&world::mk_service("svc-1".into(), &[]));
        for id in &fallback_ids {
            index.apply_pod(&world::mk_pod(1, *id));
        }
        index.apply_endpoint_slice(&world::mk_slice(1, 0, &fallback_ids));
    }
    let clusters = Arc::new(ClusterSet::new(local.clone()));
    clusters.insert(c1);
    local.status.set_synced();
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
                send_timeout: Duration::from_secs(30),
                request_timeout: Duration::from_secs(10),
                max_pending_requests: meshlink::grpc::server::DEFAULT_MAX_PENDING_REQUESTS,
            },
            meshlink::grpc::server::ConnectionLimits {
                max_streams_per_connection:
                    meshlink::grpc::server::DEFAULT_MAX_STREAMS_PER_CONNECTION,
                preface_timeout: Duration::from_secs(10),
                shutdown_grace: Duration::from_secs(5),
            },
            metrics,
            shutdown_rx,
        )
        .await?;
        anyhow::Ok(addr)
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {addr}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let ids: &[u32] = match line?.trim() {
            "down" => &[],
            "up" => &primary_ids,
            "quit" => break,
            other => {
                writeln!(out, "error unknown command {other:?}")?;
                out.flush()?;
                continue;
            }
        };
        local
            .index
            .lock()
            .apply_endpoint_slice(&world::mk_slice(0, 0, ids));
        writeln!(out, "applied {}", client::now_nanos())?;
        out.flush()?;
    }
    drop(runtime);
    Ok(())
}
