//! Hostile clients against the real `meshlink` binary on loopback: what one client can pin
//! of the server's memory, deadlines on every read, and streams that stop reading.

mod support;

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use bytes::Bytes;
use support::{
    WAIT, free_port, http_get, next, try_get,
    world::{PodOpts, docs, pod, service},
};
use tokio::{io::AsyncReadExt, net::TcpStream, process::Child};

/// The real binary, serving a manifests folder, with its stderr collected.
struct Binary {
    child: Child,
    dir: tempfile::TempDir,
    grpc: SocketAddr,
    admin: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            eprintln!("--- meshlink's log ---\n{log}");
        }
    }
}

impl Binary {
    async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("local")).expect("mkdir");
        std::fs::write(dir.path().join("local/web.yaml"), web(1)).expect("write");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlink"))
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--manifest-poll-interval", "50ms"])
            .args(extra)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshlink");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = std::sync::Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut log) = log.lock() {
                    log.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A refused or unanswered probe while the child starts is not yet an answer: try
            // again (a bare connect can even succeed against the client's own port).
            if let Ok((200, _)) = try_get(admin, "/ready", Duration::from_secs(1)).await {
                break;
            }
            assert!(Instant::now() < deadline, "meshlink did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            dir,
            grpc,
            admin,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the server, in MiB.
    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    async fn client(
        &self,
    ) -> linkerd2_proxy_api::destination::destination_client::DestinationClient<
        tonic::transport::Channel,
    > {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        linkerd2_proxy_api::destination::destination_client::DestinationClient::new(channel)
    }

    /// A well-behaved client's `Get` gets its first message within the usual wait.
    async fn answers_others(&self) {
        let mut client = self.client().await;
        let started = Instant::now();
        let mut stream =
            tokio::time::timeout(WAIT, client.get(get("web.shop.svc.cluster.local:80")))
                .await
                .expect("Get answered while under attack")
                .expect("Get")
                .into_inner();
        next(&mut stream).await;
        assert!(started.elapsed() < WAIT);
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the server and returns what it logged.
    async fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        // Let the reader take what the process wrote last.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn web(replicas: usize) -> String {
    let mut objects = vec![service("shop", "web", &[(80, "8080", "http")])];
    for i in 0..replicas {
        let name = format!("web-{i}");
        let ip = format!("10.1.0.{}", i + 10);
        objects.push(pod(&PodOpts {
            name: &name,
            ips: &[ip.as_str()],
            ..PodOpts::default()
        }));
    }
    docs(&objects)
}

fn get(path: &str) -> linkerd2_proxy_api::destination::GetDestination {
    linkerd2_proxy_api::destination::GetDestination {
        scheme: "k8s".into(),
        path: path.into(),
        context_token: String::new(),
    }
}

/// A raw HTTP/2 connection, for requests no gRPC client would send.
async fn raw_h2(
    addr: SocketAddr,
    stream_window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .max_concurrent_reset_streams(100_000)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    (send, tokio::spawn(conn))
}

/// A `Get` of `web` on a connection that grants its streams no flow-control window: the
/// connection's task, and what the caller holds so the stream stays open.
async fn get_without_window(
    server: &Binary,
) -> (
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    (h2::client::SendRequest<Bytes>, h2::client::ResponseFuture),
) {
    let (mut send, conn) = raw_h2(server.grpc, 0).await;
    let (response, mut body) = send
        .send_request(grpc_request("Get", "application/grpc"), false)
        .expect("send");
    let request = framed("web.shop.svc.cluster.local:80");
    body.reserve_capacity(request.len());
    body.send_data(request, true).expect("data");
    (conn, (send, response))
}

fn grpc_request(method: &str, content_type: &str) -> http::Request<()> {
    http::Request::post(format!(
        "http://meshlink/io.linkerd.proxy.destination.Destination/{method}"
    ))
    .header("content-type", content_type)
    .header("te", "trailers")
    .body(())
    .expect("request")
}

/// A framed GetDestination for `path`.
fn framed(path: &str) -> Bytes {
    let msg = get(path);
    let len = prost::Message::encoded_len(&msg);
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    prost::Message::encode(&msg, &mut buf).expect("encode");
    Bytes::from(buf)
}

/// The grpc-status of a response, from its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (http::StatusCode, Option<String>) {
    tokio::time::timeout(Duration::from_secs(40), read_status(response))
        .await
        .expect("a whole response in time")
}

