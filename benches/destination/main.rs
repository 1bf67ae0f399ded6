//! meshlink's benchmark: fan-out latency, memory and churn at Kubernetes scale.
//!
//! The server runs in a child process (this same program with `--child`) that builds a
//! synthetic world through the index API, serves it over gRPC on loopback, and applies
//! changes it reads on stdin. This process holds N `Get` streams over M HTTP/2
//! connections with the published linkerd2-proxy-api client and times every change
//! from its application in the child to its arrival on each stream. Memory and CPU are
//! the child's alone (from /proc).
//!
//! ```text
//! cargo bench --bench destination                  # every scenario at full size
//! cargo bench --bench destination -- --quick       # small sizes, seconds (CI)
//! cargo bench --bench destination -- --scenario fanout-25k --runs 3 --json out.json
//! cargo bench --bench destination -- --kubeconfig K --target HOST:PORT --target-pid PID
//! cargo bench --bench destination -- --compare a.json b.json
//! ```

mod client;
mod compare;
mod failover;
mod kube_mode;
mod kube_world;
mod proc;
mod stats;
mod world;

use stats::{percentiles, round};

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{ChildStdin, ChildStdout},
    sync::watch,
};

use client::{Progress, StreamRecord, Watch};

use world::WorldSpec;

/// A running child server.
struct Server {
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
    pid: u32,
    load: Duration,
    rss_before_kib: u64,
}

impl Server {
    async fn start(spec: &WorldSpec) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(spec.to_args())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server child")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let line = stdout
            .next_line()
            .await?
            .context("child exited before it was ready")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["ready", addr, load_us, rss] = words.as_slice() else {
            bail!("unexpected child output {line:?}");
        };
        Ok(Self {
            pid: child.id().context("child pid")?,
            child,
            stdin,
            stdout,
            addr: addr.parse()?,
            load: Duration::from_micros(load_us.parse()?),
            rss_before_kib: rss.parse()?,
        })
    }

    async fn command(&mut self, line: &str) -> Result<Vec<String>> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let reply = self.stdout.next_line().await?.context("child exited")?;
        Ok(reply.split_whitespace().map(String::from).collect())
    }

    /// Applies a change; returns (new endpoint id, applied at, in ns since the epoch).
    async fn apply(&mut self, line: &str) -> Result<(u32, u128)> {
        match self.command(line).await?.as_slice() {
            [word, id, at] if word == "applied" => Ok((id.parse()?, at.parse()?)),
            other => bail!("{line}: {other:?}"),
        }
    }

    async fn timeouts(&mut self) -> Result<u64> {
        match self.command("timeouts").await?.as_slice() {
            [_, n] => Ok(n.parse()?),
            other => bail!("timeouts: {other:?}"),
        }
    }

    fn rss(&self) -> (u64, u64) {
        proc::rss_kib(self.pid)
    }

    fn cpu(&self) -> f64 {
        proc::cpu_seconds(self.pid)
    }

    async fn stop(mut self) {
        let _ = self.command("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn ms(nanos: i128) -> f64 {
    nanos as f64 / 1e6
}

/// Sizes of one scenario.
#[derive(Clone, Copy)]
struct Size {
    services: usize,
    endpoints: usize,
    clusters: usize,
    streams: usize,
    connections: usize,
}

struct Opened {
    server: Server,
    tasks: Vec<tokio::task::JoinHandle<StreamRecord>>,
    progress: Arc<Progress>,
    converge_to: Arc<std::sync::atomic::AtomicUsize>,
    stop: watch::Sender<bool>,
    first_snapshot_ms: f64,
    rss_world_kib: u64,
    open_failed: usize,
}

/// Starts a world, opens the streams, and waits for every first snapshot.
async fn open(
    size: Size,
    send_timeout: Duration,
    stream_window: Option<u32>,
    stalled: impl Fn(usize) -> bool,
) -> Result<Opened> {
    let spec = WorldSpec {
        services: size.services,
        endpoints: size.endpoints,
        clusters: size.clusters,
        send_timeout,
    };
    let server = Server::start(&spec).await?;
    let rss_world_kib = server.rss().0;
    let clients = client::connect(server.addr, size.connections, stream_window).await?;
    let (stop, stop_rx) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    progress.final_id.store(u32::MAX, Ordering::Relaxed);
    let converge_to = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let floor = (size.services * size.endpoints) as u32;
    let authorities: Vec<String> = (0..size.streams)
        .map(|i| world::authority(i % size.services, size.clusters))
        .collect();
    let readers = (0..size.streams).filter(|i| !stalled(*i)).count();
    let started = Instant::now();
    let tasks = client::open_streams(
        &clients,
        authorities,
        Watch {
            floor,
            converge_to: Arc::clone(&converge_to),
            progress: Arc::clone(&progress),
            stop: stop_rx,
        },
        stalled,
    );
    let all = client::wait_until(Duration::from_secs(120), || {
        progress.firsts.load(Ordering::Relaxed) >= readers
    })
    .await;
    let first_snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
    let open_failed = readers - progress.firsts.load(Ordering::Relaxed);
    if !all {
        eprintln!("warning: {open_failed} streams got no first message within 120 s");
    }
    Ok(Opened {
        server,
        tasks,
        progress,
        converge_to,
        stop,
        first_snapshot_ms,
        rss_world_kib,
        open_failed,
    })
}

impl Opened {
    async fn finish(self) -> Result<(Server, Vec<StreamRecord>)> {
        let _ = self.stop.send(true);
        let mut records = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            records.push(t.await?);
        }
        Ok((self.server, records))
    }
}

