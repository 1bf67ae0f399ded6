//! `GetProfile` from ServiceProfiles in manifest folders, checked with the published
//! linkerd2-proxy-api client on loopback: routes, retries, timeouts, the traffic split,
//! client-side precedence, live changes, isolation of bad profiles, and live failover.

mod support;

use std::time::Duration;

use linkerd2_proxy_api::{
    destination::{self as pb, request_match::Match as Req, response_match::Match as Rsp},
    http_types::http_method,
    meta,
};
use support::{world::*, *};
use tonic::Streaming;

const WEB: &str = "web.shop.svc.cluster.local:80";
const WEB_FQN: &str = "web.shop.svc.cluster.local";

/// A ServiceProfile named `name` in `ns`, with `annotations` (`key: value` lines) and
/// `spec` (YAML indented by 2).
fn service_profile(ns: &str, name: &str, annotations: &[(&str, &str)], spec: &str) -> String {
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("\n    {k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: {name}
  namespace: {ns}
  annotations:
    test: \"yes\"{annotations}
spec:
{spec}"
    )
}

/// `web` in `shop` (port 80 to 8080) with one pod.
fn web() -> String {
    docs(&[
        service("shop", "web", &[(80, "8080", "http")]),
        pod(&PodOpts::default()),
    ])
}

/// A GetProfile stream for a caller whose context token is `token`.
async fn profile_as(
    srv: &TestServer,
    path: &str,
    token: &str,
) -> Streaming<pb::DestinationProfile> {
    let req = pb::GetDestination {
        scheme: "k8s".into(),
        path: path.into(),
        context_token: token.into(),
    };
    srv.client()
        .await
        .get_profile(req)
        .await
        .expect("GetProfile")
        .into_inner()
}

fn route_names(p: &pb::DestinationProfile) -> Vec<&str> {
    p.routes
        .iter()
        .map(|r| r.metrics_labels.get("route").map_or("", String::as_str))
        .collect()
}

fn split(p: &pb::DestinationProfile) -> Vec<(&str, u32)> {
    p.dst_overrides
        .iter()
        .map(|d| (d.authority.as_str(), d.weight))
        .collect()
}

