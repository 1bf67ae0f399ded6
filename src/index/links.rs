//! Linked clusters, as the local cluster's credentials Secrets define them.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;

use crate::k8s::{Secret, labels};

/// A linked cluster: its name, domains, and the kubeconfig to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedClusterSpec {
    pub name: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    /// The kubeconfig from the Secret (unused by the manifest source).
    pub kubeconfig: Option<Arc<[u8]>>,
    /// `namespace/name` of the Secret that defines it.
    pub secret: String,
}

/// A credentials Secret that was not accepted, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedSecret {
    pub secret: String,
    pub reason: SecretRejection,
}

/// Why a credentials Secret was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretRejection {
    #[error("missing label {}", labels::MC_CLUSTER_NAME)]
    MissingClusterName,
    #[error("missing annotation {}", labels::MC_TRUST_DOMAIN)]
    MissingTrustDomain,
    #[error("missing annotation {}", labels::MC_CLUSTER_DOMAIN)]
    MissingClusterDomain,
    #[error("cluster {cluster:?} is already linked by Secret {first}")]
    Duplicate { cluster: String, first: String },
}

impl RejectedSecret {
    /// The reason as one of a fixed set of metric label values.
    pub fn metric_label(&self) -> &'static str {
        match self.reason {
            SecretRejection::MissingClusterName => "missing_cluster_name",
            SecretRejection::MissingTrustDomain => "missing_trust_domain",
            SecretRejection::MissingClusterDomain => "missing_cluster_domain",
            SecretRejection::Duplicate { .. } => "duplicate_cluster",
        }
    }
}

pub(super) struct LinkState {
    namespace: String,
    /// Every credentials Secret by name: its spec, or why it was rejected.
    secrets: BTreeMap<String, Result<LinkedClusterSpec, SecretRejection>>,
    tx: watch::Sender<Arc<BTreeMap<String, LinkedClusterSpec>>>,
    duplicates: Vec<RejectedSecret>,
}

impl LinkState {
    pub fn new(namespace: String) -> Self {
        Self {
            namespace,
            secrets: BTreeMap::new(),
            tx: watch::channel(Arc::default()).0,
            duplicates: Vec::new(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeMap<String, LinkedClusterSpec>>> {
        self.tx.subscribe()
    }

    pub fn rejected(&self) -> Vec<RejectedSecret> {
        self.secrets
            .iter()
            .filter_map(|(name, r)| {
                r.as_ref().err().map(|reason| RejectedSecret {
                    secret: format!("{}/{name}", self.namespace),
                    reason: reason.clone(),
                })
            })
            .chain(self.duplicates.iter().cloned())
            .collect()
    }

    pub fn apply(&mut self, secret: &Secret) {
        let Some(name) = secret.metadata.name.clone() else {
            return;
        };
        if secret.metadata.namespace.as_deref().unwrap_or("default") != self.namespace {
            return;
        }
        if secret.type_.as_deref() != Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE) {
            // A Secret that stopped being credentials unlinks its cluster.
            if self.secrets.remove(&name).is_some() {
                self.publish();
            }
            return;
        }
        let parsed = parse_credentials(&self.namespace, &name, secret);
        if let Err(reason) = &parsed {
            tracing::warn!(secret = %format!("{}/{name}", self.namespace), %reason, "ignoring credentials Secret");
        }
        if self.secrets.get(&name) != Some(&parsed) {
            self.secrets.insert(name, parsed);
            self.publish();
        }
    }

    pub fn delete(&mut self, namespace: &str, name: &str) {
        if namespace == self.namespace && self.secrets.remove(name).is_some() {
            self.publish();
        }
    }

    pub fn reset(&mut self, secrets: &[Secret]) {
        let keep: Vec<&str> = secrets
            .iter()
            .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == self.namespace)
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        let before = self.secrets.len();
        self.secrets.retain(|name, _| keep.contains(&name.as_str()));
        if self.secrets.len() != before {
            self.publish();
        }
        for s in secrets {
            self.apply(s);
        }
    }

    fn publish(&mut self) {
        let mut clusters = BTreeMap::new();
        self.duplicates.clear();
        for spec in self.secrets.values().filter_map(|r| r.as_ref().ok()) {
            if let Some(first) = clusters.get(&spec.name) {
                let first: &LinkedClusterSpec = first;
                let reason = SecretRejection::Duplicate {
                    cluster: spec.name.clone(),
                    first: first.secret.clone(),
                };
                tracing::warn!(secret = %spec.secret, %reason, "ignoring credentials Secret");
                self.duplicates.push(RejectedSecret {
                    secret: spec.secret.clone(),
                    reason,
                });
                continue;
            }
            clusters.insert(spec.name.clone(), spec.clone());
        }
        self.tx.send_if_modified(|cur| {
            if **cur == clusters {
                return false;
            }
            *cur = Arc::new(clusters);
            true
        });
    }
}

fn parse_credentials(
    namespace: &str,
    name: &str,
    secret: &Secret,
) -> Result<LinkedClusterSpec, SecretRejection> {
    let label = |key: &str| {
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .filter(|v| !v.is_empty())
    };
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
    };
    let cluster = label(labels::MC_CLUSTER_NAME).ok_or(SecretRejection::MissingClusterName)?;
    let trust_domain =
        annotation(labels::MC_TRUST_DOMAIN).ok_or(SecretRejection::MissingTrustDomain)?;
    let cluster_domain =
        annotation(labels::MC_CLUSTER_DOMAIN).ok_or(SecretRejection::MissingClusterDomain)?;
    let kubeconfig = secret
        .data
        .as_ref()
        .and_then(|d| d.get(labels::KUBECONFIG_KEY))
        .map(|b| Arc::from(b.0.as_slice()))
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(labels::KUBECONFIG_KEY))
                .map(|s| Arc::from(s.as_bytes()))
        });
    Ok(LinkedClusterSpec {
        name: cluster.clone(),
        trust_domain: trust_domain.clone(),
        cluster_domain: cluster_domain.clone(),
        kubeconfig,
        secret: format!("{namespace}/{name}"),
    })
}
