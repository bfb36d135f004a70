//! The committed CRD YAML must be what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/gitrepository.yaml");
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `make crds`", path.display()));
    let generated = tether_operator::crd::crd_yaml();
    assert!(
        committed == generated,
        "crds/gitrepository.yaml is out of date with operator/src/crd.rs: run `make crds`"
    );
}