async fn read_status(response: h2::client::ResponseFuture) -> (http::StatusCode, Option<String>) {
    let response = response.await.expect("a response");
    let status = response.status();
    if let Some(s) = response.headers().get("grpc-status") {
        return (status, s.to_str().ok().map(String::from));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten();
    (
        status,
        trailers
            .and_then(|t| t.get("grpc-status").cloned())
            .and_then(|s| s.to_str().ok().map(String::from)),
    )
}

/// 20,000 requests whose bodies never end, each holding all but one byte of the largest
/// request the server accepts (2 KiB), on two connections (the per-connection stream limit is
/// 10,000): the server's memory stays bounded, others are answered, and every unfinished
/// request ends with DEADLINE_EXCEEDED at the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_flood_is_bounded_and_others_are_served() {
    let server = Binary::start(&["--request-timeout", "20s"]).await;
    let rss_idle = server.rss_mib();
    // A prefix announcing the largest message accepted, then all of it but one byte: the
    // most a request can hold while unfinished.
    let claimed = meshlink::grpc::framing::MAX_REQUEST - 5;
    let mut partial = vec![0u8];
    partial.extend_from_slice(&(claimed as u32).to_be_bytes());
    partial.extend(std::iter::repeat_n(b'a', claimed - 1));
    let partial = Bytes::from(partial);
    let mut held = Vec::new();
    let mut connections = Vec::new();
    let mut responses = Vec::new();
    let started = Instant::now();
    for _ in 0..2 {
        let (mut send, conn) = raw_h2(server.grpc, 65_535).await;
        for _ in 0..10_000 {
            send = send.ready().await.expect("stream slot");
            let (response, mut body) = send
                .send_request(grpc_request("Get", "application/grpc"), false)
                .expect("send request");
            body.reserve_capacity(partial.len());
            body.send_data(partial.clone(), false).expect("send data");
            responses.push(response);
            held.push(body);
        }
        connections.push(conn);
    }
    let opened = started.elapsed();
    server.answers_others().await;
    // Let the server read all that was sent: the most it can hold.
    let mut rss_attack = server.rss_mib();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_attack = rss_attack.max(server.rss_mib());
    }
    eprintln!(
        "20,000 unfinished requests opened in {opened:?}: RSS {rss_idle:.1} MiB idle, {rss_attack:.1} MiB under attack"
    );
    assert!(
        rss_attack < 150.0,
        "20,000 unfinished requests pinned {rss_attack:.1} MiB (idle {rss_idle:.1} MiB)"
    );
    // Every unfinished request ends at the deadline, with the status that says so.
    let mut codes = std::collections::BTreeMap::new();
    for response in responses.into_iter().step_by(997) {
        let (_, code) = grpc_status(response).await;
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(
        codes.keys().collect::<Vec<_>>(),
        vec![&Some("4".to_string())],
        "unfinished requests end with DEADLINE_EXCEEDED: {codes:?}"
    );
    drop(held);
    drop(connections);
    server.stop().await;
}

/// A request body that never ends is answered DEADLINE_EXCEEDED at --request-timeout, and
/// at the client's grpc-timeout when that is sooner (not CANCELLED); a stream whose
/// grpc-timeout passes ends with DEADLINE_EXCEEDED after its updates.
#[tokio::test]
async fn request_deadlines_end_with_deadline_exceeded() {
    let server = Binary::start(&["--request-timeout", "1s"]).await;
    let (mut send, _conn) = raw_h2(server.grpc, 65_535).await;

    let started = Instant::now();
    let (response, mut body) = send
        .send_request(grpc_request("Get", "application/grpc"), false)
        .expect("send");
    body.send_data(Bytes::from_static(&[0, 0, 0]), false)
        .expect("data");
    let answered = tokio::time::timeout(WAIT, grpc_status(response))
        .await
        .expect("answered soon after the 1 s request timeout");
    assert_eq!(answered.1.as_deref(), Some("4"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "answered before the request timeout: {waited:?}"
    );

    // The client's grpc-timeout, on a server whose own request timeout is far off: only
    // the client's deadline can answer within the wait.
    let patient = Binary::start(&["--request-timeout", "60s"]).await;
    let (mut send, _conn) = raw_h2(patient.grpc, 65_535).await;
    let mut request = grpc_request("Get", "application/grpc");
    request
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("200m"));
    let (response, _body) = send.send_request(request, false).expect("send");
    let answered = tokio::time::timeout(WAIT, grpc_status(response))
        .await
        .expect("answered at the client's grpc-timeout, not the server's 60 s");
    assert_eq!(answered.1.as_deref(), Some("4"));
    patient.stop().await;

    // A whole request with a deadline: the stream is served, then ends when it passes.
    let mut client = server.client().await;
    let mut request = tonic::Request::new(get("web.shop.svc.cluster.local:80"));
    request.set_timeout(Duration::from_millis(700));
    let mut stream = client.get(request).await.expect("Get").into_inner();
    next(&mut stream).await;
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream ends at its deadline");
    assert_eq!(
        end.expect_err("ends with a status").code(),
        tonic::Code::DeadlineExceeded
    );
    server.stop().await;
}

