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
    /// Print the CustomResourceDefinitions meshlink reads (the Link and the ServiceProfile).
    Crds,
    /// Run the service mirror: keep local mirrors of every linked cluster's exported services.
    Mirror(MirrorArgs),
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

    /// A call's request message must arrive within this time (or the client's grpc-timeout,
    /// if shorter); a request that has not is answered DEADLINE_EXCEEDED.
    #[arg(long, env = "MESHLINK_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Concurrent streams one gRPC connection may open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "MESHLINK_MAX_STREAMS_PER_CONNECTION", default_value_t = crate::grpc::server::DEFAULT_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// Requests whose message is still being read, across all connections; more are
    /// refused with RESOURCE_EXHAUSTED until some finish.
    #[arg(long, env = "MESHLINK_MAX_PENDING_REQUESTS", default_value_t = crate::grpc::server::DEFAULT_MAX_PENDING_REQUESTS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_requests: u64,

    /// How often manifest folders are checked for changes.
    #[arg(long, env = "MESHLINK_MANIFEST_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub manifest_poll_interval: Duration,

    /// After SIGTERM, how long open streams may take to end before the process exits anyway.
    #[arg(long, env = "MESHLINK_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Time an admin client has to send a request's headers, counted from the connection's
    /// start or its previous response (so it also closes idle keep-alive connections).
    #[arg(long, env = "MESHLINK_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub admin_header_timeout: Duration,

    /// Admin connections served at once; when all are taken, a new one closes the connection
    /// that has waited longest without a request.
    #[arg(long, env = "MESHLINK_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub admin_max_connections: usize,

    /// The identity issuer's certificate (PEM; certificates after the first are its
    /// intermediates). Without it, a CA is generated for a demo on every start.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_ISSUER_CERT",
        value_name = "FILE",
        requires_all = ["identity_issuer_key", "identity_trust_anchors"]
    )]
    pub identity_issuer_cert: Option<PathBuf>,

    /// The identity issuer's private key (PEM: PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY").
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_ISSUER_KEY",
        value_name = "FILE",
        requires = "identity_issuer_cert"
    )]
    pub identity_issuer_key: Option<PathBuf>,

    /// The trust anchors (PEM) the issuer chains to: the roots proxies are given.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_TRUST_ANCHORS",
        value_name = "FILE",
        requires = "identity_issuer_cert"
    )]
    pub identity_trust_anchors: Option<PathBuf>,

    /// Where to write the trust anchor of the generated demo CA (PEM), to hand to proxies.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_TRUST_ANCHORS_OUT",
        value_name = "FILE",
        conflicts_with = "identity_issuer_cert"
    )]
    pub identity_trust_anchors_out: Option<PathBuf>,

    /// How long the certificates issued to proxies are valid (they renew at 70% of it).
    #[arg(long, env = "MESHLINK_IDENTITY_CERT_LIFETIME", default_value = "24h", value_parser = parse_cert_lifetime)]
    pub identity_cert_lifetime: Duration,

    /// The audience proxies' tokens must be issued for (Linkerd's projected token volume).
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_TOKEN_AUDIENCE",
        default_value = "identity.l5d.io"
    )]
    pub identity_token_audience: String,

    /// Networks of the cluster's pods and services (comma-separated CIDRs): an outbound
    /// policy lookup of an unknown address inside them is NotFound, outside them an egress
    /// fallback to the address itself, as Linkerd's policy controller answers.
    #[arg(
        long,
        env = "MESHLINK_CLUSTER_NETWORKS",
        default_value = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8",
        value_parser = parse_networks
    )]
    pub cluster_networks: Networks,
}

/// A certificate lifetime: at least a minute (the proxy renews at 70% of it).
fn parse_cert_lifetime(s: &str) -> Result<Duration, String> {
    let lifetime = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if lifetime < Duration::from_secs(60) {
        return Err(
            "a certificate lifetime shorter than a minute would have proxies renew constantly"
                .into(),
        );
    }
    Ok(lifetime)
}

/// Comma-separated CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Networks(pub Vec<ipnet::IpNet>);

fn parse_networks(s: &str) -> Result<Networks, String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().map_err(|e| format!("{n}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Networks)
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

/// Output of `meshlink mirror --once --dry-run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MirrorOutput {
    Yaml,
    Json,
}

/// Flags of `meshlink mirror`.
#[derive(Debug, Parser)]
pub struct MirrorArgs {
    /// Kubeconfig of the local cluster. Without it: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, env = "MESHLINK_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the Links (and their credentials Secrets and the Lease).
    #[arg(long, env = "MESHLINK_MIRROR_NAMESPACE", default_value = "linkerd")]
    pub namespace: String,

    /// Address of the admin HTTP server (/live, /ready, /metrics).
    #[arg(
        long,
        env = "MESHLINK_MIRROR_ADMIN_ADDR",
        default_value = "0.0.0.0:9997"
    )]
    pub admin_addr: SocketAddr,

    /// One pass over every Link, then exit.
    #[arg(long)]
    pub once: bool,

    /// With --once: print what would be applied and deleted; write nothing.
    #[arg(long, requires = "once")]
    pub dry_run: bool,

    /// Output of --dry-run.
    #[arg(long, short, value_enum, default_value = "yaml")]
    pub output: MirrorOutput,

    /// Writes in flight at once, across all Links.
    #[arg(long, env = "MESHLINK_MIRROR_MAX_WRITES", default_value_t = 16)]
    pub max_concurrent_writes: usize,

    /// How often each Link's mirrors are compared with the target cluster (only the
    /// differences are written) and gateway DNS names re-resolved.
    #[arg(long, env = "MESHLINK_MIRROR_RESYNC", default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Leader election on a Lease, so that only one replica writes.
    #[arg(long, env = "MESHLINK_MIRROR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease.
    #[arg(long, default_value = "meshlink-mirror")]
    pub lease_name: String,

    /// How long the Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Log format.
    #[arg(long, env = "MESHLINK_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "MESHLINK_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
