use super::*;
use crate::k8s::link::LinkSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn select(key: &str, value: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(key.into(), value.into())])),
        ..LabelSelector::default()
    })
}

fn mk_link() -> LinkConfig {
    let mut link = Link::new(
        "west",
        LinkSpec {
            target_cluster_name: Some("west".into()),
            cluster_credentials_secret: Some("cluster-credentials-west".into()),
            gateway_address: Some("192.0.2.10".into()),
            gateway_port: Some("4143".into()),
            gateway_identity: Some("gw.west".into()),
            selector: select(labels::EXPORTED, labels::EXPORTED_GATEWAY),
            remote_discovery_selector: select(labels::EXPORTED, labels::EXPORTED_REMOTE_DISCOVERY),
            federated_service_selector: select(labels::FEDERATED, labels::FEDERATED_MEMBER),
            excluded_labels: Some(vec!["secret/*".into()]),
            ..LinkSpec::default()
        },
    );
    link.metadata.namespace = Some("linkerd".into());
    LinkConfig::from_link(&link).unwrap()
}

fn mk_service(name: &str, export: &str, headless: bool) -> Arc<Service> {
    Arc::new(Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([
                ("app".into(), name.into()),
                (labels::EXPORTED.into(), export.into()),
                ("secret/team".into(), "a".into()),
            ])),
            annotations: Some(BTreeMap::from([("note".into(), "hi".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn mk_slice(svc: &str, eps: &[(&str, Option<&str>, bool)]) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-abc")),
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: host.map(String::from),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: None,
    })
}

fn run(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    alive: bool,
    ips: &dyn Fn(&str, &str) -> Option<String>,
) -> Desired {
    let mut by_svc: BTreeMap<ObjKey, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for s in slices {
        let svc = s.metadata.name.as_deref().unwrap().trim_end_matches("-abc");
        by_svc
            .entry(("shop".into(), svc.into()))
            .or_default()
            .push(Arc::clone(s));
    }
    let gw: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap()];
    desired(
        &mk_link(),
        &Remote {
            services,
            slices: &by_svc,
        },
        &Local {
            gateway_ips: &gw,
            gateway_alive: alive,
            cluster_ip: ips,
        },
    )
}

fn key(name: &str) -> ObjKey {
    ("shop".into(), name.into())
}

#[test]
fn a_gateway_export_gets_a_mirror_and_a_gateway_slice() {
    let d = run(
        &[mk_service("web", "true", false)],
        &[mk_slice("web", &[("10.2.0.1", None, true)])],
        true,
        &|_, _| None,
    );
    let svc = &d.services[&key("web-west")];
    let l = svc.metadata.labels.as_ref().unwrap();
    assert_eq!(l["app"], "web");
    assert_eq!(l[labels::MIRRORED_SERVICE], "true");
    assert_eq!(l[labels::MIRROR_CLUSTER_NAME], "west");
    assert!(
        !l.contains_key(labels::EXPORTED),
        "mirror.linkerd.io* not copied"
    );
    assert!(!l.contains_key("secret/team"), "excluded label not copied");
    let a = svc.metadata.annotations.as_ref().unwrap();
    assert_eq!(a["note"], "hi");
    assert_eq!(a[labels::REMOTE_SVC_FQ_NAME], "web.shop.svc.cluster.local");
    assert_eq!(a[labels::REMOTE_RESOURCE_VERSION], "42");
    assert_eq!(a[labels::REMOTE_GATEWAY_IDENTITY], "gw.west");
    assert_eq!(
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        8080
    );

    let slice = &d.slices[&key("web-west-meshlink")];
    let sl = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(sl[labels::SLICE_SERVICE_NAME], "web-west");
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(4143));
    assert_eq!(
        slice.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("http")
    );
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0].addresses,
        vec!["192.0.2.10".to_string()]
    );
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0]
            .conditions
            .as_ref()
            .unwrap()
            .ready,
        Some(true)
    );
    assert_eq!(
        slice.metadata.annotations.as_ref().unwrap()[labels::REMOTE_GATEWAY_IDENTITY],
        "gw.west"
    );
    assert_eq!(d.counts.gateway, 1);
}

#[test]
fn a_gateway_mirror_is_not_ready_without_remote_endpoints_or_gateway() {
    let not_ready = |d: &Desired| {
        d.slices[&key("web-west-meshlink")]
            .endpoints
            .as_ref()
            .unwrap()[0]
            .conditions
            .as_ref()
            .unwrap()
            .ready
    };
    let svc = [mk_service("web", "true", false)];
    let d = run(
        &svc,
        &[mk_slice("web", &[("10.2.0.1", None, false)])],
        true,
        &|_, _| None,
    );
    assert_eq!(not_ready(&d), Some(false));
    let d = run(
        &svc,
        &[mk_slice("web", &[("10.2.0.1", None, true)])],
        false,
        &|_, _| None,
    );
    assert_eq!(not_ready(&d), Some(false));
}

