//! The plan's unit tests: parsing, validation, labels, namespaces, order and prune candidates.

use std::sync::LazyLock;

use super::*;

/// `spec.path: deploy`, nothing ignored.
static DEPLOY: LazyLock<ManifestFilter> =
    LazyLock::new(|| ManifestFilter::new("deploy", &[]).unwrap());

/// The owner most tests plan for.
fn owner() -> PlanInput<'static> {
    PlanInput {
        owner_name: "app",
        owner_namespace: "flux-free",
        filter: Some(&DEPLOY),
        target_namespace: None,
        max_objects: ContentLimits::DEFAULT.max_objects,
    }
}

/// Discovery as a small cluster would answer it.
fn discovery(group: &str, _version: &str, kind: &str) -> Option<Scope> {
    match (group, kind) {
        ("", "Namespace") | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            Some(Scope::Cluster)
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => Some(Scope::Cluster),
        ("", "ConfigMap" | "Service" | "Secret") | ("apps", "Deployment") => {
            Some(Scope::Namespaced)
        }
        _ => None,
    }
}

fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec()))
        .collect()
}

fn plan_of(list: &[(&str, &str)]) -> Result<Plan, PlanError> {
    plan(&files(list), &owner(), discovery)
}

fn ids(plan: &Plan) -> Vec<String> {
    plan.objects.iter().map(|o| o.id.to_string()).collect()
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";
const CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets}
  versions: []
";

#[test]
fn reads_yaml_yml_and_json_recursively_under_path_only() {
    let plan = plan_of(&[
        ("deploy/a.yaml", &cm("a")),
        ("deploy/nested/deeper/b.yml", &cm("b")),
        (
            "deploy/c.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
        ),
        ("deploy/README.md", "# not a manifest"),
        ("other/d.yaml", &cm("d")),
        ("deployments/e.yaml", &cm("e")),
    ])
    .unwrap();
    assert_eq!(
        ids(&plan),
        [
            "v1/ConfigMap flux-free/a",
            "v1/ConfigMap flux-free/c",
            "v1/ConfigMap flux-free/b"
        ]
    );
}

#[test]
fn multi_document_yaml_skips_empty_documents() {
    let content = format!(
        "---\n{}---\n---\n# only a comment\n---\n{}",
        cm("one"),
        cm("two")
    );
    let plan = plan_of(&[("deploy/all.yaml", &content)]).unwrap();
    assert_eq!(
        ids(&plan),
        ["v1/ConfigMap flux-free/one", "v1/ConfigMap flux-free/two"]
    );
    assert_eq!(plan.objects[0].document, 1);
    assert_eq!(plan.objects[1].document, 4);
}

#[test]
fn list_kinds_are_expanded() {
    let list = "\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}
- {apiVersion: v1, kind: Service, metadata: {name: y}, spec: {ports: [{port: 80}]}}
";
    let typed = "\
apiVersion: v1
kind: ConfigMapList
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: z}}
";
    let plan = plan_of(&[("deploy/list.yaml", list), ("deploy/typed.yaml", typed)]).unwrap();
    assert_eq!(
        ids(&plan),
        [
            "v1/ConfigMap flux-free/x",
            "v1/Service flux-free/y",
            "v1/ConfigMap flux-free/z"
        ]
    );
}

#[test]
fn list_item_errors_name_the_item() {
    let list =
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {}}\n";
    let err = plan_of(&[("deploy/list.yaml", list)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deploy/list.yaml: document 1: item 1: missing metadata.name"
    );
}

#[test]
fn syntax_errors_name_file_document_and_line() {
    let content = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  labels: a: b\n",
        cm("a")
    );
    let err = plan_of(&[("deploy/app.yaml", &content)]).unwrap_err();
    assert_eq!(err.category(), "invalid_manifest");
    let msg = err.to_string();
    assert!(
        msg.starts_with("deploy/app.yaml: document 2: line 12: mapping values are not allowed"),
        "{msg}"
    );
    assert!(!msg.contains(" at line "), "{msg}");
}

