//! The service mirror's operations parts against real things: the gateway prober
//! against an HTTP endpoint inside a network namespace the test makes (root needed),
//! leader election and `meshlink check` against real API servers of
//! `scripts/k8s-test-env.sh`, and the mirror's RBAC from `deploy/`.

mod k8s;
mod mirror_support;
mod support;

use std::{net::SocketAddr, time::Duration};

use meshlink::mirror::probe::{ProbeMetrics, ProbeSpec, spawn_gateway_probe};
use mirror_support::netns::{NetNs, ProbeTarget};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::sync::watch;

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(45);

/// Waits until `check` holds, polling; panics naming `what` after [`WAIT`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the watch says `want`.
async fn until_value(what: &str, rx: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(WAIT, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}"))
        .unwrap_or_else(|_| panic!("{what}: the task ended"));
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("metrics encode");
    text
}

/// The value of a sample line `name{labels} value` in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// --- the gateway prober ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_probe_turns_not_alive_after_the_threshold_and_alive_on_one_success() {
    let ns = NetNs::create();
    let [refusing, answering] = ns.ns_addrs;
    let target = ProbeTarget::serve(ns.bind(SocketAddr::new(answering.into(), 4191)));
    let mut registry = Registry::default();
    let metrics = ProbeMetrics::register(&mut registry);
    let spec = ProbeSpec {
        path: "/ready".into(),
        port: 4191,
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        failure_threshold: 3,
    };
    let (stop, stop_rx) = watch::channel(false);
    // Nothing listens on the first address: alive while any address answers.
    let addrs = vec![refusing.to_string(), answering.to_string()];
    let mut alive = spawn_gateway_probe("west".into(), addrs, spec, metrics.clone(), stop_rx);
    const ALIVE: &str = "gateway_alive{target_cluster=\"west\"}";
    const PROBES: &str = "gateway_probe_latency_ms_count{target_cluster=\"west\"}";

    until("two good probes are measured", || {
        sample(&scrape(&registry), PROBES).unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(*alive.borrow(), "alive while one address answers 200");
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // Failing, one answer at a time: the third failing request is held while the
    // prober has counted two failures; it must still say alive.
    target.set_failing(true);
    target.allow_failures(2);
    until("two 503s sent and a third request held", || {
        target.failed() == 2 && target.waiting() == 1
    })
    .await;
    assert!(*alive.borrow(), "alive after 2 of 3 failures");
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));
    target.allow_failures(1);
    until_value("not alive after the third failure", &mut alive, false).await;
    assert_eq!(
        target.failed(),
        3,
        "no failure beyond the threshold was needed"
    );
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(0.0));

    // One good answer makes it alive again.
    target.set_failing(false);
    until_value("alive after one success", &mut alive, true).await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // The network fails (probes time out or find no route), then comes back.
    ns.set_link(false);
    until_value(
        "not alive while the gateway is unreachable",
        &mut alive,
        false,
    )
    .await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(0.0));
    ns.set_link(true);
    until_value(
        "alive once the gateway is reachable again",
        &mut alive,
        true,
    )
    .await;
    assert_eq!(sample(&scrape(&registry), ALIVE), Some(1.0));

    // Stopping the prober removes its series.
    stop.send_replace(true);
    until("gateway_alive of west removed", || {
        sample(&scrape(&registry), ALIVE).is_none()
    })
    .await;
    assert_eq!(metrics.alive("west"), None);
}