/// Latency of each change to each stream, and to the last stream per change.
fn latencies(records: &[StreamRecord], applied: &BTreeMap<u32, u128>) -> (Value, Value, usize) {
    let mut each = Vec::new();
    let mut last: BTreeMap<u32, u128> = BTreeMap::new();
    for r in records {
        for (id, at) in &r.events {
            if let Some(t) = applied.get(id) {
                each.push(ms(*at as i128 - *t as i128));
                let l = last.entry(*id).or_default();
                *l = (*l).max(*at);
            }
        }
    }
    let to_last: Vec<f64> = last
        .iter()
        .map(|(id, at)| ms(*at as i128 - applied[id] as i128))
        .collect();
    let n = each.len();
    (percentiles(each), percentiles(to_last), n)
}

fn kib_per(delta_kib: u64, n: usize) -> f64 {
    round(delta_kib as f64 * 1024.0 / n.max(1) as f64)
}

/// idle scale: memory of the world and of open streams.
async fn idle(size: Size) -> Result<Value> {
    let o = open(size, Duration::from_secs(30), None, |_| false).await?;
    let rss_burst = o.server.rss().0;
    let cpu0 = o.server.cpu();
    // Idle with every stream open: what the streams hold once the first snapshots are sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = o.server.cpu() - cpu0;
    let (rss_streams, peak) = o.server.rss();
    let (first_ms, rss_world, rss_before, load, failed) = (
        o.first_snapshot_ms,
        o.rss_world_kib,
        o.server.rss_before_kib,
        o.server.load,
        o.open_failed,
    );
    let (server, records) = o.finish().await?;
    let cpu = server.cpu();
    server.stop().await;
    let full = records
        .iter()
        .filter(|r| r.first.is_some_and(|(_, n)| n == size.endpoints))
        .count();
    let endpoints = size.services * size.endpoints;
    Ok(json!({
        "world_load_ms": round(load.as_secs_f64() * 1e3),
        "all_first_snapshots_ms": round(first_ms),
        "streams_with_full_first_snapshot": full,
        "streams_failed": failed,
        "rss_mib": round(rss_streams as f64 / 1024.0),
        "rss_right_after_first_snapshots_mib": round(rss_burst as f64 / 1024.0),
        "peak_rss_mib": round(peak as f64 / 1024.0),
        "bytes_per_endpoint": kib_per(rss_world.saturating_sub(rss_before), endpoints),
        "bytes_per_stream": kib_per(rss_streams.saturating_sub(rss_world), size.streams),
        "idle_cpu_s_per_s": round(idle_cpu / 5.0),
        "cpu_s": round(cpu),
    }))
}