fn req(m: Req) -> pb::RequestMatch {
    pb::RequestMatch { r#match: Some(m) }
}

fn rsp(m: Rsp) -> pb::ResponseMatch {
    pb::ResponseMatch { r#match: Some(m) }
}

fn method(r: http_method::Registered) -> Req {
    Req::Method(linkerd2_proxy_api::http_types::HttpMethod {
        r#type: Some(http_method::Type::Registered(r as i32)),
    })
}

fn path(re: &str) -> Req {
    Req::Path(pb::PathMatch { regex: re.into() })
}

fn status(min: u32, max: u32) -> Rsp {
    Rsp::Status(pb::HttpStatusRange { min, max })
}

const ROUTES: &str = "  routes:
  - name: get-books
    condition: {method: GET, pathRegex: /books}
    isRetryable: true
    timeout: 250ms
    responseClasses:
    - condition: {status: {min: 500, max: 599}}
      isFailure: true
  - name: any-author
    condition:
      any:
      - {pathRegex: '/authors/\\d+'}
      - {method: PURGE}
    responseClasses:
    - condition:
        not: {status: {min: 200, max: 299}}
      isFailure: true
  - name: all-delete
    condition:
      all:
      - {method: DELETE}
      - not: {pathRegex: /admin/.*}
    timeout: 1m30s
  - name: not-list
    condition:
      not:
      - {method: POST}
    responseClasses:
    - condition:
        all:
        - {status: {min: 400}}
        - any: [{status: {max: 404}}, {status: {min: 429, max: 429}}]
  - name: fallback
    condition: {pathRegex: '.*'}
  retryBudget:
    retryRatio: 0.5
    minRetriesPerSecond: 3
    ttl: 2500ms
";

#[tokio::test]
async fn routes_map_each_condition_kind_as_linkerd_does() {
    let srv = TestServer::start(&[
        ("local/web.yaml", &web()),
        (
            "local/profile.yaml",
            &service_profile("shop", WEB_FQN, &[], ROUTES),
        ),
    ])
    .await;
    let p = next(&mut srv.get_profile(WEB).await).await;
    use http_method::Registered::*;

    assert_eq!(p.fully_qualified_name, WEB_FQN);
    assert_eq!(
        route_names(&p),
        [
            "get-books",
            "any-author",
            "all-delete",
            "not-list",
            "fallback"
        ]
    );
    // Two keys: wrapped in `all`, method before path as Linkerd orders them.
    let r = &p.routes[0];
    assert_eq!(
        r.condition,
        Some(req(Req::All(pb::request_match::Seq {
            matches: vec![req(method(Get)), req(path("/books"))],
        })))
    );
    assert!(r.is_retryable);
    assert_eq!(
        r.timeout,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
    assert_eq!(r.response_classes.len(), 1);
    assert_eq!(r.response_classes[0].condition, Some(rsp(status(500, 599))));
    assert!(r.response_classes[0].is_failure);

    // `any`, with an unregistered method as a string.
    let r = &p.routes[1];
    let purge = Req::Method(linkerd2_proxy_api::http_types::HttpMethod {
        r#type: Some(http_method::Type::Unregistered("PURGE".into())),
    });
    assert_eq!(
        r.condition,
        Some(req(Req::Any(pb::request_match::Seq {
            matches: vec![req(path("/authors/\\d+")), req(purge)],
        })))
    );
    assert!(!r.is_retryable);
    assert_eq!(r.timeout, None, "no timeout: the field is absent");
    assert_eq!(
        r.response_classes[0].condition,
        Some(rsp(Rsp::Not(Box::new(rsp(status(200, 299))))))
    );

    // `all` with a nested `not` object.
    let r = &p.routes[2];
    assert_eq!(
        r.condition,
        Some(req(Req::All(pb::request_match::Seq {
            matches: vec![
                req(method(Delete)),
                req(Req::Not(Box::new(req(path("/admin/.*"))))),
            ],
        })))
    );
    assert_eq!(
        r.timeout,
        Some(prost_types::Duration {
            seconds: 90,
            nanos: 0
        })
    );
    assert!(r.response_classes.is_empty());

    // A top-level `not` written as a list, and nested response `all`/`any`.
    let r = &p.routes[3];
    assert_eq!(
        r.condition,
        Some(req(Req::Not(Box::new(req(method(Post))))))
    );
    assert_eq!(
        r.response_classes[0].condition,
        Some(rsp(Rsp::All(pb::response_match::Seq {
            matches: vec![
                rsp(status(400, 0)),
                rsp(Rsp::Any(pb::response_match::Seq {
                    matches: vec![rsp(status(0, 404)), rsp(status(429, 429))],
                })),
            ],
        })))
    );
    assert!(!r.response_classes[0].is_failure);

    assert_eq!(
        p.retry_budget,
        Some(pb::RetryBudget {
            retry_ratio: 0.5,
            min_retries_per_second: 3,
            ttl: Some(prost_types::Duration {
                seconds: 2,
                nanos: 500_000_000
            }),
        })
    );
    let Some(meta::metadata::Kind::Resource(profile_ref)) =
        p.profile_ref.as_ref().and_then(|m| m.kind.clone())
    else {
        panic!("profile_ref: {:?}", p.profile_ref);
    };
    assert_eq!(
        (
            profile_ref.group.as_str(),
            profile_ref.kind.as_str(),
            profile_ref.name.as_str(),
            profile_ref.namespace.as_str()
        ),
        ("linkerd.io", "ServiceProfile", WEB_FQN, "shop")
    );
    assert!(p.parent_ref.is_some(), "the Service is still the parent");
    srv.stop().await;
}

#[tokio::test]
async fn dst_overrides_carry_quantity_weights_and_the_requested_port() {
    let spec = "  routes: []
  dstOverrides:
  - {authority: web.shop.svc.cluster.local, weight: 1}
  - {authority: web-west.shop.svc.cluster.local:8080, weight: 800m}
  - {authority: web-east.shop.svc.cluster.local, weight: \"0\"}
  - {authority: web-v2.shop.svc.cluster.local, weight: \"0.25\"}
";
    let srv = TestServer::start(&[
        ("local/web.yaml", &web()),
        (
            "local/profile.yaml",
            &service_profile("shop", WEB_FQN, &[], spec),
        ),
    ])
    .await;
    let p = next(&mut srv.get_profile(WEB).await).await;
    assert_eq!(
        split(&p),
        [
            ("web.shop.svc.cluster.local:80", 10_000),
            ("web-west.shop.svc.cluster.local:8080", 8_000),
            ("web-east.shop.svc.cluster.local:80", 0),
            ("web-v2.shop.svc.cluster.local:80", 2_500),
        ]
    );
    assert!(p.routes.is_empty());
    // No retry budget written: the default one.
    assert_eq!(
        p.retry_budget
            .map(|b| (b.retry_ratio, b.min_retries_per_second)),
        Some((0.2, 10))
    );
    srv.stop().await;
}

fn one_route(name: &str) -> String {
    format!("  routes:\n  - name: {name}\n    condition: {{method: GET}}\n")
}

#[tokio::test]
async fn the_callers_namespace_profile_takes_precedence() {
    let srv = TestServer::start(&[
        ("local/web.yaml", &web()),
        (
            "local/server.yaml",
            &service_profile("shop", WEB_FQN, &[], &one_route("server")),
        ),
        (
            "local/client.yaml",
            &service_profile("frontend", WEB_FQN, &[], &one_route("client")),
        ),
    ])
    .await;
    let mut from_frontend = profile_as(&srv, WEB, r#"{"ns":"frontend"}"#).await;
    assert_eq!(route_names(&next(&mut from_frontend).await), ["client"]);
    let mut legacy = profile_as(&srv, WEB, "ns:frontend").await;
    assert_eq!(route_names(&next(&mut legacy).await), ["client"]);
    let mut from_elsewhere = profile_as(&srv, WEB, r#"{"ns":"billing"}"#).await;
    assert_eq!(route_names(&next(&mut from_elsewhere).await), ["server"]);
    let mut anonymous = srv.get_profile(WEB).await;
    assert_eq!(route_names(&next(&mut anonymous).await), ["server"]);

    // The client-side profile goes: its callers fall back to the server's at once.
    srv.remove("local/client.yaml");
    assert_eq!(route_names(&next(&mut from_frontend).await), ["server"]);
    assert_quiet(&mut anonymous, Duration::from_millis(300)).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_profile_created_changed_and_deleted_reaches_an_open_stream() {
    let srv = TestServer::start(&[("local/web.yaml", &web())]).await;
    let mut s = srv.get_profile(WEB).await;
    let first = next(&mut s).await;
    assert!(first.routes.is_empty() && first.profile_ref.is_none());
    assert_eq!(first.fully_qualified_name, WEB_FQN);

    srv.write(
        "local/profile.yaml",
        &service_profile("shop", WEB_FQN, &[], &one_route("v1")),
    );
    assert_eq!(route_names(&next(&mut s).await), ["v1"]);

    srv.write(
        "local/profile.yaml",
        &service_profile(
            "shop",
            WEB_FQN,
            &[],
            &format!(
                "{}  - name: v2\n    condition: {{method: PUT}}\n",
                one_route("v1")
            ),
        ),
    );
    assert_eq!(route_names(&next(&mut s).await), ["v1", "v2"]);

    srv.remove("local/profile.yaml");
    let gone = next(&mut s).await;
    assert!(
        gone.routes.is_empty() && gone.profile_ref.is_none(),
        "{gone:?}"
    );
    assert_eq!(gone, first, "back to the service's defaults");
    srv.stop().await;
}

#[tokio::test]
async fn malformed_profiles_are_reported_and_spare_the_others() {
    let bad_regex = "  routes:\n  - name: r\n    condition: {pathRegex: '/books/(unclosed'}\n";
    let srv = TestServer::start(&[
        (
            "local/web.yaml",
            &docs(&[
                service("shop", "web", &[(80, "8080", "http")]),
                service("shop", "api", &[(80, "8080", "http")]),
            ]),
        ),
        (
            "local/api.yaml",
            &service_profile("shop", "api.shop.svc.cluster.local", &[], bad_regex),
        ),
        (
            "local/profile.yaml",
            &service_profile("shop", WEB_FQN, &[], &one_route("good")),
        ),
    ])
    .await;
    let mut web = srv.get_profile(WEB).await;
    assert_eq!(route_names(&next(&mut web).await), ["good"]);
    let mut api = srv.get_profile("api.shop.svc.cluster.local:80").await;
    let api_first = next(&mut api).await;
    assert!(api_first.routes.is_empty(), "the bad profile is not served");
    let reported = |metrics: &str, file: &str| {
        metrics.lines().any(|l| {
            l.starts_with("meshlink_manifest_invalid{")
                && l.contains(file)
                && l.contains("reason=\"invalid_object\"")
        })
    };
    assert!(reported(&srv.metrics().await, "api.yaml"));

    // The good profile turns bad three ways: each is reported with its file, and the
    // open stream keeps the last good answer.
    let bad_specs = [
        (
            "  routes:\n  - name: r\n    condition: {method: GET}\n    timeout: 5 seconds\n",
            "invalid duration",
        ),
        (
            "  routes: []\n  dstOverrides:\n  - {authority: web-west.shop.svc.cluster.local, weight: lots}\n",
            "invalid weight",
        ),
        (
            "  routes: []\n  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 1, ttl: 10}\n",
            "invalid duration",
        ),
    ];
    for (spec, _) in bad_specs {
        srv.write(
            "local/profile.yaml",
            &service_profile("shop", WEB_FQN, &[], spec),
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reported(&srv.metrics().await, "profile.yaml") {
            assert!(tokio::time::Instant::now() < deadline, "not reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_quiet(&mut web, Duration::from_millis(200)).await;
    }
    assert_quiet(&mut api, Duration::from_millis(100)).await;

    // Fixed: served again, and no longer reported.
    srv.write(
        "local/profile.yaml",
        &service_profile("shop", WEB_FQN, &[], &one_route("fixed")),
    );
    assert_eq!(route_names(&next(&mut web).await), ["fixed"]);
    assert!(!reported(&srv.metrics().await, "profile.yaml"));
    srv.stop().await;
}

// --- failover ---

/// `web` with ready pods at `ips`.
fn web_pods(ips: &[&'static str]) -> String {
    let mut parts = vec![service("shop", "web", &[(80, "8080", "http")])];
    for (i, ip) in ips.iter().enumerate() {
        parts.push(pod(&PodOpts {
            name: Box::leak(format!("web-{i}").into_boxed_str()),
            ips: Box::leak(Box::new([*ip])),
            ..Default::default()
        }));
    }
    docs(&parts)
}

const FAILOVER_SPEC: &str = "  routes: []
  dstOverrides:
  - {authority: web.shop.svc.cluster.local:80, weight: 1}
  - {authority: web-west.shop.svc.cluster.local:80, weight: 600m}
  - {authority: web-east.shop.svc.cluster.local:80, weight: 400m}
";

const PRIMARY: (&str, &str) = ("failover.linkerd.io/primary-service", "web");
const W_LOCAL: &str = "web.shop.svc.cluster.local:80";
const W_WEST: &str = "web-west.shop.svc.cluster.local:80";
const W_EAST: &str = "web-east.shop.svc.cluster.local:80";

async fn failover_world() -> TestServer {
    TestServer::start(&[
        (
            "local/links.yaml",
            &docs(&[
                credentials("west", "west.example"),
                credentials("east", "east.example"),
            ]),
        ),
        (
            "local/mirrors.yaml",
            &docs(&[
                remote_discovery_mirror("shop", "web", "west", 80),
                remote_discovery_mirror("shop", "web", "east", 80),
            ]),
        ),
        ("local/web.yaml", &web_pods(&["10.1.0.1"])),
        (
            "local/profile.yaml",
            &service_profile("shop", WEB_FQN, &[PRIMARY], FAILOVER_SPEC),
        ),
        ("west/web.yaml", &web_pods(&["10.2.0.1"])),
        ("east/web.yaml", &web_pods(&["10.3.0.1"])),
    ])
    .await
}

#[tokio::test]
async fn failover_follows_the_primarys_ready_endpoints() {
    let srv = failover_world().await;
    let mut s = srv.get_profile(WEB).await;
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 10_000), (W_WEST, 0), (W_EAST, 0)],
        "primary ready: it alone holds weight"
    );

    // The primary's last pod goes: the ready fallbacks share by their weights.
    srv.write("local/web.yaml", &web_pods(&[]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 0), (W_WEST, 6_000), (W_EAST, 4_000)]
    );

    // A fallback without ready endpoints gets no weight.
    srv.write("east/web.yaml", &web_pods(&[]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 0), (W_WEST, 6_000), (W_EAST, 0)]
    );

    // None ready: the primary keeps the weight.
    srv.write("west/web.yaml", &web_pods(&[]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 10_000), (W_WEST, 0), (W_EAST, 0)]
    );

    // A fallback returns, then the primary: all weight returns to it.
    srv.write("east/web.yaml", &web_pods(&["10.3.0.2"]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 0), (W_WEST, 0), (W_EAST, 4_000)]
    );
    srv.write("local/web.yaml", &web_pods(&["10.1.0.9"]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 10_000), (W_WEST, 0), (W_EAST, 0)]
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_stale_linked_cluster_keeps_its_last_endpoints_and_its_weight() {
    let srv = failover_world().await;
    let mut s = srv.get_profile(WEB).await;
    assert_eq!(split(&next(&mut s).await)[0], (W_LOCAL, 10_000));
    srv.write("local/web.yaml", &web_pods(&[]));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 0), (W_WEST, 6_000), (W_EAST, 4_000)]
    );

    // West's file turns to garbage: west is stale, its last endpoints stay, and so does
    // its share.
    srv.write("west/web.yaml", "kind: [not yaml");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !srv
        .metrics()
        .await
        .contains(r#"meshlink_cluster_stale{cluster="west"} 1"#)
    {
        assert!(tokio::time::Instant::now() < deadline, "west not stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_quiet(&mut s, Duration::from_millis(300)).await;

    // A cluster that is unlinked takes its endpoints, and its share, with it.
    srv.write("local/links.yaml", &credentials("east", "east.example"));
    assert_eq!(
        split(&next(&mut s).await),
        [(W_LOCAL, 0), (W_WEST, 0), (W_EAST, 4_000)]
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_failover_profile_without_its_primary_is_rejected() {
    let srv = TestServer::start(&[
        ("local/web.yaml", &web_pods(&["10.1.0.1"])),
        (
            "local/profile.yaml",
            &service_profile(
                "shop",
                WEB_FQN,
                &[("failover.linkerd.io/primary-service", "web-main")],
                FAILOVER_SPEC,
            ),
        ),
    ])
    .await;
    let p = next(&mut srv.get_profile(WEB).await).await;
    assert!(
        p.dst_overrides.is_empty() && p.profile_ref.is_none(),
        "{p:?}"
    );
    let metrics = srv.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshlink_manifest_invalid{") && l.contains("profile.yaml")),
        "{metrics}"
    );
    srv.stop().await;
}
