//! `meshlink serve`: load the local cluster, then serve gRPC and admin until SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{info, info_span, warn};

use super::{
    admin,
    cli::ServeArgs,
    linked::{LinkedKubeClusters, LinkedManifestClusters},
    listener::{self, GRPC_MAX_CONNECTIONS, Listener},
    supervise::Supervisor,
};
use crate::{
    grpc::{
        DestinationService, IdentityService, InboundPolicyService, OutboundPolicyService,
        PolicySettings, StreamSettings,
        calls::CallLimits,
        policy_services,
        server::{ConnectionLimits, serve_connections},
    },
    identity::{Ca, IdentityDomain, TokenReviewer},
    index::{ClusterHandle, ClusterIndex, ClusterSet, IndexConfig},
    metrics::Metrics,
    model::PortSet,
    proto,
    resolver::Resolver,
    sources::{kube::KubeSource, manifests::ManifestSource},
};

/// A running server: its bound addresses, its supervised tasks and the handle to stop it.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub clusters: Arc<ClusterSet>,
    shutdown: watch::Sender<bool>,
    tasks: Supervisor,
    grace: std::time::Duration,
    signals: super::Signals,
}

impl Server {
    /// Serves until SIGTERM (then ends every stream: `Ok`) or until a critical task ends
    /// (readiness fails at once, streams end, and the error says which task: the process
    /// should exit non-zero).
    pub async fn run(mut self) -> Result<()> {
        tokio::select! {
            _ = self.signals.recv() => {
                self.shutdown().await;
                Ok(())
            }
            failure = self.tasks.failure() => {
                // Readiness already fails; leave probes a moment to see it before the
                // servers close.
                tokio::time::sleep(FAILED_READINESS_WINDOW.min(self.grace)).await;
                self.shutdown().await;
                Err(failure)
            }
        }
    }

    /// Resolves with the reason once a critical task has ended before shutdown; readiness
    /// fails from then on.
    pub async fn failure(&mut self) -> anyhow::Error {
        self.tasks.failure().await
    }

    /// Ends the critical task `name` (`grpc`, `admin`, `manifests`, `kube`, `linked`,
    /// `gc`) as a crash would: for tests of the failure path.
    pub fn abort_task(&self, name: &str) -> bool {
        self.tasks.abort(name)
    }

    /// Ends every stream and waits for the tasks, at most the shutdown grace.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(self.grace, self.tasks.join_all()).await {
            Ok(()) => info!("stopped"),
            Err(_) => warn!(grace = ?self.grace, "streams did not end in time; exiting anyway"),
        }
    }
}

