//! Linkerd's multicluster `Link` (`links.multicluster.linkerd.io`, v1alpha3) and the
//! credentials Secret that lets a cluster read a linked one, as `linkerd multicluster
//! link` writes them.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ObjectMeta, Secret, labels};

/// A link to another cluster: how to reach it (credentials, gateway) and which of its
/// Services to mirror in which mode. Every scalar is a string, as in Linkerd's schema.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.linkerd.io",
    version = "v1alpha3",
    kind = "Link",
    plural = "links",
    namespaced,
    status = "LinkStatus",
    doc = "A link from this cluster to a target cluster."
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// Name of the target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_name: Option<String>,
    /// DNS domain of the target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_domain: Option<String>,
    /// Namespace of the target cluster's control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_linkerd_namespace: Option<String>,
    /// Name of the Secret holding the kubeconfig for the target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_credentials_secret: Option<String>,
    /// Gateway addresses of the target cluster (comma-separated IPs or names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_address: Option<String>,
    /// Gateway port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<String>,
    /// TLS identity of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_identity: Option<String>,
    /// Health probe of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_spec: Option<ProbeSpec>,
    /// Services mirrored through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Services mirrored in remote-discovery (pod-to-pod) mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_discovery_selector: Option<LabelSelector>,
    /// Services that join federated services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_service_selector: Option<LabelSelector>,
    /// Labels not copied to mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_labels: Option<Vec<String>>,
    /// Annotations not copied to mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_annotations: Option<Vec<String>>,
}

/// The gateway health probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Path of the gateway's health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port of the gateway's health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Interval between probes (e.g. `3s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Timeout of one probe (e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failures before the gateway counts as down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<String>,
}

/// Condition type: the last full sync with the target cluster succeeded.
pub const CONDITION_TARGET_SYNCED: &str = "TargetSynced";
/// Condition type: every selected service is mirrored (else a reason such as `Conflict`).
pub const CONDITION_MIRRORS_READY: &str = "MirrorsReady";
/// Condition type (gateway mode): the gateway answers its probe.
pub const CONDITION_GATEWAY_ALIVE: &str = "GatewayAlive";

/// What the service mirror reports about a Link, on its status subresource. Kept small:
/// counts, and one entry per service in trouble only (never one per mirrored service).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// `TargetSynced`, `MirrorsReady` and (gateway mode) `GatewayAlive`, as metav1.Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many mirrors of each kind exist.
    #[serde(default)]
    pub mirrored_services: MirroredServices,
    /// Services that could not be mirrored, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub troubles: Vec<MirrorTrouble>,
    /// The last successful full sync with the target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// Mirror counts by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirroredServices {
    /// Gateway-mode mirrors (headless ones included, their endpoint mirrors not).
    #[serde(default)]
    pub gateway: u32,
    /// Remote-discovery mirrors.
    #[serde(default)]
    pub remote_discovery: u32,
    /// Services of this target cluster that joined a `<svc>-federated` service.
    #[serde(default)]
    pub federated: u32,
    /// Endpoint mirrors of headless services' hosts.
    #[serde(default)]
    pub headless_endpoints: u32,
}

/// One local mirror that could not be written.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct MirrorTrouble {
    /// Namespace of the local mirror.
    pub namespace: String,
    /// Name of the local mirror.
    pub name: String,
    /// `Conflict`, `NamespaceMissing` or `ApplyFailed`.
    pub reason: String,
    /// What went wrong, for people.
    pub message: String,
}

/// `value` as YAML, as kubectl writes it: a long line is never folded (a token or a base64
/// kubeconfig stays on its line); text of several lines is a literal block.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// The CRD as YAML, as committed under `deploy/crds/link.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = to_yaml(&Link::crd()).expect("a CRD serializes to YAML");
    format!("# Generated by `meshlink crds` from src/k8s/link.rs; do not edit.\n{body}")
}

/// What a link to a target cluster says about it.
#[derive(Clone, Debug)]
pub struct LinkTarget {
    /// The name the target cluster goes by here.
    pub cluster_name: String,
    /// Namespace of the Secret and the Link (the local control plane's).
    pub namespace: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    /// Namespace of the target cluster's control plane.
    pub target_linkerd_namespace: String,
    /// Gateway addresses, port and identity, for gateway-mode mirrors.
    pub gateway: Option<(String, u16, String)>,
}

impl LinkTarget {
    /// `cluster-credentials-<cluster>`.
    pub fn secret_name(&self) -> String {
        format!("cluster-credentials-{}", self.cluster_name)
    }