#[test]
fn json_syntax_errors_name_the_line() {
    let err = plan_of(&[("deploy/x.json", "{\n  \"apiVersion\": \"v1\",\n  oops\n}")]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("deploy/x.json: document 1: line 3: "),
        "{msg}"
    );
}

#[test]
fn missing_fields_are_named() {
    for (content, problem) in [
        (
            "kind: ConfigMap\nmetadata: {name: a}\n",
            "missing apiVersion",
        ),
        ("apiVersion: v1\nmetadata: {name: a}\n", "missing kind"),
        ("apiVersion: v1\nkind: ConfigMap\n", "missing metadata.name"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ''}\n",
            "empty metadata.name",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 5}\n",
            "metadata.name must be a string, found a number",
        ),
        (
            "apiVersion: a/b/c\nkind: X\nmetadata: {name: a}\n",
            "invalid apiVersion \"a/b/c\" (expected version or group/version)",
        ),
        (
            "- just\n- a list\n",
            "expected a Kubernetes object (a mapping), found a sequence",
        ),
    ] {
        let err = plan_of(&[("deploy/cm.yaml", content)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("deploy/cm.yaml: document 1: {problem}")
        );
        assert_eq!(err.category(), "invalid_manifest");
    }
}

#[test]
fn malformed_metadata_is_refused() {
    let content = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: [x]\n";
    let err = plan_of(&[("deploy/cm.yaml", content)]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("deploy/cm.yaml: document 1: invalid metadata: "),
        "{err}"
    );
}

#[test]
fn duplicates_name_both_files() {
    let err = plan_of(&[("deploy/b.yaml", &cm("app")), ("deploy/a.yaml", &cm("app"))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "duplicate object v1/ConfigMap flux-free/app in deploy/a.yaml: document 1 \
         and deploy/b.yaml: document 1"
    );
    assert_eq!(err.category(), "invalid_manifest");
}

#[test]
fn same_name_in_other_namespaces_or_kinds_is_no_duplicate() {
    let other_ns = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: other}\n";
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: app}\n";
    let plan = plan_of(&[
        ("deploy/a.yaml", &cm("app")),
        ("deploy/b.yaml", other_ns),
        ("deploy/c.yaml", secret),
    ])
    .unwrap();
    assert_eq!(plan.objects.len(), 3);
}

#[test]
fn objects_are_labelled_with_their_owner() {
    let plan = plan_of(&[(
        "deploy/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {keep: me}\n",
    )])
    .unwrap();
    let labels = plan.objects[0].object.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["tether.dev/name"], "app");
    assert_eq!(labels["tether.dev/namespace"], "flux-free");
    assert_eq!(labels["keep"], "me");
    assert!(is_owned_by(Some(labels), "app", "flux-free"));
    assert!(!is_owned_by(Some(labels), "app", "elsewhere"));
    assert!(!is_owned_by(None, "app", "flux-free"));
}

#[test]
fn namespaces_resolve_from_manifest_then_owner_and_target_overrides() {
    let in_other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: other}\n";
    let cluster_with_ns = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r, namespace: junk}\n";
    let list = [
        ("deploy/a.yaml", cm("a")),
        ("deploy/b.yaml", in_other.to_owned()),
        ("deploy/r.yaml", cluster_with_ns.to_owned()),
    ];
    let list: Vec<(&str, &str)> = list.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let planned = plan_of(&list).unwrap();
    assert_eq!(
        ids(&planned),
        [
            "v1/ConfigMap flux-free/a",
            "v1/ConfigMap other/b",
            "rbac.authorization.k8s.io/v1/ClusterRole r"
        ]
    );
    assert_eq!(planned.objects[2].object.metadata.namespace, None);
    assert_eq!(planned.objects[2].scope, Scope::Cluster);

    let input = PlanInput {
        target_namespace: Some("tenant"),
        ..owner()
    };
    let plan = plan(&files(&list), &input, discovery).unwrap();
    assert_eq!(
        ids(&plan),
        [
            "v1/ConfigMap tenant/a",
            "v1/ConfigMap tenant/b",
            "rbac.authorization.k8s.io/v1/ClusterRole r"
        ]
    );
    assert_eq!(
        plan.objects[1].object.metadata.namespace.as_deref(),
        Some("tenant")
    );
}

