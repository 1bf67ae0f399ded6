//! The binary's connection limits on loopback: the admin server under a slowloris, idle
//! connections, and accepting at the file-descriptor limit.

mod support;

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use linkerd2_proxy_api::destination::{GetDestination, destination_client::DestinationClient};
use support::{world::*, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

/// How long Kubernetes waits for a probe by default (`timeoutSeconds: 1`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `meshlink serve` binary on loopback ports, over a folder with one Service.
struct Binary {
    child: Child,
    _dir: tempfile::TempDir,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Binary {
    /// Starts the binary with `extra` flags, through `wrapper` (a command and its arguments
    /// that run the binary, such as `prlimit`) when given, and waits until it is ready.
    async fn start(wrapper: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("local")).expect("mkdir");
        std::fs::write(dir.path().join("local/web.yaml"), web_files()).expect("write");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let binary = env!("CARGO_BIN_EXE_meshlink");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("serve")
            .arg("--manifests")
            .arg(dir.path())
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshlink");
        let binary = Self {
            child,
            _dir: dir,
            grpc,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_get(admin, "/ready", PROBE_TIMEOUT).await.map(|r| r.0) != Ok(200) {
            assert!(Instant::now() < deadline, "meshlink did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        binary
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("meshlink is running")
    }

    /// A `Get` that answers with the Service's endpoint.
    async fn get(&self) -> Result<(), String> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = DestinationClient::new(channel)
            .get(GetDestination {
                scheme: "k8s".into(),
                path: "web.shop.svc.cluster.local:80".into(),
                context_token: String::new(),
            })
            .await
            .map_err(|e| format!("Get: {e}"))?
            .into_inner();
        let update = tokio::time::timeout(WAIT, stream.message())
            .await
            .map_err(|_| "no update".to_string())?
            .map_err(|e| format!("stream: {e}"))?
            .ok_or("stream ended")?;
        match decode(update) {
            Msg::Add(_) => Ok(()),
            other => Err(format!("expected an add, got {other:?}")),
        }
    }
}

fn web_files() -> String {
    let svc = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, port: 80, targetPort: http}
"
    .to_string();
    docs(&[svc, pod(&PodOpts::default())])
}

/// Opens a connection and sends the start of a `GET /ready` that never ends.
async fn half_open(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin");
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: slow")
        .await
        .expect("send a partial request");
    stream
}

/// Waits until the server closes `stream` (EOF or reset) or `deadline` passes; says which.
async fn closed_by(mut stream: TcpStream, deadline: Instant) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return Err("still open".into()),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            // A server may answer (e.g. 408) before closing: keep reading until it closes.
            Ok(Ok(_)) => {}
        }
    }
}

/// The value of the sample `name` (with its labels, as printed) in `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 1,500 half-open `GET /ready` requests: the server closes every one of them within the
/// header timeout, and `/ready` and `/live` from fresh clients answer within a probe's
/// timeout all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_under_a_slowloris() {
    // This test holds 1,500 sockets of its own.
    let _ = rlimit::increase_nofile_limit(4096);
    let header_timeout = Duration::from_secs(3);
    let server = Binary::start(&[], &["--admin-header-timeout", "3s"]).await;

    let mut watchers = Vec::new();
    for _ in 0..1500 {
        let stream = half_open(server.admin).await;
        // Each must be closed within the header timeout (and a margin) of being made.
        let deadline = Instant::now() + header_timeout + Duration::from_secs(2);
        watchers.push(tokio::spawn(closed_by(stream, deadline)));
    }

    // Probes while the connections are held, until the server has closed the last of them.
    let started = Instant::now();
    let mut probes = 0;
    while watchers.iter().any(|w| !w.is_finished()) {
        for path in ["/ready", "/live"] {
            match try_get(server.admin, path, PROBE_TIMEOUT).await {
                Ok((200, _)) => probes += 1,
                other => panic!(
                    "{path} failed {:?} into the slowloris: {other:?}",
                    started.elapsed()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(probes >= 10, "only {probes} probes ran during the attack");
    let mut open = 0;
    for w in watchers {
        if w.await.expect("watcher").is_err() {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "half-open connections still open {header_timeout:?} + 2s after they were made ({probes} probes)"
    );

    let (status, metrics) = try_get(server.admin, "/metrics", PROBE_TIMEOUT)
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let evicted = sample(
        &metrics,
        "meshlink_connections_evicted_total{listener=\"admin\"}",
    )
    .expect("eviction counter");
    assert!(evicted > 0.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "meshlink_connections_max{listener=\"admin\"}"),
        Some(64.0)
    );
}

/// A connection that stops part-way through its headers, and a keep-alive connection that
/// stays idle after its response, are closed by the server after the header timeout.
#[tokio::test]
async fn unfinished_and_idle_connections_are_closed() {
    let server = Binary::start(&[], &["--admin-header-timeout", "1s"]).await;
    let deadline = Instant::now() + Duration::from_secs(1) + Duration::from_secs(3);

    let mut unfinished = Vec::new();
    for _ in 0..10 {
        unfinished.push(half_open(server.admin).await);
    }

    let mut idle = TcpStream::connect(server.admin).await.expect("connect");
    idle.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&response).ends_with("live\n") {
        let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
            .await
            .expect("a response")
            .expect("read");
        assert_ne!(n, 0, "closed before the response");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );

    closed_by(idle, deadline)
        .await
        .expect("the idle keep-alive connection is closed");
    for stream in unfinished {
        closed_by(stream, deadline)
            .await
            .expect("the unfinished request's connection is closed");
    }
    assert_eq!(
        try_get(server.admin, "/ready", PROBE_TIMEOUT)
            .await
            .map(|r| r.0),
        Ok(200)
    );
}

/// Under a limit of 64 open files, clients take every descriptor: the process does not spin
/// on accept while it waits, and once they leave, gRPC and `/ready` answer again.
#[tokio::test]
async fn accepting_at_the_fd_limit_backs_off() {
    if !Path::new("/proc/self/stat").exists() {
        eprintln!("skipped: needs /proc");
        return;
    }
    // Soft and hard alike: the binary raises its soft limit to the hard one.
    let server = Binary::start(&["prlimit", "--nofile=64:64", "--"], &[]).await;
    let pid = server.pid();

    let mut clients = Vec::new();
    for _ in 0..100 {
        // Beyond the server's descriptors the kernel still queues connections, up to the backlog.
        match TcpStream::connect(server.grpc).await {
            Ok(s) => clients.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) < 64 {
        assert!(
            Instant::now() < deadline,
            "the server never reached its descriptor limit ({} open)",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A spin detector, not a speed test: a spinning accept loop burns a whole core.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = Duration::from_millis((cpu_ticks(pid) - before) * 10);
    assert!(
        used < Duration::from_millis(500),
        "the server used {used:?} of CPU in 2 s while out of descriptors"
    );

    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = try_get(server.admin, "/ready", PROBE_TIMEOUT)
            .await
            .map(|r| r.0);
        let get = server.get().await;
        if ready == Ok(200) && get.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving again after the clients left: /ready {ready:?}, Get {get:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, metrics) = try_get(server.admin, "/metrics", PROBE_TIMEOUT)
        .await
        .expect("metrics");
    assert_eq!(sample(&metrics, "process_max_fds"), Some(64.0), "{metrics}");
    let errors = sample(&metrics, "meshlink_accept_errors_total{listener=\"grpc\"}")
        .expect("accept error counter");
    assert!(errors > 0.0, "{metrics}");
    let open = sample(&metrics, "process_open_fds").expect("process_open_fds");
    assert!(open > 0.0 && open < 64.0, "{metrics}");
}
