//! Test harness: a real meshlink server on a loopback port over a temporary manifests
//! folder, queried with the published `linkerd2-proxy-api` client.
#![allow(dead_code)]

pub mod world;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use linkerd2_proxy_api::{
    destination::{
        self as pb, destination_client::DestinationClient, protocol_hint, tls_identity, update,
    },
    net,
};
use meshlink::runtime::{self, cli::ServeArgs};
use tonic::{Code, Streaming, transport::Channel};

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// A server on loopback with its own manifests folder.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<runtime::Server>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl TestServer {
    /// Starts a server over a folder where `files` (cluster/file.yaml → YAML) are written first.
    pub async fn start(files: &[(&str, &str)]) -> Self {
        Self::start_with(files, &[]).await
    }

    /// Like `start`, with extra `serve` flags.
    pub async fn start_with(files: &[(&str, &str)], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("local")).expect("local dir");
        for (path, text) in files {
            write_file(dir.path(), path, text);
        }
        let manifests = dir.path().to_str().expect("utf-8 temp path").to_string();
        let mut argv = vec![
            "serve",
            "--manifests",
            manifests.as_str(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--manifest-poll-interval",
            "50ms",
        ];
        argv.extend_from_slice(extra);
        let args = ServeArgs::try_parse_from(argv).expect("valid flags");
        let server = runtime::serve(args).await.expect("server starts");
        Self {
            grpc: server.grpc_addr,
            admin: server.admin_addr,
            server: Some(server),
            dir,
        }
    }

    /// Writes (or replaces) a manifest file; the server picks it up by itself.
    pub fn write(&self, path: &str, text: &str) {
        write_file(self.dir.path(), path, text);
    }

    /// Removes a manifest file or folder.
    pub fn remove(&self, path: &str) {
        let p = self.dir.path().join(path);
        if p.is_dir() {
            std::fs::remove_dir_all(p).expect("remove dir");
        } else {
            std::fs::remove_file(p).expect("remove file");
        }
    }

    /// A destination client connected over TCP.
    pub async fn client(&self) -> DestinationClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        DestinationClient::new(channel)
    }

    /// Opens a `Get` stream.
    pub async fn get(&self, path: &str) -> Result<Streaming<pb::Update>, tonic::Status> {
        self.get_with_token(path, "").await
    }

    /// Opens a `Get` stream with a context token.
    pub async fn get_with_token(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Streaming<pb::Update>, tonic::Status> {
        let req = pb::GetDestination {
            scheme: "k8s".into(),
            path: path.into(),
            context_token: token.into(),
        };
        self.client().await.get(req).await.map(|r| r.into_inner())
    }

    /// Opens a `GetProfile` stream.
    pub async fn get_profile(&self, path: &str) -> Streaming<pb::DestinationProfile> {
        let req = pb::GetDestination {
            scheme: "k8s".into(),
            path: path.into(),
            context_token: String::new(),
        };
        self.client()
            .await
            .get_profile(req)
            .await
            .expect("GetProfile")
            .into_inner()
    }

    /// An HTTP GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

fn write_file(root: &Path, path: &str, text: &str) {
    let full: PathBuf = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    // Write then rename, as editors and config management do, so a reader never sees half a file.
    let tmp = full.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, &full).expect("rename manifest");
}

/// A minimal HTTP/1.1 GET, failing the test when no answer comes within [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path, WAIT).await.expect("an HTTP answer")
}

/// An HTTP/1.1 GET that gives up after `timeout`, as a Kubernetes probe does.
pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("GET {path}: no answer within {timeout:?}"))?
}

/// A TCP port on loopback that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The next message, failing the test when none comes in time.
pub async fn next<T>(stream: &mut Streaming<T>) -> T {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => panic!("stream ended"),
        Ok(Err(status)) => panic!("stream failed: {status}"),
        Err(_) => panic!("no message within {WAIT:?}"),
    }
}

