//! The committed CRD YAML is what the code generates.

#[test]
fn deploy_crds_match_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/link.yaml");
    let committed = std::fs::read_to_string(path).expect("deploy/crds/link.yaml");
    assert!(
        committed == meshlink::k8s::link::crd_yaml(),
        "deploy/crds/link.yaml is out of date: run `cargo run -- crds > deploy/crds/link.yaml`"
    );
}
