//! Supervision of the long-running tasks: one that ends before shutdown is a failure.
//!
//! Servers, sources and reconcilers run until shutdown. If one of them returns, fails or
//! panics earlier, the process can no longer do its job: readiness fails at once, so
//! Kubernetes stops sending it traffic, and `main` exits non-zero so it is restarted.

use std::{collections::HashMap, future::Future};

use tokio::{
    sync::watch,
    task::{AbortHandle, Id, JoinSet},
};
use tracing::{Instrument, Span, error};

/// The critical tasks of a process and whether one of them has failed.
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, (&'static str, AbortHandle)>,
    failed: watch::Sender<Option<String>>,
    shutdown: watch::Receiver<bool>,
}

impl Supervisor {
    /// A supervisor; tasks ending once `shutdown` turned true are not failures.
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            failed: watch::channel(None).0,
            shutdown,
        }
    }

    /// Runs `task` as the critical task `name`, in `span`.
    pub fn spawn<F>(&mut self, name: &'static str, span: Span, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task.instrument(span));
        self.names.insert(handle.id(), (name, handle));
    }

    /// Why the process is failing, once it is: readiness reads this.
    pub fn failed_rx(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Ends the task `name` as a crash would (for tests of the failure path).
    pub fn abort(&self, name: &str) -> bool {
        let found = self.names.values().filter(|(n, _)| *n == name);
        found.map(|(_, handle)| handle.abort()).count() > 0
    }

    /// Waits for every task to end (after shutdown).
    pub async fn join_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.names.clear();
    }

    /// Waits until a critical task ends before shutdown, marks the process failed and
    /// says which task and why. Pending forever while every task runs.
    pub async fn failure(&mut self) -> anyhow::Error {
        loop {
            let Some(joined) = self.tasks.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let id = match &joined {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            let name = self.names.remove(&id).map_or("a task", |(name, _)| name);
            if *self.shutdown.borrow() {
                continue;
            }
            let reason = match joined {
                Ok((_, Ok(()))) => format!("{name} stopped unexpectedly"),
                Ok((_, Err(e))) => format!("{name} failed: {e:#}"),
                Err(e) if e.is_panic() => format!("{name} panicked"),
                Err(_) => format!("{name} was aborted"),
            };
            error!(%reason, "a critical task ended; readiness fails and the process exits");
            self.failed.send_replace(Some(reason.clone()));
            return anyhow::anyhow!(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_before_shutdown_fails_the_process() {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut supervisor = Supervisor::new(shutdown_rx);
        supervisor.spawn("server", Span::none(), std::future::pending());
        supervisor.spawn("source", Span::none(), async {
            anyhow::bail!("no such folder")
        });
        let failed = supervisor.failed_rx();
        let err = supervisor.failure().await;
        assert_eq!(err.to_string(), "source failed: no such folder");
        assert_eq!(
            failed.borrow().as_deref(),
            Some("source failed: no such folder")
        );

        assert!(supervisor.abort("server"));
        assert_eq!(supervisor.failure().await.to_string(), "server was aborted");

        shutdown_tx.send_replace(true);
        supervisor.spawn("late", Span::none(), async { Ok(()) });
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(100), supervisor.failure()).await;
        assert!(quiet.is_err(), "a task ending after shutdown is no failure");
    }
}
