//! The manifest source against the binary: files written in place, as editors do.

mod support;

use std::{io::Write, path::Path, time::Duration};

use support::{world::*, *};

/// The poll interval the binary runs with.
const POLL: Duration = Duration::from_millis(50);

/// A `meshlink serve --manifests` child process on loopback ports.
struct Binary {
    child: tokio::process::Child,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Binary {
    /// Starts the binary over `dir` and waits until `/ready` answers 200.
    async fn start(dir: &Path) -> Self {
        let grpc: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlink"))
            .args(["serve", "--manifests"])
            .arg(dir)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args([
                "--manifest-poll-interval",
                &format!("{}ms", POLL.as_millis()),
            ])
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshlink");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(admin).await.is_ok()
                && http_get(admin, "/ready").await.0 == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "meshlink did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, grpc, admin }
    }

    /// Opens a `Get` stream.
    async fn get(&self, path: &str) -> tonic::Streaming<linkerd2_proxy_api::destination::Update> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        linkerd2_proxy_api::destination::destination_client::DestinationClient::new(channel)
            .get(linkerd2_proxy_api::destination::GetDestination {
                scheme: "k8s".into(),
                path: path.into(),
                context_token: String::new(),
            })
            .await
            .expect("Get")
            .into_inner()
    }
}

fn web(pods: &[(&str, &str)]) -> String {
    let mut parts = vec![service("shop", "web", &[(80, "http", "http")])];
    for (name, ip) in pods {
        parts.push(pod(&PodOpts {
            name,
            ips: &[ip],
            ..Default::default()
        }));
    }
    docs(&parts)
}

/// How long the file stays half-written: less than a poll.
const HALF_WRITTEN: Duration = Duration::from_millis(30);

/// Truncates `path` and writes `text` in place, in two writes: a pause of `pause` after
/// the truncation, and one shorter than a poll between the halves, so a poll can see the
/// half-written file (once, never twice in a row): what an editor saving in place may do.
fn write_in_place(path: &Path, text: &str, pause: Duration) {
    let mut file = std::fs::File::create(path).expect("truncate");
    file.sync_all().expect("sync");
    std::thread::sleep(pause);
    let (head, tail) = text.split_at(text.len() / 2);
    file.write_all(head.as_bytes()).expect("write head");
    file.sync_all().expect("sync");
    std::thread::sleep(HALF_WRITTEN);
    file.write_all(tail.as_bytes()).expect("write tail");
    file.sync_all().expect("sync");
}

#[tokio::test]
async fn a_file_written_in_place_is_applied_only_once_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("local/web.yaml");
    std::fs::create_dir_all(dir.path().join("local")).expect("mkdir");
    std::fs::write(&file, web(&[("web-1", "10.1.0.1")])).expect("write");
    let mut bin = Binary::start(dir.path()).await;
    let mut s = bin.get("web.shop.svc.cluster.local:80").await;
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.1:8080")]);

    // Empty for several polls, then half written: the stream sees only the final content.
    let text = web(&[("web-1", "10.1.0.1"), ("web-2", "10.1.0.2")]);
    let writer = {
        let (file, text) = (file.clone(), text.clone());
        tokio::task::spawn_blocking(move || write_in_place(&file, &text, POLL * 6))
    };
    assert_eq!(next_msg(&mut s).await.added(), [sa("10.1.0.2:8080")]);
    writer.await.expect("writer");

    // A file left empty keeps its objects; deleting it removes them.
    std::fs::File::create(&file).expect("truncate");
    assert_quiet(&mut s, POLL * 10).await;
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(next_msg(&mut s).await, Msg::NoEndpoints { exists: false });

    assert_eq!(http_get(bin.admin, "/ready").await.0, 200);
    bin.child.start_kill().expect("kill");
    let _ = bin.child.wait().await;
}
