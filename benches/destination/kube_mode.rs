//! The Kubernetes mode: changes go through a real API server, and the streams are held
//! against any destination server (`--target`), so meshlink and any other implementation
//! of the destination API are measured by the same client on the same world.
//!
//! The world (`kube_world`) is the in-process one as Kubernetes objects in namespace
//! `bench`; every scenario that makes sense through an API server runs on it: idle scale,
//! fan-out, rollout, churn, slow readers, and cold start of a server started on an
//! existing world. A change is a new Pod and the EndpointSlice patch that swaps it in;
//! latency runs from just before that patch is sent (no watch event can precede it) to
//! each stream decoding the message that carries the new address. With `--target-pid`,
//! the target's RSS and CPU time are read from its `/proc` as in-process for the child.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    client::{self, Progress, StreamRecord, Watch, now_nanos},
    kube_world::{Change, KubeWorld},
    median_of, ms, percentiles, proc, round,
};

/// What to measure against whom.
pub struct KubeOptions {
    pub kubeconfig: PathBuf,
    pub target: SocketAddr,
    pub target_pid: Option<u32>,
    pub quick: bool,
    /// Scenarios to run (all when empty).
    pub scenarios: Vec<String>,
    /// `--size S,E,N,M`: the world's services and endpoints, the idle scenario's streams
    /// and connections.
    pub size: Option<[usize; 4]>,
    pub seconds: Option<u64>,
    pub changes: Option<usize>,
    pub runs: usize,
    pub reuse_world: bool,
    pub world_only: bool,
    pub writers: usize,
}

/// The server under test: where it listens, and its process when known.
#[derive(Clone, Copy)]
struct Target {
    addr: SocketAddr,
    pid: Option<u32>,
}

impl Target {
    fn rss_mib(&self) -> Option<f64> {
        self.pid.map(|p| round(proc::rss_kib(p).0 as f64 / 1024.0))
    }

    fn hwm_mib(&self) -> Option<f64> {
        self.pid.map(|p| round(proc::rss_kib(p).1 as f64 / 1024.0))
    }

    fn cpu(&self) -> Option<f64> {
        self.pid.map(proc::cpu_seconds)
    }

    /// Samples VmRSS every 100 ms until stopped; the task returns the highest (KiB).
    fn sample_peak(&self) -> Peak {
        let (stop, mut stopped) = watch::channel(false);
        let pid = self.pid;
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return 0 };
            let mut peak = 0;
            loop {
                peak = peak.max(proc::rss_kib(pid).0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
            }
            peak.max(proc::rss_kib(pid).0)
        });
        Peak { stop, task }
    }
}

/// A running RSS sampler.
struct Peak {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl Peak {
    async fn mib(self, target: &Target) -> Option<f64> {
        let _ = self.stop.send(true);
        let kib = self.task.await.unwrap_or(0);
        target.pid.map(|_| round(kib as f64 / 1024.0))
    }
}

/// Differences of two CPU readings, when the target is known.
fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(round(b? - a?))
}

async fn kube_client(kubeconfig: &PathBuf) -> Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Streams held on the target for one scenario.
struct Held {
    tasks: Vec<JoinHandle<StreamRecord>>,
    progress: Arc<Progress>,
    converge_to: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// Service watched by each stream.
    svc: Vec<usize>,
    stalled: Vec<bool>,
    first_ms: f64,
    all_first: bool,
}

impl Held {
    fn readers(&self) -> usize {
        self.stalled.iter().filter(|s| !**s).count()
    }

    async fn finish(self) -> Result<Finished> {
        let _ = self.stop.send(true);
        let mut records = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            records.push(t.await?);
        }
        Ok(Finished {
            records,
            svc: self.svc,
            stalled: self.stalled,
        })
    }
}

/// What every stream of a scenario saw.
struct Finished {
    records: Vec<StreamRecord>,
    svc: Vec<usize>,
    stalled: Vec<bool>,
}

impl Finished {
    fn errors(&self) -> usize {
        self.records.iter().filter(|r| r.error.is_some()).count()
    }

