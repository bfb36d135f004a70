//! The plan stage, pure: turns the files of a commit into the ordered, labelled objects to apply,
//! and an old inventory plus a new one into the objects to prune.
//!
//! Nothing here does I/O. The one thing the plan cannot know by itself, whether a kind is
//! namespaced, comes from a lookup the caller passes in (backed by discovery), completed by the
//! CustomResourceDefinitions found in the same commit.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;

use crate::crd::{
    ANNOTATION_PRUNE, LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE, ObjectRef, PRUNE_DISABLED,
};

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The kind is namespaced (ConfigMap, Deployment...).
    Namespaced,
    /// The kind is cluster-scoped (Namespace, CustomResourceDefinition, ClusterRole...).
    Cluster,
}

/// What the plan needs to know besides the files.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The name of the owning `GitRepository`.
    pub owner_name: &'a str,
    /// The namespace of the owning `GitRepository`; namespaced objects without a namespace land
    /// there unless `target_namespace` is set.
    pub owner_namespace: &'a str,
    /// `spec.path`, normalised: no leading or trailing slash, `""` for the root.
    pub path: &'a str,
    /// `spec.ignore`: gitignore-style patterns matched against paths from the repository root.
    pub ignore: &'a [String],
    /// `spec.targetNamespace`: overrides the namespace of every namespaced object.
    pub target_namespace: Option<&'a str>,
}

/// One object to apply.
#[derive(Debug, Clone)]
pub struct PlannedObject {
    /// Which object this is (namespace resolved).
    pub id: ObjectRef,
    /// Whether the object is namespaced.
    pub scope: Scope,
    /// The file it came from, relative to the repository root.
    pub file: String,
    /// The document of that file it came from, from 1.
    pub document: usize,
    /// The object, labelled with its owner and with its namespace set (or removed, for a
    /// cluster-scoped object). Ready to be sent with server-side apply.
    pub object: DynamicObject,
}

impl PlannedObject {
    /// Whether this object is a CustomResourceDefinition (to wait for it to be Established
    /// before applying objects of its kind).
    pub fn is_crd(&self) -> bool {
        is_crd(&self.id)
    }

    /// Whether this object is a Namespace.
    pub fn is_namespace(&self) -> bool {
        is_namespace(&self.id)
    }
}

/// The objects of one revision, in the order to apply them: CustomResourceDefinitions, then
/// Namespaces, then everything else, each group in file then document order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The objects to apply, in order.
    pub objects: Vec<PlannedObject>,
}

impl Plan {
    /// The inventory this revision will leave behind once applied.
    pub fn inventory(&self) -> Vec<ObjectRef> {
        self.objects.iter().map(|o| o.id.clone()).collect()
    }
}

/// Where in the repository something was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, relative to the repository root.
    pub file: String,
    /// The document in the file, from 1.
    pub document: usize,
    /// The item of a `List`, from 1.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ": item {item}")?;
        }
        Ok(())
    }
}

/// Why a revision's manifests cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A file does not parse as YAML or JSON.
    #[error("{location}: {}{message}", line_prefix(*.line))]
    Parse {
        /// Where.
        location: Location,
        /// The line in the file, from 1, when the parser knows it.
        line: Option<usize>,
        /// What the parser said.
        message: String,
    },
    /// A document parses but is not a valid Kubernetes object.
    #[error("{location}: {problem}")]
    Invalid {
        /// Where.
        location: Location,
        /// What is wrong, e.g. `missing metadata.name`.
        problem: String,
    },
    /// Two documents describe the same object.
    #[error("duplicate object {id} in {first} and {second}")]
    Duplicate {
        /// The object.
        id: Box<ObjectRef>,
        /// Where it is first described.
        first: Location,
        /// Where it is described again.
        second: Location,
    },
    /// Neither the API server nor a CRD in the revision defines the kind.
    #[error(
        "{location}: the cluster does not serve kind {kind} of {api_version} \
         (is its CustomResourceDefinition installed?)"
    )]
    UnknownKind {
        /// Where.
        location: Location,
        /// The object's apiVersion.
        api_version: String,
        /// The object's kind.
        kind: String,
    },
    /// A pattern in `spec.ignore` is invalid.
    #[error("spec.ignore: invalid pattern {pattern:?}: {source}")]
    IgnorePattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: ignore::Error,
    },
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