/// fan-out: single-endpoint changes on one service watched by every stream.
async fn fanout(
    size: Size,
    changes: usize,
    interval: Duration,
    stalled_pct: usize,
    send_timeout: Duration,
    stream_window: Option<u32>,
) -> Result<Value> {
    let stalled = move |i: usize| stalled_pct > 0 && i.is_multiple_of(100 / stalled_pct);
    let mut o = open(size, send_timeout, stream_window, stalled).await?;
    let cpu0 = o.server.cpu();
    let client_cpu0 = proc::cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut applied = BTreeMap::new();
    // Ids are allocated in order: the world took the first services x endpoints.
    let floor = (size.services * size.endpoints) as u32;
    o.progress
        .final_id
        .store(floor + changes as u32 - 1, Ordering::Relaxed);
    for _ in 0..changes {
        let (id, at) = o.server.apply("replace 0").await?;
        applied.insert(id, at);
        tokio::time::sleep(interval).await;
    }
    let readers = (0..size.streams).filter(|i| !stalled(*i)).count();
    let progress = Arc::clone(&o.progress);
    client::wait_until(Duration::from_secs(30), || {
        progress.saw_final.load(Ordering::Relaxed) >= readers
    })
    .await;
    if stalled_pct > 0 {
        // Give the send timeout time to reset the stalled streams.
        tokio::time::sleep(send_timeout + Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = o.server.cpu() - cpu0;
    let client_cpu = proc::cpu_seconds(std::process::id()) - client_cpu0;
    let timeouts = o.server.timeouts().await?;
    let (server, records) = o.finish().await?;
    let (rss, hwm) = server.rss();
    server.stop().await;
    let (each, to_last, n) = latencies(&records, &applied);
    Ok(json!({
        "changes": changes,
        "latency_ms": each,
        "to_last_stream_ms": to_last,
        "updates_received": n,
        "updates_per_s": round(n as f64 / elapsed),
        "stalled_streams": size.streams - readers,
        "stalled_streams_reset": timeouts,
        "rss_mib": round(rss as f64 / 1024.0),
        "peak_rss_mib": round(hwm as f64 / 1024.0),
        "cpu_s": round(cpu),
        "server_cpu_us_per_update": round(cpu * 1e6 / n.max(1) as f64),
        "client_cpu_s": round(client_cpu),
    }))
}

/// rollout: one service scales up in steps; time until every stream holds the final set.
async fn rollout(size: Size, to: usize, steps: usize, interval: Duration) -> Result<Value> {
    let mut o = open(size, Duration::from_secs(30), None, |_| false).await?;
    o.converge_to.store(to, Ordering::Relaxed);
    let per_step = (to - size.endpoints) / steps;
    let mut last_at = 0;
    for _ in 0..steps {
        let (_, at) = o.server.apply(&format!("add 0 {per_step}")).await?;
        last_at = at;
        tokio::time::sleep(interval).await;
    }
    let progress = Arc::clone(&o.progress);
    let all = client::wait_until(Duration::from_secs(30), || {
        progress.converged.load(Ordering::Relaxed) >= size.streams
    })
    .await;
    let (server, records) = o.finish().await?;
    server.stop().await;
    let after_last: Vec<f64> = records
        .iter()
        .filter_map(|r| r.converged)
        .map(|c| ms(c as i128 - last_at as i128))
        .collect();
    let worst = after_last.iter().copied().fold(0.0f64, f64::max);
    Ok(json!({
        "from": size.endpoints,
        "to": to,
        "steps": steps,
        "streams": size.streams,
        "all_converged": all,
        "converged_streams": after_last.len(),
        // Only when every stream converged: the latest of some is no figure of all.
        "every_stream_converged_after_last_step_ms": all.then(|| round(worst)),
        "convergence_after_last_step_ms": percentiles(after_last),
    }))
}

/// churn: steady endpoint replacements spread over many services.
async fn churn(size: Size, rate: usize, duration: Duration) -> Result<Value> {
    let mut o = open(size, Duration::from_secs(30), None, |_| false).await?;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // Warm-up: the streams open and the churn reaches its steady state (a third of the run).
    let warmup = duration / 3;
    let started = Instant::now();
    let cpu0 = o.server.cpu();
    let mut applied = BTreeMap::new();
    let mut rss_warm = None;
    let mut next = tokio::time::Instant::now();
    let mut k = 0usize;
    while started.elapsed() < duration {
        let (id, at) = o
            .server
            .apply(&format!("replace {}", k % size.services))
            .await?;
        applied.insert(id, at);
        k += 1;
        if rss_warm.is_none() && started.elapsed() >= warmup {
            rss_warm = Some(o.server.rss().0);
        }
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let achieved = k as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = o.server.cpu() - cpu0;
    let rss_end = o.server.rss().0;
    let (server, records) = o.finish().await?;
    let hwm = server.rss().1;
    server.stop().await;
    let (each, _, n) = latencies(&records, &applied);
    let rss_warm = rss_warm.unwrap_or(rss_end);
    Ok(json!({
        "changes_per_s": round(achieved),
        "changes": k,
        "latency_ms": each,
        "updates_received": n,
        "rss_after_warmup_mib": round(rss_warm as f64 / 1024.0),
        "rss_end_mib": round(rss_end as f64 / 1024.0),
        "rss_growth_pct": round((rss_end as f64 / rss_warm as f64 - 1.0) * 100.0),
        "peak_rss_mib": round(hwm as f64 / 1024.0),
        "cpu_s_per_s": round(cpu / duration.as_secs_f64()),
    }))
}

/// cold start: the index loads a world of this size.
async fn cold_start(services: usize, endpoints: usize) -> Result<Value> {
    let spec = WorldSpec {
        services,
        endpoints,
        clusters: 1,
        send_timeout: Duration::from_secs(30),
    };
    let server = Server::start(&spec).await?;
    let load = server.load;
    let (rss, _) = server.rss();
    let before = server.rss_before_kib;
    server.stop().await;
    Ok(json!({
        "endpoints": services * endpoints,
        "load_to_ready_ms": round(load.as_secs_f64() * 1e3),
        "bytes_per_endpoint": kib_per(rss.saturating_sub(before), services * endpoints),
    }))
}

struct Options {
    quick: bool,
    /// Scenarios to run (all when empty); `--scenario a,b`.
    scenarios: Vec<String>,
    json: Option<String>,
    runs: usize,
    kubeconfig: Option<std::path::PathBuf>,
    target: Option<SocketAddr>,
    target_pid: Option<u32>,
    label: Option<String>,
    compare: Option<(String, String)>,
    /// `--size S,E,N,M` overrides the idle scenario's sizes (in Kubernetes mode also the
    /// world's services and endpoints).
    size: Option<[usize; 4]>,
    /// `--seconds N` overrides the churn scenario's duration.
    seconds: Option<u64>,
    /// `--changes N` overrides the changes per fan-out run (Kubernetes mode).
    changes: Option<usize>,
    reuse_world: bool,
    world_only: bool,
    writers: usize,
}

const USAGE: &str = "\
usage: destination [--quick] [--scenario NAME[,NAME..]] [--runs N] [--json PATH] [--label NAME]
                   [--size S,E,N,M] [--seconds N]
  scenarios: cold-start idle idle-multicluster fanout-1k fanout-25k rollout churn slow-readers failover
Kubernetes mode, changes through a real API server to any destination server:
  --kubeconfig PATH --target HOST:PORT   the API server, and the server holding the streams
  --target-pid PID                       read that process's RSS and CPU time (and cold start)
  --reuse-world                          keep the world of an earlier run if it has this size
  --world-only                           create (or find) the world and exit
  --writers N                            concurrent writes while creating it (16)
  --changes N                            changes per fan-out run (100; 10 with --quick)
  --size S,E,N,M                         world S services x E endpoints; idle N streams / M connections
--compare A.json B.json                  two reports side by side, with ratios";

fn parse_options() -> Result<Options> {
    let mut o = Options {
        quick: false,
        scenarios: Vec::new(),
        json: None,
        runs: 1,
        kubeconfig: None,
        target: None,
        target_pid: None,
        label: None,
        compare: None,
        size: None,
        seconds: None,
        changes: None,
        reuse_world: false,
        world_only: false,
        writers: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{a} {what}"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--scenario" => {
                o.scenarios = value("NAME[,NAME..]")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--json" => o.json = Some(value("PATH")?),
            "--runs" => o.runs = value("N")?.parse().context("--runs N")?,
            "--kubeconfig" => o.kubeconfig = Some(value("PATH")?.into()),
            "--target" => {
                o.target = Some(value("HOST:PORT")?.parse().context("--target HOST:PORT")?)
            }
            "--target-pid" => {
                o.target_pid = Some(value("PID")?.parse().context("--target-pid PID")?)
            }
            "--label" => o.label = Some(value("NAME")?),
            "--compare" => {
                let a = value("A.json B.json")?;
                let b = value("A.json B.json")?;
                o.compare = Some((a, b));
            }
            "--seconds" => o.seconds = Some(value("N")?.parse().context("--seconds N")?),
            "--changes" => o.changes = Some(value("N")?.parse().context("--changes N")?),
            "--writers" => o.writers = value("N")?.parse().context("--writers N")?,
            "--reuse-world" => o.reuse_world = true,
            "--world-only" => o.world_only = true,
            "--size" => {
                let v: Vec<usize> = value("S,E,N,M")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--size takes four numbers: services,endpoints,streams,connections")?;
                o.size = Some(v.try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "--size takes four numbers: services,endpoints,streams,connections"
                    )
                })?);
            }
            "--bench" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.kubeconfig.is_none() && (o.target_pid.is_some() || o.reuse_world || o.world_only) {
        bail!("--target-pid, --reuse-world and --world-only need --kubeconfig");
    }
    Ok(o)
}

/// The machine and the run, for every report.
fn machine(opts: &Options) -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": proc::cpu_model(),
        "quick": opts.quick,
        "label": opts.label,
        "mode": if opts.kubeconfig.is_some() { "kubernetes" } else { "in-process" },
        "target": opts.target.map(|t| t.to_string()),
        "target_pid": opts.target_pid,
    })
}

