//! Wiring: the command line, the servers and the background tasks.

mod admin;
pub mod check;
pub mod cli;
mod identity;
pub mod link;
mod linked;
mod listener;
pub mod mirror;
mod serve;
pub mod supervise;

pub use serve::{ProxyApis, Server, serve, spawn_grpc, spawn_grpc_with};

use anyhow::Result;

/// Sets up logging in the requested format.
pub fn init_tracing(format: cli::LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them: not in files, pipes or log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        cli::LogFormat::Plain => builder.try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// SIGTERM and Ctrl-C, listened for from the moment this is made: made before anything is
/// started, a signal that arrives while the server is still starting is not lost (without a
/// handler SIGTERM would kill the process on the spot, streams and all).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers now.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server")
                })
                .ok();
            Self { term }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the first SIGTERM or Ctrl-C since `listen`.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = term.recv() => tracing::info!("received SIGTERM; shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("received Ctrl-C; shutting down"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A client of the local API server: `--kubeconfig`, else what kube infers ($KUBECONFIG,
/// ~/.kube/config, the in-cluster service account). `hint` ends the error when none is found.
pub(crate) async fn local_client(
    kubeconfig: Option<&std::path::Path>,
    hint: &str,
) -> Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("invalid --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.with_context(|| {
            format!(
                "no Kubernetes configuration found (pass --kubeconfig, set KUBECONFIG, or run in a pod){hint}"
            )
        })?,
    };
    tracing::info!(api_server = %config.cluster_url, "using the local cluster's API server");
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}