/// Requests that are not what a proxy sends: too large, not gRPC, or naming a path of
/// kilobytes (whose error quotes only a prefix).
#[tokio::test]
async fn oversized_foreign_and_long_requests_are_refused_briefly() {
    let server = Binary::start(&[]).await;
    let (mut send, _conn) = raw_h2(server.grpc, 65_535).await;

    let (response, mut body) = send
        .send_request(grpc_request("Get", "application/grpc"), false)
        .expect("send");
    let mut huge = vec![0u8];
    huge.extend_from_slice(&100_000u32.to_be_bytes());
    huge.extend(std::iter::repeat_n(b'a', 10_000));
    body.reserve_capacity(huge.len());
    body.send_data(Bytes::from(huge), true).expect("data");
    assert_eq!(
        grpc_status(response).await.1.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED"
    );

    let (response, mut body) = send
        .send_request(grpc_request("Get", "application/json"), false)
        .expect("send");
    body.send_data(Bytes::from_static(b"{}"), true)
        .expect("data");
    let (http_status, _) = grpc_status(response).await;
    assert_eq!(http_status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let long = format!("{}.shop.svc.cluster.local:80", "x".repeat(1500));
    let mut client = server.client().await;
    let status = client.get(get(&long)).await.expect_err("invalid authority");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().len() < 400,
        "the message quotes the whole authority: {} bytes",
        status.message().len()
    );
    let stderr = server.stop().await;
    assert!(!stderr.is_empty(), "the server logged something to check");
    assert!(
        !stderr.contains('\u{1b}'),
        "logs to a pipe carry no colour codes"
    );
}

/// A client that grants no flow-control window and whose service never changes: the first
/// message alone waits for room, the stream times out, and the connection (every stream of
/// it stalled) is closed, its lookups freed.
#[tokio::test]
async fn a_stream_whose_first_message_is_never_taken_is_ended() {
    let server = Binary::start(&["--stream-send-timeout", "1s"]).await;
    let (conn, _held) = get_without_window(&server).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        closed.is_ok(),
        "the server kept a connection whose only stream never took its first message"
    );
    assert_eq!(
        server
            .metric("meshlink_grpc_stream_send_timeouts_total")
            .await,
        1.0
    );
    server.answers_others().await;
    server.stop().await;
}

/// A client that grants no flow-control window while its stream has updates to send: the
/// stream times out, and since every stream on the connection stalled, the connection is
/// closed within the send timeout and a second.
#[tokio::test]
async fn a_connection_whose_every_stream_stalled_is_closed() {
    let server = Binary::start(&["--stream-send-timeout", "1s"]).await;
    let (conn, _held) = get_without_window(&server).await;
    // Updates the client never takes: more than the stream's queue holds.
    let writer = {
        let dir = server.dir.path().to_path_buf();
        tokio::spawn(async move {
            for n in 2..40 {
                std::fs::write(dir.join("local/web.yaml"), web(n)).expect("write");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let closed = tokio::time::timeout(Duration::from_secs(15), conn).await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "the server kept a connection whose every stream stalled"
    );
    assert!(
        server
            .metric("meshlink_grpc_stream_send_timeouts_total")
            .await
            >= 1.0
    );
    server.answers_others().await;
    server.stop().await;
}