impl PlanError {
    /// A short fixed name for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            PlanError::Parse { .. } | PlanError::Invalid { .. } | PlanError::Duplicate { .. } => {
                "invalid_manifest"
            }
            PlanError::UnknownKind { .. } => "unknown_kind",
            PlanError::IgnorePattern { .. } => "invalid_spec",
        }
    }
}

/// Whether a file is a manifest that the plan reads: under `input.path`, with a `.yaml`, `.yml`
/// or `.json` extension, and not ignored. The git layer may use this to skip reading blobs.
#[derive(Debug)]
pub struct ManifestFilter {
    prefix: String,
    ignore: Gitignore,
}

impl ManifestFilter {
    /// A filter for `spec.path` and `spec.ignore`.
    pub fn new(path: &str, ignore: &[String]) -> Result<Self, PlanError> {
        let mut builder = GitignoreBuilder::new(".");
        for pattern in ignore {
            builder
                .add_line(None, pattern)
                .map_err(|source| PlanError::IgnorePattern {
                    pattern: pattern.clone(),
                    source,
                })?;
        }
        let ignore = builder.build().map_err(|source| PlanError::IgnorePattern {
            pattern: ignore.join(", "),
            source,
        })?;
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(Self { prefix, ignore })
    }

    /// Whether the file at `path` (relative to the repository root) is a manifest to read.
    pub fn accepts(&self, path: &str) -> bool {
        if !path.starts_with(&self.prefix) {
            return false;
        }
        let lower = path.to_ascii_lowercase();
        if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
            return false;
        }
        !self
            .ignore
            .matched_path_or_any_parents(Path::new(path), false)
            .is_ignore()
    }
}

/// Plans a revision: reads the manifests among `files` (`(path from the repository root,
/// content)`), validates them, stamps the owner labels, resolves namespaces and orders them.
///
/// `scope` answers whether `(group, version, kind)` is namespaced, as the API server's discovery
/// says, or `None` when the server does not serve it; kinds defined by a CustomResourceDefinition
/// in the same revision are resolved from that definition first.
pub fn plan(
    files: &[(String, Vec<u8>)],
    input: &PlanInput<'_>,
    scope: impl Fn(&str, &str, &str) -> Option<Scope>,
) -> Result<Plan, PlanError> {
    let filter = ManifestFilter::new(input.path, input.ignore)?;
    let mut sorted: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(path, _)| filter.accepts(path))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut parsed = Vec::new();
    for (path, data) in sorted {
        for (document, value) in parse_documents(path, data)? {
            expand(path, document, value, &mut parsed)?;
        }
    }

    // Kinds that CRDs of this revision define, so that their objects can be planned before the
    // API server knows them.
    let mut local_scopes: HashMap<(String, String), Scope> = HashMap::new();
    for p in &parsed {
        if let Some((group, kind, s)) = crd_defines(p) {
            local_scopes.insert((group, kind), s);
        }
    }

    let mut objects: Vec<PlannedObject> = Vec::with_capacity(parsed.len());
    let mut seen: HashMap<(String, String, Option<String>, String), Location> = HashMap::new();
    for p in parsed {
        let object_scope = local_scopes
            .get(&(p.group.clone(), p.kind.clone()))
            .copied()
            .or_else(|| scope(&p.group, &p.version, &p.kind))
            .ok_or_else(|| PlanError::UnknownKind {
                location: p.location.clone(),
                api_version: p
                    .object
                    .types
                    .as_ref()
                    .map(|t| t.api_version.clone())
                    .unwrap_or_default(),
                kind: p.kind.clone(),
            })?;
        let mut object = p.object;
        let namespace = match object_scope {
            Scope::Namespaced => Some(
                input
                    .target_namespace
                    .map(str::to_owned)
                    .or_else(|| {
                        object
                            .metadata
                            .namespace
                            .clone()
                            .filter(|ns| !ns.is_empty())
                    })
                    .unwrap_or_else(|| input.owner_namespace.to_owned()),
            ),
            Scope::Cluster => None,
        };
        object.metadata.namespace = namespace.clone();
        let labels = object.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(LABEL_OWNER_NAME.to_owned(), input.owner_name.to_owned());
        labels.insert(
            LABEL_OWNER_NAMESPACE.to_owned(),
            input.owner_namespace.to_owned(),
        );

        let id = ObjectRef {
            group: p.group,
            version: p.version,
            kind: p.kind,
            namespace,
            name: p.name,
        };
        let key = (
            id.group.clone(),
            id.kind.clone(),
            id.namespace.clone(),
            id.name.clone(),
        );
        if let Some(first) = seen.get(&key) {
            return Err(PlanError::Duplicate {
                id: Box::new(id),
                first: first.clone(),
                second: p.location,
            });
        }
        seen.insert(key, p.location.clone());
        objects.push(PlannedObject {
            id,
            scope: object_scope,
            file: p.location.file,
            document: p.location.document,
            object,
        });
    }
    // A stable sort keeps file and document order within each rank.
    objects.sort_by_key(|o| rank(&o.id));
    Ok(Plan { objects })
}