    /// Latency of each change to each stream of its service, to the last of them, the
    /// API server's acknowledgement, the time from that acknowledgement to each stream (the
    /// destination server's share, roughly; negative when a watch event beat the
    /// response), and the deliveries that never happened.
    fn timing(&self, changes: &[Change]) -> Value {
        let by_id: HashMap<u32, &Change> = changes.iter().map(|c| (c.id, c)).collect();
        let mut each = Vec::new();
        let mut after_ack = Vec::new();
        let mut last: BTreeMap<u32, u128> = BTreeMap::new();
        let mut expected: HashMap<usize, usize> = HashMap::new();
        let mut missed = 0usize;
        let mut missed_changes: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, r) in self.records.iter().enumerate() {
            if self.stalled[i] {
                continue;
            }
            // The first arrival of each id counts; a later re-add is not a delivery.
            let mut seen: HashMap<u32, u128> = HashMap::new();
            for (id, at) in &r.events {
                seen.entry(*id).or_insert(*at);
            }
            for (id, at) in &seen {
                if let Some(c) = by_id.get(id) {
                    each.push(ms(*at as i128 - c.sent as i128));
                    after_ack.push(ms(*at as i128 - c.acked as i128));
                    let l = last.entry(*id).or_default();
                    *l = (*l).max(*at);
                }
            }
            *expected.entry(self.svc[i]).or_default() += 1;
            for c in changes.iter().filter(|c| c.svc == self.svc[i]) {
                if !seen.contains_key(&c.id) {
                    missed += 1;
                    *missed_changes.entry(c.id).or_default() += 1;
                }
            }
        }
        let to_last: Vec<f64> = last
            .iter()
            .filter_map(|(id, at)| Some(ms(*at as i128 - by_id.get(id)?.sent as i128)))
            .collect();
        let ack: Vec<f64> = changes
            .iter()
            .map(|c| ms(c.acked as i128 - c.sent as i128))
            .collect();
        let deliveries: usize = changes
            .iter()
            .map(|c| expected.get(&c.svc).copied().unwrap_or(0))
            .sum();
        let n = each.len();
        json!({
            "changes": changes.len(),
            "latency_ms": percentiles(each),
            "to_last_stream_ms": percentiles(to_last),
            "api_ack_ms": percentiles(ack),
            "after_ack_ms": percentiles(after_ack),
            "updates_received": n,
            "deliveries_expected": deliveries,
            "deliveries_missed": missed,
            "changes_missed_by_some_stream": missed_changes.len(),
        })
    }
}

