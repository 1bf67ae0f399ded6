//! `meshlink mirror`: the service mirror, with its admin server and leader election.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::Instrument;

use super::cli::{MirrorArgs, MirrorOutput};
use crate::{
    k8s::link::Link,
    mirror::{
        controller, federated,
        lease::{self, LeaseSettings},
        metrics::{self, MirrorMetrics},
        probe::ProbeMetrics,
        reconcile::{self, DryRun, Shared},
    },
};

/// A running mirror (for tests and `main`).
pub struct Mirror {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Mirror {
    /// Stops the reconcilers and the admin server (mirrors stay as they are).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Runs `meshlink mirror` until a signal (or, with `--once`, one pass).
pub async fn run(args: MirrorArgs) -> Result<()> {
    if args.once {
        let out = once(&args).await?;
        print!("{out}");
        return Ok(());
    }
    let mut signals = super::Signals::listen();
    let mirror = spawn(args).await?;
    signals.recv().await;
    mirror.stop().await;
    Ok(())
}

async fn shared(
    args: &MirrorArgs,
    client: kube::Client,
    registry: &mut Registry,
    dry_run: Option<Arc<Mutex<DryRun>>>,
    shutdown: watch::Receiver<bool>,
) -> Shared {
    let (services, slices, namespaces, local_changed) =
        controller::local_stores(&client, shutdown).await;
    Shared {
        client,
        services,
        slices,
        namespaces,
        local_changed,
        writes: Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrent_writes.max(1),
        )),
        metrics: MirrorMetrics::register(registry),
        probe_metrics: ProbeMetrics::register(registry),
        dry_run,
        resync: args.resync_interval,
        federation: Arc::default(),
    }
}

/// One pass over every Link; with `--dry-run`, nothing is written and what would be is
/// returned as YAML (or JSON).
pub async fn once(args: &MirrorArgs) -> Result<String> {
    let client = super::local_client(args.kubeconfig.as_deref(), "").await?;
    let (_stop, shutdown) = watch::channel(false);
    let dry = args
        .dry_run
        .then(|| Arc::new(Mutex::new(DryRun::default())));
    let mut registry = Registry::default();
    let shared = shared(
        args,
        client.clone(),
        &mut registry,
        dry.clone(),
        shutdown.clone(),
    )
    .await;
    let links = Api::<Link>::namespaced(client, &args.namespace)
        .list(&Default::default())
        .await
        .with_context(|| format!("cannot list Links in namespace {}", args.namespace))?;
    let passes = links.items.into_iter().map(|link| {
        let name = link.name_any();
        reconcile::run_link(shared.clone(), Arc::new(link), true, shutdown.clone())
            .instrument(tracing::info_span!("link", link = %name))
    });
    futures::future::join_all(passes).await;
    // Every Link has contributed its members (or is kept as it was): federated services last.
    federated::once(&shared, &shared.federation).await;
    let Some(dry) = dry else {
        return Ok(String::new());
    };
    let dry = std::mem::take(&mut *dry.lock());
    let doc = serde_json::json!({ "apply": dry.apply, "delete": dry.delete });
    Ok(match args.output {
        MirrorOutput::Yaml => crate::k8s::link::to_yaml(&doc)?,
        MirrorOutput::Json => format!("{}\n", serde_json::to_string_pretty(&doc)?),
    })
}

/// Starts the mirror: admin server, local watches, leader election, one reconciler per Link.
pub async fn spawn(args: MirrorArgs) -> Result<Mirror> {
    let client = super::local_client(args.kubeconfig.as_deref(), "").await?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let mut registry = Registry::default();
    let (ready_tx, ready_rx) = watch::channel(false);
    let registry_slot = Arc::new(Mutex::new(None::<Registry>));
    tokio::spawn(serve_admin(
        listener,
        Arc::clone(&registry_slot),
        ready_rx,
        shutdown.clone(),
    ));

    let shared = shared(&args, client.clone(), &mut registry, None, shutdown.clone()).await;
    *registry_slot.lock() = Some(registry);
    let _ = ready_tx.send(true);

    // Without election this replica always leads; the sender lives as long as the task.
    let (always_tx, always) = watch::channel(true);
    let leader = if args.leader_election {
        // Unique per mirror, also when several run in one process (tests).
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let holder = match std::env::var("POD_NAME") {
            Ok(pod) => format!("{pod}-{n}"),
            Err(_) => format!("meshlink-mirror-{}-{n}", std::process::id()),
        };
        lease::spawn_leader_election(
            client,
            LeaseSettings {
                namespace: args.namespace.clone(),
                name: args.lease_name.clone(),
                holder,
                lease_duration: args.lease_duration,
                renew_every: args.lease_duration / 5,
            },
            shutdown.clone(),
        )
    } else {
        always
    };
    let namespace = args.namespace.clone();
    let task = tokio::spawn(async move {
        lead(shared, namespace, leader, shutdown).await;
        drop(always_tx);
    });
    Ok(Mirror {
        admin_addr,
        shutdown: shutdown_tx,
        task,
    })
}

/// Runs the reconcilers only while this replica leads.
async fn lead(
    shared: Shared,
    namespace: String,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::mirror::until_true(&mut leader) => if !*leader.borrow() { return },
            _ = crate::mirror::until_true(&mut shutdown) => return,
        }
        tracing::info!("leading; mirroring");
        let (stop_tx, stop) = watch::channel(false);
        let (listed_tx, listed) = watch::channel(false);
        let fed = tokio::spawn(federated::run(
            shared.clone(),
            Arc::clone(&shared.federation),
            listed,
            stop.clone(),
        ));
        let run = controller::run(shared.clone(), namespace.clone(), listed_tx, stop);
        let mut run = std::pin::pin!(run);
        tokio::select! {
            _ = &mut run => return,
            _ = crate::mirror::until_false(&mut leader) => {
                // The election ended (its sender is gone) without losing: keep leading until shutdown.
                if *leader.borrow() {
                    tokio::select! {
                        _ = &mut run => return,
                        _ = crate::mirror::until_true(&mut shutdown) => {}
                    }
                } else {
                    tracing::warn!("lost the lease; stopping writes");
                }
            }
            _ = crate::mirror::until_true(&mut shutdown) => {}
        }
        let _ = stop_tx.send(true);
        run.await;
        let _ = fed.await;
        if *shutdown.borrow() {
            return;
        }
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Mutex<Option<Registry>>>,
    ready: watch::Receiver<bool>,
}

async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Mutex<Option<Registry>>>,
    ready: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AdminState { registry, ready });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the admin server failed");
    }
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the local cluster is still loading\n",
        )
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    let text = state
        .registry
        .lock()
        .as_ref()
        .map(metrics::encode_registry)
        .unwrap_or_default();
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