/// The objects of `old_inventory` that are not in `new_inventory`, in the order to delete them:
/// everything else first, then Namespaces, then CustomResourceDefinitions (whose deletion takes
/// their objects along). Objects are compared by group, kind, namespace and name: a new version
/// of the same object is not a removal.
pub fn prune_candidates(
    old_inventory: &[ObjectRef],
    new_inventory: &[ObjectRef],
) -> Vec<ObjectRef> {
    let mut gone: Vec<ObjectRef> = Vec::new();
    for old in old_inventory {
        let kept = new_inventory.iter().any(|new| new.same_object(old));
        let already = gone.iter().any(|g| g.same_object(old));
        if !kept && !already {
            gone.push(old.clone());
        }
    }
    gone.sort_by_key(|o| std::cmp::Reverse(rank(o)));
    gone
}

/// Whether an object found in the cluster still belongs to the `GitRepository` `name` in
/// `namespace`, judged by its labels: only such objects may be pruned.
pub fn is_owned_by(labels: Option<&BTreeMap<String, String>>, name: &str, namespace: &str) -> bool {
    labels.is_some_and(|l| {
        l.get(LABEL_OWNER_NAME).map(String::as_str) == Some(name)
            && l.get(LABEL_OWNER_NAMESPACE).map(String::as_str) == Some(namespace)
    })
}

/// Whether an object's annotations protect it from pruning (`tether.dev/prune: disabled`).
pub fn is_prune_disabled(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(ANNOTATION_PRUNE))
        .is_some_and(|v| v == PRUNE_DISABLED)
}

fn is_crd(id: &ObjectRef) -> bool {
    id.group == "apiextensions.k8s.io" && id.kind == "CustomResourceDefinition"
}

fn is_namespace(id: &ObjectRef) -> bool {
    id.group.is_empty() && id.kind == "Namespace"
}

fn rank(id: &ObjectRef) -> u8 {
    if is_crd(id) {
        0
    } else if is_namespace(id) {
        1
    } else {
        2
    }
}

/// A document that is a valid object, before namespace resolution.
struct Parsed {
    location: Location,
    group: String,
    version: String,
    kind: String,
    name: String,
    object: DynamicObject,
}

/// The non-empty documents of a file, numbered from 1.
fn parse_documents(path: &str, data: &[u8]) -> Result<Vec<(usize, Value)>, PlanError> {
    let location = |document| Location {
        file: path.to_owned(),
        document,
        item: None,
    };
    let mut out = Vec::new();
    if path.to_ascii_lowercase().ends_with(".json") {
        let stream = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
        for (i, value) in stream.enumerate() {
            let value = value.map_err(|e| PlanError::Parse {
                location: location(i + 1),
                line: Some(e.line()).filter(|l| *l > 0),
                message: strip_position(&e.to_string()),
            })?;
            if !value.is_null() {
                out.push((i + 1, value));
            }
        }
        return Ok(out);
    }
    for (i, document) in serde_yaml_ng::Deserializer::from_slice(data).enumerate() {
        let value = Value::deserialize(document).map_err(|e| PlanError::Parse {
            location: location(i + 1),
            line: e.location().map(|l| l.line()),
            message: strip_position(&e.to_string()),
        })?;
        if !value.is_null() {
            out.push((i + 1, value));
        }
    }
    Ok(out)
}

