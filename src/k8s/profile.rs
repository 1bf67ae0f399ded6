//! Linkerd's `ServiceProfile` (`serviceprofiles.linkerd.io`, v1alpha2), trimmed to what
//! `GetProfile` needs. Conditions nest, so their nested fields are schemaless in the CRD
//! (Kubernetes schemas cannot refer to themselves); the sources validate them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a service's clients route, retry, time out and split its traffic.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "linkerd.io",
    version = "v1alpha2",
    kind = "ServiceProfile",
    plural = "serviceprofiles",
    shortname = "sp",
    derive = "PartialEq",
    namespaced,
    doc = "Per-route behaviour and traffic split of a service, named by its FQDN."
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProfileSpec {
    /// Routes, matched in order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// How many retries clients may add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Destinations that receive the service's traffic, by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_overrides: Vec<WeightedDstSpec>,
    /// Ports (as keys) whose traffic is opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<BTreeMap<String, bool>>,
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The route's name (its metric label).
    pub name: String,
    /// Which requests the route matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<RequestMatchSpec>,
    /// How responses are classified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_classes: Vec<ResponseClassSpec>,
    /// Whether failed requests may be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_retryable: Option<bool>,
    /// A Go duration (`250ms`, `1m30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A request condition; several keys mean all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatchSpec {
    /// Every condition matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_list")]
    pub all: Option<Vec<RequestMatchSpec>>,
    /// At least one condition matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_list")]
    pub any: Option<Vec<RequestMatchSpec>>,
    /// The condition does not match (an object, or a list whose conditions all hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_any")]
    pub not: Option<OneOrMany<RequestMatchSpec>>,
    /// A regular expression the whole path matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// An HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A response class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseClassSpec {
    /// Which responses the class covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ResponseMatchSpec>,
    /// Whether they count as failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_failure: Option<bool>,
}

/// A response condition; several keys mean all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMatchSpec {
    /// Every condition matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_list")]
    pub all: Option<Vec<ResponseMatchSpec>>,
    /// At least one condition matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_list")]
    pub any: Option<Vec<ResponseMatchSpec>>,
    /// The condition does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_any")]
    pub not: Option<OneOrMany<ResponseMatchSpec>>,
    /// A range of status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRangeSpec>,
}

/// Status codes `min..=max`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusRangeSpec {
    /// Lowest code (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Highest code (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// The retry budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Retries as a share of requests (0.2 is 20%).
    pub retry_ratio: f32,
    /// Retries allowed per second regardless of the ratio.
    pub min_retries_per_second: u32,
    /// A Go duration: the window the ratio is computed over.
    pub ttl: String,
}

/// One destination of the split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WeightedDstSpec {
    /// `host[:port]`.
    pub authority: String,
    /// A Kubernetes quantity (`1`, `500m`).
    pub weight: IntOrString,
}

/// A field written either as one object or as a list of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(Box<T>),
    Many(Vec<T>),
}

/// A list of nested conditions, left unchecked by the API server.
fn nested_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// A nested condition (an object or a list), left unchecked by the API server.
fn nested_any(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// The CRD as YAML, as committed under `deploy/crds/serviceprofile.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = super::link::to_yaml(&ServiceProfile::crd()).expect("a CRD serializes to YAML");
    format!("# Generated by `meshlink crds` from src/k8s/profile.rs; do not edit.\n{body}")
}
