//! `meshlink serve`: load the local cluster, then serve gRPC and admin until SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{Instrument, info, info_span, warn};

use super::{
    admin,
    cli::ServeArgs,
    linked::{LinkedKubeClusters, LinkedManifestClusters},
    listener::{self, GRPC_MAX_CONNECTIONS, Listener},
};
use crate::{
    grpc::{DestinationService, StreamSettings},
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig},
    metrics::Metrics,
    model::PortSet,
    proto,
    resolver::Resolver,
    sources::{kube::KubeSource, manifests::ManifestSource},
};

/// A running server: its bound addresses and the handle to stop it.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub clusters: Arc<ClusterSet>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    grace: std::time::Duration,
}

impl Server {
    /// Ends every stream and waits for the servers, at most the shutdown grace.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        tokio::select! {
            _ = async { let _ = self.grpc.await; let _ = self.admin.await; } => info!("stopped"),
            _ = &mut deadline => warn!(grace = ?self.grace, "streams did not end in time; exiting anyway"),
        }
    }
}

/// Where the clusters' objects come from.
enum Source {
    /// `--manifests`: one sub-folder per cluster.
    Manifests(PathBuf),
    /// The local cluster's API server.
    Kube(kube::Client),
}

/// Starts meshlink as `args` say and returns once it is serving (with Kubernetes: once
/// the local cluster's initial lists are in).
pub async fn serve(args: ServeArgs) -> Result<Server> {
    listener::raise_fd_limit();
    let default_opaque_ports = Arc::new(
        PortSet::parse_strict(&args.default_opaque_ports)
            .context("invalid --default-opaque-ports")?,
    );
    let source = match args.manifests.clone() {
        Some(manifests) => {
            let local_dir = manifests.join(&args.cluster_name);
            if !local_dir.is_dir() {
                bail!(
                    "{} is not a folder: --manifests must hold one sub-folder per cluster, and --cluster-name ({}) names the local one",
                    local_dir.display(),
                    args.cluster_name
                );
            }
            Source::Manifests(manifests)
        }
        None => Source::Kube(local_client(args.kubeconfig.as_deref()).await?),
    };
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = IndexConfig {
        cluster_name: Arc::from(args.cluster_name.as_str()),
        cluster_domain: args.cluster_domain.clone(),
        trust_domain: args.trust_domain.clone(),
        control_plane_ns: args.control_plane_namespace.clone(),
        default_opaque_ports: Arc::clone(&default_opaque_ports),
    };
    let local = ClusterHandle::new(ClusterIndex::shared(config.clone()));
    let clusters = Arc::new(ClusterSet::new(local.clone()));

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {}", args.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    // The admin server answers /live and /ready (503) while the first load runs.
    let admin = tokio::spawn(
        admin::serve_admin(
            admin_listener,
            admin::AdminLimits {
                header_timeout: args.admin_header_timeout,
                max_connections: args.admin_max_connections,
            },
            Arc::clone(&metrics),
            Arc::clone(&clusters),
            shutdown_rx.clone(),
        )
        .instrument(info_span!("admin")),
    );

    let links_rx = local.index.lock().linked_clusters_rx();
    match source {
        Source::Manifests(manifests) => {
            let local_dir = manifests.join(&args.cluster_name);
            let mut source =
                ManifestSource::new(local_dir.clone(), local.clone(), Arc::clone(&metrics));
            let report = source.sync();
            let counts = local.index.lock().counts();
            info!(
                dir = %local_dir.display(),
                services = counts.services,
                pods = counts.pods,
                endpoint_slices = counts.endpoint_slices,
                errors = report.errors.len(),
                "loaded the local cluster"
            );
            tokio::spawn(
                source
                    .run(args.manifest_poll_interval, shutdown_rx.clone())
                    .instrument(info_span!("manifests", cluster = %args.cluster_name)),
            );
            tokio::spawn(
                LinkedManifestClusters {
                    root: manifests,
                    clusters: Arc::clone(&clusters),
                    base: config,
                    metrics: Arc::clone(&metrics),
                    poll_interval: args.manifest_poll_interval,
                }
                .run(links_rx, shutdown_rx.clone())
                .instrument(info_span!("linked")),
            );
        }
        Source::Kube(client) => {
            tokio::spawn(
                KubeSource::new(
                    client,
                    local.clone(),
                    Some(args.control_plane_namespace.clone()),
                )
                .run(shutdown_rx.clone())
                .instrument(info_span!("kube", cluster = %args.cluster_name)),
            );
            tokio::spawn(
                LinkedKubeClusters {
                    clusters: Arc::clone(&clusters),
                    base: config,
                }
                .run(links_rx, shutdown_rx.clone())
                .instrument(info_span!("linked")),
            );
            wait_for_sync(&local).await;
            let counts = local.index.lock().counts();
            info!(
                services = counts.services,
                pods = counts.pods,
                endpoint_slices = counts.endpoint_slices,
                nodes = counts.nodes,
                "loaded the local cluster"
            );
        }
    }
    tokio::spawn(gc_lookups(Arc::clone(&clusters), shutdown_rx.clone()));

    let grpc = spawn_grpc(
        grpc_listener,
        Arc::clone(&clusters),
        StreamSettings {
            cluster_domain: args.cluster_domain.clone(),
            default_opaque_ports,
            send_timeout: args.stream_send_timeout,
        },
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    )
    .await?;
    info!(%grpc_addr, %admin_addr, "serving");
    Ok(Server {
        grpc_addr,
        admin_addr,
        clusters,
        shutdown: shutdown_tx,
        grpc,
        admin,
        grace: args.shutdown_grace,
    })
}