#[test]
fn a_remote_discovery_export_gets_labels_and_no_slice() {
    let d = run(
        &[mk_service("api", "remote-discovery", false)],
        &[],
        true,
        &|_, _| None,
    );
    let svc = &d.services[&key("api-west")];
    let l = svc.metadata.labels.as_ref().unwrap();
    assert_eq!(l[labels::MC_REMOTE_DISCOVERY], "west");
    assert_eq!(l[labels::MC_REMOTE_SERVICE], "api");
    assert!(d.slices.is_empty());
    assert_eq!(d.counts.remote_discovery, 1);
}

#[test]
fn unexported_and_empty_selectors_select_nothing() {
    let d = run(&[mk_service("web", "no", false)], &[], true, &|_, _| None);
    assert!(d.services.is_empty());
    let mut link = Link::new(
        "x",
        LinkSpec {
            target_cluster_name: Some("west".into()),
            cluster_credentials_secret: Some("s".into()),
            selector: Some(LabelSelector::default()),
            ..LinkSpec::default()
        },
    );
    link.metadata.namespace = Some("linkerd".into());
    let cfg = LinkConfig::from_link(&link).unwrap();
    assert!(!cfg.gateway_mode(), "an empty selector selects nothing");
    assert_eq!(cfg.mode_of(&mk_service("web", "true", false)), None);
}

#[test]
fn a_bad_selector_or_port_is_a_clear_error() {
    let mut link = Link::new(
        "x",
        LinkSpec {
            target_cluster_name: Some("west".into()),
            cluster_credentials_secret: Some("s".into()),
            gateway_port: Some("http".into()),
            ..LinkSpec::default()
        },
    );
    let err = LinkConfig::from_link(&link).unwrap_err();
    assert!(err.to_string().contains("gatewayPort"), "{err}");
    link.spec.gateway_port = None;
    link.spec.remote_discovery_selector = Some(LabelSelector {
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "a".into(),
                operator: "Sometimes".into(),
                values: None,
            },
        ]),
        ..LabelSelector::default()
    });
    let err = LinkConfig::from_link(&link).unwrap_err();
    assert!(err.to_string().contains("remoteDiscoverySelector"), "{err}");
}

#[test]
fn a_headless_service_gets_endpoint_mirrors_per_ready_host() {
    let ips = |_: &str, name: &str| match name {
        "db-0-west" => Some("10.1.0.5".to_string()),
        _ => None,
    };
    let d = run(
        &[mk_service("db", "true", true)],
        &[mk_slice(
            "db",
            &[
                ("10.2.0.1", Some("db-0"), true),
                ("10.2.0.2", Some("db-1"), true),
                ("10.2.0.3", Some("db-2"), false),
            ],
        )],
        true,
        &ips,
    );
    let parent = &d.services[&key("db-west")];
    assert_eq!(
        parent.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    let ep = &d.services[&key("db-0-west")];
    assert_eq!(
        ep.metadata.labels.as_ref().unwrap()[labels::HEADLESS_MIRROR_SVC_NAME],
        "db-west"
    );
    assert_eq!(
        ep.metadata.annotations.as_ref().unwrap()[labels::REMOTE_SVC_FQ_NAME],
        "db-0.db.shop.svc.cluster.local"
    );
    assert!(d.services.contains_key(&key("db-1-west")));
    assert!(
        !d.services.contains_key(&key("db-2-west")),
        "not ready: no mirror"
    );
    assert!(d.slices.contains_key(&key("db-0-west-meshlink")));
    // The parent's slice lists the endpoint mirrors whose cluster IP is known.
    let ps = &d.slices[&key("db-west-meshlink")];
    assert_eq!(ps.endpoints.as_ref().unwrap().len(), 1);
    assert_eq!(
        ps.endpoints.as_ref().unwrap()[0].hostname.as_deref(),
        Some("db-0")
    );
    assert_eq!(
        ps.endpoints.as_ref().unwrap()[0].addresses,
        vec!["10.1.0.5".to_string()]
    );
    assert_eq!(ps.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(d.counts.headless_endpoints, 2);
}

#[test]
fn federated_members_are_reported() {
    let mut svc = (*mk_service("web", "no", false)).clone();
    svc.metadata
        .labels
        .get_or_insert_default()
        .insert(labels::FEDERATED.into(), labels::FEDERATED_MEMBER.into());
    let d = run(&[Arc::new(svc)], &[], true, &|_, _| None);
    assert!(d.federated.contains_key(&key("web")));
    assert_eq!(d.counts.federated, 1);
    assert!(d.services.is_empty());
}
