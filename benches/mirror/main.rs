//! The service mirror's benchmark against two real API servers (`scripts/bench-mirror.sh`
//! starts them): west holds the exported services, `meshlink mirror` (a child process)
//! mirrors them into east. It measures the time from the Link's creation until every
//! mirror exists and is current, the latency of a change to one remote service, the
//! writes sent while nothing changes, the mirror's memory, and its requests (from east's
//! audit log, where the mirror's impersonated user tells its requests apart).
//!
//! ```text
//! scripts/bench-mirror.sh                        # 2,000 services (10% headless, 5 hosts)
//! scripts/bench-mirror.sh --quick                # about 100 services, under a minute (CI)
//! scripts/bench-mirror.sh --services 500 --json out.json
//! ```

mod audit;
// Shared with the destination benchmark, which uses all of them.
#[path = "../../tests/mirror_support/netns.rs"]
#[allow(dead_code)]
mod netns;
#[allow(dead_code)]
#[path = "../destination/proc.rs"]
mod proc;
#[path = "../destination/stats.rs"]
mod stats;
mod world;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kube::{
    Api, Client, CustomResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use meshlink::k8s::{
    EndpointSlice, Service, labels,
    link::{Link, LinkTarget},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use audit::{AuditLog, MIRROR_USER, Requests};
use stats::{percentiles, round};
use world::{Exported, WorldSpec};

const CLUSTER: &str = "west";
const GATEWAY_ID: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.west.example";

/// What to run.
struct Options {
    east: PathBuf,
    west: PathBuf,
    meshlink: PathBuf,
    audit: PathBuf,
    dir: PathBuf,
    spec: WorldSpec,
    changes: usize,
    quiet: Duration,
    converge_timeout: Duration,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        east: PathBuf::new(),
        west: PathBuf::new(),
        meshlink: PathBuf::from("target/release/meshlink"),
        audit: PathBuf::new(),
        dir: std::env::temp_dir(),
        spec: WorldSpec {
            services: 2000,
            headless: 200,
            hosts: 5,
            namespaces: 10,
        },
        changes: 100,
        quiet: Duration::from_secs(60),
        converge_timeout: Duration::from_secs(300),
        json: None,
    };
    let mut headless_percent = 10usize;
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{a} {what}"));
        match a.as_str() {
            // cargo passes --bench to every bench target.
            "--bench" => {}
            "--quick" => {
                o.spec.services = 100;
                o.spec.namespaces = 2;
                o.changes = 20;
                o.quiet = Duration::from_secs(15);
                o.converge_timeout = Duration::from_secs(120);
            }
            "--east" => o.east = value("KUBECONFIG")?.into(),
            "--west" => o.west = value("KUBECONFIG")?.into(),
            "--meshlink" => o.meshlink = value("PATH")?.into(),
            "--audit-log" => o.audit = value("PATH")?.into(),
            "--dir" => o.dir = value("DIR")?.into(),
            "--services" => o.spec.services = value("N")?.parse()?,
            "--headless-percent" => headless_percent = value("N")?.parse()?,
            "--hosts" => o.spec.hosts = value("N")?.parse()?,
            "--namespaces" => o.spec.namespaces = value("N")?.parse()?,
            "--changes" => o.changes = value("N")?.parse()?,
            "--quiet-secs" => o.quiet = Duration::from_secs(value("N")?.parse()?),
            "--json" => o.json = Some(value("PATH")?.into()),
            _ => bail!(
                "usage: mirror --east KUBECONFIG --west KUBECONFIG --audit-log PATH [--meshlink PATH]\n\
                 \x20      [--dir DIR] [--quick] [--services N] [--headless-percent N] [--hosts N]\n\
                 \x20      [--namespaces N] [--changes N] [--quiet-secs N] [--json PATH]\n\
                 (scripts/bench-mirror.sh starts the API servers and passes the first three)"
            ),
        }
    }
    if o.east.as_os_str().is_empty()
        || o.west.as_os_str().is_empty()
        || o.audit.as_os_str().is_empty()
    {
        bail!("--east, --west and --audit-log are needed; scripts/bench-mirror.sh passes them");
    }
    o.spec.headless = o.spec.services * headless_percent.min(100) / 100;
    Ok(o)
}

async fn client(path: &PathBuf) -> Result<Client> {
    let file =
        Kubeconfig::read_from(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// East's admin kubeconfig, impersonating [`MIRROR_USER`] (as an admin) for the mirror.
fn mirror_kubeconfig(east: &PathBuf, out: &PathBuf) -> Result<()> {
    let mut file = Kubeconfig::read_from(east)?;
    for auth in &mut file.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some(MIRROR_USER.into());
            info.impersonate_groups =
                Some(vec!["system:masters".into(), "system:authenticated".into()]);
        }
    }
    // JSON is YAML, as kubeconfig readers expect.
    std::fs::write(out, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("cannot write {}", out.display()))
}

