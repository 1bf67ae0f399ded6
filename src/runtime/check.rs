//! `meshlink check`: is multicluster working? Against the local cluster and, through
//! each Link's credentials, every linked one: the Links, their credentials, the last
//! sync, the gateway, mirrors without endpoints and conflicts. A table for people or
//! JSON for scripts; the process exits 1 when anything is wrong.
//!
//! Gathering (API calls) and judging (a pure function of what was gathered) are apart,
//! so each verdict is tested without a cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, ValueEnum};
use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Condition,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde::Serialize;

use crate::{
    k8s::{
        client::client_from_secret,
        labels,
        link::{
            CONDITION_GATEWAY_ALIVE as GATEWAY_ALIVE, CONDITION_MIRRORS_READY as MIRRORS_READY,
            CONDITION_TARGET_SYNCED as TARGET_SYNCED, Link, LinkSpec, LinkStatus,
        },
    },
    mirror::probe::ProbeSpec,
};

/// Flags of `meshlink check`.
#[derive(Debug, Parser)]
pub struct CheckArgs {
    /// Kubeconfig of the local cluster. Without it: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, env = "MESHLINK_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the Links and their credentials Secrets.
    #[arg(long, short = 'n', default_value = "linkerd")]
    pub namespace: String,

    /// A Link whose last successful sync is older than this is stale.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,

    /// Bound on each request to an API server.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: CheckOutput,
}

/// Output of `meshlink check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    /// A table, then one line per problem.
    Table,
    /// One JSON object: `namespace`, `ok`, and every check.
    Json,
}

/// Runs the checks and prints the report; Ok(false) when something is wrong.
pub async fn run(args: CheckArgs) -> Result<bool> {
    let report = report(&args).await?;
    match args.output {
        CheckOutput::Table => print!("{}", report.to_table()),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.ok)
}

/// What `meshlink check` found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Namespace of the Links.
    pub namespace: String,
    /// True when no check found a problem.
    pub ok: bool,
    /// Every check, in order: the local cluster first, then each Link's.
    pub checks: Vec<CheckRow>,
}

/// One verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    /// The Link's name, or `-` for the local cluster.
    pub link: String,
    /// What was checked (`local API`, `link`, `credentials`, `target API`, `last sync`,
    /// `gateway alive`, `mirror endpoints`, `conflicts`).
    pub check: &'static str,
    /// `ok`, `problem`, or `skipped` (does not apply, or an earlier check failed).
    pub status: Status,
    /// What was found; for a problem, what is wrong.
    pub detail: String,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Problem,
    Skipped,
}

impl CheckRow {
    fn new(link: &str, check: &'static str, status: Status, detail: impl Into<String>) -> Self {
        // One line per row: parser errors may add lines pointing at the input.
        let detail = detail.into();
        let detail = detail
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        Self {
            link: link.to_string(),
            check,
            status,
            detail: detail.to_string(),
        }
    }
}

impl Report {
    fn new(namespace: &str, checks: Vec<CheckRow>) -> Self {
        Self {
            namespace: namespace.to_string(),
            ok: checks.iter().all(|c| c.status != Status::Problem),
            checks,
        }
    }

    /// The problems, one line each.
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Problem)
            .map(|c| match c.link.as_str() {
                "-" => format!("{}: {}", c.check, c.detail),
                link => format!("link {link}: {}: {}", c.check, c.detail),
            })
            .collect()
    }

    /// The table for people, then one line per problem.
    pub fn to_table(&self) -> String {
        let header = ("LINK", "CHECK", "STATUS", "DETAIL");
        let status = |s: Status| match s {
            Status::Ok => "ok",
            Status::Problem => "PROBLEM",
            Status::Skipped => "-",
        };
        let w_link = self
            .checks
            .iter()
            .map(|c| c.link.len())
            .chain([header.0.len()])
            .max()
            .unwrap_or(0);
        let w_check = self
            .checks
            .iter()
            .map(|c| c.check.len())
            .chain([header.1.len()])
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "{:w_link$}  {:w_check$}  {:7}  {}\n",
            header.0, header.1, header.2, header.3
        );
        for c in &self.checks {
            out += &format!(
                "{:w_link$}  {:w_check$}  {:7}  {}\n",
                c.link,
                c.check,
                status(c.status),
                c.detail
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            out += "\nall checks passed\n";
        } else {
            let s = if problems.len() == 1 { "" } else { "s" };
            out += &format!("\n{} problem{s}:\n", problems.len());
            for p in problems {
                out += &format!("  ✗ {p}\n");
            }
        }
        out
    }
}

