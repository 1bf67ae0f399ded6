//! Parsing of the authority (`host:port`) a proxy asks about.

use std::net::{IpAddr, SocketAddr};

use super::quote::quote_prefix;

/// What a `GetDestination.path` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// A Kubernetes service name, optionally one host of a headless service.
    Service(ServiceAuthority),
    /// An IP address and port (answered by `GetProfile` only).
    Ip(SocketAddr),
}

/// `[<hostname>.]<service>.<namespace>.svc.<cluster-domain>:<port>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAuthority {
    pub hostname: Option<String>,
    pub service: String,
    pub namespace: String,
    pub port: u16,
}

/// Why an authority was rejected; the message is shown to the caller as is, so it quotes
/// at most a short prefix of what the client sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("empty authority: expected <service>.<namespace>.svc.<cluster-domain>:<port>")]
    Empty,
    #[error("invalid port {port:?} in authority {authority:?}: must be a number from 1 to 65535")]
    InvalidPort { authority: String, port: String },
    #[error(
        "authority {authority:?} is not a service name: expected [<hostname>.]<service>.<namespace>.svc.{cluster_domain}"
    )]
    NotAServiceName {
        authority: String,
        cluster_domain: String,
    },
    #[error("authority {authority:?} has an invalid DNS label {label:?}")]
    InvalidLabel { authority: String, label: String },
}

const DEFAULT_PORT: u16 = 80;

impl Authority {
    /// Parses `path` for a cluster whose DNS domain is `cluster_domain` (e.g. `cluster.local`).
    pub fn parse(path: &str, cluster_domain: &str) -> Result<Self, AuthorityError> {
        let path = path.trim();
        if path.is_empty() {
            return Err(AuthorityError::Empty);
        }
        let (host, port) = split_host_port(path)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Authority::Ip(SocketAddr::new(ip, port)));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let not_a_service = || AuthorityError::NotAServiceName {
            authority: quote_prefix(path),
            cluster_domain: cluster_domain.to_string(),
        };
        let suffix = format!(".svc.{}", cluster_domain.trim_end_matches('.'));
        let name = host.strip_suffix(&suffix).ok_or_else(not_a_service)?;
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if !is_dns_label(label) {
                return Err(AuthorityError::InvalidLabel {
                    authority: quote_prefix(path),
                    label: quote_prefix(label),
                });
            }
        }
        let (hostname, service, namespace) = match labels.as_slice() {
            [svc, ns] => (None, *svc, *ns),
            [host, svc, ns] => (Some(host.to_string()), *svc, *ns),
            _ => return Err(not_a_service()),
        };
        Ok(Authority::Service(ServiceAuthority {
            hostname,
            service: service.to_string(),
            namespace: namespace.to_string(),
            port,
        }))
    }
}

impl ServiceAuthority {
    /// The fully qualified service name, without hostname or port.
    pub fn service_fqn(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{}", self.service, self.namespace, cluster_domain)
    }
}

fn split_host_port(path: &str) -> Result<(&str, u16), AuthorityError> {
    let invalid_port = |port: &str| AuthorityError::InvalidPort {
        authority: quote_prefix(path),
        port: quote_prefix(port),
    };
    let parse_port = |port: &str| match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(invalid_port(port)),
    };
    if let Some(rest) = path.strip_prefix('[') {
        // [v6]:port or [v6]
        let (host, after) = rest.split_once(']').ok_or_else(|| invalid_port(path))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, parse_port(port)?)),
            None if after.is_empty() => Ok((host, DEFAULT_PORT)),
            None => Err(invalid_port(after)),
        };
    }
    if path.parse::<IpAddr>().is_ok() {
        // A bare IPv6 address without brackets has colons but no port.
        return Ok((path, DEFAULT_PORT));
    }
    match path.rsplit_once(':') {
        Some((host, port)) => Ok((host, parse_port(port)?)),
        None => Ok((path, DEFAULT_PORT)),
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(path: &str) -> ServiceAuthority {
        match Authority::parse(path, "cluster.local") {
            Ok(Authority::Service(s)) => s,
            other => panic!("{path}: expected a service, got {other:?}"),
        }
    }

    #[test]
    fn service_with_port() {
        let s = svc("web.shop.svc.cluster.local:8080");
        assert_eq!(
            (s.service.as_str(), s.namespace.as_str(), s.port),
            ("web", "shop", 8080)
        );
        assert_eq!(s.hostname, None);
    }

    #[test]
    fn default_port_is_80_and_trailing_dot_is_accepted() {
        assert_eq!(svc("web.shop.svc.cluster.local.").port, 80);
    }

    #[test]
    fn hostname_of_headless_service() {
        let s = svc("pod-0.db.ns.svc.cluster.local:5432");
        assert_eq!(s.hostname.as_deref(), Some("pod-0"));
        assert_eq!(s.service, "db");
    }

    #[test]
    fn ips_are_recognised() {
        let a = Authority::parse("10.1.2.3:8080", "cluster.local").unwrap();
        assert_eq!(a, Authority::Ip("10.1.2.3:8080".parse().unwrap()));
        let a = Authority::parse("[fd00::1]:53", "cluster.local").unwrap();
        assert_eq!(a, Authority::Ip("[fd00::1]:53".parse().unwrap()));
    }

    #[test]
    fn bad_ports_are_rejected() {
        for path in [
            "web.shop.svc.cluster.local:0",
            "web.shop.svc.cluster.local:70000",
            "web.shop.svc.cluster.local:x",
        ] {
            let err = Authority::parse(path, "cluster.local").unwrap_err();
            assert!(
                matches!(err, AuthorityError::InvalidPort { .. }),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        for path in [
            "",
            "web",
            "web.shop.svc.other.domain:80",
            "a.b.c.d.svc.cluster.local:80",
            "we_b.shop.svc.cluster.local",
        ] {
            let err = Authority::parse(path, "cluster.local").unwrap_err();
            assert!(!err.to_string().is_empty(), "{path}");
        }
    }
}