/// Connects `m` HTTP/2 connections, retrying for `limit` while the target does not listen.
async fn connect(
    target: SocketAddr,
    m: usize,
    window: Option<u32>,
    limit: Duration,
) -> Result<Vec<client::Client>> {
    let deadline = Instant::now() + limit;
    loop {
        match client::connect(target, m, window).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot connect to {target}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Opens `n` streams over `m` connections; stream `i` watches service `svc(i)`, and
/// `stalled(i)` streams never read. Waits for every reader's first message.
async fn hold(
    target: Target,
    (n, m): (usize, usize),
    floor: u32,
    window: Option<u32>,
    svc: impl Fn(usize) -> usize,
    stalled: impl Fn(usize) -> bool,
    converge_to: usize,
) -> Result<Held> {
    let clients = connect(target.addr, m, window, Duration::from_secs(10)).await?;
    let (stop, stop_rx) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    progress.final_id.store(u32::MAX, Ordering::Relaxed);
    let converge = Arc::new(AtomicUsize::new(converge_to));
    let svc: Vec<usize> = (0..n).map(svc).collect();
    let stalled: Vec<bool> = (0..n).map(stalled).collect();
    let authorities = svc.iter().map(|s| crate::world::authority(*s, 1)).collect();
    let readers = stalled.iter().filter(|s| !**s).count();
    let started = Instant::now();
    let st = stalled.clone();
    let tasks = client::open_streams(
        &clients,
        authorities,
        Watch {
            floor,
            converge_to: Arc::clone(&converge),
            progress: Arc::clone(&progress),
            stop: stop_rx,
        },
        move |i| st[i],
    );
    let all_first = client::wait_until(Duration::from_secs(180), || {
        progress.firsts.load(Ordering::Relaxed) >= readers
    })
    .await;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    if !all_first {
        eprintln!(
            "warning: {} of {readers} streams got no first message within 180 s",
            readers - progress.firsts.load(Ordering::Relaxed)
        );
    }
    Ok(Held {
        tasks,
        progress,
        converge_to: converge,
        stop,
        svc,
        stalled,
        first_ms,
        all_first,
    })
}

/// Scenario sizes, full or quick.
struct Sizes {
    services: usize,
    endpoints: usize,
    idle: (usize, usize),
    fanout_1k: (usize, usize),
    fanout_25k: (usize, usize),
    changes: usize,
    rollout: (usize, usize, usize),
    churn: (usize, usize, u64),
    slow: (usize, usize),
}

impl Sizes {
    fn new(o: &KubeOptions) -> Self {
        let q = o.quick;
        let (services, endpoints, n, m) = match o.size {
            Some(s) => (s[0], s[1], s[2], s[3]),
            None if q => (20, 20, 400, 4),
            None => (1000, 100, 25_000, 250),
        };
        Self {
            services,
            endpoints,
            idle: (n, m),
            fanout_1k: if q { (200, 4) } else { (1000, 10) },
            fanout_25k: if q { (1000, 10) } else { (25_000, 250) },
            changes: o.changes.unwrap_or(if q { 10 } else { 100 }),
            // (added endpoints, steps, streams)
            rollout: if q { (50, 5, 200) } else { (500, 10, 1000) },
            // (services, streams per service, seconds)
            churn: (
                services.min(if q { 20 } else { 100 }),
                if q { 20 } else { 100 },
                o.seconds.unwrap_or(if q { 3 } else { 60 }),
            ),
            slow: if q { (200, 4) } else { (1000, 10) },
        }
    }
}

/// A target older than this (seconds) was not started for a cold start.
const YOUNG_S: f64 = 30.0;

/// Runs the chosen scenarios; returns the world's and the scenarios' figures.
pub async fn run(o: KubeOptions) -> Result<(Value, Value)> {
    let client = kube_client(&o.kubeconfig).await?;
    let target = Target {
        addr: o.target,
        pid: o.target_pid,
    };
    if let Some(pid) = target.pid
        && !proc::exists(pid)
    {
        bail!("--target-pid {pid}: no such process");
    }
    let sz = Sizes::new(&o);
    let wanted = |name: &str| o.scenarios.is_empty() || o.scenarios.iter().any(|s| s == name);
    let mut out = serde_json::Map::new();
    // Cold start times a server started on an existing world from its own start: it runs
    // first, before this process reads the world back, and needs only its size.
    let cold = wanted("cold-start") && !o.world_only;
    if cold {
        match target.pid.map(|p| (p, proc::age_seconds(p).unwrap_or(0.0))) {
            Some((pid, age)) if age <= YOUNG_S => {
                let v = cold_start(target, sz.services, sz.endpoints, pid).await?;
                out.insert("cold-start".into(), v);
            }
            Some((_, age)) => eprintln!(
                "cold-start: the target started {age:.0} s ago; it times a server started \
                 right before the benchmark on an existing world (scripts/bench-kube.sh does): skipped"
            ),
            None => eprintln!("cold-start needs --target-pid: skipped"),
        }
    }
    let opened = KubeWorld::open(
        &client,
        sz.services,
        sz.endpoints,
        o.writers,
        o.reuse_world || cold,
    )
    .await?;
    if cold && opened.created {
        eprintln!("cold-start: there was no world of this size to load; its figures mean nothing");
        out.remove("cold-start");
    }
    let world = Arc::new(opened.world);
    let world_json = json!({
        "services": sz.services,
        "endpoints_per_service": sz.endpoints,
        "created": opened.created,
        "create_or_read_ms": round(opened.create_ms),
        "objects_written": opened.objects_written,
        "writers": o.writers,
    });
    eprintln!(
        "world {} x {}: {} in {:.1} s",
        sz.services,
        sz.endpoints,
        if opened.created { "created" } else { "found" },
        opened.create_ms / 1e3
    );
    if o.world_only {
        return Ok((world_json, Value::Object(out)));
    }
    let runs = o.runs;
    if wanted("idle") {
        let v = median_of(runs, "/rss_mib", || idle(target, &world, sz.idle)).await?;
        out.insert("idle".into(), v);
    }
    for (name, size, interval) in [
        ("fanout-1k", sz.fanout_1k, 200),
        ("fanout-25k", sz.fanout_25k, 500),
    ] {
        if wanted(name) {
            let v = median_of(runs, "/to_last_stream_ms/p99", || {
                fanout(
                    target,
                    &world,
                    size,
                    sz.changes,
                    Duration::from_millis(interval),
                    0,
                    None,
                )
            })
            .await?;
            out.insert(name.into(), v);
        }
    }
    if wanted("rollout") {
        let (add, steps, n) = sz.rollout;
        let v = median_of(runs, "/every_stream_converged_after_last_step_ms", || {
            rollout(target, &world, n, add, steps, Duration::from_millis(100))
        })
        .await?;
        out.insert("rollout".into(), v);
    }
    if wanted("churn") {
        let (services, per, seconds) = sz.churn;
        let v = median_of(runs, "/latency_ms/p99", || {
            churn(
                target,
                &world,
                services,
                per,
                200,
                Duration::from_secs(seconds),
            )
        })
        .await?;
        out.insert("churn".into(), v);
    }
    if wanted("slow-readers") {
        // Small stream windows in both runs, so a stalled stream fills quickly; the runs
        // differ only in the stalled streams.
        let window = Some(16 * 1024);
        let interval = Duration::from_millis(100);
        let base = median_of(runs, "/latency_ms/p99", || {
            fanout(target, &world, sz.slow, sz.changes, interval, 0, window)
        })
        .await?;
        let slow = median_of(runs, "/latency_ms/p99", || {
            fanout(target, &world, sz.slow, sz.changes, interval, 1, window)
        })
        .await?;
        out.insert(
            "slow-readers".into(),
            json!({"without_stalled": base, "with_1pct_stalled": slow}),
        );
    }
    Ok((world_json, Value::Object(out)))
}

/// cold start: from the target's process start to every service's whole set on a stream.
async fn cold_start(target: Target, services: usize, endpoints: usize, pid: u32) -> Result<Value> {
    let age = proc::age_seconds(pid).unwrap_or(0.0);
    let started_at = now_nanos().saturating_sub((age * 1e9) as u128);
    let clients = connect(target.addr, 1, None, Duration::from_secs(300)).await?;
    let listening_ms = ms(now_nanos() as i128 - started_at as i128);
    drop(clients);
    let held = hold(
        target,
        (services, services.min(250)),
        u32::MAX,
        None,
        |i| i,
        |_| false,
        endpoints,
    )
    .await?;
    let progress = Arc::clone(&held.progress);
    let all = client::wait_until(Duration::from_secs(120), || {
        progress.converged.load(Ordering::Relaxed) >= services
    })
    .await;
    let first_ms = held.first_ms;
    let f = held.finish().await?;
    let last = f
        .records
        .iter()
        .filter_map(|r| r.converged)
        .max()
        .unwrap_or(0);
    Ok(json!({
        "endpoints": services * endpoints,
        "target_age_when_cold_start_began_s": round(age),
        "listening_ms": round(listening_ms),
        "load_to_ready_ms": round(ms(last as i128 - started_at as i128)),
        "every_service_complete": all,
        "first_messages_after_connect_ms": round(first_ms),
        "stream_errors": f.errors(),
        "rss_mib": target.rss_mib(),
        "peak_rss_mib": target.hwm_mib(),
        "cpu_s": target.cpu().map(round),
    }))
}

/// idle scale: the target's memory with the world loaded, then with every stream open.
async fn idle(target: Target, world: &KubeWorld, (n, m): (usize, usize)) -> Result<Value> {
    let s = world.services();
    let rss_world = target.rss_mib();
    let peak = target.sample_peak();
    let held = hold(target, (n, m), world.floor(), None, |i| i % s, |_| false, 0).await?;
    let rss_burst = target.rss_mib();
    let cpu0 = target.cpu();
    // Idle with every stream open: what the streams hold once the first snapshots are sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = delta(cpu0, target.cpu()).map(|c| round(c / 5.0));
    let rss = target.rss_mib();
    let (first_ms, all_first) = (held.first_ms, held.all_first);
    let f = held.finish().await?;
    let full = f
        .records
        .iter()
        .filter(|r| r.first.is_some_and(|(_, k)| k == world.endpoints()))
        .count();
    let per_stream = rss
        .zip(rss_world)
        .map(|(a, b)| round((a - b) * 1024.0 * 1024.0 / n.max(1) as f64 / 1024.0));
    Ok(json!({
        "streams": n,
        "connections": m,
        "all_first_snapshots_ms": round(first_ms),
        "all_streams_got_a_first_message": all_first,
        "streams_with_full_first_snapshot": full,
        "stream_errors": f.errors(),
        "rss_world_mib": rss_world,
        "rss_mib": rss,
        "rss_right_after_first_snapshots_mib": rss_burst,
        "peak_rss_mib": peak.mib(&target).await,
        "peak_rss_since_start_mib": target.hwm_mib(),
        "kib_per_stream": per_stream,
        "idle_cpu_s_per_s": idle_cpu,
        "cpu_s": target.cpu().map(round),
    }))
}

/// fan-out: single-endpoint replacements of `svc-0`, watched by every stream.
async fn fanout(
    target: Target,
    world: &KubeWorld,
    (n, m): (usize, usize),
    changes: usize,
    interval: Duration,
    stalled_pct: usize,
    window: Option<u32>,
) -> Result<Value> {
    let stalled = move |i: usize| stalled_pct > 0 && i.is_multiple_of(100 / stalled_pct);
    let floor = world.floor();
    let held = hold(target, (n, m), floor, window, |_| 0, stalled, 0).await?;
    // Changes are made one at a time, so their ids follow the floor.
    held.progress
        .final_id
        .store(floor + changes as u32 - 1, Ordering::Relaxed);
    let readers = held.readers();
    let peak = target.sample_peak();
    let cpu0 = target.cpu();
    let client_cpu0 = proc::cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut done = Vec::with_capacity(changes);
    let mut next = tokio::time::Instant::now();
    for _ in 0..changes {
        done.push(world.replace(0).await?);
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let progress = Arc::clone(&held.progress);
    let all = client::wait_until(Duration::from_secs(30), || {
        progress.saw_final.load(Ordering::Relaxed) >= readers
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = delta(cpu0, target.cpu());
    let client_cpu = proc::cpu_seconds(std::process::id()) - client_cpu0;
    let f = held.finish().await?;
    let mut v = f.timing(&done);
    let updates = v["updates_received"].as_u64().unwrap_or(0);
    let extra = json!({
        "streams": n,
        "connections": m,
        "stalled_streams": n - readers,
        "every_reader_saw_the_last_change": all,
        "stream_errors": f.errors(),
        "updates_per_s": round(updates as f64 / elapsed),
        "rss_mib": target.rss_mib(),
        "peak_rss_mib": peak.mib(&target).await,
        "cpu_s": cpu,
        "cpu_us_per_update": cpu.map(|c| round(c * 1e6 / updates.max(1) as f64)),
        "client_cpu_s": round(client_cpu),
    });
    merge(&mut v, extra);
    Ok(v)
}

/// rollout: `svc-0` scales up in steps; time until every stream holds the final set.
/// The service is scaled back afterwards, so the world stays reusable.
async fn rollout(
    target: Target,
    world: &KubeWorld,
    n: usize,
    add: usize,
    steps: usize,
    interval: Duration,
) -> Result<Value> {
    let from = world.endpoints();
    let to = from + add;
    let held = hold(
        target,
        (n, n.div_ceil(100)),
        world.floor(),
        None,
        |_| 0,
        |_| false,
        0,
    )
    .await?;
    held.converge_to.store(to, Ordering::Relaxed);
    let mut last_sent = 0;
    for step in 1..=steps {
        last_sent = world.scale(0, from + add * step / steps).await?;
        tokio::time::sleep(interval).await;
    }
    let progress = Arc::clone(&held.progress);
    let all = client::wait_until(Duration::from_secs(60), || {
        progress.converged.load(Ordering::Relaxed) >= n
    })
    .await;
    let f = held.finish().await?;
    world.scale(0, from).await?;
    let after_last: Vec<f64> = f
        .records
        .iter()
        .filter_map(|r| r.converged)
        .map(|c| ms(c as i128 - last_sent as i128))
        .collect();
    let worst = after_last.iter().copied().fold(0.0f64, f64::max);
    Ok(json!({
        "from": from,
        "to": to,
        "steps": steps,
        "streams": n,
        "all_converged": all,
        "converged_streams": after_last.len(),
        // Only when every stream converged: the latest of some is no figure of all.
        "every_stream_converged_after_last_step_ms": all.then(|| round(worst)),
        "convergence_after_last_step_ms": percentiles(after_last),
        "stream_errors": f.errors(),
    }))
}

/// churn: steady replacements spread over `services` services, `per` streams each.
async fn churn(
    target: Target,
    world: &Arc<KubeWorld>,
    services: usize,
    per: usize,
    rate: usize,
    duration: Duration,
) -> Result<Value> {
    let n = services * per;
    let held = hold(
        target,
        (n, n.div_ceil(100)),
        world.floor(),
        None,
        |i| i % services,
        |_| false,
        0,
    )
    .await?;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // Warm-up: the churn reaches its steady state in the first third of the run.
    let warmup = duration / 3;
    let cpu0 = target.cpu();
    let peak = target.sample_peak();
    let started = Instant::now();
    // Writes overlap (a change is three requests, each tens of milliseconds on a busy API
    // server), at most half a second's worth of changes at once; changes of one service
    // are ordered by its lock.
    let in_flight = Arc::new(tokio::sync::Semaphore::new((rate / 2).max(32)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut rss_warm = None;
    let mut next = tokio::time::Instant::now();
    let mut k = 0usize;
    while started.elapsed() < duration {
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let w = Arc::clone(world);
        let svc = k % services;
        tasks.spawn(async move {
            let c = w.replace(svc).await;
            drop(permit);
            c
        });
        k += 1;
        if rss_warm.is_none() && started.elapsed() >= warmup {
            rss_warm = Some(target.rss_mib());
        }
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    let achieved = k as f64 / started.elapsed().as_secs_f64();
    let mut done = Vec::with_capacity(k);
    while let Some(c) = tasks.join_next().await {
        done.push(c??);
    }
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = delta(cpu0, target.cpu());
    let rss_end = target.rss_mib();
    let f = held.finish().await?;
    let mut v = f.timing(&done);
    let rss_warm = rss_warm.flatten();
    let extra = json!({
        "services": services,
        "streams": n,
        "changes_per_s": round(achieved),
        "stream_errors": f.errors(),
        "rss_after_warmup_mib": rss_warm,
        "rss_end_mib": rss_end,
        "rss_growth_pct": rss_end.zip(rss_warm).map(|(e, w)| round((e / w - 1.0) * 100.0)),
        "peak_rss_mib": peak.mib(&target).await,
        "cpu_s_per_s": cpu.map(|c| round(c / duration.as_secs_f64())),
    });
    merge(&mut v, extra);
    Ok(v)
}

fn merge(v: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (v, extra) {
        a.extend(b);
    }
}
