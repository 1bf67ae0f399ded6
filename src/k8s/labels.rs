//! Label and annotation keys, and the values that carry meaning.

/// Annotation `kubectl apply` writes: a copy of the whole object. Never read, never mirrored,
/// dropped before objects are held.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Pod label: the namespace of the control plane that injected the pod's proxy.
pub const CONTROL_PLANE_NS: &str = "linkerd.io/control-plane-ns";
/// Pod annotation: inbound ports the proxy does not intercept.
pub const SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
/// Pod or Service annotation: ports whose traffic is opaque TCP.
pub const OPAQUE_PORTS: &str = "config.linkerd.io/opaque-ports";
/// Every pod annotation the index reads; a source may drop the others before storing pods.
pub const POD_ANNOTATIONS_READ: &[&str] = &[OPAQUE_PORTS, SKIP_INBOUND_PORTS];
/// The proxy container's name, and its env var naming its inbound listener.
pub const PROXY_CONTAINER: &str = "linkerd-proxy";
pub const PROXY_INBOUND_LISTEN_ADDR_ENV: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";

/// ServiceProfile annotation (linkerd-failover's key): the service of the profile's
/// `dstOverrides` that takes all traffic while it has ready endpoints.
pub const FAILOVER_PRIMARY_SERVICE: &str = "failover.linkerd.io/primary-service";

/// Node label holding the node's zone.
pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// EndpointSlice label naming the Service it belongs to.
pub const SLICE_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Pod label set by Deployments on their ReplicaSets' pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Secret type of linked-cluster credentials.
pub const REMOTE_KUBECONFIG_SECRET_TYPE: &str = "mirror.linkerd.io/remote-kubeconfig";
/// Secret data key of the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Label naming the linked cluster (credentials Secrets).
pub const MC_CLUSTER_NAME: &str = "multicluster.linkerd.io/cluster-name";
/// Annotations on credentials Secrets.
pub const MC_TRUST_DOMAIN: &str = "multicluster.linkerd.io/trust-domain";
pub const MC_CLUSTER_DOMAIN: &str = "multicluster.linkerd.io/cluster-domain";

/// Remote-discovery mirror labels: the source cluster and the remote service name.
pub const MC_REMOTE_DISCOVERY: &str = "multicluster.linkerd.io/remote-discovery";
pub const MC_REMOTE_SERVICE: &str = "multicluster.linkerd.io/remote-service";
/// Federated service annotation listing local members.
pub const MC_LOCAL_DISCOVERY: &str = "multicluster.linkerd.io/local-discovery";

/// Labels and annotations of mirror services.
pub const MIRROR_PREFIX: &str = "mirror.linkerd.io";
pub const MIRRORED_SERVICE: &str = "mirror.linkerd.io/mirrored-service";
pub const MIRROR_CLUSTER_NAME: &str = "mirror.linkerd.io/cluster-name";
pub const REMOTE_SVC_FQ_NAME: &str = "mirror.linkerd.io/remote-svc-fq-name";
pub const REMOTE_RESOURCE_VERSION: &str = "mirror.linkerd.io/remote-resource-version";
pub const REMOTE_GATEWAY_IDENTITY: &str = "mirror.linkerd.io/remote-gateway-identity";
pub const HEADLESS_MIRROR_SVC_NAME: &str = "mirror.linkerd.io/headless-mirror-svc-name";

/// Export labels on target-cluster Services, and their values.
pub const EXPORTED: &str = "mirror.linkerd.io/exported";
pub const EXPORTED_GATEWAY: &str = "true";
pub const EXPORTED_REMOTE_DISCOVERY: &str = "remote-discovery";
pub const FEDERATED: &str = "mirror.linkerd.io/federated";
pub const FEDERATED_MEMBER: &str = "member";

/// The zone of a Node, from its `topology.kubernetes.io/zone` label.
pub fn node_zone(node: &super::Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(TOPOLOGY_ZONE)
        .map(String::as_str)
}

/// The Service an EndpointSlice belongs to, from its `kubernetes.io/service-name` label.
pub fn slice_service(slice: &super::EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SLICE_SERVICE_NAME)
        .map(String::as_str)
}

/// The prefix of meshlink's own keys; never copied from a remote object onto a mirror.
pub const MESHLINK_PREFIX: &str = "meshlink.io/";

/// Labels meshlink's service mirror puts on every object it creates, naming the Link that
/// owns it (name and namespace); with `mirror.linkerd.io/mirrored-service` they mark ownership.
pub const MESHLINK_LINK: &str = "meshlink.io/link";
pub const MESHLINK_LINK_NAMESPACE: &str = "meshlink.io/link-namespace";
/// Annotation on mirror objects: a hash of what the mirror last applied, so that a write
/// that would change nothing is not sent (also after a restart).
pub const MESHLINK_APPLIED_HASH: &str = "meshlink.io/applied-hash";
/// Label on `<svc>-federated` Services written by meshlink (they belong to no one Link).
pub const MESHLINK_FEDERATED: &str = "meshlink.io/federated";
/// Finalizer on Links: the mirror removes what the Link created before it goes.
pub const MIRROR_FINALIZER: &str = "meshlink.io/mirror-cleanup";
/// EndpointSlice label naming the controller that manages the slice.
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of `endpointslice.kubernetes.io/managed-by`.
pub const SLICE_MANAGED_BY_MIRROR: &str = "meshlink-mirror";
