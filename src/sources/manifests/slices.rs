//! EndpointSlices for Services that select pods, as Kubernetes' controller writes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::parse::{Kind, Object, ObjectKey};
use crate::k8s::{EndpointSlice, ObjectMeta, Pod, Service, labels};

/// Slices for every Service that has a selector and no EndpointSlice of its own.
pub fn derive_endpoint_slices(objects: &BTreeMap<ObjectKey, Arc<Object>>) -> Vec<Object> {
    let sliced: BTreeSet<(String, String)> = objects
        .values()
        .filter_map(|o| match &**o {
            Object::EndpointSlice(s) => Some((
                s.metadata.namespace.clone().unwrap_or_default(),
                labels::slice_service(s)?.to_string(),
            )),
            _ => None,
        })
        .collect();
    let zones: BTreeMap<&str, &str> = objects
        .values()
        .filter_map(|o| match &**o {
            Object::Node(n) => Some((n.metadata.name.as_deref()?, labels::node_zone(n)?)),
            _ => None,
        })
        .collect();
    let pods: Vec<&Pod> = objects
        .values()
        .filter_map(|o| match &**o {
            Object::Pod(p) => Some(&**p),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (key, obj) in objects {
        let Object::Service(svc) = &**obj else {
            continue;
        };
        if key.kind != Kind::Service || sliced.contains(&(key.namespace.clone(), key.name.clone()))
        {
            continue;
        }
        let Some(selector) = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let selected = pods.iter().filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && selector
                    .iter()
                    .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        });
        out.extend(slices_for(
            svc,
            &key.namespace,
            &key.name,
            selected.copied(),
            &zones,
        ));
    }
    out
}

/// Endpoints that share an address family and resolved ports share a slice.
type SliceGroup = (&'static str, Vec<(Option<String>, i32)>);

/// Groups a service's pods by address family and resolved ports, one slice per group.
fn slices_for<'a>(
    svc: &Service,
    namespace: &str,
    name: &str,
    pods: impl Iterator<Item = &'a Pod>,
    zones: &BTreeMap<&str, &str>,
) -> Vec<Object> {
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let mut groups: BTreeMap<SliceGroup, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods.filter(|p| !terminated(p)) {
        let ports = resolve_ports(svc_ports, pod);
        for (ip, written) in pod_ips(pod) {
            let family = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
            groups
                .entry((family, ports.clone()))
                .or_default()
                .push(endpoint(pod, written, namespace, name, zones));
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((family, ports), endpoints))| {
            slice(namespace, name, i, family, ports, endpoints)
        })
        .collect()
}

/// A pod that has succeeded or failed is no endpoint.
fn terminated(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// The service's ports as (name, the pod's port number); a named target port the pod
/// does not declare leaves the port out.
fn resolve_ports(svc_ports: &[ServicePort], pod: &Pod) -> Vec<(Option<String>, i32)> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| &s.containers[..])
        .unwrap_or_default();
    svc_ports
        .iter()
        .filter_map(|sp| {
            let number = match &sp.target_port {
                None => sp.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(port_name)) => {
                    containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|p| p.name.as_deref() == Some(port_name.as_str()))?
                        .container_port
                }
            };
            Some((sp.name.clone(), number))
        })
        .collect()
}

/// The pod's addresses (`podIPs`, else `podIP`), parsed and as written; ones that do not
/// parse are skipped.
fn pod_ips(pod: &Pod) -> Vec<(IpAddr, &str)> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    let ips = match listed.is_empty() {
        true => status.pod_ip.as_deref().into_iter().collect(),
        false => listed,
    };
    ips.into_iter()
        .filter_map(|ip| Some((ip.parse().ok()?, ip)))
        .collect()
}

/// The endpoint of one of the pod's addresses: ready unless its `Ready` condition is
/// `False`, with its hostname when the pod names this service as its subdomain.
fn endpoint(
    pod: &Pod,
    ip: &str,
    namespace: &str,
    service: &str,
    zones: &BTreeMap<&str, &str>,
) -> Endpoint {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    let spec = pod.spec.as_ref();
    let node_name = spec.and_then(|s| s.node_name.clone());
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..Default::default()
        }),
        hostname: spec
            .filter(|s| s.subdomain.as_deref() == Some(service))
            .and_then(|s| s.hostname.clone()),
        zone: node_name
            .as_deref()
            .and_then(|n| zones.get(n))
            .map(|z| z.to_string()),
        node_name,
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_string()),
            name: pod.metadata.name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `i`th derived slice of a service.
fn slice(
    namespace: &str,
    service: &str,
    i: usize,
    family: &str,
    ports: Vec<(Option<String>, i32)>,
    endpoints: Vec<Endpoint>,
) -> Object {
    Object::EndpointSlice(Box::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!(
                "{service}-derived-{}-{i}",
                family.to_ascii_lowercase()
            )),
            namespace: Some(namespace.to_string()),
            labels: Some([(labels::SLICE_SERVICE_NAME.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: family.to_string(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .into_iter()
                .map(|(name, port)| EndpointPort {
                    name,
                    port: Some(port),
                    ..Default::default()
                })
                .collect(),
        ),
    }))
}
