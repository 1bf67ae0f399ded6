//! A TCP proxy on loopback in front of an API server, that a test can cut: while cut,
//! open connections are closed and new ones are accepted but never answered (an API
//! server that hangs), until it is restored.

use std::net::SocketAddr;

use tokio::{net::TcpListener, sync::watch};

/// A proxy to `upstream` on a free loopback port.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    if *cut_rx.borrow_and_update() {
                        // Hold the connection without a byte until the cut ends.
                        let _ = cut_rx.wait_for(|c| !*c).await;
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Cuts (true) or restores (false) the way to the API server.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