    /// The credentials Secret holding `kubeconfig` (a kubeconfig for the target cluster).
    pub fn credentials_secret(&self, kubeconfig: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    labels::MC_CLUSTER_NAME.to_string(),
                    self.cluster_name.clone(),
                )])),
                annotations: Some(BTreeMap::from([
                    (
                        labels::MC_TRUST_DOMAIN.to_string(),
                        self.trust_domain.clone(),
                    ),
                    (
                        labels::MC_CLUSTER_DOMAIN.to_string(),
                        self.cluster_domain.clone(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE.to_string()),
            data: Some(BTreeMap::from([(
                labels::KUBECONFIG_KEY.to_string(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    /// The Link, selecting Services by the usual export labels.
    pub fn link(&self) -> Link {
        let select = |key: &str, value: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            ..LabelSelector::default()
        };
        let (gateway_address, gateway_port, gateway_identity) = match &self.gateway {
            Some((addrs, port, identity)) => (
                Some(addrs.clone()),
                Some(port.to_string()),
                Some(identity.clone()),
            ),
            None => (None, None, None),
        };
        let mut link = Link::new(
            &self.cluster_name,
            LinkSpec {
                target_cluster_name: Some(self.cluster_name.clone()),
                target_cluster_domain: Some(self.cluster_domain.clone()),
                target_cluster_linkerd_namespace: Some(self.target_linkerd_namespace.clone()),
                cluster_credentials_secret: Some(self.secret_name()),
                gateway_address,
                gateway_port,
                gateway_identity,
                probe_spec: self.gateway.as_ref().map(|_| ProbeSpec {
                    path: Some("/ready".into()),
                    port: Some("4191".into()),
                    period: Some("3s".into()),
                    timeout: Some("30s".into()),
                    failure_threshold: Some("3".into()),
                }),
                selector: self
                    .gateway
                    .as_ref()
                    .map(|_| select(labels::EXPORTED, labels::EXPORTED_GATEWAY)),
                remote_discovery_selector: Some(select(
                    labels::EXPORTED,
                    labels::EXPORTED_REMOTE_DISCOVERY,
                )),
                federated_service_selector: Some(select(
                    labels::FEDERATED,
                    labels::FEDERATED_MEMBER,
                )),
                excluded_labels: None,
                excluded_annotations: None,
            },
        );
        link.metadata.namespace = Some(self.namespace.clone());
        link
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn west() -> LinkTarget {
        LinkTarget {
            cluster_name: "west".into(),
            namespace: "linkerd".into(),
            trust_domain: "west.example".into(),
            cluster_domain: "cluster.local".into(),
            target_linkerd_namespace: "linkerd".into(),
            gateway: None,
        }
    }

    #[test]
    fn the_secret_is_what_the_index_accepts_as_credentials() {
        let secret = west().credentials_secret("apiVersion: v1\nkind: Config\n");
        let mut index = crate::index::ClusterIndex::new(crate::index::IndexConfig {
            cluster_name: "local".into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "linkerd".into(),
            default_opaque_ports: Default::default(),
        });
        index.apply_secret(&secret);
        let linked = index.linked_clusters_rx().borrow().clone();
        let spec = linked.get("west").expect("west is linked");
        assert_eq!(spec.trust_domain, "west.example");
        assert_eq!(spec.secret, "linkerd/cluster-credentials-west");
        assert!(index.rejected_secrets().is_empty());
    }

    #[test]
    fn the_link_names_the_secret_and_selects_exported_services() {
        let link = west().link();
        assert_eq!(link.metadata.name.as_deref(), Some("west"));
        assert_eq!(
            link.spec.cluster_credentials_secret.as_deref(),
            Some("cluster-credentials-west")
        );
        assert!(
            link.spec.selector.is_none(),
            "no gateway, no gateway mirrors"
        );
        let yaml = to_yaml(&link).unwrap();
        assert!(yaml.contains("apiVersion: multicluster.linkerd.io/v1alpha3"));
        assert!(yaml.contains("mirror.linkerd.io/exported: remote-discovery"));
        let back: Link = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back.spec, link.spec);
    }

    #[test]
    fn the_secret_as_yaml_keeps_the_kubeconfig_on_one_line_and_reads_back() {
        let kubeconfig = format!("apiVersion: v1\nkind: Config\n# {}\n", "x".repeat(300));
        let secret = west().credentials_secret(&kubeconfig);
        let yaml = to_yaml(&secret).unwrap();
        let line = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("kubeconfig: "))
            .unwrap_or_else(|| panic!("{yaml}"));
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap();
        assert_eq!(decoded, kubeconfig.as_bytes());
        let back: Secret = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, secret);
    }

    #[test]
    fn the_crd_is_namespaced_v1alpha3() {
        let yaml = crd_yaml();
        assert!(yaml.contains("name: links.multicluster.linkerd.io"));
        assert!(yaml.contains("scope: Namespaced"));
        assert!(yaml.contains("v1alpha3"));
        assert!(yaml.contains("federatedServiceSelector"));
    }

    #[test]
    fn the_crd_has_the_status_subresource() {
        let crd = <Link as kube::CustomResourceExt>::crd();
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status writes need the status subresource"
        );
        let status = LinkStatus {
            troubles: vec![MirrorTrouble {
                namespace: "shop".into(),
                name: "web-west".into(),
                reason: "Conflict".into(),
                message: "not ours".into(),
            }],
            ..LinkStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["mirroredServices"]["remoteDiscovery"], 0);
        assert_eq!(json["troubles"][0]["reason"], "Conflict");
    }
}
