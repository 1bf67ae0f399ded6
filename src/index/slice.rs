//! EndpointSlices as the index keeps them.

use std::{net::IpAddr, sync::Arc};

use super::{PodRef, intern::Interner, service::GatewayInfo};
use crate::{
    k8s::{EndpointSlice, labels},
    model::ServiceRef,
};

/// A ready-or-not endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SliceEndpoint {
    pub addrs: Box<[IpAddr]>,
    pub ready: bool,
    pub hostname: Option<Arc<str>>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub hint_zones: Option<Arc<[Arc<str>]>>,
    pub pod: Option<PodRef>,
}

/// Everything the index keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SliceState {
    /// Slice ports: the service port name they belong to, and the number.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
    pub gateway: Option<GatewayInfo>,
}

pub(super) fn slice_id(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        slice.metadata.name.clone()?,
    ))
}

impl SliceState {
    /// Reads a slice; `None` when it names no service or holds FQDN addresses.
    pub fn from_k8s(
        slice: &EndpointSlice,
        interner: &mut Interner,
    ) -> Option<(ServiceRef, String, Self)> {
        let (namespace, name) = slice_id(slice)?;
        let service = labels::slice_service(slice)?.to_string();
        if slice.address_type == "FQDN" {
            return None;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p > 0)?;
                Some((p.name.clone().filter(|n| !n.is_empty()), port))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .map(|ep| {
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(super::pod::pod_key(
                            r.namespace.as_deref().unwrap_or(&namespace),
                            r.name.as_deref()?,
                        ))
                    });
                SliceEndpoint {
                    addrs: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    // A missing condition means ready, as the API documents.
                    ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                    hostname: ep.hostname.as_deref().map(Arc::from),
                    node_name: ep.node_name.as_deref().map(|n| interner.str(n)),
                    zone: ep.zone.as_deref().map(|z| interner.str(z)),
                    hint_zones: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|zones| zones.iter().map(|z| interner.str(&z.name)).collect()),
                    pod,
                }
            })
            .collect();
        let gateway = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(super::service::gateway_info);
        Some((
            ServiceRef::new(namespace, service.clone()),
            name,
            Self {
                ports,
                endpoints,
                gateway,
            },
        ))
    }

    /// The pods this slice's endpoints point at, once per endpoint.
    pub fn pod_refs(&self) -> Vec<PodRef> {
        self.endpoints
            .iter()
            .filter_map(|e| e.pod.clone())
            .collect()
    }
}
