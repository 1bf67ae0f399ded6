//! `meshlink link`: a credentials Secret and a Link for a target cluster, printed as YAML.
//!
//! The Secret's kubeconfig reaches the target cluster's API server with the token of a
//! service account there (requested with the TokenRequest API, or read from a
//! service-account-token Secret), so what the linking cluster may read is exactly what
//! that account is granted (deploy/remote-access/).

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api,
    api::PostParams,
    config::{
        AuthInfo, Context as KubeContext, KubeConfigOptions, Kubeconfig, NamedAuthInfo,
        NamedCluster, NamedContext,
    },
};

use super::cli::LinkArgs;
use crate::k8s::{
    Secret,
    link::{LinkTarget, to_yaml},
};

/// Writes the Secret and the Link to stdout.
pub async fn run(args: LinkArgs) -> Result<()> {
    print!("{}", render(&args).await?);
    Ok(())
}

/// The YAML documents `meshlink link` prints.
pub async fn render(args: &LinkArgs) -> Result<String> {
    let file = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?,
        None => Kubeconfig::read().context("no kubeconfig found; pass --kubeconfig")?,
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(file.clone(), &options)
        .await
        .context("invalid kubeconfig")?;
    let client = kube::Client::try_from(config.clone())?;
    let token = match &args.token_secret {
        Some(name) => read_token_secret(client, args, name).await?,
        None => request_token(client, args).await?,
    };
    let server = args.api_server_address.clone().unwrap_or_else(|| {
        config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string()
    });
    let kubeconfig = remote_kubeconfig(&file, args, &server, &token)?;

    let target = LinkTarget {
        cluster_name: args.cluster_name.clone(),
        namespace: args.namespace.clone(),
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
        target_linkerd_namespace: args.target_linkerd_namespace.clone(),
        gateway: args.gateway_addresses.as_ref().map(|addrs| {
            let identity = args.gateway_identity.clone().unwrap_or_else(|| {
                format!(
                    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.{}.{}",
                    args.target_linkerd_namespace, args.trust_domain
                )
            });
            (addrs.clone(), args.gateway_port, identity)
        }),
    };
    let secret = to_yaml(&target.credentials_secret(&kubeconfig))?;
    let link = to_yaml(&target.link())?;
    Ok(format!("---\n{secret}---\n{link}"))
}

/// A token for the service account, from the TokenRequest API.
async fn request_token(client: kube::Client, args: &LinkArgs) -> Result<String> {
    let accounts = Api::<ServiceAccount>::namespaced(client, &args.service_account_namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(args.token_duration.as_secs())?),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = accounts
        .create_token_request(&args.service_account, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!(
                "cannot create a token for service account {}/{} in the target cluster \
                 (does it exist? apply deploy/remote-access/ there first)",
                args.service_account_namespace, args.service_account
            )
        })?;
    match response.status.and_then(|s| s.token) {
        Some(token) if !token.is_empty() => Ok(token),
        _ => bail!("the API server returned no token"),
    }
}

/// The token of a `kubernetes.io/service-account-token` Secret.
async fn read_token_secret(client: kube::Client, args: &LinkArgs, name: &str) -> Result<String> {
    let secrets = Api::<Secret>::namespaced(client, &args.service_account_namespace);
    let secret = secrets.get(name).await.with_context(|| {
        format!(
            "cannot read Secret {}/{name}",
            args.service_account_namespace
        )
    })?;
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .with_context(|| {
            format!(
                "Secret {}/{name} has no token (yet)",
                args.service_account_namespace
            )
        })?;
    String::from_utf8(token.0.clone()).context("the token is not UTF-8")
}

/// A kubeconfig reaching `server` with `token`, trusting the CA of the cluster the
/// command used (embedded, so the kubeconfig stands alone).
fn remote_kubeconfig(
    file: &Kubeconfig,
    args: &LinkArgs,
    server: &str,
    token: &str,
) -> Result<String> {
    let context_name = args
        .context
        .clone()
        .or_else(|| file.current_context.clone())
        .context("the kubeconfig has no current context; pass --context")?;
    let context = file
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| format!("context {context_name} not found in the kubeconfig"))?;
    let mut cluster = file
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("cluster {} not found in the kubeconfig", context.cluster))?;
    if let Some(path) = cluster.certificate_authority.take() {
        let pem = std::fs::read(&path).with_context(|| format!("cannot read CA file {path}"))?;
        cluster.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    cluster.server = Some(server.to_string());
    cluster.extensions = None;
    let name = args.cluster_name.clone();
    let user = format!("{name}-{}", args.service_account);
    let out = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token: Some(token.to_string().into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(KubeContext {
                cluster: name.clone(),
                user: Some(user),
                ..KubeContext::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(name),
        ..Kubeconfig::default()
    };
    to_yaml(&out).context("cannot write the kubeconfig")
}