/// Asserts no message arrives within `d`.
pub async fn assert_quiet<T: std::fmt::Debug>(stream: &mut Streaming<T>, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, stream.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// The error code of a call expected to fail, with its message.
pub fn expect_error<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// What an update is, for assertions.
#[derive(Debug, PartialEq)]
pub enum Msg {
    Add(Vec<pb::WeightedAddr>),
    Remove(Vec<SocketAddr>),
    NoEndpoints { exists: bool },
}

impl Msg {
    /// The addresses of an `Add`, sorted.
    pub fn added(&self) -> Vec<SocketAddr> {
        match self {
            Msg::Add(addrs) => sorted(addrs.iter().map(addr_of).collect()),
            other => panic!("expected add, got {other:?}"),
        }
    }

    /// The addresses of a `Remove`, sorted.
    pub fn removed(&self) -> Vec<SocketAddr> {
        match self {
            Msg::Remove(addrs) => sorted(addrs.clone()),
            other => panic!("expected remove, got {other:?}"),
        }
    }

    /// The endpoints of an `Add`.
    pub fn add_set(&self) -> &[pb::WeightedAddr] {
        match self {
            Msg::Add(addrs) => addrs,
            other => panic!("expected add, got {other:?}"),
        }
    }
}

/// The next update, decoded.
pub async fn next_msg(stream: &mut Streaming<pb::Update>) -> Msg {
    decode(next(stream).await)
}

/// Decodes an update.
pub fn decode(u: pb::Update) -> Msg {
    match u.update.expect("update is set") {
        update::Update::Add(set) => Msg::Add(set.addrs),
        update::Update::Remove(set) => Msg::Remove(set.addrs.iter().map(socket_addr).collect()),
        update::Update::NoEndpoints(ne) => Msg::NoEndpoints { exists: ne.exists },
    }
}

/// The set labels of the next update, which must be an add.
pub async fn next_add_with_labels(
    stream: &mut Streaming<pb::Update>,
) -> (
    Vec<pb::WeightedAddr>,
    std::collections::HashMap<String, String>,
) {
    match next(stream).await.update.expect("update is set") {
        update::Update::Add(set) => (set.addrs, set.metric_labels),
        other => panic!("expected add, got {other:?}"),
    }
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

/// A wire address as a socket address.
pub fn socket_addr(a: &net::TcpAddress) -> SocketAddr {
    let ip = match a
        .ip
        .as_ref()
        .and_then(|ip| ip.ip.as_ref())
        .expect("ip is set")
    {
        net::ip_address::Ip::Ipv4(v4) => IpAddr::V4(Ipv4Addr::from(*v4)),
        net::ip_address::Ip::Ipv6(v6) => IpAddr::V6(Ipv6Addr::from(
            (u128::from(v6.first) << 64) | u128::from(v6.last),
        )),
    };
    SocketAddr::new(ip, u16::try_from(a.port).expect("port fits"))
}

/// The address of a weighted address.
pub fn addr_of(a: &pb::WeightedAddr) -> SocketAddr {
    socket_addr(a.addr.as_ref().expect("addr is set"))
}

/// Parses a socket address literal.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

/// The DNS-like identity of an address, when it has one.
pub fn identity(a: &pb::WeightedAddr) -> Option<String> {
    match a.tls_identity.as_ref()?.strategy.as_ref()? {
        tls_identity::Strategy::DnsLikeIdentity(d) => Some(d.name.clone()),
        _ => None,
    }
}

/// The server name of an address, when it has one.
pub fn server_name(a: &pb::WeightedAddr) -> Option<String> {
    Some(a.tls_identity.as_ref()?.server_name.as_ref()?.name.clone())
}

/// The protocol hint as a word: `h2`, `opaque` or none.
pub fn hint(a: &pb::WeightedAddr) -> Option<&'static str> {
    match a.protocol_hint.as_ref()?.protocol.as_ref()? {
        protocol_hint::Protocol::H2(_) => Some("h2"),
        protocol_hint::Protocol::Opaque(_) => Some("opaque"),
    }
}

/// The opaque transport port, when set.
pub fn opaque_port(a: &pb::WeightedAddr) -> Option<u32> {
    Some(
        a.protocol_hint
            .as_ref()?
            .opaque_transport
            .as_ref()?
            .inbound_port,
    )
}

/// The endpoint with address `addr` in an add.
pub fn find<'a>(addrs: &'a [pb::WeightedAddr], addr: &str) -> &'a pb::WeightedAddr {
    let want = sa(addr);
    addrs
        .iter()
        .find(|a| addr_of(a) == want)
        .unwrap_or_else(|| {
            panic!(
                "{addr} not in {:?}",
                addrs.iter().map(addr_of).collect::<Vec<_>>()
            )
        })
}

/// The services a server lists by gRPC reflection, as grpcurl's `list` asks for them.
pub async fn reflection_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    match resp
        .message()
        .await
        .expect("reflection answer")
        .and_then(|r| r.message_response)
    {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}