#[test]
fn crds_then_namespaces_then_the_rest_in_file_order() {
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
    let plan = plan_of(&[
        ("deploy/0-widget.yaml", widget),
        ("deploy/1-cm.yaml", &cm("first")),
        ("deploy/2-ns.yaml", NAMESPACE),
        ("deploy/3-cm.yaml", &cm("second")),
        ("deploy/9-crd.yaml", CRD),
    ])
    .unwrap();
    assert_eq!(
        ids(&plan),
        [
            "apiextensions.k8s.io/v1/CustomResourceDefinition widgets.example.com",
            "v1/Namespace team",
            "example.com/v1/Widget flux-free/w",
            "v1/ConfigMap flux-free/first",
            "v1/ConfigMap flux-free/second"
        ]
    );
    assert!(plan.objects[0].is_crd());
    assert!(plan.objects[1].is_namespace());
}

#[test]
fn a_kind_nobody_serves_is_named() {
    let err = plan_of(&[(
        "deploy/x.yaml",
        "apiVersion: nope.io/v1\nkind: Gadget\nmetadata: {name: g}\n",
    )])
    .unwrap_err();
    assert_eq!(err.category(), "unknown_kind");
    assert_eq!(
        err.to_string(),
        "deploy/x.yaml: document 1: the cluster does not serve kind Gadget of nope.io/v1 \
         (is its CustomResourceDefinition installed?)"
    );
}

#[test]
fn ignore_patterns_are_gitignore_style() {
    let ignore = vec![
        "*.json".to_owned(),
        "deploy/tests/".to_owned(),
        "!deploy/tests/keep.yaml".to_owned(),
    ];
    let filter = ManifestFilter::new("deploy", &ignore).unwrap();
    let input = PlanInput {
        filter: Some(&filter),
        ..owner()
    };
    let plan = plan(
        &files(&[
            ("deploy/a.yaml", &cm("a")),
            (
                "deploy/b.json",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b"}}"#,
            ),
            ("deploy/tests/t.yaml", &cm("t")),
            ("deploy/tests/keep.yaml", &cm("keep")),
        ]),
        &input,
        discovery,
    )
    .unwrap();
    assert_eq!(
        ids(&plan),
        ["v1/ConfigMap flux-free/a", "v1/ConfigMap flux-free/keep"]
    );
}

#[test]
fn root_path_reads_everything() {
    let filter = ManifestFilter::new("", &[]).unwrap();
    let input = PlanInput {
        filter: Some(&filter),
        ..owner()
    };
    let plan = plan(
        &files(&[("a.yaml", &cm("a")), ("x/b.yaml", &cm("b"))]),
        &input,
        discovery,
    )
    .unwrap();
    assert_eq!(plan.objects.len(), 2);
}

fn id(kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
    let (group, kind) = match kind {
        "CustomResourceDefinition" => ("apiextensions.k8s.io", kind),
        "Deployment" => ("apps", kind),
        _ => ("", kind),
    };
    ObjectRef {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: ns.map(Into::into),
        name: name.into(),
    }
}

#[test]
fn prune_candidates_are_what_left_in_reverse_dependency_order() {
    let old = vec![
        id("CustomResourceDefinition", None, "widgets.example.com"),
        id("Namespace", None, "team"),
        id("ConfigMap", Some("team"), "a"),
        id("ConfigMap", Some("team"), "b"),
        id("Deployment", Some("team"), "web"),
    ];
    let mut web_v2 = id("Deployment", Some("team"), "web");
    web_v2.version = "v2".into();
    let new = vec![id("ConfigMap", Some("team"), "a"), web_v2];
    let gone: Vec<String> = prune_candidates(&old, &new)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        gone,
        [
            "v1/ConfigMap team/b",
            "v1/Namespace team",
            "apiextensions.k8s.io/v1/CustomResourceDefinition widgets.example.com"
        ]
    );
    assert!(prune_candidates(&new, &new).is_empty());
}

