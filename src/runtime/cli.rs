//! The command line: `meshlink serve`, `resolve`, `link` and `crds`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

/// meshlink: a control plane for a service mesh that spans clusters.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the destination service (gRPC on --grpc-addr, admin HTTP on --admin-addr).
    Serve(ServeArgs),
    /// Watch what a proxy would see for an authority, from a running destination service.
    Resolve(ResolveArgs),
    /// Print the credentials Secret and the Link that link a target cluster to this one.
    Link(LinkArgs),
    /// Print the CustomResourceDefinitions meshlink reads (the Link).
    Crds,
    /// Check the Links, their credentials, sync, gateways and mirrors; exit 1 on a problem.
    Check(super::check::CheckArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Flags of `meshlink serve`.
#[derive(Debug, Parser)]
pub struct ServeArgs {
    /// Folder of manifests, one sub-folder per cluster (the embedded source; no cluster needed).
    /// Each sub-folder holds *.yaml/*.yml files of v1 Namespace, Service, Pod, Node, Secret and
    /// discovery.k8s.io/v1 EndpointSlice objects; it is watched and re-read on change.
    /// Without it, meshlink watches the Kubernetes API server.
    #[arg(
        long,
        env = "MESHLINK_MANIFESTS",
        value_name = "DIR",
        conflicts_with = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,

    /// Kubeconfig of the local cluster. Without it: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, env = "MESHLINK_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Name of the local cluster (with --manifests: the sub-folder that is the local cluster).
    #[arg(long, env = "MESHLINK_CLUSTER_NAME", default_value = "local")]
    pub cluster_name: String,

    /// Address of the gRPC server (destination API, health, reflection).
    #[arg(long, env = "MESHLINK_GRPC_ADDR", default_value = "0.0.0.0:8086")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP server (/live, /ready, /metrics).
    #[arg(long, env = "MESHLINK_ADMIN_ADDR", default_value = "0.0.0.0:9996")]
    pub admin_addr: SocketAddr,

    /// DNS domain of the local cluster.
    #[arg(long, env = "MESHLINK_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Identity trust domain of the local control plane.
    #[arg(long, env = "MESHLINK_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Namespace of the control plane: meshed pods labelled with it get identities, and
    /// linked-cluster credentials Secrets are read from it.
    #[arg(
        long,
        env = "MESHLINK_CONTROL_PLANE_NAMESPACE",
        default_value = "linkerd"
    )]
    pub control_plane_namespace: String,

    /// Ports treated as opaque unless a pod says otherwise (numbers and ranges a-b).
    #[arg(
        long,
        env = "MESHLINK_DEFAULT_OPAQUE_PORTS",
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub default_opaque_ports: String,

    /// Log format.
    #[arg(long, env = "MESHLINK_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log filter (tracing env-filter syntax, e.g. `info,meshlink=debug`).
    #[arg(long, env = "MESHLINK_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// A stream whose client does not take an update within this time is reset.
    #[arg(long, env = "MESHLINK_STREAM_SEND_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stream_send_timeout: Duration,

    /// How often manifest folders are checked for changes.
    #[arg(long, env = "MESHLINK_MANIFEST_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub manifest_poll_interval: Duration,

    /// After SIGTERM, how long open streams may take to end before the process exits anyway.
    #[arg(long, env = "MESHLINK_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Output of `meshlink resolve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table per update, for people.
    Table,
    /// One JSON object per update, for scripts.
    Json,
}

/// Flags of `meshlink resolve`.
#[derive(Debug, Parser)]
pub struct ResolveArgs {
    /// The authority to resolve, e.g. web.shop.svc.cluster.local:8080 (or an IP:port with --profile).
    pub authority: String,

    /// The destination service to ask.
    #[arg(long, env = "MESHLINK_RESOLVE_ADDR", default_value = "127.0.0.1:8086")]
    pub addr: String,

    /// The context token a proxy would send, e.g. '{"ns":"shop","nodeName":"node-a"}'.
    #[arg(long, default_value = "")]
    pub context_token: String,

    /// Stream the profile (GetProfile) instead of the endpoints (Get).
    #[arg(long)]
    pub profile: bool,

    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// Stop after this many updates (default: run until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
}

/// Flags of `meshlink link`.
#[derive(Debug, Parser)]
pub struct LinkArgs {
    /// The name the target cluster goes by in this mesh (Secret and Link names, endpoint labels).
    #[arg(long)]
    pub cluster_name: String,

    /// Kubeconfig of the target cluster, with the right to create tokens for --service-account.
    /// Without it: $KUBECONFIG, then ~/.kube/config.
    #[arg(long, env = "MESHLINK_LINK_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Context of that kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,

    /// Namespace of the credentials Secret and the Link in this cluster (the control plane's).
    #[arg(long, default_value = "linkerd")]
    pub namespace: String,

    /// Service account in the target cluster whose token goes into the Secret; it needs the
    /// RBAC of deploy/remote-access/.
    #[arg(long, default_value = "meshlink-remote-access")]
    pub service_account: String,

    /// Namespace of that service account in the target cluster.
    #[arg(long, default_value = "linkerd")]
    pub service_account_namespace: String,

    /// Read the token from this Secret (type kubernetes.io/service-account-token) in the
    /// service account's namespace instead of requesting one with the TokenRequest API.
    #[arg(long, value_name = "SECRET")]
    pub token_secret: Option<String>,

    /// Lifetime of a requested token (the API server may shorten it).
    #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
    pub token_duration: Duration,

    /// API server address written into the kubeconfig (default: the one this command used).
    #[arg(long, value_name = "URL")]
    pub api_server_address: Option<String>,

    /// Identity trust domain of the target cluster.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// DNS domain of the target cluster.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Namespace of the target cluster's control plane.
    #[arg(long, default_value = "linkerd")]
    pub target_linkerd_namespace: String,

    /// Gateway addresses of the target cluster (comma-separated); without it the Link selects
    /// no gateway-mode Services.
    #[arg(long, value_name = "ADDRS")]
    pub gateway_addresses: Option<String>,

    /// Port of the target cluster's gateway.
    #[arg(long, default_value_t = 4143)]
    pub gateway_port: u16,

    /// TLS identity of the gateway (default: linkerd-gateway.linkerd-multicluster.serviceaccount.identity.<target ns>.<trust domain>).
    #[arg(long)]
    pub gateway_identity: Option<String>,
}