/// Runs `f` `runs` times and keeps the run with the median of `key` (or the only run).
async fn median_of<F, Fut>(runs: usize, key: &str, mut f: F) -> Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        results.push(f().await?);
    }
    let pick = |v: &Value| v.pointer(key).and_then(Value::as_f64).unwrap_or(0.0);
    results.sort_by(|a, b| pick(a).total_cmp(&pick(b)));
    let mut chosen = results[results.len() / 2].clone();
    if results.len() > 1 {
        chosen["runs"] = json!(results.len());
        chosen["median_of"] = json!(key);
    }
    Ok(chosen)
}

async fn run(opts: Options) -> Result<()> {
    let q = opts.quick;
    if let Some((a, b)) = &opts.compare {
        print!("{}", compare::table(a, b)?);
        return Ok(());
    }
    if let Some(kubeconfig) = opts.kubeconfig.clone() {
        let target = opts
            .target
            .context("--kubeconfig needs --target HOST:PORT (the destination server to measure)")?;
        let (world, scenarios) = kube_mode::run(kube_mode::KubeOptions {
            kubeconfig,
            target,
            target_pid: opts.target_pid,
            quick: q,
            scenarios: opts.scenarios.clone(),
            size: opts.size,
            seconds: opts.seconds,
            changes: opts.changes,
            runs: opts.runs,
            reuse_world: opts.reuse_world,
            world_only: opts.world_only,
            writers: opts.writers,
        })
        .await?;
        let report = json!({"machine": machine(&opts), "world": world, "scenarios": scenarios});
        return emit(&report, opts.json);
    }
    let size = |services, endpoints, streams, connections| Size {
        services,
        endpoints,
        clusters: 1,
        streams,
        connections,
    };
    let wanted = |name: &str| opts.scenarios.is_empty() || opts.scenarios.iter().any(|s| s == name);
    let mut out = serde_json::Map::new();
    let runs = opts.runs;
    if wanted("cold-start") {
        let (s, e) = if q { (100, 100) } else { (1000, 100) };
        out.insert(
            "cold-start".into(),
            median_of(runs, "/load_to_ready_ms", || cold_start(s, e)).await?,
        );
    }
    if wanted("idle") {
        let sz = if let Some([s, e, n, m]) = opts.size {
            size(s, e, n, m)
        } else if q {
            size(100, 100, 2500, 25)
        } else {
            size(1000, 100, 25_000, 250)
        };
        out.insert(
            "idle".into(),
            median_of(runs, "/rss_mib", || idle(sz)).await?,
        );
    }
    if wanted("idle-multicluster") {
        let mut sz = if q {
            size(90, 100, 900, 9)
        } else {
            size(300, 100, 6_000, 60)
        };
        sz.clusters = 3;
        out.insert(
            "idle-multicluster".into(),
            median_of(runs, "/rss_mib", || idle(sz)).await?,
        );
    }
    if wanted("fanout-1k") {
        let (sz, n) = if q {
            (size(1, 100, 1000, 10), 5)
        } else {
            (size(1, 100, 1000, 10), 20)
        };
        let v = median_of(runs, "/to_last_stream_ms/p99", || {
            fanout(
                sz,
                n,
                Duration::from_millis(200),
                0,
                Duration::from_secs(30),
                None,
            )
        })
        .await?;
        out.insert("fanout-1k".into(), v);
    }
    if wanted("fanout-25k") {
        let (sz, n) = if q {
            (size(1, 100, 2500, 25), 5)
        } else {
            (size(1, 100, 25_000, 250), 20)
        };
        let v = median_of(runs, "/to_last_stream_ms/p99", || {
            fanout(
                sz,
                n,
                Duration::from_millis(300),
                0,
                Duration::from_secs(30),
                None,
            )
        })
        .await?;
        out.insert("fanout-25k".into(), v);
    }
    if wanted("rollout") {
        let sz = if q {
            size(1, 500, 200, 4)
        } else {
            size(1, 500, 1000, 10)
        };
        let v = median_of(runs, "/every_stream_converged_after_last_step_ms", || {
            rollout(sz, 1000, 10, Duration::from_millis(100))
        })
        .await?;
        out.insert("rollout".into(), v);
    }
    if wanted("churn") {
        let (sz, d) = if q {
            (size(20, 100, 400, 4), 3)
        } else {
            (size(100, 100, 10_000, 100), 60)
        };
        let d = opts.seconds.unwrap_or(d);
        let v = median_of(runs, "/latency_ms/p99", || {
            churn(sz, 200, Duration::from_secs(d))
        })
        .await?;
        out.insert("churn".into(), v);
    }
    if wanted("slow-readers") {
        let sz = if q {
            size(1, 100, 200, 4)
        } else {
            size(1, 100, 1000, 10)
        };
        let n = if q { 5 } else { 20 };
        let timeout = Duration::from_secs(2);
        // Small stream windows, in both runs, so a stalled stream fills quickly and the
        // server feels it; the runs differ only in the stalled streams.
        let window = Some(16 * 1024);
        let base = median_of(runs, "/latency_ms/p99", || {
            fanout(sz, n, Duration::from_millis(100), 0, timeout, window)
        })
        .await?;
        let slow = median_of(runs, "/latency_ms/p99", || {
            fanout(sz, n, Duration::from_millis(100), 1, timeout, window)
        })
        .await?;
        out.insert(
            "slow-readers".into(),
            json!({"without_stalled": base, "with_1pct_stalled": slow, "send_timeout_s": 2}),
        );
    }
    if wanted("failover") {
        let (streams, connections, flips) = if q { (200, 2, 5) } else { (1000, 10, 20) };
        out.insert(
            "failover".into(),
            failover::scenario(streams, connections, flips).await?,
        );
    }
    let report = json!({"machine": machine(&opts), "scenarios": Value::Object(out)});
    emit(&report, opts.json)
}