/// The Link CRD and namespaces on east; the credentials Secret for west.
async fn setup_east(east: &Client, o: &Options, gateway_ip: &str) -> Result<LinkTarget> {
    world::apply(Api::all(east.clone()), &Link::crd()).await?;
    let mut names = o.spec.namespace_names();
    names.push("linkerd".into());
    world::namespaces(east, &names).await?;
    // The CRD serves once it is established.
    let links = Api::<Link>::namespaced(east.clone(), "linkerd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while links.list(&ListParams::default()).await.is_err() {
        if Instant::now() > deadline {
            bail!("the Link CRD is not served within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = LinkTarget {
        cluster_name: CLUSTER.into(),
        namespace: "linkerd".into(),
        trust_domain: "west.example".into(),
        cluster_domain: "cluster.local".into(),
        target_linkerd_namespace: "linkerd".into(),
        gateway: Some((gateway_ip.into(), 4143, GATEWAY_ID.into())),
    };
    let kubeconfig = std::fs::read_to_string(&o.west)?;
    world::apply(
        Api::namespaced(east.clone(), "linkerd"),
        &target.credentials_secret(&kubeconfig),
    )
    .await?;
    Ok(target)
}

/// East's mirrors of west, as the benchmark watches them (as admin, so not counted).
struct Mirrors {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Mirrors {
    async fn watch(east: &Client) -> Self {
        let config = watcher::Config::default()
            .labels(&format!("{}={CLUSTER}", labels::MIRROR_CLUSTER_NAME));
        let (services, w) = reflector::store::<Service>();
        tokio::spawn(
            watcher(Api::<Service>::all(east.clone()), config.clone())
                .default_backoff()
                .reflect(w)
                .for_each(|_| async {}),
        );
        let (slices, w) = reflector::store::<EndpointSlice>();
        tokio::spawn(
            watcher(Api::<EndpointSlice>::all(east.clone()), config)
                .default_backoff()
                .reflect(w)
                .for_each(|_| async {}),
        );
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        Self { services, slices }
    }

    fn service(&self, ns: &str, name: &str) -> Option<std::sync::Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// A gateway slice `<mirror>-meshlink` at the gateway address, ready.
    fn gateway_slice_ready(&self, ns: &str, mirror: &str, gateway_ip: &str) -> bool {
        let Some(s) = self
            .slices
            .get(&ObjectRef::new(&format!("{mirror}-meshlink")).within(ns))
        else {
            return false;
        };
        let eps = s.endpoints.as_deref().unwrap_or_default();
        !eps.is_empty()
            && eps.iter().all(|e| {
                e.addresses == [gateway_ip]
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
            })
    }

    /// How many of the mirror objects (Services and EndpointSlices) are there and current.
    fn current(
        &self,
        exported: &[Exported],
        versions: &BTreeMap<(String, String), String>,
        gateway_ip: &str,
    ) -> usize {
        let mut n = 0;
        for e in exported {
            let ns = e.namespace.as_str();
            let mirror = format!("{}-{CLUSTER}", e.name);
            let rv = versions.get(&(e.namespace.clone(), e.name.clone()));
            let svc_current = self.service(ns, &mirror).is_some_and(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(labels::REMOTE_RESOURCE_VERSION))
                    == rv
            });
            n += usize::from(svc_current);
            if e.hosts.is_empty() {
                n += usize::from(self.gateway_slice_ready(ns, &mirror, gateway_ip));
                continue;
            }
            for h in &e.hosts {
                let host_mirror = format!("{h}-{CLUSTER}");
                n += usize::from(self.service(ns, &host_mirror).is_some());
                n += usize::from(self.gateway_slice_ready(ns, &host_mirror, gateway_ip));
            }
            // The headless mirror's slice: one endpoint per host, at its mirror's cluster IP.
            let parent = self
                .slices
                .get(&ObjectRef::new(&format!("{mirror}-meshlink")).within(ns));
            n += usize::from(parent.is_some_and(|s| {
                let eps = s.endpoints.as_deref().unwrap_or_default();
                eps.len() == e.hosts.len() && eps.iter().all(|ep| !ep.addresses.is_empty())
            }));
        }
        n
    }

    fn label(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        self.service(ns, name)?
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .cloned()
    }
}

/// The mirror, a child process.
struct MirrorProcess {
    child: tokio::process::Child,
    pid: u32,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl MirrorProcess {
    async fn start(o: &Options) -> Result<Self> {
        let kubeconfig = o.dir.join("mirror.kubeconfig");
        mirror_kubeconfig(&o.east, &kubeconfig)?;
        // A free port for the admin server.
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = o.dir.join("mirror.log");
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&o.meshlink)
            .arg("mirror")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--namespace", "linkerd", "--admin-addr", &admin.to_string()])
            .env("RUST_LOG", "meshlink=info,kube=warn")
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", o.meshlink.display()))?;
        let pid = child.id().context("the mirror exited at once")?;
        let mut m = Self {
            child,
            pid,
            admin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(admin, "/ready")
            .await
            .is_none_or(|(code, _)| code != 200)
        {
            if Instant::now() > deadline || m.child.try_wait()?.is_some() {
                bail!("the mirror is not ready within 30s:\n{}", m.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(m)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `mirror_api_writes_total` summed over Links, by verb.
    async fn writes(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Some((_, text)) = http_get(self.admin, "/metrics").await else {
            return out;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("mirror_api_writes_total{") else {
                continue;
            };
            let verb = rest
                .split("verb=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.entry(verb.to_string()).or_default() += value;
        }
        out
    }

    /// (VmRSS, VmHWM) in KiB, and CPU seconds (user + system).
    fn usage(&self) -> (u64, u64, f64) {
        let (rss, hwm) = proc::rss_kib(self.pid);
        (rss, hwm, proc::cpu_seconds(self.pid))
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: the mirror stops and releases its Lease.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One HTTP/1.0 GET on loopback: (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

fn requests_json(r: &Requests) -> Value {
    json!({"total": r.total(), "writes": r.writes(), "by_kind": r.by_kind})
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&o))?;
    print_table(&report);
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn run(o: &Options) -> Result<Value> {
    let east = client(&o.east).await?;
    let west = client(&o.west).await?;
    // The gateway's address is inside a network namespace of our own, where its probe
    // endpoint answers: no traffic leaves the machine.
    let ns = netns::NetNs::create();
    let gateway_ip = ns.ns_addrs[0].to_string();
    let _probe = netns::ProbeTarget::serve(ns.bind((ns.ns_addrs[0], 4191).into()));

    let target = setup_east(&east, o, &gateway_ip).await?;
    let exported = o.spec.exported();
    world::namespaces(&west, &o.spec.namespace_names()).await?;
    let t = Instant::now();
    let versions = world::create(&west, &exported).await?;
    let create_s = t.elapsed().as_secs_f64();
    println!(
        "west: {} exported services ({} headless, {} hosts each) created in {create_s:.1}s",
        o.spec.services, o.spec.headless, o.spec.hosts
    );

    let mirrors = Mirrors::watch(&east).await;
    let mirror = MirrorProcess::start(o).await?;
    let mut audit = AuditLog::at_end(o.audit.clone());
    let (svc_objs, slice_objs) = o.spec.mirror_objects();
    let want = svc_objs + slice_objs;

    // Converge: from the Link's creation until every mirror is there and current.
    let mut link = serde_json::to_value(target.link())?;
    // Probe often enough to matter, not so often that it is the load.
    link["spec"]["probeSpec"]["period"] = json!("3s");
    let link: Link = serde_json::from_value(link)?;
    let t0 = Instant::now();
    world::apply(Api::namespaced(east.clone(), "linkerd"), &link).await?;
    let (_, _, cpu_before) = mirror.usage();
    let mut converge_s = None;
    let mut current = 0;
    while t0.elapsed() < o.converge_timeout {
        current = mirrors.current(&exported, &versions, &gateway_ip);
        if current == want {
            converge_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, hwm_converge, cpu_after) = mirror.usage();
    let converge_cpu = cpu_after - cpu_before;
    match converge_s {
        Some(s) => println!("converged: {want} mirror objects in {s:.2}s"),
        None => println!(
            "NOT converged within {:?}: {current} of {want} mirror objects current\n{}",
            o.converge_timeout,
            mirror.log_tail()
        ),
    }
    // Requests still in flight at convergence (status writes) land in the next second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let initial = audit.take();

    // Changes: a label of one remote service, timed from before the write is sent to the
    // benchmark's watch of east showing it on the mirror.
    let gateway: Vec<&Exported> = exported.iter().filter(|e| e.hosts.is_empty()).collect();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for i in 0..o.changes {
        let Some(e) = gateway.get((i * 37) % gateway.len().max(1)) else {
            break;
        };
        let generation = (i + 1).to_string();
        let mirror_name = format!("{}-{CLUSTER}", e.name);
        let t = Instant::now();
        world::relabel(&west, e, i + 1).await?;
        let deadline = t + Duration::from_secs(30);
        loop {
            if mirrors
                .label(&e.namespace, &mirror_name, "bench-gen")
                .as_deref()
                == Some(generation.as_str())
            {
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changes = audit.take();

    // A quiet spell: nothing changes; the periodic repair runs (30 s) and must not write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = audit.take();
    let metric_before = mirror.writes().await;
    tokio::time::sleep(o.quiet).await;
    let quiet = audit.take();
    let metric_after = mirror.writes().await;
    let per_min = 60.0 / o.quiet.as_secs_f64();
    let metric_quiet: f64 = metric_after
        .iter()
        .map(|(verb, v)| v - metric_before.get(verb).copied().unwrap_or(0.0))
        .sum();
    let (rss, hwm, cpu_total) = mirror.usage();
    let log = mirror.log_tail();
    mirror.stop().await;

    let objects = want as f64;
    Ok(json!({
        "spec": {
            "services": o.spec.services, "headless": o.spec.headless, "hosts": o.spec.hosts,
            "namespaces": o.spec.namespaces, "changes": o.changes,
            "quiet_s": o.quiet.as_secs(), "mirror_objects": want,
        },
        "west_create_s": round(create_s),
        "converge_s": converge_s.map(round),
        "converge_current_objects": current,
        "converge_cpu_s": round(converge_cpu),
        "converge_hwm_kib": hwm_converge,
        "change_ms": percentiles(latencies),
        "changes_missed": missed,
        "quiet_writes_per_min": round(quiet.mirror_writes() as f64 * per_min),
        "quiet_lease_writes_per_min": round((quiet.writes() - quiet.mirror_writes()) as f64 * per_min),
        "quiet_metric_writes_per_min": round(metric_quiet * per_min),
        "rss_kib": rss, "hwm_kib": hwm, "cpu_total_s": round(cpu_total),
        "requests": {
            "initial": requests_json(&initial),
            "initial_per_mirror_object": round(initial.total() as f64 / objects),
            "changes": requests_json(&changes),
            "per_change": round(changes.total() as f64 / o.changes.max(1) as f64),
            "quiet": requests_json(&quiet),
        },
        "mirror_log_tail": if converge_s.is_none() || missed > 0 { json!(log) } else { json!(null) },
    }))
}

fn print_table(r: &Value) {
    let s = &r["spec"];
    println!(
        "\nservice mirror: {} exported services ({} headless x {} hosts) -> {} mirror objects",
        s["services"], s["headless"], s["hosts"], s["mirror_objects"]
    );
    let row = |what: &str, value: String, goal: &str| println!("  {what:<44} {value:>14}   {goal}");
    row(
        "converged after the Link appeared",
        match r["converge_s"].as_f64() {
            Some(v) => format!("{v:.2} s"),
            None => format!("NO ({} current)", r["converge_current_objects"]),
        },
        "goal <= 30 s",
    );
    row(
        "  mirror CPU while converging",
        format!("{} s", r["converge_cpu_s"]),
        "",
    );
    let c = &r["change_ms"];
    row(
        "remote change -> mirror, p50 / p99",
        format!("{} / {} ms", c["p50"], c["p99"]),
        "goal p99 <= 1000 ms",
    );
    row(
        "  max, missed (30 s)",
        format!("{} ms, {}", c["max"], r["changes_missed"]),
        "",
    );
    row(
        "writes per minute at rest (audit)",
        format!("{}", r["quiet_writes_per_min"]),
        "goal 0",
    );
    row(
        "  by the mirror's metric",
        format!("{}", r["quiet_metric_writes_per_min"]),
        "",
    );
    row(
        "  Lease renewals per minute",
        format!("{}", r["quiet_lease_writes_per_min"]),
        "leader election",
    );
    row(
        "mirror RSS / peak (VmRSS / VmHWM)",
        format!(
            "{:.1} / {:.1} MiB",
            r["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            r["hwm_kib"].as_f64().unwrap_or(0.0) / 1024.0
        ),
        "goal <= 100 MiB",
    );
    let q = &r["requests"];
    row(
        "requests to converge (per mirror object)",
        format!(
            "{} ({})",
            q["initial"]["total"], q["initial_per_mirror_object"]
        ),
        "",
    );
    row(
        "requests per remote change",
        format!("{}", q["per_change"]),
        "",
    );
    println!("  initial requests by kind: {}", q["initial"]["by_kind"]);
    println!("  change requests by kind:  {}", q["changes"]["by_kind"]);
    println!("  quiet requests by kind:   {}", q["quiet"]["by_kind"]);
}
