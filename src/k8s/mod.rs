//! Kubernetes vocabulary shared by the index, the sources and the mirror: the object
//! types we read, and every label and annotation key we interpret (named only here).

pub use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub mod client;
pub mod labels;
pub mod link;
pub mod profile;
