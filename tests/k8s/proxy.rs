//! A TCP forwarder between meshlink and an API server: cutting it breaks meshlink's
//! watches as a network blip would, while the API server and its watch cache stay up.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinHandle},
};

/// Forwards 127.0.0.1:`addr` to an upstream address, until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    blocked: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State::default());
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    if state.blocked.load(Ordering::SeqCst) {
                        // Closed at once: the client sees its connection fail.
                        continue;
                    }
                    let conn = tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    let mut conns = state.conns.lock().expect("proxy lock");
                    conns.retain(|c| !c.is_finished());
                    conns.push(conn.abort_handle());
                }
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.state.blocked.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().expect("proxy lock").drain(..) {
            c.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
