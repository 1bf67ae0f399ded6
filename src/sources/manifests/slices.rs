//! EndpointSlices for Services that select pods, as Kubernetes' controller writes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
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
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut groups: BTreeMap<SliceGroup, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True")
            .unwrap_or(true);
        let spec = pod.spec.clone().unwrap_or_default();
        let ports: Vec<(Option<String>, i32)> = svc_ports
            .iter()
            .filter_map(|sp| {
                let number = match &sp.target_port {
                    None => sp.port,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(port_name)) => {
                        spec.containers
                            .iter()
                            .flat_map(|c| c.ports.iter().flatten())
                            .find(|p| p.name.as_deref() == Some(port_name.as_str()))?
                            .container_port
                    }
                };
                Some((sp.name.clone(), number))
            })
            .collect();
        let hostname = spec
            .hostname
            .clone()
            .filter(|_| spec.subdomain.as_deref() == Some(name));
        let mut ips: Vec<String> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.clone())
            .collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.clone());
        }
        for ip in ips {
            let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
            groups
                .entry((family, ports.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        ..Default::default()
                    }),
                    hostname: hostname.clone(),
                    node_name: spec.node_name.clone(),
                    zone: spec
                        .node_name
                        .as_deref()
                        .and_then(|n| zones.get(n))
                        .map(|z| z.to_string()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.to_string()),
                        name: pod.metadata.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((family, ports), endpoints))| {
            Object::EndpointSlice(Box::new(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!(
                        "{name}-derived-{}-{i}",
                        family.to_ascii_lowercase()
                    )),
                    namespace: Some(namespace.to_string()),
                    labels: Some(
                        [(labels::SLICE_SERVICE_NAME.to_string(), name.to_string())].into(),
                    ),
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
        })
        .collect()
}