/// How long `/ready` reports a failure before a failing process stops serving.
const FAILED_READINESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

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
    let signals = super::Signals::listen();
    listener::raise_fd_limit();
    let default_opaque_ports = Arc::new(
        PortSet::parse_strict(&args.default_opaque_ports)
            .context("invalid --default-opaque-ports")?,
    );
    let source = source_for(&args).await?;
    // The CA first: a bad issuer stops the start before anything listens.
    let ca = super::identity::load_ca(&args)?;
    let reviewer = super::identity::token_reviewer(
        match &source {
            Source::Kube(client) => Some(client.clone()),
            Source::Manifests(_) => None,
        },
        &args.identity_token_audience,
    );
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Supervisor::new(shutdown_rx.clone());
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
    let admin = admin::serve_admin(
        admin_listener,
        admin::AdminLimits {
            header_timeout: args.admin_header_timeout,
            max_connections: args.admin_max_connections,
        },
        Arc::clone(&metrics),
        Arc::clone(&clusters),
        tasks.failed_rx(),
        shutdown_rx.clone(),
    );
    tasks.spawn("admin", info_span!("admin"), async move {
        admin.await.context("the admin server failed")
    });

    let sources = Sources {
        config,
        local: local.clone(),
        clusters: Arc::clone(&clusters),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown_rx.clone(),
    };
    match source {
        Source::Manifests(root) => sources.start_manifests(&args, root, &mut tasks),
        Source::Kube(client) => {
            sources.start_kube(&args, client, &mut tasks);
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
    let gc = gc_lookups(Arc::clone(&clusters), shutdown_rx.clone());
    tasks.spawn("gc", info_span!("gc"), async move {
        gc.await;
        Ok(())
    });

    let proxy_apis = ProxyApis {
        ca,
        reviewer,
        domain: IdentityDomain {
            control_plane_ns: args.control_plane_namespace.clone(),
            trust_domain: args.trust_domain.clone(),
        },
        cluster_networks: args.cluster_networks.0.clone(),
    };
    let grpc = spawn_grpc_with(
        grpc_listener,
        Arc::clone(&clusters),
        StreamSettings {
            cluster_domain: args.cluster_domain.clone(),
            default_opaque_ports,
            send_timeout: args.stream_send_timeout,
            request_timeout: args.request_timeout,
            max_pending_requests: usize::try_from(args.max_pending_requests).unwrap_or(usize::MAX),
        },
        ConnectionLimits {
            max_streams_per_connection: args.max_streams_per_connection,
            preface_timeout: args.request_timeout,
            shutdown_grace: args.shutdown_grace,
        },
        Arc::clone(&metrics),
        shutdown_rx.clone(),
        Some(proxy_apis),
    )
    .await?;
    tasks.spawn("grpc", info_span!("grpc"), async move {
        grpc.await.context("the gRPC server task failed")
    });
    info!(%grpc_addr, %admin_addr, "serving");
    Ok(Server {
        grpc_addr,
        admin_addr,
        clusters,
        shutdown: shutdown_tx,
        tasks,
        grace: args.shutdown_grace,
        signals,
    })
}

/// Where `args` say the clusters' objects come from, checked before anything starts.
async fn source_for(args: &ServeArgs) -> Result<Source> {
    match &args.manifests {
        Some(manifests) => {
            let local_dir = manifests.join(&args.cluster_name);
            if !local_dir.is_dir() {
                bail!(
                    "{} is not a folder: --manifests must hold one sub-folder per cluster, and --cluster-name ({}) names the local one",
                    local_dir.display(),
                    args.cluster_name
                );
            }
            Ok(Source::Manifests(manifests.clone()))
        }
        None => {
            let client = super::local_client(
                args.kubeconfig.as_deref(),
                "; to run without a cluster, pass --manifests DIR",
            )
            .await?;
            Ok(Source::Kube(client))
        }
    }
}

/// What the sources of the local and linked clusters share.
struct Sources {
    config: IndexConfig,
    local: ClusterHandle,
    clusters: Arc<ClusterSet>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl Sources {
    /// Loads the local cluster's folder, then follows it and the linked clusters' folders.
    fn start_manifests(self, args: &ServeArgs, root: PathBuf, tasks: &mut Supervisor) {
        let local_dir = root.join(&args.cluster_name);
        let mut source = ManifestSource::new(
            local_dir.clone(),
            self.local.clone(),
            Arc::clone(&self.metrics),
        );
        let report = source.sync();
        let counts = self.local.index.lock().counts();
        info!(
            dir = %local_dir.display(),
            services = counts.services,
            pods = counts.pods,
            endpoint_slices = counts.endpoint_slices,
            errors = report.errors.len(),
            "loaded the local cluster"
        );
        let links_rx = self.local.index.lock().linked_clusters_rx();
        let local = source.run(args.manifest_poll_interval, self.shutdown.clone());
        tasks.spawn(
            "manifests",
            info_span!("manifests", cluster = %args.cluster_name),
            async move {
                local.await;
                Ok(())
            },
        );
        let linked = LinkedManifestClusters {
            root,
            clusters: self.clusters,
            base: self.config,
            metrics: self.metrics,
            poll_interval: args.manifest_poll_interval,
        }
        .run(links_rx, self.shutdown);
        tasks.spawn("linked", info_span!("linked"), async move {
            linked.await;
            Ok(())
        });
    }

    /// Watches the local cluster's API server and the linked clusters' ones.
    fn start_kube(self, args: &ServeArgs, client: kube::Client, tasks: &mut Supervisor) {
        let links_rx = self.local.index.lock().linked_clusters_rx();
        let local = KubeSource::new(
            client,
            self.local.clone(),
            Some(args.control_plane_namespace.clone()),
        )
        .with_profiles()
        .run(self.shutdown.clone());
        tasks.spawn(
            "kube",
            info_span!("kube", cluster = %args.cluster_name),
            async move {
                local.await;
                Ok(())
            },
        );
        let linked = LinkedKubeClusters {
            clusters: self.clusters,
            base: self.config,
        }
        .run(links_rx, self.shutdown);
        tasks.spawn("linked", info_span!("linked"), async move {
            linked.await;
            Ok(())
        });
    }
}

/// Waits until the local cluster's initial lists are in, saying what it waits for.
async fn wait_for_sync(local: &ClusterHandle) {
    let started = tokio::time::Instant::now();
    let mut synced = local.status.synced_rx();
    loop {
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(10), synced.wait_for(|s| *s)).await;
        if waited.is_ok() {
            return;
        }
        warn!(
            waited = ?started.elapsed(),
            error = local.status.last_error().unwrap_or_default(),
            "still waiting for the local cluster's initial lists; not serving gRPC yet"
        );
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
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    spawn_grpc_with(
        listener, clusters, settings, limits, metrics, shutdown, None,
    )
    .await
}

/// What the APIs a stock linkerd2-proxy needs besides `Destination` are made of.
pub struct ProxyApis {
    /// Signs proxies' certificates.
    pub ca: Ca,
    /// Vouches for proxies' tokens.
    pub reviewer: Arc<dyn TokenReviewer>,
    /// How identities are named.
    pub domain: IdentityDomain,
    /// The cluster's networks, for outbound lookups of unknown addresses.
    pub cluster_networks: Vec<ipnet::IpNet>,
}

/// [`spawn_grpc`], with identity and the policy APIs when `proxy_apis` is given.
pub async fn spawn_grpc_with(
    listener: TcpListener,
    clusters: Arc<ClusterSet>,
    settings: StreamSettings,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    proxy_apis: Option<ProxyApis>,
) -> Result<JoinHandle<()>> {
    // Taken before `metrics` moves into the service; limits connections, backs off on EMFILE.
    let incoming = Listener::new(listener, "grpc", GRPC_MAX_CONNECTIONS, &metrics)
        .with_nodelay()
        .into_connections();
    let policy_settings = PolicySettings {
        cluster_domain: settings.cluster_domain.clone(),
        default_opaque_ports: Arc::clone(&settings.default_opaque_ports),
        cluster_networks: Vec::new(),
    };
    let (request_timeout, send_timeout) = (settings.request_timeout, settings.send_timeout);
    let resolver = Resolver::new(clusters);
    let destination = DestinationService::new(
        resolver.clone(),
        settings,
        Arc::clone(&metrics),
        shutdown.clone(),
    );
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
    let mut routes = tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    if let Some(apis) = proxy_apis {
        // Counted against the same pending-request limit as the destination API.
        let call_limits = CallLimits::new(
            destination.pending_requests(),
            request_timeout,
            send_timeout,
        );
        let identity =
            IdentityService::new(apis.ca, apis.reviewer, apis.domain, call_limits.clone());
        let (outbound, inbound) = policy_services(
            resolver,
            PolicySettings {
                cluster_networks: apis.cluster_networks,
                ..policy_settings
            },
            call_limits,
            metrics,
            shutdown.clone(),
        );
        health_reporter.set_serving::<IdentityService>().await;
        health_reporter.set_serving::<OutboundPolicyService>().await;
        health_reporter.set_serving::<InboundPolicyService>().await;
        routes = routes
            .add_service(identity)
            .add_service(outbound)
            .add_service(inbound);
    }
    Ok(tokio::spawn(serve_connections(
        incoming,
        destination,
        routes,
        limits,
        shutdown,
    )))
}
