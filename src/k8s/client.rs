//! Clients of linked clusters, from the kubeconfig a credentials Secret carries: shared
//! by the destination service's linked clusters, the service mirror and `meshlink check`.

use std::time::Duration;

use kube::Api;

use super::{Secret, labels};

/// Why a credentials Secret's kubeconfig gives no client; `secret` names where it came from.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("{secret} has no `{}` key", labels::KUBECONFIG_KEY)]
    Missing { secret: String },
    #[error("the kubeconfig in {secret} is not UTF-8")]
    NotUtf8 { secret: String },
    #[error("the kubeconfig in {secret} does not parse: {error}")]
    Parse { secret: String, error: String },
    #[error("the kubeconfig in {secret} is not usable: {error}")]
    Unusable { secret: String, error: String },
    #[error("cannot build a client from {secret}: {error}")]
    Client { secret: String, error: String },
}

/// The kubeconfig bytes of a credentials Secret, if it has them.
pub fn secret_kubeconfig(secret: &Secret) -> Option<&[u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(labels::KUBECONFIG_KEY))
        .map(|b| b.0.as_slice())
}

/// A client of the cluster that `kubeconfig` (its current context) points at, and that
/// API server's URL. `source` says where the kubeconfig came from, for the errors.
pub async fn client_from_kubeconfig(
    kubeconfig: Option<&[u8]>,
    source: &str,
) -> Result<(kube::Client, String), KubeconfigError> {
    let secret = || source.to_string();
    let bytes = kubeconfig.ok_or_else(|| KubeconfigError::Missing { secret: secret() })?;
    let text =
        std::str::from_utf8(bytes).map_err(|_| KubeconfigError::NotUtf8 { secret: secret() })?;
    let file = kube::config::Kubeconfig::from_yaml(text).map_err(|e| KubeconfigError::Parse {
        secret: secret(),
        error: e.to_string(),
    })?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| KubeconfigError::Unusable {
            secret: secret(),
            error: e.to_string(),
        })?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| KubeconfigError::Client {
        secret: secret(),
        error: e.to_string(),
    })?;
    Ok((client, server))
}

/// Reads the credentials Secret `namespace/name` from the local cluster (within `timeout`)
/// and builds a client of the cluster its kubeconfig points at, with that API server's URL.
pub async fn client_from_secret(
    local: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(kube::Client, String), String> {
    let secrets: Api<Secret> = Api::namespaced(local.clone(), namespace);
    let secret = match tokio::time::timeout(timeout, secrets.get_opt(name)).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return Err(format!("Secret {namespace}/{name} does not exist")),
        Ok(Err(e)) => return Err(format!("cannot read Secret {namespace}/{name}: {e}")),
        Err(_) => return Err(format!("reading Secret {namespace}/{name} timed out")),
    };
    let source = format!("Secret {namespace}/{name}");
    client_from_kubeconfig(secret_kubeconfig(&secret), &source)
        .await
        .map_err(|e| e.to_string())
}