// === gathering ===

/// Lists the Links and gathers, for each, what its checks judge.
pub async fn report(args: &CheckArgs) -> Result<Report> {
    let local = super::local_client(args.kubeconfig.as_deref(), "").await?;
    let ar = ApiResource::erase::<Link>(&());
    let links: Api<DynamicObject> = Api::namespaced_with(local.clone(), &args.namespace, &ar);
    let listed = tokio::time::timeout(args.timeout, links.list(&ListParams::default())).await;
    let items = match listed {
        Ok(Ok(list)) => list.items,
        Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {
            let row = CheckRow::new(
                "-",
                "local API",
                Status::Problem,
                "the Link CRD (links.multicluster.linkerd.io) is not installed",
            );
            return Ok(Report::new(&args.namespace, vec![row]));
        }
        Ok(Err(e)) => {
            let row = CheckRow::new(
                "-",
                "local API",
                Status::Problem,
                format!("cannot list Links in {}: {e}", args.namespace),
            );
            return Ok(Report::new(&args.namespace, vec![row]));
        }
        Err(_) => {
            let row = CheckRow::new(
                "-",
                "local API",
                Status::Problem,
                format!("no answer within {:?}", args.timeout),
            );
            return Ok(Report::new(&args.namespace, vec![row]));
        }
    };
    let mut rows = vec![CheckRow::new(
        "-",
        "local API",
        Status::Ok,
        format!("{} Link(s) in namespace {}", items.len(), args.namespace),
    )];
    let gathered = futures::future::join_all(
        items
            .into_iter()
            .map(|obj| gather(&local, &args.namespace, args.timeout, obj)),
    )
    .await;
    let now = Timestamp::now();
    for facts in gathered {
        rows.extend(judge(&facts, now, args.stale_after));
    }
    Ok(Report::new(&args.namespace, rows))
}

/// Everything the checks of one Link judge.
#[derive(Clone, Debug)]
pub struct LinkFacts {
    /// The Link's name.
    pub name: String,
    /// Its spec, or why it does not parse.
    pub spec: Result<LinkSpec, String>,
    /// Its status, or why it does not parse (None: no status yet).
    pub status: Result<Option<LinkStatus>, String>,
    /// `namespace/name` of the credentials Secret, and what became of reading it.
    pub secret: String,
    /// The target cluster's API server address from the kubeconfig, or why there is none.
    pub credentials: Result<String, String>,
    /// Whether the target API server lists Services with those credentials.
    pub target_api: Result<(), String>,
    /// Gateway mirrors of this Link's cluster: `namespace/name` and whether any of their
    /// EndpointSlices holds a ready endpoint. Err when they could not be listed.
    pub gateway_mirrors: Result<BTreeMap<String, bool>, String>,
}

async fn gather(
    local: &Client,
    namespace: &str,
    timeout: Duration,
    obj: DynamicObject,
) -> LinkFacts {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .map(serde_json::from_value::<LinkSpec>)
        .unwrap_or_else(|| Ok(LinkSpec::default()))
        .map_err(|e| format!("spec does not parse: {e}"));
    let status = match obj.data.get("status") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value::<LinkStatus>(v.clone())
            .map(Some)
            .map_err(|e| format!("status does not parse: {e}")),
    };
    let mut facts = LinkFacts {
        name,
        spec: Ok(LinkSpec::default()),
        status,
        secret: String::new(),
        credentials: Err("not checked".into()),
        target_api: Err("not checked".into()),
        gateway_mirrors: Err("not checked".into()),
    };
    let Ok(link) = &spec else {
        facts.spec = spec;
        return facts;
    };
    let secret_name = link.cluster_credentials_secret.clone().unwrap_or_default();
    facts.secret = format!("{namespace}/{secret_name}");
    if !secret_name.is_empty() {
        match client_from_secret(local, namespace, &secret_name, timeout).await {
            Ok((client, server)) => {
                facts.credentials = Ok(server);
                facts.target_api = list_one_service(&client, timeout).await;
            }
            Err(e) => facts.credentials = Err(e),
        }
    }
    if let Some(cluster) = link
        .target_cluster_name
        .as_deref()
        .filter(|c| !c.is_empty())
    {
        facts.gateway_mirrors = gateway_mirrors(local, cluster, timeout).await;
    }
    facts.spec = spec;
    facts
}

