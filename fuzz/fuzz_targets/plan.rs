//! The manifests of a commit (YAML or JSON, multi-document, `List` kinds), planned as the
//! operator plans a revision. The input is split into files as `tether_fuzz::files` says.
//!
//! Checks: nothing panics; a plan labels every object with its owner, gives every namespaced
//! object a namespace and no cluster-scoped one any, orders CRDs then Namespaces then the rest,
//! holds no object twice, serialises for server-side apply, and prunes nothing against itself.
#![no_main]

use std::collections::HashSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tether_operator::crd::{LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE};
use tether_operator::plan::{
    ContentLimits, ManifestFilter, PlanInput, Scope, plan, prune_candidates,
};

static FILTER: LazyLock<Option<ManifestFilter>> =
    LazyLock::new(|| ManifestFilter::new("deploy", &["*.skip.yaml".to_owned()]).ok());

/// Discovery as a small cluster answers it; groups ending in `.invalid` are served by nobody.
fn discovery(group: &str, _version: &str, kind: &str) -> Option<Scope> {
    match (group, kind) {
        ("", "Namespace")
        | ("apiextensions.k8s.io", "CustomResourceDefinition")
        | ("rbac.authorization.k8s.io", "ClusterRole") => Some(Scope::Cluster),
        (g, _) if g.ends_with(".invalid") => None,
        _ => Some(Scope::Namespaced),
    }
}

fn rank(o: &tether_operator::plan::PlannedObject) -> u8 {
    if o.is_crd() {
        0
    } else if o.is_namespace() {
        1
    } else {
        2
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(filter) = FILTER.as_ref() else {
        return;
    };
    let files = tether_fuzz::files(data);
    let input = PlanInput {
        owner_name: "app",
        owner_namespace: "tenant",
        filter: Some(filter),
        target_namespace: None,
        max_objects: ContentLimits::DEFAULT.max_objects,
    };
    let Ok(planned) = plan(&files, &input, discovery) else {
        return;
    };
    let mut seen = HashSet::new();
    for o in &planned.objects {
        let labels = o.object.metadata.labels.as_ref();
        assert_eq!(
            labels
                .and_then(|l| l.get(LABEL_OWNER_NAME))
                .map(String::as_str),
            Some("app")
        );
        assert_eq!(
            labels
                .and_then(|l| l.get(LABEL_OWNER_NAMESPACE))
                .map(String::as_str),
            Some("tenant")
        );
        match o.scope {
            Scope::Namespaced => assert!(o.id.namespace.as_ref().is_some_and(|n| !n.is_empty())),
            Scope::Cluster => assert_eq!(o.id.namespace, None),
        }
        assert_eq!(o.id.namespace, o.object.metadata.namespace);
        assert!(!o.id.name.is_empty() && !o.id.kind.is_empty() && !o.id.version.is_empty());
        assert!(
            seen.insert((&o.id.group, &o.id.kind, &o.id.namespace, &o.id.name)),
            "{} planned twice",
            o.id
        );
        assert!(
            serde_json::to_vec(&o.object).is_ok(),
            "{} does not serialise",
            o.id
        );
    }
    assert!(
        planned
            .objects
            .windows(2)
            .all(|w| rank(&w[0]) <= rank(&w[1])),
        "out of order"
    );
    let inventory = planned.inventory();
    assert!(prune_candidates(&inventory, &inventory).is_empty());
    assert_eq!(prune_candidates(&inventory, &[]).len(), inventory.len());
});
