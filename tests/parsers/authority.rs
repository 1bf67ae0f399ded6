//! `GetDestination.path`: `Authority::parse` with service names, IPs and anything else.

use std::net::{IpAddr, SocketAddr};

use meshlink::model::{Authority, AuthorityError, ServiceAuthority};
use proptest::prelude::*;

const LABEL: &str = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";

fn label() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z][a-z0-9-]{0,8}[a-z0-9]",
        1 => LABEL,
    ]
    .boxed()
}

fn domain() -> impl Strategy<Value = String> {
    proptest::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
}

/// A DNS label as the parser must accept it: what a service, namespace or host may be named.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn render(s: &ServiceAuthority, cluster_domain: &str) -> String {
    let host = s
        .hostname
        .as_ref()
        .map(|h| format!("{h}."))
        .unwrap_or_default();
    format!("{host}{}:{}", s.service_fqn(cluster_domain), s.port)
}

/// Characters that make a label invalid without changing where labels or the port split.
fn bad_label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "-[a-z0-9]{0,5}",
        "[a-z0-9]{0,5}-",
        "[a-z]{64,80}",
        "[a-z0-9]{0,4}[_*/!@#$%^&()=+é~`'\"ß\u{0}\u{7f}][a-z0-9]{0,4}",
    ]
}

const TOKENS: &[&str] = &[
    "web",
    "shop",
    "pod-0",
    ".",
    "..",
    ":",
    "svc",
    ".svc.",
    "cluster.local",
    "cluster",
    "local",
    "[",
    "]",
    "::",
    "::1",
    "fd00::",
    "%eth0",
    "10.1.2.3",
    "255.255.255.255",
    "80",
    "0",
    "65535",
    "65536",
    "4294967296",
    "+",
    "-",
    "_",
    " ",
    "\t",
    "\n",
    "é",
    "xn--",
    "WEB",
    "SVC",
];

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn a_service_authority_parses_back_to_its_parts(
        hostname in proptest::option::of(label()),
        service in label(),
        namespace in label(),
        cluster_domain in domain(),
        port in proptest::option::of(1u16..),
        trailing_dot in any::<bool>(),
        upper in any::<bool>(),
        padding in "[ \t]{0,2}",
        domain_dot in any::<bool>(),
    ) {
        let mut host = format!(
            "{}{service}.{namespace}.svc.{cluster_domain}",
            hostname.as_ref().map(|h| format!("{h}.")).unwrap_or_default()
        );
        if trailing_dot {
            host.push('.');
        }
        if upper {
            host = host.to_ascii_uppercase();
        }
        let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
        let path = format!("{padding}{host}{port_part}{padding}");
        let configured = if domain_dot { format!("{cluster_domain}.") } else { cluster_domain.clone() };
        let want = ServiceAuthority { hostname, service, namespace, port: port.unwrap_or(80) };
        prop_assert_eq!(
            Authority::parse(&path, &configured),
            Ok(Authority::Service(want.clone())),
            "{}", path
        );
        prop_assert_eq!(
            want.service_fqn(&cluster_domain),
            format!("{}.{}.svc.{cluster_domain}", want.service, want.namespace)
        );
    }

    #[test]
    fn an_ip_authority_parses_to_its_address(
        ip in any::<IpAddr>(),
        port in proptest::option::of(1u16..),
        brackets in any::<bool>(),
    ) {
        let path = match (ip, port) {
            (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
            (IpAddr::V4(v4), None) => v4.to_string(),
            (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
            (IpAddr::V6(v6), None) if brackets => format!("[{v6}]"),
            (IpAddr::V6(v6), None) => v6.to_string(),
        };
        prop_assert_eq!(
            Authority::parse(&path, "cluster.local"),
            Ok(Authority::Ip(SocketAddr::new(ip, port.unwrap_or(80)))),
            "{}", path
        );
    }

    #[test]
    fn a_port_that_is_not_1_to_65535_is_rejected(
        service in label(),
        port in prop_oneof![
            Just("0".to_string()),
            Just(String::new()),
            (65536u64..).prop_map(|p| p.to_string()),
            // Not ':' (it would move the split) nor a space (it would be trimmed off the end).
            "[0-9]{0,3}[a-z_./-][0-9a-z]{0,3}",
            "[0-9]{21,40}",
        ],
    ) {
        let path = format!("{service}.ns.svc.cluster.local:{port}");
        let got = Authority::parse(&path, "cluster.local");
        prop_assert!(
            matches!(got, Err(AuthorityError::InvalidPort { .. })),
            "{} gave {:?}", path, got
        );
    }

    #[test]
    fn a_label_that_is_not_a_dns_label_is_rejected(
        labels in proptest::collection::vec(label(), 2..=3),
        bad in bad_label(),
        which in any::<proptest::sample::Index>(),
    ) {
        let mut labels = labels;
        let i = which.index(labels.len());
        labels[i] = bad;
        let path = format!("{}.svc.cluster.local:80", labels.join("."));
        let got = Authority::parse(&path, "cluster.local");
        prop_assert!(
            matches!(got, Err(AuthorityError::InvalidLabel { .. })),
            "{} gave {:?}", path, got
        );
    }

    #[test]
    fn a_name_outside_the_cluster_domain_or_with_other_label_counts_is_not_a_service(
        labels in proptest::collection::vec(label(), 1..7),
        other_domain in domain(),
        port in 1u16..,
    ) {
        let right_count = matches!(labels.len(), 2 | 3);
        let domain = if right_count { other_domain.as_str() } else { "cluster.local" };
        let path = format!("{}.svc.{domain}:{port}", labels.join("."));
        // Another domain may still end in `.svc.cluster.local` and so name a service.
        prop_assume!(!(right_count && path.ends_with(&format!(".svc.cluster.local:{port}"))));
        let got = Authority::parse(&path, "cluster.local");
        prop_assert!(
            matches!(got, Err(AuthorityError::NotAServiceName { .. })),
            "{} gave {:?}", path, got
        );
    }

    #[test]
    fn any_text_is_answered_and_what_is_accepted_is_canonical(
        path in crate::text_of(TOKENS, 24),
        cluster_domain in prop_oneof![
            Just("cluster.local".to_string()),
            Just("cluster.local.".to_string()),
            domain(),
        ],
    ) {
        match Authority::parse(&path, &cluster_domain) {
            Ok(Authority::Service(s)) => {
                for label in [&s.service, &s.namespace].into_iter().chain(s.hostname.as_ref()) {
                    prop_assert!(is_dns_label(label), "label {:?} from {:?}", label, path);
                }
                prop_assert!(s.port >= 1);
                let again = render(&s, cluster_domain.trim_end_matches('.'));
                prop_assert_eq!(
                    Authority::parse(&again, &cluster_domain),
                    Ok(Authority::Service(s)),
                    "{} rendered as {}", path, again
                );
            }
            Ok(Authority::Ip(addr)) => {
                prop_assert!(addr.port() >= 1);
                prop_assert_eq!(
                    Authority::parse(&addr.to_string(), &cluster_domain),
                    Ok(Authority::Ip(addr))
                );
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