/// Prints the table, and the JSON to `json` (a path) or to stdout.
fn emit(report: &Value, json: Option<String>) -> Result<()> {
    print_table(report);
    let text = serde_json::to_string_pretty(report)?;
    match json {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))?
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// A human summary: one line per scenario with its main figures.
fn print_table(report: &Value) {
    let get = |v: &Value, p: &str| {
        v.pointer(p)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!("{:<18} figures", "scenario");
    if let Some(Value::Object(s)) = report.get("scenarios") {
        for (name, v) in s {
            let line = match name.as_str() {
                "cold-start" => format!(
                    "{} endpoints loaded in {} ms, {} B/endpoint",
                    get(v, "/endpoints"),
                    get(v, "/load_to_ready_ms"),
                    get(v, "/bytes_per_endpoint")
                ),
                "idle" | "idle-multicluster" => format!(
                    "RSS {} MiB (peak {}), {} B/endpoint, {} B/stream, all first snapshots in {} ms, idle CPU {}/s",
                    get(v, "/rss_mib"),
                    get(v, "/peak_rss_mib"),
                    get(v, "/bytes_per_endpoint"),
                    get(v, "/bytes_per_stream"),
                    get(v, "/all_first_snapshots_ms"),
                    get(v, "/idle_cpu_s_per_s")
                ),
                "fanout-1k" | "fanout-25k" => format!(
                    "each stream p50 {} p99 {} max {} ms; last stream p99 {} max {} ms; {} updates/s; {} missed; peak RSS {} MiB",
                    get(v, "/latency_ms/p50"),
                    get(v, "/latency_ms/p99"),
                    get(v, "/latency_ms/max"),
                    get(v, "/to_last_stream_ms/p99"),
                    get(v, "/to_last_stream_ms/max"),
                    get(v, "/updates_per_s"),
                    get(v, "/deliveries_missed"),
                    get(v, "/peak_rss_mib")
                ),
                "rollout" if v.pointer("/all_converged") == Some(&json!(false)) => format!(
                    "only {} of {} streams converged",
                    get(v, "/converged_streams"),
                    get(v, "/streams"),
                ),
                "rollout" => format!(
                    "every stream converged {} ms after the last step",
                    get(v, "/every_stream_converged_after_last_step_ms")
                ),
                "churn" => format!(
                    "{} changes/s: lag p50 {} p99 {} ms, {} missed; RSS {} -> {} MiB ({}%)",
                    get(v, "/changes_per_s"),
                    get(v, "/latency_ms/p50"),
                    get(v, "/latency_ms/p99"),
                    get(v, "/deliveries_missed"),
                    get(v, "/rss_after_warmup_mib"),
                    get(v, "/rss_end_mib"),
                    get(v, "/rss_growth_pct")
                ),
                "slow-readers" => format!(
                    "p99 {} ms without, {} ms with 1% stalled; {} stalled streams reset",
                    get(v, "/without_stalled/latency_ms/p99"),
                    get(v, "/with_1pct_stalled/latency_ms/p99"),
                    get(v, "/with_1pct_stalled/stalled_streams_reset")
                ),
                _ => v.to_string(),
            };
            println!("{name:<18} {line}");
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--failover-child") {
        return failover::run_child();
    }
    if args.get(1).map(String::as_str) == Some("--child") {
        let spec = WorldSpec::from_args(&args[2..]).context("bad --child arguments")?;
        return world::run_child(spec);
    }
    let opts = parse_options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}