#[test]
fn prune_disabled_annotation_is_recognised() {
    let mut a = BTreeMap::new();
    assert!(!is_prune_disabled(Some(&a)));
    a.insert("tether.dev/prune".to_owned(), "disabled".to_owned());
    assert!(is_prune_disabled(Some(&a)));
    assert!(!is_prune_disabled(None));
}

#[test]
fn plan_inventory_round_trips_through_status_json() {
    let plan = plan_of(&[("deploy/a.yaml", &cm("a")), ("deploy/ns.yaml", NAMESPACE)]).unwrap();
    let json = serde_json::to_string(&plan.inventory()).unwrap();
    assert_eq!(
        json,
        r#"[{"version":"v1","kind":"Namespace","name":"team"},{"version":"v1","kind":"ConfigMap","namespace":"flux-free","name":"a"}]"#
    );
}

/// An anchor of 50,000 scalars used 50,000 times: about 250 KB of text that would spell out
/// 2.5 billion values. The plan refuses it quickly, naming the file, instead of building them.
#[test]
fn an_alias_bomb_is_refused_before_it_expands() {
    let mut bomb =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\nx: &a [");
    bomb.push_str(&"1,".repeat(50_000));
    bomb.push_str("1]\ny: [");
    bomb.push_str(&"*a,".repeat(50_000));
    bomb.push_str("*a]\n");
    assert!(bomb.len() < 300_000, "{}", bomb.len());
    let started = std::time::Instant::now();
    let err = plan_of(&[("deploy/bomb.yaml", &bomb)]).unwrap_err();
    let elapsed = started.elapsed();
    let message = err.to_string();
    assert!(
        message.starts_with("deploy/bomb.yaml: document 1: "),
        "{message}"
    );
    assert!(
        message.contains("YAML aliases expand this file"),
        "{message}"
    );
    assert_eq!(err.category(), "invalid_manifest");
    assert!(
        elapsed < std::time::Duration::from_secs(10),
        "refusing the bomb took {elapsed:?}"
    );
}

/// Anchors used as manifests use them (a shared block of labels or env) stay well inside the
/// budget, and every value the text spells out fits in it.
#[test]
fn ordinary_aliases_and_dense_text_fit_the_budget() {
    let shared = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: a
  labels: &labels {app: web, tier: front}
  annotations: *labels
data: {k: v}
";
    let plan = plan_of(&[("deploy/a.yaml", shared)]).unwrap();
    let meta = &plan.objects[0].object.metadata;
    assert_eq!(meta.labels.as_ref().unwrap()["tier"], "front");
    assert_eq!(meta.annotations.as_ref().unwrap()["app"], "web");

    // The densest text: two bytes per value, 300,000 of them, no aliases.
    let mut dense = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: d\nx: [");
    dense.push_str(&"1,".repeat(300_000));
    dense.push_str("1]\n");
    plan_of(&[("deploy/d.yaml", &dense)]).unwrap();
}

#[test]
fn more_objects_than_the_limit_fail_the_revision_naming_where() {
    let input = PlanInput {
        max_objects: 2,
        ..owner()
    };
    let list = files(&[
        ("deploy/a.yaml", &cm("a")),
        ("deploy/b.yaml", &format!("{}---\n{}", cm("b"), cm("c"))),
    ]);
    let err = plan(&list, &input, discovery).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deploy/b.yaml: document 2: more than the operator's limit of 2 objects in one \
         revision; narrow spec.path or spec.ignore, or raise the limit (--max-objects, \
         TETHER_MAX_OBJECTS)"
    );
    assert_eq!(err.category(), "content_limit");
    assert_eq!(err.class(), ErrorClass::Revision);
    assert_eq!(err.reason(), reason::INVALID_MANIFEST);
    let input = PlanInput {
        max_objects: 3,
        ..owner()
    };
    assert_eq!(plan(&list, &input, discovery).unwrap().objects.len(), 3);
}