async fn list_one_service(client: &Client, timeout: Duration) -> Result<(), String> {
    let services: Api<Service> = Api::all(client.clone());
    match tokio::time::timeout(
        timeout,
        services.list_metadata(&ListParams::default().limit(1)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(s))) => Err(format!(
            "the target API server refuses to list Services with these credentials: {} ({})",
            s.message, s.code
        )),
        Ok(Err(e)) => Err(format!("the target API server cannot be reached: {e}")),
        Err(_) => Err(format!(
            "the target API server did not answer within {timeout:?}"
        )),
    }
}

/// Gateway-mode mirrors of `cluster` in the local cluster, and whether each has a ready
/// endpoint. Remote-discovery mirrors have no endpoints by design and are left out.
async fn gateway_mirrors(
    local: &Client,
    cluster: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, bool>, String> {
    let selector = format!(
        "{}=true,{}={cluster},!{}",
        labels::MIRRORED_SERVICE,
        labels::MIRROR_CLUSTER_NAME,
        labels::MC_REMOTE_DISCOVERY
    );
    let services: Api<Service> = Api::all(local.clone());
    let listed = tokio::time::timeout(
        timeout,
        services.list_metadata(&ListParams::default().labels(&selector)),
    )
    .await
    .map_err(|_| format!("listing mirror Services timed out after {timeout:?}"))?
    .map_err(|e| format!("cannot list mirror Services: {e}"))?;
    let mut mirrors = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for svc in listed.items {
        let (Some(ns), Some(name)) = (svc.metadata.namespace, svc.metadata.name) else {
            continue;
        };
        namespaces.insert(ns.clone());
        mirrors.insert(format!("{ns}/{name}"), false);
    }
    for ns in namespaces {
        let slices: Api<EndpointSlice> = Api::namespaced(local.clone(), &ns);
        let listed = tokio::time::timeout(
            timeout,
            slices.list(&ListParams::default().labels(labels::SLICE_SERVICE_NAME)),
        )
        .await
        .map_err(|_| format!("listing EndpointSlices in {ns} timed out after {timeout:?}"))?
        .map_err(|e| format!("cannot list EndpointSlices in {ns}: {e}"))?;
        for slice in listed.items {
            let Some(service) = labels::slice_service(&slice) else {
                continue;
            };
            let ready = slice.endpoints.iter().flatten().any(|e| {
                !e.addresses.is_empty()
                    && e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
            });
            if let Some(has) = mirrors.get_mut(&format!("{ns}/{service}")) {
                *has |= ready;
            }
        }
    }
    Ok(mirrors)
}

// === judging ===

/// How many names a row lists before "and N more".
const LIST_AT_MOST: usize = 10;

/// The verdicts on one Link, from what was gathered.
pub fn judge(facts: &LinkFacts, now: Timestamp, stale_after: Duration) -> Vec<CheckRow> {
    let link = facts.name.as_str();
    let row = |check, status, detail: String| CheckRow::new(link, check, status, detail);
    let spec = match &facts.spec {
        Ok(spec) => spec,
        Err(e) => return vec![row("link", Status::Problem, e.clone())],
    };
    let mut rows = vec![judge_spec(link, spec)];

    rows.push(match &facts.credentials {
        _ if spec
            .cluster_credentials_secret
            .as_deref()
            .unwrap_or("")
            .is_empty() =>
        {
            row(
                "credentials",
                Status::Problem,
                "spec.clusterCredentialsSecret is empty".into(),
            )
        }
        Ok(server) => row(
            "credentials",
            Status::Ok,
            format!("Secret {} holds a kubeconfig for {server}", facts.secret),
        ),
        Err(e) => row("credentials", Status::Problem, e.clone()),
    });
    rows.push(match (&facts.credentials, &facts.target_api) {
        (Err(_), _) => row(
            "target API",
            Status::Skipped,
            "no usable credentials".into(),
        ),
        (Ok(_), Ok(())) => row(
            "target API",
            Status::Ok,
            "lists Services with the Link's credentials".into(),
        ),
        (Ok(_), Err(e)) => row("target API", Status::Problem, e.clone()),
    });

    let status = match &facts.status {
        Ok(Some(status)) => status,
        Ok(None) => {
            rows.push(row(
                "last sync",
                Status::Problem,
                "the Link has no status: no `meshlink mirror` has synced it".into(),
            ));
            rows.extend(judge_mirrors(link, spec, facts, None));
            return rows;
        }
        Err(e) => {
            rows.push(row("last sync", Status::Problem, e.clone()));
            return rows;
        }
    };
    rows.push(judge_sync(link, status, now, stale_after));
    rows.extend(judge_mirrors(link, spec, facts, Some(status)));
    rows
}

fn judge_spec(link: &str, spec: &LinkSpec) -> CheckRow {
    let row = |status, detail: String| CheckRow::new(link, "link", status, detail);
    let Some(cluster) = spec
        .target_cluster_name
        .as_deref()
        .filter(|c| !c.is_empty())
    else {
        return row(Status::Problem, "spec.targetClusterName is empty".into());
    };
    let mut modes = vec![];
    if spec.selector.is_some() {
        modes.push("gateway");
        if let Err(e) = ProbeSpec::from_link(spec) {
            return row(Status::Problem, e.to_string());
        }
    }
    if spec.remote_discovery_selector.is_some() {
        modes.push("remote-discovery");
    }
    if spec.federated_service_selector.is_some() {
        modes.push("federated");
    }
    let modes = if modes.is_empty() {
        "no selector: mirrors nothing".to_string()
    } else {
        modes.join(", ")
    };
    row(Status::Ok, format!("target cluster {cluster}; {modes}"))
}

fn condition<'a>(status: &'a LinkStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn describe(c: &Condition) -> String {
    let mut out = format!("{} {}", c.type_, c.status);
    if !c.reason.is_empty() {
        out += &format!(" ({})", c.reason);
    }
    if !c.message.is_empty() {
        out += &format!(": {}", c.message);
    }
    out
}

fn judge_sync(link: &str, status: &LinkStatus, now: Timestamp, stale_after: Duration) -> CheckRow {
    let row = |status, detail: String| CheckRow::new(link, "last sync", status, detail);
    let synced = condition(status, TARGET_SYNCED);
    let failing = synced.filter(|c| c.status != "True").map(describe);
    let Some(at) = status.last_sync_time.as_ref().map(|t| t.0) else {
        let why = failing.unwrap_or_else(|| "no status.lastSyncTime".into());
        return row(Status::Problem, format!("never synced: {why}"));
    };
    let age = Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO);
    let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
    let stale = age > stale_after;
    let detail = format!("{at} ({age_text} ago)");
    match (stale, failing) {
        (false, None) => {
            let m = &status.mirrored_services;
            row(
                Status::Ok,
                format!(
                    "{detail}; mirrors: {} gateway, {} remote-discovery, {} federated, {} headless endpoints",
                    m.gateway, m.remote_discovery, m.federated, m.headless_endpoints
                ),
            )
        }
        (true, None) => row(
            Status::Problem,
            format!(
                "{detail}, stale after {}",
                humantime::format_duration(stale_after)
            ),
        ),
        (_, Some(why)) => row(Status::Problem, format!("{detail}; {why}")),
    }
}

