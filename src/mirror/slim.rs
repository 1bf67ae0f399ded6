//! What the mirror keeps of the objects it watches.
//!
//! The mirror's stores hold every Service and EndpointSlice of each target cluster and the
//! Services, owned slices and Namespaces of the local one. It reads only a few fields of
//! them (names, labels, annotations, ports, cluster IP, endpoint readiness and hostnames,
//! and the applied-hash annotation of what it wrote), so each object is cut down to those
//! as it arrives: at thousands of objects per cluster, the rest is most of its memory.

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::k8s::labels::LAST_APPLIED;

/// A watched kind the mirror can cut down to what it reads.
pub trait Slim {
    /// Drops every field the mirror does not read.
    fn slim(&mut self);
}

fn slim_meta(meta: &mut ObjectMeta) {
    let m = std::mem::take(meta);
    let annotations = m
        .annotations
        .map(|mut a| {
            a.remove(LAST_APPLIED);
            a
        })
        .filter(|a| !a.is_empty());
    *meta = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels,
        annotations,
        resource_version: m.resource_version,
        uid: m.uid,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    };
}

impl Slim for Service {
    /// Keeps metadata, the cluster IP, the type and each port's name, number and protocol.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.status = None;
        self.spec = self.spec.take().map(|s| ServiceSpec {
            cluster_ip: s.cluster_ip,
            type_: s.type_,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        });
    }
}

impl Slim for EndpointSlice {
    /// Keeps metadata, the address type, ports and each endpoint's addresses, hostname and
    /// readiness (the mirror mirrors readiness and headless hosts, nothing else).
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        if let Some(endpoints) = self.endpoints.as_mut() {
            for ep in endpoints.iter_mut() {
                let Endpoint {
                    addresses,
                    hostname,
                    conditions,
                    ..
                } = std::mem::take(ep);
                *ep = Endpoint {
                    addresses,
                    hostname,
                    conditions: conditions.map(|c| EndpointConditions {
                        ready: c.ready,
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                };
            }
            endpoints.shrink_to_fit();
        }
    }
}

impl Slim for Namespace {
    /// Keeps the name: the mirror only asks whether a namespace exists.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.spec = None;
        self.status = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ServiceStatus;

    use super::*;

    fn mk_service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.into(), "{\"a\":\"big copy\"}".into()),
                    ("keep".into(), "me".into()),
                ])),
                resource_version: Some("42".into()),
                generate_name: Some("web-".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                cluster_ips: Some(vec!["None".into()]),
                ip_families: Some(vec!["IPv4".into()]),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus::default()),
        }
    }

    #[test]
    fn service_keeps_what_the_mirror_reads() {
        let mut svc = mk_service();
        svc.slim();
        let m = &svc.metadata;
        assert_eq!(m.name.as_deref(), Some("web"));
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.labels.as_ref().unwrap()["app"], "web");
        let a = m.annotations.as_ref().unwrap();
        assert_eq!(a.get("keep").map(String::as_str), Some("me"));
        assert!(!a.contains_key(LAST_APPLIED));
        assert_eq!(m.generate_name, None);
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.cluster_ips, None);
        assert_eq!(spec.selector, None);
        let p = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_deref()),
            (Some("http"), 8080, Some("TCP"))
        );
        assert_eq!(p.app_protocol, None);
        assert!(svc.status.is_none());
    }

    #[test]
    fn slice_keeps_addresses_hostnames_and_readiness() {
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("db-abc".into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec!["10.0.0.1".into()],
                hostname: Some("db-0".into()),
                node_name: Some("node-1".into()),
                zone: Some("a".into()),
                conditions: Some(EndpointConditions {
                    ready: Some(false),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            }]
            .into(),
            ports: None,
        };
        slice.slim();
        let ep = &slice.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.addresses, ["10.0.0.1"]);
        assert_eq!(ep.hostname.as_deref(), Some("db-0"));
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(ep.conditions.as_ref().unwrap().serving, None);
        assert_eq!(ep.node_name, None);
        assert_eq!(ep.zone, None);
        assert_eq!(slice.address_type, "IPv4");
    }

    #[test]
    fn empty_annotations_after_the_cut_are_none() {
        let mut svc = mk_service();
        svc.metadata.annotations = Some(BTreeMap::from([(LAST_APPLIED.into(), "{}".into())]));
        svc.slim();
        assert_eq!(svc.metadata.annotations, None);
    }
}
