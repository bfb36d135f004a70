//! The plan stage, pure: turns the files of a commit into the ordered, labelled objects to apply,
//! and an old inventory plus a new one into the objects to prune.
//!
//! Nothing here does I/O. The one thing the plan cannot know by itself, whether a kind is
//! namespaced, comes from a lookup the caller passes in (backed by discovery), completed by the
//! CustomResourceDefinitions found in the same commit.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use kube::api::DynamicObject;
use serde::de::DeserializeSeed as _;
use serde_json::Value;

use crate::crd::{
    ANNOTATION_PRUNE, LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE, ObjectRef, PRUNE_DISABLED, reason,
};
use crate::error::{ErrorClass, StageError};

mod filter;
mod limits;
mod yaml;

pub use filter::ManifestFilter;
pub use limits::{ContentLimits, LimitExceeded};

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
    /// Which files are manifests: `spec.path` and `spec.ignore`; `None` when every file given is
    /// one (the output of kustomize or helm).
    pub filter: Option<&'a ManifestFilter>,
    /// `spec.targetNamespace`: overrides the namespace of every namespaced object.
    pub target_namespace: Option<&'a str>,
    /// The most objects the revision may define (`--max-objects`).
    pub max_objects: usize,
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
    /// The revision is over one of the operator's [`ContentLimits`].
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
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

impl StageError for PlanError {
    fn category(&self) -> &'static str {
        match self {
            PlanError::Parse { .. } | PlanError::Invalid { .. } | PlanError::Duplicate { .. } => {
                "invalid_manifest"
            }
            PlanError::UnknownKind { .. } => "unknown_kind",
            PlanError::Limit(e) => e.category(),
            PlanError::IgnorePattern { .. } => "invalid_spec",
        }
    }

    /// A bad ignore pattern waits for the spec to change; a bad manifest for the next commit.
    fn class(&self) -> ErrorClass {
        match self {
            PlanError::IgnorePattern { .. } => ErrorClass::Stalled,
            _ => ErrorClass::Revision,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            PlanError::IgnorePattern { .. } => reason::INVALID_SPEC,
            _ => reason::INVALID_MANIFEST,
        }
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
    let mut sorted: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(path, _)| input.filter.is_none_or(|f| f.accepts(path)))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut parsed = Vec::new();
    for (path, data) in sorted {
        for (document, value) in parse_documents(path, data)? {
            expand(path, document, value, &mut parsed)?;
            if parsed.len() > input.max_objects {
                let location = parsed
                    .get(input.max_objects)
                    .map(|p| p.location.clone())
                    .unwrap_or_else(|| Location {
                        file: path.clone(),
                        document,
                        item: None,
                    });
                return Err(LimitExceeded::Objects {
                    location,
                    limit: input.max_objects,
                }
                .into());
            }
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

/// The `(namespace, name)` the owner labels name, either one empty when only the other is set;
/// `None` when neither is.
pub fn owner_labels(labels: Option<&BTreeMap<String, String>>) -> Option<(&str, &str)> {
    let labels = labels?;
    let name = labels.get(LABEL_OWNER_NAME);
    let namespace = labels.get(LABEL_OWNER_NAMESPACE);
    if name.is_none() && namespace.is_none() {
        return None;
    }
    Some((
        namespace.map(String::as_str).unwrap_or_default(),
        name.map(String::as_str).unwrap_or_default(),
    ))
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
    // One budget for the whole file: its documents may share anchors no more than one may.
    let budget = yaml::budget_for(data.len());
    let left = std::cell::Cell::new(budget);
    let seed = yaml::Budgeted {
        left: &left,
        budget,
    };
    for (i, document) in serde_yaml_ng::Deserializer::from_slice(data).enumerate() {
        let value = seed.deserialize(document).map_err(|e| PlanError::Parse {
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
mod tests;