fn judge_mirrors(
    link: &str,
    spec: &LinkSpec,
    facts: &LinkFacts,
    status: Option<&LinkStatus>,
) -> Vec<CheckRow> {
    let row = |check, status, detail: String| CheckRow::new(link, check, status, detail);
    let mut rows = vec![];
    let gateway_mode = spec.selector.is_some();
    rows.push(
        match (gateway_mode, status.map(|s| condition(s, GATEWAY_ALIVE))) {
            (false, _) => row(
                "gateway alive",
                Status::Skipped,
                "no gateway mode (no spec.selector)".into(),
            ),
            (true, None) => row("gateway alive", Status::Skipped, "no status yet".into()),
            (true, Some(None)) => row(
                "gateway alive",
                Status::Problem,
                format!("the status has no {GATEWAY_ALIVE} condition: the gateway is not probed"),
            ),
            (true, Some(Some(c))) if c.status == "True" => {
                row("gateway alive", Status::Ok, describe(c))
            }
            (true, Some(Some(c))) => row("gateway alive", Status::Problem, describe(c)),
        },
    );

    rows.push(match &facts.gateway_mirrors {
        Err(e) => row("mirror endpoints", Status::Problem, e.clone()),
        Ok(mirrors) => {
            let empty: Vec<&str> = mirrors
                .iter()
                .filter(|(_, ready)| !**ready)
                .map(|(name, _)| name.as_str())
                .collect();
            if mirrors.is_empty() {
                row("mirror endpoints", Status::Ok, "no gateway mirrors".into())
            } else if empty.is_empty() {
                row(
                    "mirror endpoints",
                    Status::Ok,
                    format!(
                        "{} gateway mirror(s), each with a ready endpoint",
                        mirrors.len()
                    ),
                )
            } else {
                let mut names = empty
                    .iter()
                    .take(LIST_AT_MOST)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if empty.len() > LIST_AT_MOST {
                    names += &format!(" and {} more", empty.len() - LIST_AT_MOST);
                }
                row(
                    "mirror endpoints",
                    Status::Problem,
                    format!(
                        "{} of {} gateway mirror(s) have no ready endpoint: {names}",
                        empty.len(),
                        mirrors.len()
                    ),
                )
            }
        }
    });

    let Some(status) = status else {
        return rows;
    };
    for t in &status.troubles {
        let mut detail = format!("{}/{}: {}", t.namespace, t.name, t.reason);
        if !t.message.is_empty() {
            detail += &format!(": {}", t.message);
        }
        rows.push(row("conflicts", Status::Problem, detail));
    }
    let not_ready = condition(status, MIRRORS_READY).filter(|c| c.status == "False");
    match not_ready {
        Some(c) if status.troubles.is_empty() => {
            rows.push(row("conflicts", Status::Problem, describe(c)))
        }
        _ if status.troubles.is_empty() => {
            rows.push(row("conflicts", Status::Ok, "no service in trouble".into()))
        }
        _ => {}
    }
    rows
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;
    use crate::k8s::link::MirrorTrouble;

    const NOW: &str = "2026-11-27T19:00:00Z";

    fn gateway_link() -> LinkSpec {
        LinkSpec {
            target_cluster_name: Some("west".into()),
            cluster_credentials_secret: Some("cluster-credentials-west".into()),
            selector: Some(LabelSelector::default()),
            ..LinkSpec::default()
        }
    }

    fn healthy() -> LinkFacts {
        LinkFacts {
            name: "west".into(),
            spec: Ok(gateway_link()),
            status: Ok(Some(LinkStatus {
                conditions: vec![
                    cond(TARGET_SYNCED, "True", "Synced"),
                    cond(MIRRORS_READY, "True", "Ready"),
                    cond(GATEWAY_ALIVE, "True", "Alive"),
                ],
                last_sync_time: Some(time("2026-11-27T18:59:00Z")),
                ..LinkStatus::default()
            })),
            secret: "linkerd/cluster-credentials-west".into(),
            credentials: Ok("https://west.example:6443/".into()),
            target_api: Ok(()),
            gateway_mirrors: Ok(BTreeMap::from([("shop/web-west".into(), true)])),
        }
    }

    fn time(at: &str) -> Time {
        Time(at.parse().unwrap())
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: time(NOW),
            observed_generation: None,
        }
    }

    fn verdicts(facts: &LinkFacts) -> Vec<(&'static str, Status, String)> {
        let now: Timestamp = NOW.parse().unwrap();
        judge(facts, now, Duration::from_secs(300))
            .into_iter()
            .map(|r| (r.check, r.status, r.detail))
            .collect()
    }

    fn problems(facts: &LinkFacts) -> Vec<(&'static str, String)> {
        verdicts(facts)
            .into_iter()
            .filter(|v| v.1 == Status::Problem)
            .map(|v| (v.0, v.2))
            .collect()
    }

    fn status_mut(facts: &mut LinkFacts) -> &mut LinkStatus {
        facts.status.as_mut().unwrap().as_mut().unwrap()
    }

    #[test]
    fn a_healthy_link_passes_every_check() {
        let v = verdicts(&healthy());
        let checks: Vec<_> = v.iter().map(|v| v.0).collect();
        assert_eq!(
            checks,
            [
                "link",
                "credentials",
                "target API",
                "last sync",
                "gateway alive",
                "mirror endpoints",
                "conflicts"
            ]
        );
        assert!(v.iter().all(|v| v.1 == Status::Ok), "{v:?}");
        assert!(v[3].2.contains("1m ago"), "{v:?}");
    }

    #[test]
    fn a_stale_sync_and_an_unreachable_target_are_problems() {
        let mut facts = healthy();
        status_mut(&mut facts).last_sync_time = Some(time("2026-11-27T18:50:00Z"));
        let p = problems(&facts);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "last sync");
        assert!(
            p[0].1.contains("10m ago") && p[0].1.contains("stale after 5m"),
            "{p:?}"
        );

        let mut facts = healthy();
        status_mut(&mut facts).conditions[0] = Condition {
            message: "connection refused".into(),
            ..cond(TARGET_SYNCED, "False", "TargetUnreachable")
        };
        let p = problems(&facts);
        assert!(
            p[0].1
                .contains("TargetSynced False (TargetUnreachable): connection refused"),
            "{p:?}"
        );
    }

    #[test]
    fn bad_credentials_skip_the_target_api_check() {
        let mut facts = healthy();
        facts.credentials = Err("the kubeconfig in Secret linkerd/x does not parse: oops".into());
        let v = verdicts(&facts);
        assert_eq!(v[1].1, Status::Problem);
        assert_eq!(
            v[2],
            (
                "target API",
                Status::Skipped,
                "no usable credentials".into()
            )
        );
    }

    #[test]
    fn a_dead_gateway_mirrors_without_endpoints_and_conflicts_are_problems_one_line_each() {
        let mut facts = healthy();
        facts.gateway_mirrors = Ok(BTreeMap::from([
            ("shop/web-west".into(), false),
            ("shop/api-west".into(), true),
        ]));
        let status = status_mut(&mut facts);
        status.conditions[2] = cond(GATEWAY_ALIVE, "False", "ProbeFailing");
        status.conditions[1] = cond(MIRRORS_READY, "False", "Conflict");
        for name in ["web-east", "db-east"] {
            status.troubles.push(MirrorTrouble {
                namespace: "shop".into(),
                name: name.into(),
                reason: "Conflict".into(),
                message: "not ours; left untouched".into(),
            });
        }
        let p = problems(&facts);
        assert_eq!(
            p,
            [
                (
                    "gateway alive",
                    "GatewayAlive False (ProbeFailing)".to_string()
                ),
                (
                    "mirror endpoints",
                    "1 of 2 gateway mirror(s) have no ready endpoint: shop/web-west".to_string()
                ),
                (
                    "conflicts",
                    "shop/web-east: Conflict: not ours; left untouched".to_string()
                ),
                (
                    "conflicts",
                    "shop/db-east: Conflict: not ours; left untouched".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_link_never_synced_or_with_a_bad_probe_spec_is_a_problem() {
        let mut facts = healthy();
        facts.status = Ok(None);
        let p = problems(&facts);
        assert_eq!(p[0].0, "last sync");
        assert!(p[0].1.contains("no status"), "{p:?}");

        let mut facts = healthy();
        let mut spec = gateway_link();
        spec.probe_spec = Some(crate::k8s::link::ProbeSpec {
            period: Some("often".into()),
            ..Default::default()
        });
        facts.spec = Ok(spec);
        let p = problems(&facts);
        assert_eq!(p[0].0, "link");
        assert!(p[0].1.starts_with("probeSpec.period: \"often\""), "{p:?}");
    }

    #[test]
    fn the_table_ends_with_one_line_per_problem() {
        let mut facts = healthy();
        status_mut(&mut facts).conditions[2] = cond(GATEWAY_ALIVE, "False", "ProbeFailing");
        let now: Timestamp = NOW.parse().unwrap();
        let report = Report::new("linkerd", judge(&facts, now, Duration::from_secs(300)));
        assert!(!report.ok);
        let table = report.to_table();
        assert!(table.starts_with("LINK  CHECK"), "{table}");
        assert!(
            table.ends_with(
                "\n1 problem:\n  ✗ link west: gateway alive: GatewayAlive False (ProbeFailing)\n"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][4]["status"], "problem");
    }
}
