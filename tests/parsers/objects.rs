//! Services, Pods and EndpointSlices with hostile field values (ports of any `i32`, addresses
//! that are not IPs, port lists and listen addresses of any text), as the API server or a
//! manifest may deliver them, applied to the index and then deleted: no panic, no endpoint
//! at an address no slice listed, and nothing left once every object is gone.

use std::{collections::BTreeSet, net::IpAddr};

use meshlink::{
    index::{ClusterIndex, IndexConfig},
    k8s::{EndpointSlice, Pod, Service, labels},
    model::ServiceRef,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::manifests::text;

const NS: &str = "shop";

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u8..4).prop_map(|i| format!("10.0.0.{i}")),
        1 => Just("fd00::1".to_string()),
        1 => text(),
    ]
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![3 => 79..82i32, 1 => any::<i32>()]
}

/// A port name or number where Kubernetes takes either.
fn int_or_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        port().prop_map(Value::from),
        text().prop_map(Value::from),
        Just(json!("http"))
    ]
}

fn port_list() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("80".to_string()),
        Just("1-65535,http".to_string()),
        text()
    ]
}

fn service() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&["ClusterIP", "ExternalName", "NodePort", "?"][..]),
        prop_oneof![address(), Just("None".to_string())],
        proptest::collection::vec((port(), int_or_string(), text()), 0..3),
        port_list(),
    )
        .prop_map(|(type_, cluster_ip, ports, opaque)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(port, target, name)| json!({"port": port, "targetPort": target, "name": name}))
                .collect();
            json!({
                "metadata": {"name": "web", "namespace": NS, "annotations": {labels::OPAQUE_PORTS: opaque}},
                "spec": {"type": type_, "clusterIP": cluster_ip, "selector": {"app": "web"}, "ports": ports},
            })
        })
}

fn pod(i: usize) -> impl Strategy<Value = Value> {
    (
        address(),
        any::<bool>(),
        proptest::collection::vec((port(), text()), 0..3),
        text(),
        port_list(),
        port_list(),
    )
        .prop_map(move |(ip, meshed, ports, listen, opaque, skip)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(port, name)| json!({"containerPort": port, "name": name}))
                .collect();
            let mut labels_map = json!({"app": "web"});
            if meshed {
                labels_map[labels::CONTROL_PLANE_NS] = json!("linkerd");
            }
            json!({
                "metadata": {
                    "name": format!("web-{i}"), "namespace": NS, "labels": labels_map,
                    "annotations": {labels::OPAQUE_PORTS: opaque, labels::SKIP_INBOUND_PORTS: skip},
                },
                "spec": {"nodeName": "node-a", "containers": [
                    {"name": "app", "ports": ports},
                    {"name": labels::PROXY_CONTAINER, "env": [{"name": labels::PROXY_INBOUND_LISTEN_ADDR_ENV, "value": listen}]},
                ]},
                "status": {"podIP": ip.clone(), "podIPs": [{"ip": ip}]},
            })
        })
}

fn slice(i: usize) -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec((address(), proptest::option::of(any::<bool>()), 0..3usize), 0..4),
        proptest::collection::vec((port(), proptest::option::of(text())), 0..3),
    )
        .prop_map(move |(endpoints, ports)| {
            let endpoints: Vec<Value> = endpoints
                .into_iter()
                .map(|(addr, ready, pod)| json!({
                    "addresses": [addr],
                    "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "name": format!("web-{pod}"), "namespace": NS},
                }))
                .collect();
            let ports: Vec<Value> = ports.into_iter().map(|(port, name)| json!({"port": port, "name": name})).collect();
            json!({
                "metadata": {"name": format!("web-{i}"), "namespace": NS, "labels": {labels::SLICE_SERVICE_NAME: "web"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            })
        })
}

/// A generated object, as the API server would send it.
fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a generated object deserializes")
}

#[derive(Clone, Debug)]
enum Obj {
    Service(Box<Service>),
    Pod(Box<Pod>),
    Slice(Box<EndpointSlice>),
}

fn objects() -> impl Strategy<Value = Vec<Obj>> {
    (proptest::option::of(service()), 0..3usize, 0..3usize).prop_flat_map(
        move |(svc, pods, slices)| {
            let mut all: Vec<BoxedStrategy<Obj>> = Vec::new();
            if let Some(svc) = svc {
                all.push(Just(Obj::Service(Box::new(from(svc)))).boxed());
            }
            all.extend((0..pods).map(|i| {
                pod(i)
                    .prop_map(move |p| Obj::Pod(Box::new(from(p))))
                    .boxed()
            }));
            all.extend((0..slices).map(|i| {
                slice(i)
                    .prop_map(move |s| Obj::Slice(Box::new(from(s))))
                    .boxed()
            }));
            all.prop_shuffle()
        },
    )
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn hostile_objects_reach_the_index_without_harm(
        objects in objects(),
        ports in proptest::collection::vec(prop_oneof![79..82u16, any::<u16>()], 1..4),
        lookup_first in any::<bool>(),
    ) {
        let mut index = ClusterIndex::new(IndexConfig {
            cluster_name: "local".into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "linkerd".into(),
            default_opaque_ports: Default::default(),
        });
        let svc = ServiceRef { namespace: NS.into(), name: "web".into() };
        let mut rxs = Vec::new();
        if lookup_first {
            rxs.extend(ports.iter().map(|p| index.endpoints_rx(&svc, *p)));
        }
        let mut listed: BTreeSet<IpAddr> = BTreeSet::new();
        for obj in &objects {
            match obj {
                Obj::Service(s) => index.apply_service(s),
                Obj::Pod(p) => index.apply_pod(p),
                Obj::Slice(s) => {
                    let addrs = s.endpoints.iter().flatten().flat_map(|e| &e.addresses);
                    listed.extend(addrs.filter_map(|a| a.parse::<IpAddr>().ok()));
                    index.apply_endpoint_slice(s);
                }
            }
        }
        if !lookup_first {
            rxs.extend(ports.iter().map(|p| index.endpoints_rx(&svc, *p)));
        }
        for rx in &rxs {
            for addr in rx.borrow().endpoints.keys() {
                prop_assert!(listed.contains(&addr.ip()), "{addr} is in no slice");
                prop_assert!(addr.port() > 0);
            }
        }
        for obj in objects.iter().rev() {
            match obj {
                Obj::Service(_) => index.delete_service(NS, "web"),
                Obj::Pod(p) => index.delete_pod(NS, p.metadata.name.as_deref().unwrap_or_default()),
                Obj::Slice(s) => index.delete_endpoint_slice(NS, s.metadata.name.as_deref().unwrap_or_default()),
            }
        }
        for rx in &rxs {
            let snapshot = rx.borrow();
            prop_assert!(snapshot.service.is_none() && snapshot.endpoints.is_empty(), "{:?}", *snapshot);
        }
    }
}
