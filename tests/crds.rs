//! The committed CRD YAML is what the code generates.

#[test]
fn deploy_crds_match_the_code() {
    let cases = [
        ("link.yaml", meshlink::k8s::link::crd_yaml()),
        ("serviceprofile.yaml", meshlink::k8s::profile::crd_yaml()),
    ];
    for (file, generated) in cases {
        let path = format!("{}/deploy/crds/{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).expect("committed CRD");
        assert!(
            committed == generated,
            "deploy/crds/{file} is out of date: it is one of the documents `cargo run -- crds` prints"
        );
    }
}
