//! The linked cluster's world: exported Services (some headless, with hostnames) and
//! their EndpointSlices, created on west with batched concurrent writes; and what the
//! mirror should make of them on east.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use meshlink::k8s::{EndpointSlice, Service};
use serde_json::json;

/// Field manager of the benchmark's own writes.
pub const MANAGER: &str = "meshlink-bench";
/// Writes in flight while creating the world.
const BATCH: usize = 32;

/// The size of the world.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    /// Exported services in all.
    pub services: usize,
    /// How many of them are headless (with hostnames).
    pub headless: usize,
    /// Hosts of each headless service.
    pub hosts: usize,
    /// Namespaces the services are spread over.
    pub namespaces: usize,
}

/// One exported service.
#[derive(Clone, Debug)]
pub struct Exported {
    pub namespace: String,
    pub name: String,
    /// Hostnames of its endpoints (empty: not headless).
    pub hosts: Vec<String>,
}

impl WorldSpec {
    /// Every exported service; the first `headless` are headless.
    pub fn exported(&self) -> Vec<Exported> {
        (0..self.services)
            .map(|i| {
                let namespace = format!("bench-{}", i % self.namespaces.max(1));
                if i < self.headless {
                    let name = format!("hl-{i}");
                    let hosts = (0..self.hosts).map(|h| format!("{name}-{h}")).collect();
                    Exported {
                        namespace,
                        name,
                        hosts,
                    }
                } else {
                    Exported {
                        namespace,
                        name: format!("s-{i}"),
                        hosts: Vec::new(),
                    }
                }
            })
            .collect()
    }

    /// The namespaces, which both clusters need.
    pub fn namespace_names(&self) -> Vec<String> {
        (0..self.namespaces.max(1))
            .map(|i| format!("bench-{i}"))
            .collect()
    }

    /// Mirror objects the mirror should make: (Services, EndpointSlices).
    pub fn mirror_objects(&self) -> (usize, usize) {
        let headless_hosts = self.headless * self.hosts;
        (
            self.services + headless_hosts,
            self.services + headless_hosts,
        )
    }
}

fn service(e: &Exported) -> Service {
    let mut spec = json!({"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]});
    if !e.hosts.is_empty() {
        spec["clusterIP"] = json!("None");
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": e.namespace, "name": e.name,
            "labels": {"app": e.name, "mirror.linkerd.io/exported": "true", "bench-gen": "0"},
            "annotations": {"team": "bench"}},
        "spec": spec,
    }))
    .expect("a Service")
}

/// Pod addresses are pure data here: nothing dials them.
fn slice(e: &Exported, i: usize) -> EndpointSlice {
    let addr = |k: usize| format!("10.{}.{}.{}", 100 + i / 60_000, (i / 250) % 240, k + 1);
    let endpoints: Vec<_> = if e.hosts.is_empty() {
        (0..2)
            .map(|k| json!({"addresses": [addr(k)], "conditions": {"ready": true}}))
            .collect()
    } else {
        e.hosts
            .iter()
            .enumerate()
            .map(|(k, h)| json!({"addresses": [addr(k)], "hostname": h, "conditions": {"ready": true}}))
            .collect()
    };
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": e.namespace, "name": format!("{}-abcde", e.name),
            "labels": {"kubernetes.io/service-name": e.name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice")
}

/// Creates (or keeps) the namespaces in a cluster.
pub async fn namespaces(client: &Client, names: &[String]) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create namespace {name}")),
        }
    }
    Ok(())
}

/// Creates every exported Service and its EndpointSlice on west, `BATCH` writes at a
/// time; returns each Service's resourceVersion, by (namespace, name).
pub async fn create(
    west: &Client,
    exported: &[Exported],
) -> Result<BTreeMap<(String, String), String>> {
    let pp = PostParams::default();
    let versions: BTreeMap<(String, String), String> = futures::stream::iter(exported)
        .map(|e| {
            let api = Api::<Service>::namespaced(west.clone(), &e.namespace);
            let pp = &pp;
            async move {
                let created = api
                    .create(pp, &service(e))
                    .await
                    .with_context(|| format!("cannot create Service {}/{}", e.namespace, e.name))?;
                let rv = created.resource_version().unwrap_or_default();
                anyhow::Ok(((e.namespace.clone(), e.name.clone()), rv))
            }
        })
        .buffer_unordered(BATCH)
        .try_collect()
        .await?;
    futures::stream::iter(exported.iter().enumerate())
        .map(|(i, e)| {
            let api = Api::<EndpointSlice>::namespaced(west.clone(), &e.namespace);
            let pp = &pp;
            async move {
                api.create(pp, &slice(e, i)).await.with_context(|| {
                    format!("cannot create EndpointSlice of {}/{}", e.namespace, e.name)
                })?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(BATCH)
        .try_collect::<()>()
        .await?;
    Ok(versions)
}

/// Sets the label `bench-gen` of a west Service; returns its new resourceVersion.
pub async fn relabel(west: &Client, e: &Exported, generation: usize) -> Result<String> {
    let api = Api::<Service>::namespaced(west.clone(), &e.namespace);
    let patch = json!({"metadata": {"labels": {"bench-gen": generation.to_string()}}});
    let svc = api
        .patch(&e.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot relabel {}/{}", e.namespace, e.name))?;
    Ok(svc.resource_version().unwrap_or_default())
}

/// Applies `obj` through `api` with the benchmark's field manager.
pub async fn apply<K>(api: Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("cannot apply {} {}", K::kind(&()), obj.name_any()))?;
    Ok(())
}
