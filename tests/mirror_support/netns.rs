//! A network namespace made by the test (a veth pair; root needed), so that a gateway
//! address is a real, non-loopback address that receives traffic only inside it.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::AsFd,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Semaphore,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace `mlo<pid><n>` joined to this one by a veth pair on a /29 of 10.0.0.0/8
/// chosen from the process id: the host end is `.1`, the namespace holds `.2` and `.3`.
/// Deleted on drop, also when the test fails.
pub struct NetNs {
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The host end's address.
    pub host_addr: Ipv4Addr,
    /// Addresses inside the namespace.
    pub ns_addrs: [Ipv4Addr; 2],
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the veth pair, both ends up.
    pub fn create() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("mlo{pid}x{n}");
        // One /29 per namespace: 10.(128+pid%64).(pid/64%256).(8*n).
        let base = Ipv4Addr::new(
            10,
            128 + (pid % 64) as u8,
            ((pid / 64) % 256) as u8,
            (8 * (n % 32)) as u8,
        );
        let at = |i: u8| Ipv4Addr::from(u32::from(base) + u32::from(i));
        let ns = Self {
            host_if: format!("mloh{pid}x{n}"),
            ns_if: format!("mlon{pid}x{n}"),
            name,
            host_addr: at(1),
            ns_addrs: [at(2), at(3)],
        };
        if let Err(e) = ns.setup() {
            panic!(
                "cannot make network namespace {} (root and `ip` needed): {e}",
                ns.name
            );
        }
        ns
    }

    fn setup(&self) -> Result<(), String> {
        let (name, host_if, ns_if) = (&self.name, &self.host_if, &self.ns_if);
        run(&["ip", "netns", "add", name])?;
        run(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        run(&["ip", "link", "set", ns_if, "netns", name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/29", self.host_addr),
            "dev",
            host_if,
        ])?;
        run(&["ip", "link", "set", host_if, "up"])?;
        for addr in self.ns_addrs {
            run(&[
                "ip",
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/29"),
                "dev",
                ns_if,
            ])?;
        }
        run(&["ip", "-n", name, "link", "set", ns_if, "up"])?;
        run(&["ip", "-n", name, "link", "set", "lo", "up"])
    }

    /// Takes the namespace's end of the link down (probes time out) or up again.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&["ip", "-n", &self.name, "link", "set", &self.ns_if, state])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A listener bound inside the namespace: a thread joins it just to create the
    /// socket, which stays in the namespace it was made in.
    pub fn bind(&self, addr: SocketAddr) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<TcpListener, String> {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("setns {path}: {e}"))?;
            TcpListener::bind(addr).map_err(|e| format!("bind {addr} in {path}: {e}"))
        })
        .join()
        .expect("namespace thread")
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// An HTTP endpoint answering every request 200, or 503 while failing. While `gated`,
/// each failing answer waits for a permit, so a test can stop the prober mid-round.
pub struct ProbeTarget {
    pub addr: SocketAddr,
    failing: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
    /// Requests received / waiting for a permit / answered 503.
    received: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ProbeTarget {
    /// Serves on `listener` (from [`NetNs::bind`]).
    pub fn serve(listener: TcpListener) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let failing = Arc::new(AtomicBool::new(false));
        let permits = Arc::new(Semaphore::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let counters = (received.clone(), waiting.clone(), failed.clone());
        let (f, p) = (failing.clone(), permits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (f, p) = (f.clone(), p.clone());
                let (r, w, d) = counters.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let mut status = "200 OK";
                    if f.load(Ordering::SeqCst) {
                        w.fetch_add(1, Ordering::SeqCst);
                        let permit = p.acquire().await;
                        w.fetch_sub(1, Ordering::SeqCst);
                        let Ok(permit) = permit else { return };
                        permit.forget();
                        // Healthy again while waiting: answer as a healthy gateway.
                        if f.load(Ordering::SeqCst) {
                            d.fetch_add(1, Ordering::SeqCst);
                            status = "503 Service Unavailable";
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            addr,
            failing,
            permits,
            received,
            waiting,
            failed,
            task,
        }
    }

    /// Answers 503 (each after a permit) from now on, or 200 again.
    pub fn set_failing(&self, failing: bool) {
        // Permits left from before do not carry over.
        while let Ok(p) = self.permits.try_acquire() {
            p.forget();
        }
        self.failing.store(failing, Ordering::SeqCst);
        if !failing {
            // Let the requests waiting for a permit through (they answer 200 now).
            self.permits.add_permits(self.waiting());
        }
    }

    /// Failing requests held until a permit comes.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets `n` failing answers go out.
    pub fn allow_failures(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// 503 answers sent so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Drop for ProbeTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}
