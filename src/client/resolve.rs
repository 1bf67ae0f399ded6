//! `meshlink resolve`: what a proxy would see for an authority, update by update.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{
    proto::{
        destination::{
            self as pb, destination_client::DestinationClient, protocol_hint, tls_identity, update,
        },
        net,
    },
    runtime::cli::{OutputFormat, ResolveArgs},
};

/// Runs the client until the stream ends, `--count` updates, or an error.
pub async fn run(args: ResolveArgs) -> Result<()> {
    let endpoint = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let mut client = DestinationClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("cannot connect to the destination service at {endpoint}"))?;
    let request = pb::GetDestination {
        scheme: "k8s".into(),
        path: args.authority.clone(),
        context_token: args.context_token.clone(),
    };
    let limit = args.count.unwrap_or(usize::MAX);
    if args.profile {
        let mut stream = client
            .get_profile(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut n = 0;
        while n < limit {
            let Some(profile) = stream.message().await.map_err(status_error)? else {
                break;
            };
            n += 1;
            print_profile(&args, n, &profile)?;
        }
        return Ok(());
    }
    let mut stream = client
        .get(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut view = View::default();
    let mut n = 0;
    while n < limit {
        let Some(msg) = stream.message().await.map_err(status_error)? else {
            eprintln!("the server ended the stream");
            break;
        };
        n += 1;
        let change = view.apply(msg);
        match args.output {
            OutputFormat::Json => println!("{}", view.to_json(n, &change)),
            OutputFormat::Table => view.print_table(&args.authority, n, &change)?,
        }
    }
    Ok(())
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

/// The set a proxy holds after applying every update so far.
#[derive(Default)]
struct View {
    exists: Option<bool>,
    set_labels: BTreeMap<String, String>,
    endpoints: BTreeMap<SocketAddr, pb::WeightedAddr>,
}

/// What one update did.
struct Change {
    kind: &'static str,
    added: Vec<SocketAddr>,
    removed: Vec<SocketAddr>,
}

impl View {
    fn apply(&mut self, msg: pb::Update) -> Change {
        match msg.update {
            Some(update::Update::Add(set)) => {
                self.exists = Some(true);
                self.set_labels = set.metric_labels.into_iter().collect();
                let mut added = Vec::new();
                for a in set.addrs {
                    if let Some(addr) = a.addr.as_ref().and_then(to_socket_addr) {
                        added.push(addr);
                        self.endpoints.insert(addr, a);
                    }
                }
                Change {
                    kind: "add",
                    added,
                    removed: vec![],
                }
            }
            Some(update::Update::Remove(set)) => {
                let removed: Vec<SocketAddr> =
                    set.addrs.iter().filter_map(to_socket_addr).collect();
                for a in &removed {
                    self.endpoints.remove(a);
                }
                Change {
                    kind: "remove",
                    added: vec![],
                    removed,
                }
            }
            Some(update::Update::NoEndpoints(ne)) => {
                self.exists = Some(ne.exists);
                let removed = self.endpoints.keys().copied().collect();
                self.endpoints.clear();
                Change {
                    kind: "no_endpoints",
                    added: vec![],
                    removed,
                }
            }
            None => Change {
                kind: "empty",
                added: vec![],
                removed: vec![],
            },
        }
    }

    fn cluster_of(&self, a: &pb::WeightedAddr) -> String {
        a.metric_labels
            .get("target_cluster")
            .or_else(|| self.set_labels.get("target_cluster"))
            .cloned()
            .unwrap_or_else(|| "(local)".into())
    }

    fn to_json(&self, n: usize, change: &Change) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|(addr, a)| {
                json!({
                    "address": addr.to_string(),
                    "identity": identity(a),
                    "hint": hint(a),
                    "opaqueTransportPort": opaque_port(a),
                    "authorityOverride": a.authority_override.as_ref().map(|o| o.authority_override.clone()),
                    "zone": a.metric_labels.get("zone"),
                    "cluster": self.cluster_of(a),
                    "weight": a.weight,
                    "labels": a.metric_labels.iter().collect::<BTreeMap<_, _>>(),
                })
            })
            .collect();
        json!({
            "update": n,
            "kind": change.kind,
            "added": change.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "removed": change.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "exists": self.exists,
            "setLabels": self.set_labels,
            "endpoints": endpoints,
        })
    }

    fn print_table(&self, authority: &str, n: usize, change: &Change) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if out.is_terminal() {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        let what = match change.kind {
            "add" => format!("+{}", change.added.len()),
            "remove" => format!("-{}", change.removed.len()),
            "no_endpoints" if self.exists == Some(false) => "service does not exist".into(),
            "no_endpoints" => "no ready endpoints".into(),
            other => other.into(),
        };
        writeln!(
            out,
            "{authority}: {} endpoints (update {n}: {what})",
            self.endpoints.len()
        )?;
        let mut rows = vec![[
            "ADDRESS".to_string(),
            "IDENTITY".into(),
            "HINT".into(),
            "ZONE".into(),
            "CLUSTER".into(),
            "LABELS".into(),
        ]];
        for (addr, a) in &self.endpoints {
            let labels: Vec<String> = a
                .metric_labels
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "zone" | "target_cluster"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut hint = hint(a).unwrap_or("-").to_string();
            if let Some(p) = opaque_port(a) {
                hint.push_str(&format!(" (via :{p})"));
            }
            if let Some(o) = &a.authority_override {
                hint.push_str(&format!(" -> {}", o.authority_override));
            }
            rows.push([
                addr.to_string(),
                identity(a).unwrap_or_else(|| "-".into()),
                hint,
                a.metric_labels
                    .get("zone")
                    .filter(|z| !z.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                self.cluster_of(a),
                labels.join(","),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }
}

fn print_profile(args: &ResolveArgs, n: usize, p: &pb::DestinationProfile) -> Result<()> {
    let value = profile_json(n, p);
    match args.output {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Table => print_profile_table(&args.authority, n, p)?,
    }
    Ok(())
}

fn resource_ref(m: Option<&crate::proto::meta::Metadata>) -> Option<String> {
    match &m?.kind {
        Some(crate::proto::meta::metadata::Kind::Resource(r)) if r.port != 0 => Some(format!(
            "{}/{} {}/{}:{}",
            r.group, r.kind, r.namespace, r.name, r.port
        )),
        Some(crate::proto::meta::metadata::Kind::Resource(r)) => {
            Some(format!("{}/{} {}/{}", r.group, r.kind, r.namespace, r.name))
        }
        Some(crate::proto::meta::metadata::Kind::Default(d)) => Some(d.clone()),
        None => None,
    }
}

/// A duration as seconds, e.g. `0.25s`.
fn seconds(d: Option<&prost_types::Duration>) -> Option<String> {
    d.map(|d| format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9))
}

/// Each destination's share of the total weight, in percent.
fn shares(p: &pb::DestinationProfile) -> Vec<f64> {
    let total: u64 = p.dst_overrides.iter().map(|d| u64::from(d.weight)).sum();
    p.dst_overrides
        .iter()
        .map(|d| match total {
            0 => 0.0,
            t => 100.0 * f64::from(d.weight) / t as f64,
        })
        .collect()
}

fn profile_json(n: usize, p: &pb::DestinationProfile) -> serde_json::Value {
    let endpoint = p.endpoint.as_ref().map(|a| {
        json!({
            "address": a.addr.as_ref().and_then(to_socket_addr).map(|s| s.to_string()),
            "identity": identity(a),
            "hint": hint(a),
            "labels": a.metric_labels.iter().collect::<BTreeMap<_, _>>(),
        })
    });
    let budget = p.retry_budget.as_ref().map(|b| {
        json!({
            "retryRatio": b.retry_ratio,
            "minRetriesPerSecond": b.min_retries_per_second,
            "ttlSeconds": b.ttl.as_ref().map(|t| t.seconds),
        })
    });
    let routes: Vec<serde_json::Value> = p
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.metrics_labels.get("route"),
                "condition": r.condition.as_ref().map(request_text),
                "isRetryable": r.is_retryable,
                "timeout": seconds(r.timeout.as_ref()),
                "responseClasses": r.response_classes.iter().map(|c| json!({
                    "condition": c.condition.as_ref().map(response_text),
                    "isFailure": c.is_failure,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let split: Vec<serde_json::Value> = p
        .dst_overrides
        .iter()
        .zip(shares(p))
        .map(|(d, share)| json!({"authority": d.authority, "weight": d.weight, "sharePercent": share}))
        .collect();
    json!({
        "update": n,
        "fullyQualifiedName": p.fully_qualified_name,
        "opaqueProtocol": p.opaque_protocol,
        "retryBudget": budget,
        "endpoint": endpoint,
        "parentRef": resource_ref(p.parent_ref.as_ref()),
        "profileRef": resource_ref(p.profile_ref.as_ref()),
        "routes": routes,
        "dstOverrides": split,
    })
}

fn print_profile_table(authority: &str, n: usize, p: &pb::DestinationProfile) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        write!(out, "\x1b[2J\x1b[H")?;
    }
    writeln!(out, "{authority}: profile (update {n})")?;
    let line = |k: &str, v: String| format!("  {k:<14}{v}");
    let mut head = vec![
        line("name", or_dash(&p.fully_qualified_name)),
        line("opaque", p.opaque_protocol.to_string()),
        line(
            "parent",
            resource_ref(p.parent_ref.as_ref()).unwrap_or_else(|| "-".into()),
        ),
        line(
            "profile",
            resource_ref(p.profile_ref.as_ref()).unwrap_or_else(|| "-".into()),
        ),
    ];
    if let Some(b) = &p.retry_budget {
        head.push(line(
            "retry budget",
            format!(
                "{}% / {} per s / {}",
                b.retry_ratio * 100.0,
                b.min_retries_per_second,
                seconds(b.ttl.as_ref()).unwrap_or_else(|| "-".into())
            ),
        ));
    }
    if let Some(e) = &p.endpoint {
        let addr = e.addr.as_ref().and_then(to_socket_addr);
        head.push(line(
            "endpoint",
            format!(
                "{} {}",
                addr.map_or("-".into(), |a| a.to_string()),
                identity(e).unwrap_or_default()
            ),
        ));
    }
    for l in head {
        writeln!(out, "{l}")?;
    }
    if !p.routes.is_empty() {
        writeln!(out)?;
        let mut rows = vec![[
            "ROUTE".to_string(),
            "CONDITION".into(),
            "RETRY".into(),
            "TIMEOUT".into(),
            "FAILURES".into(),
        ]];
        for r in &p.routes {
            let failures: Vec<String> = r
                .response_classes
                .iter()
                .filter(|c| c.is_failure)
                .filter_map(|c| c.condition.as_ref().map(response_text))
                .collect();
            rows.push([
                r.metrics_labels.get("route").cloned().unwrap_or_default(),
                r.condition.as_ref().map_or("-".into(), request_text),
                if r.is_retryable { "yes" } else { "no" }.into(),
                seconds(r.timeout.as_ref()).unwrap_or_else(|| "-".into()),
                or_dash(&failures.join(" | ")),
            ]);
        }
        write_rows(&mut out, &rows)?;
    }
    if !p.dst_overrides.is_empty() {
        writeln!(out)?;
        let mut rows = vec![["SPLIT".to_string(), "WEIGHT".into(), "SHARE".into()]];
        for (d, share) in p.dst_overrides.iter().zip(shares(p)) {
            rows.push([
                d.authority.clone(),
                d.weight.to_string(),
                format!("{share:.0}%"),
            ]);
        }
        write_rows(&mut out, &rows)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn write_rows<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> Result<()> {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// A request condition as text, e.g. `GET && path ~ /books`.
fn request_text(m: &pb::RequestMatch) -> String {
    use crate::proto::io::linkerd::proxy::http_types::http_method::{Registered, Type};
    use pb::request_match::Match;
    let join = |ms: &[pb::RequestMatch], op: &str| {
        let parts: Vec<String> = ms.iter().map(request_text).collect();
        format!("({})", parts.join(op))
    };
    match &m.r#match {
        Some(Match::All(seq)) => join(&seq.matches, " && "),
        Some(Match::Any(seq)) => join(&seq.matches, " || "),
        Some(Match::Not(inner)) => format!("!{}", request_text(inner)),
        Some(Match::Path(p)) => format!("path ~ {}", p.regex),
        Some(Match::Method(method)) => match &method.r#type {
            Some(Type::Registered(r)) => Registered::try_from(*r)
                .map_or_else(|_| format!("method {r}"), |r| r.as_str_name().to_string()),
            Some(Type::Unregistered(s)) => s.clone(),
            None => "?".into(),
        },
        None => "?".into(),
    }
}

/// A response condition as text, e.g. `status 500-599`.
fn response_text(m: &pb::ResponseMatch) -> String {
    use pb::response_match::Match;
    let join = |ms: &[pb::ResponseMatch], op: &str| {
        let parts: Vec<String> = ms.iter().map(response_text).collect();
        format!("({})", parts.join(op))
    };
    match &m.r#match {
        Some(Match::All(seq)) => join(&seq.matches, " && "),
        Some(Match::Any(seq)) => join(&seq.matches, " || "),
        Some(Match::Not(inner)) => format!("!{}", response_text(inner)),
        Some(Match::Status(r)) => match (r.min, r.max) {
            (0, 0) => "any status".into(),
            (min, 0) => format!("status >= {min}"),
            (0, max) => format!("status <= {max}"),
            (min, max) if min == max => format!("status {min}"),
            (min, max) => format!("status {min}-{max}"),
        },
        None => "?".into(),
    }
}

fn identity(a: &pb::WeightedAddr) -> Option<String> {
    match a.tls_identity.as_ref()?.strategy.as_ref()? {
        tls_identity::Strategy::DnsLikeIdentity(d) => Some(d.name.clone()),
        tls_identity::Strategy::UriLikeIdentity(u) => Some(u.uri.clone()),
    }
}

fn hint(a: &pb::WeightedAddr) -> Option<&'static str> {
    match a.protocol_hint.as_ref()?.protocol.as_ref()? {
        protocol_hint::Protocol::H2(_) => Some("h2"),
        protocol_hint::Protocol::Opaque(_) => Some("opaque"),
    }
}

fn opaque_port(a: &pb::WeightedAddr) -> Option<u32> {
    Some(
        a.protocol_hint
            .as_ref()?
            .opaque_transport
            .as_ref()?
            .inbound_port,
    )
}

/// Reads a wire address back into a socket address.
pub fn to_socket_addr(addr: &net::TcpAddress) -> Option<SocketAddr> {
    let ip = match addr.ip.as_ref()?.ip.as_ref()? {
        net::ip_address::Ip::Ipv4(v4) => IpAddr::V4(Ipv4Addr::from(*v4)),
        net::ip_address::Ip::Ipv6(v6) => IpAddr::V6(Ipv6Addr::from(
            (u128::from(v6.first) << 64) | u128::from(v6.last),
        )),
    };
    Some(SocketAddr::new(ip, u16::try_from(addr.port).ok()?))
}