/// A parser message without its trailing position, which the error carries separately.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Validates one document, expanding `List` kinds into their items.
fn expand(
    path: &str,
    document: usize,
    value: Value,
    out: &mut Vec<Parsed>,
) -> Result<(), PlanError> {
    let location = Location {
        file: path.to_owned(),
        document,
        item: None,
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let is_list = kind == "List"
        || (kind.ends_with("List") && value.get("items").is_some_and(Value::is_array));
    if !is_list {
        out.push(validate(location, value)?);
        return Ok(());
    }
    let Value::Object(mut map) = value else {
        return Err(invalid(
            location,
            "expected a Kubernetes object (a mapping)",
        ));
    };
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(invalid(location, "items of a List must be a sequence")),
    };
    for (i, item) in items.into_iter().enumerate() {
        let location = Location {
            item: Some(i + 1),
            ..location.clone()
        };
        out.push(validate(location, item)?);
    }
    Ok(())
}

fn invalid(location: Location, problem: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        location,
        problem: problem.into(),
    }
}

fn validate(location: Location, value: Value) -> Result<Parsed, PlanError> {
    let Value::Object(map) = &value else {
        return Err(invalid(
            location,
            format!(
                "expected a Kubernetes object (a mapping), found {}",
                kind_of(&value)
            ),
        ));
    };
    let string_field = |name: &str| match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("missing {name}")),
        Some(Value::String(_)) => Err(format!("empty {name}")),
        Some(other) => Err(format!("{name} must be a string, found {}", kind_of(other))),
    };
    let api_version = string_field("apiVersion").map_err(|p| invalid(location.clone(), p))?;
    let kind = string_field("kind").map_err(|p| invalid(location.clone(), p))?;
    let (group, version) = match api_version.split('/').collect::<Vec<_>>().as_slice() {
        [version] if !version.is_empty() => (String::new(), (*version).to_owned()),
        [group, version] if !group.is_empty() && !version.is_empty() => {
            ((*group).to_owned(), (*version).to_owned())
        }
        _ => {
            return Err(invalid(
                location,
                format!("invalid apiVersion {api_version:?} (expected version or group/version)"),
            ));
        }
    };
    match map.get("metadata") {
        Some(Value::Object(meta)) => match meta.get("name") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) => return Err(invalid(location, "empty metadata.name")),
            None | Some(Value::Null) => return Err(invalid(location, "missing metadata.name")),
            Some(other) => {
                return Err(invalid(
                    location,
                    format!("metadata.name must be a string, found {}", kind_of(other)),
                ));
            }
        },
        None | Some(Value::Null) => return Err(invalid(location, "missing metadata.name")),
        Some(other) => {
            return Err(invalid(
                location,
                format!("metadata must be a mapping, found {}", kind_of(other)),
            ));
        }
    }
    let object: DynamicObject = serde_json::from_value(value)
        .map_err(|e| invalid(location.clone(), format!("invalid metadata: {e}")))?;
    let name = object.metadata.name.clone().unwrap_or_default();
    Ok(Parsed {
        location,
        group,
        version,
        kind,
        name,
        object,
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// The group, kind and scope that a CustomResourceDefinition defines.
fn crd_defines(p: &Parsed) -> Option<(String, String, Scope)> {
    if p.group != "apiextensions.k8s.io" || p.kind != "CustomResourceDefinition" {
        return None;
    }
    let spec = p.object.data.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_owned();
    let kind = spec.get("names")?.get("kind")?.as_str()?.to_owned();
    let scope = match spec.get("scope")?.as_str()? {
        "Cluster" => Scope::Cluster,
        _ => Scope::Namespaced,
    };
    Some((group, kind, scope))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const OWNER: PlanInput<'static> = PlanInput {
        owner_name: "app",
        owner_namespace: "flux-free",
        path: "deploy",
        ignore: &[],
        target_namespace: None,
    };

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
        plan(&files(list), &OWNER, discovery)
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
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {}}\n";
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
        let err =
            plan_of(&[("deploy/x.json", "{\n  \"apiVersion\": \"v1\",\n  oops\n}")]).unwrap_err();
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
        let err =
            plan_of(&[("deploy/b.yaml", &cm("app")), ("deploy/a.yaml", &cm("app"))]).unwrap_err();
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
            ..OWNER
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
        let input = PlanInput {
            ignore: &ignore,
            ..OWNER
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
        let input = PlanInput { path: "", ..OWNER };
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
}