/// A client of the local API server: `--kubeconfig`, else what kube infers
/// ($KUBECONFIG, ~/.kube/config, the in-cluster service account).
async fn local_client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("invalid --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found (pass --kubeconfig, set KUBECONFIG, or run in a pod); \
             to run without a cluster, pass --manifests DIR",
        )?,
    };
    info!(api_server = %config.cluster_url, "watching the local cluster's API server");
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Waits until the local cluster's initial lists are in, saying what it waits for.
async fn wait_for_sync(local: &ClusterHandle) {
    let started = tokio::time::Instant::now();
    let mut next_log = started + std::time::Duration::from_secs(10);
    while !local.status.is_synced() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if tokio::time::Instant::now() >= next_log {
            next_log += std::time::Duration::from_secs(10);
            warn!(
                waited = ?started.elapsed(),
                error = local.status.last_error().unwrap_or_default(),
                "still waiting for the local cluster's initial lists; not serving gRPC yet"
            );
        }
    }
}

/// Releases lookups nobody reads any more, every few seconds.
async fn gc_lookups(clusters: Arc<ClusterSet>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        clusters.local().index.lock().gc();
        for cluster in clusters.linked().values() {
            cluster.index.lock().gc();
        }
    }
}

/// Serves the destination API, health and reflection on `listener` until `shutdown`.
pub async fn spawn_grpc(
    listener: TcpListener,
    clusters: Arc<ClusterSet>,
    settings: StreamSettings,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    // Taken before `metrics` moves into the service; limits connections, backs off on EMFILE.
    let incoming = Listener::new(listener, "grpc", GRPC_MAX_CONNECTIONS, &metrics)
        .with_nodelay()
        .into_incoming();
    let destination =
        DestinationService::new(Resolver::new(clusters), settings, metrics, shutdown.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<DestinationService>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    let mut grpc_shutdown = shutdown;
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(100_000))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(destination)
            // Without TCP_NODELAY a delta's second write waits for the client's delayed ACK
            // (40 ms on Linux): that was the whole p99 of small fan-outs.
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            })
            .instrument(info_span!("grpc")),
    ))
}
