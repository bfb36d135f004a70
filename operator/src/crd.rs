//! The `GitRepository` custom resource (`tether.dev/v1alpha1`): its spec, status, the names that
//! Tether stamps on the objects it manages, and the CRD rendered as YAML.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{self, DurationError};

/// The API group of every Tether resource.
pub const GROUP: &str = "tether.dev";
/// The version of the `GitRepository` API.
pub const VERSION: &str = "v1alpha1";

/// Label on every applied object: the name of the `GitRepository` that owns it.
pub const LABEL_OWNER_NAME: &str = "tether.dev/name";
/// Label on every applied object: the namespace of the `GitRepository` that owns it.
pub const LABEL_OWNER_NAMESPACE: &str = "tether.dev/namespace";
/// Annotation on an applied object; with the value [`PRUNE_DISABLED`] the object is never deleted.
pub const ANNOTATION_PRUNE: &str = "tether.dev/prune";
/// The value of [`ANNOTATION_PRUNE`] that protects an object from pruning.
pub const PRUNE_DISABLED: &str = "disabled";
/// Annotation on a `GitRepository`: any new value asks for a reconcile now.
pub const ANNOTATION_RECONCILE_REQUESTED_AT: &str = "tether.dev/reconcile-requested-at";
/// The server-side apply field manager for everything Tether writes.
pub const FIELD_MANAGER: &str = "tether";
/// The finalizer that lets Tether prune a deleted `GitRepository`'s objects.
pub const FINALIZER: &str = "tether.dev/finalizer";

/// The branch followed when `spec.ref` names nothing.
pub const DEFAULT_BRANCH: &str = "main";
/// `spec.interval` when left out.
pub const DEFAULT_INTERVAL: &str = "5m";
/// `spec.timeout` when left out.
pub const DEFAULT_TIMEOUT: &str = "1m";

/// Condition types, following kstatus.
pub mod condition {
    /// True when the last attempted revision is applied (and healthy, with `spec.wait`).
    pub const READY: &str = "Ready";
    /// Present and True while a reconcile is under way.
    pub const RECONCILING: &str = "Reconciling";
    /// True when an error stops progress and retrying will not fix it.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons (CamelCase, as Kubernetes expects).
pub mod reason {
    /// Ready=True: the revision is applied.
    pub const SUCCEEDED: &str = "ReconciliationSucceeded";
    /// Ready=False: the last reconcile failed; the message says why.
    pub const FAILED: &str = "ReconciliationFailed";
    /// Reconciling=True: work under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Ready=False: `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// The remote could not be reached, or the ref could not be resolved or fetched.
    pub const GIT_OPERATION_FAILED: &str = "GitOperationFailed";
    /// The credentials were refused, or the secret is missing or malformed.
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    /// The manifests of the revision do not parse or validate.
    pub const INVALID_MANIFEST: &str = "InvalidManifest";
    /// The spec itself is invalid (bad duration, bad ignore pattern...).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused the revision (dry-run or apply).
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Objects that left the repository could not be deleted.
    pub const PRUNE_FAILED: &str = "PruneFailed";
    /// An object of the revision belongs to another `GitRepository`.
    pub const OWNERSHIP_CONFLICT: &str = "OwnershipConflict";
    /// `spec.wait`: the applied objects did not become ready in time.
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
    /// Waiting for the applied objects to become ready.
    pub const WAITING_FOR_HEALTH: &str = "WaitingForHealth";
    /// kustomize or helm refused the revision, or went past its time or output limit.
    pub const RENDER_FAILED: &str = "RenderFailed";
    /// A SOPS-encrypted file could not be decrypted with the keys given.
    pub const DECRYPTION_FAILED: &str = "DecryptionFailed";
    /// A `spec.dependsOn` entry is missing, or not Ready at its latest revision.
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    /// `spec.dependsOn` entries lead back to this GitRepository.
    pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
}

/// A pattern for the clone URLs Tether accepts: `https://`, `http://`, `ssh://`, `file://`,
/// and scp-style `user@host:path` (relative to the login's home) or `user@host:/path`.
pub const URL_PATTERN: &str =
    r"^((https?|ssh)://[^\s/]+/\S*|file:///?\S+|[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:/?[^\s/]\S*)$";
/// A pattern for Kubernetes-style durations: `30s`, `5m`, `1h`, `1h30m`, `500ms`, `1.5h`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";
/// A pattern for a full commit id.
pub const COMMIT_PATTERN: &str = r"^[0-9a-f]{40}$";

/// Syncs the manifests of a Git repository into the cluster: Tether follows a branch, tag,
/// semver range or commit, applies the manifests under a path with server-side apply, and
/// deletes (prunes) the objects that leave the repository.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "GitRepository",
    plural = "gitrepositories",
    singular = "gitrepository",
    shortname = "tgr",
    namespaced,
    status = "GitRepositoryStatus",
    derive = "PartialEq",
    doc = "GitRepository syncs the Kubernetes manifests of a Git repository into the cluster.",
    // The JSON form, since clippy reads repeated `type_ = "string"` keys as duplicated attributes.
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevisionShort"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositorySpec {
    /// The clone URL of the repository: `https://host/org/repo.git`, `http://...`,
    /// `ssh://git@host[:port]/org/repo.git`, scp-style `git@host:org/repo.git`, or
    /// `file:///path/to/repo` (for local use).
    #[schemars(regex(pattern = URL_PATTERN))]
    pub url: String,

    /// What to follow in the repository: one of `branch`, `tag`, `semver` or `commit`.
    /// When none is set, the branch `main` is followed.
    #[serde(default, rename = "ref")]
    pub git_ref: GitRef,

    /// The folder inside the repository whose manifests are applied, recursively
    /// (`.yaml`, `.yml` and `.json` files, multi-document YAML and `List` kinds).
    /// Defaults to the root of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Files to leave out, as gitignore-style patterns matched against paths from the root
    /// of the repository, e.g. `*.md`, `tests/`, `!tests/keep.yaml`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,

    /// How often the remote is checked for a new revision and the cluster for drift,
    /// as a duration such as `30s`, `5m` or `1h30m`. A push notice from the hub
    /// triggers a check at once, whatever the interval. From `1s` to `720h` (30 days).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 24))]
    #[x_kube(validation = Rule::new(
        "duration(self) >= duration('1s') && duration(self) <= duration('720h')"
    ).message("must be a duration from 1s to 720h, such as 30s, 5m or 1h"))]
    pub interval: String,

    /// How long one git operation (ls-remote or fetch) may take, as a duration such as
    /// `30s` or `1m`. From `1s` to `1h`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 24))]
    #[x_kube(validation = Rule::new(
        "duration(self) >= duration('1s') && duration(self) <= duration('1h')"
    ).message("must be a duration from 1s to 1h, such as 30s or 1m"))]
    pub timeout: String,

    /// A Secret in the same namespace holding the credentials for the repository:
    /// `username` and `password`, or `bearerToken`, for HTTPS (with `caFile`, a PEM
    /// certificate, for a private certificate authority); `identity` (a private key) and
    /// `known_hosts` for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// Delete the objects that were applied from an earlier revision and are no longer in
    /// the repository, and all of them when this GitRepository is deleted. Objects annotated
    /// `tether.dev/prune: disabled` are never deleted.
    #[serde(default = "default_true")]
    pub prune: bool,

    /// Put every namespaced object in this namespace, whatever its manifest says. When
    /// unset, objects keep their own namespace, and those without one land in the
    /// namespace of this GitRepository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,

    /// Apply as this service account (of the GitRepository's namespace) instead of as the
    /// operator itself, so that a tenant can only change what that account may change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Stop reconciling: new revisions are not applied and nothing is pruned until this is
    /// set back to false.
    #[serde(default)]
    pub suspend: bool,

    /// Hold Ready until the applied objects report that they are ready themselves
    /// (Deployments rolled out, Jobs complete...).
    #[serde(default)]
    pub wait: bool,

    /// How the folder at `spec.path` becomes objects: `plain` (the manifests as they are),
    /// `kustomize` (`kustomize build`) or `helm` (`helm template`). When unset it is detected: a
    /// `kustomization.yaml`, `kustomization.yml` or `Kustomization` file there means kustomize, a
    /// `Chart.yaml` means helm, anything else plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderMode>,

    /// How a Helm chart at `spec.path` is templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmSpec>,

    /// Decrypt files encrypted with SOPS (manifests, and the files Kustomize or Helm read) before
    /// rendering and applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,

    /// Other GitRepositories that must be Ready at their latest revision before this one is
    /// applied (for example the one that installs the CRDs this one uses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub depends_on: Vec<DependencyRef>,
}

/// How the folder at `spec.path` becomes objects.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RenderMode {
    /// The YAML and JSON files as they are.
    Plain,
    /// `kustomize build` of the folder.
    Kustomize,
    /// `helm template` of the chart in the folder.
    Helm,
}

impl RenderMode {
    /// The name used in `spec.render`.
    pub fn as_str(self) -> &'static str {
        match self {
            RenderMode::Plain => "plain",
            RenderMode::Kustomize => "kustomize",
            RenderMode::Helm => "helm",
        }
    }
}

/// A pattern for a Helm release name, as Helm itself accepts them (at most 53 characters).
pub const RELEASE_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// How `helm template` renders the chart at `spec.path`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmSpec {
    /// The release name the templates see as `.Release.Name`; defaults to this GitRepository's
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = RELEASE_NAME_PATTERN), length(max = 53))]
    pub release_name: Option<String>,

    /// The namespace the templates see as `.Release.Namespace`; defaults to `targetNamespace`,
    /// else this GitRepository's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// Values files, relative to the chart's folder (`values-prod.yaml`,
    /// `../../env/prod/values.yaml`), inside the repository; merged in order, after the chart's
    /// own `values.yaml`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,

    /// Values merged last, over the chart's and the values files'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Value>,
}

/// A schema for an object of any shape, kept whole by the API server.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Decryption of SOPS-encrypted files.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Decryption {
    /// The decryption provider: `sops`.
    pub provider: DecryptionProvider,
    /// A Secret in this GitRepository's namespace whose `*.agekey` entries hold age private keys
    /// (`AGE-SECRET-KEY-1...`); read as `serviceAccountName` when that is set.
    pub secret_ref: SecretRef,
}

/// Which tool decrypts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecryptionProvider {
    /// SOPS with age keys.
    Sops,
}

/// Another GitRepository, by name.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct DependencyRef {
    /// Its name.
    pub name: String,
    /// Its namespace; defaults to this GitRepository's. Another namespace's is read as
    /// `serviceAccountName` when that is set, so the account needs `get` on it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn default_interval() -> String {
    DEFAULT_INTERVAL.to_owned()
}

fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

fn default_true() -> bool {
    true
}

/// What to follow in the repository; at most one of the fields may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new(
    "[has(self.branch), has(self.tag), has(self.semver), has(self.commit)].filter(x, x).size() <= 1"
).message("at most one of branch, tag, semver and commit may be set"))]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    /// A branch to follow, e.g. `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,

    /// A tag to apply, e.g. `v1.2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,

    /// A semver range, e.g. `>=1.2.0, <2.0.0` or `^1.2`: the highest tag that matches it is
    /// applied (tags may carry a leading `v`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,

    /// A full commit id (40 lowercase hex characters) to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = COMMIT_PATTERN))]
    pub commit: Option<String>,
}

/// The one thing a [`GitRef`] points at, once the defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefTarget {
    /// Follow a branch.
    Branch(String),
    /// Apply a tag.
    Tag(String),
    /// Apply the highest tag matching a semver range.
    Semver(String),
    /// Apply a fixed commit.
    Commit(String),
}

impl fmt::Display for RefTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefTarget::Branch(b) => write!(f, "branch {b}"),
            RefTarget::Tag(t) => write!(f, "tag {t}"),
            RefTarget::Semver(r) => write!(f, "semver {r}"),
            RefTarget::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// A [`GitRef`] that names more than one thing; the API server refuses these, but a client
/// that skips validation could still send one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("spec.ref: at most one of branch, tag, semver and commit may be set, found {0}")]
pub struct AmbiguousRef(String);

impl GitRef {
    /// The target of this ref: the one field set, or the branch `main` when none is.
    pub fn target(&self) -> Result<RefTarget, AmbiguousRef> {
        let set: Vec<(&str, &String)> = [
            ("branch", &self.branch),
            ("tag", &self.tag),
            ("semver", &self.semver),
            ("commit", &self.commit),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)))
        .collect();
        match set.as_slice() {
            [] => Ok(RefTarget::Branch(DEFAULT_BRANCH.to_owned())),
            [("branch", v)] => Ok(RefTarget::Branch((*v).clone())),
            [("tag", v)] => Ok(RefTarget::Tag((*v).clone())),
            [("semver", v)] => Ok(RefTarget::Semver((*v).clone())),
            [(_, v)] => Ok(RefTarget::Commit((*v).clone())),
            many => Err(AmbiguousRef(
                many.iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and "),
            )),
        }
    }
}

/// A reference to a Secret in the GitRepository's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// The name of the Secret.
    pub name: String,
}

/// The bounds of `spec.interval`, as the CRD's rule states them.
pub const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(720 * 3600));
/// The bounds of `spec.timeout`, as the CRD's rule states them.
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

impl GitRepositorySpec {
    /// `spec.interval` as a [`Duration`], within [`INTERVAL_RANGE`].
    pub fn interval(&self) -> Result<Duration, DurationError> {
        duration::parse_within(&self.interval, INTERVAL_RANGE)
            .map_err(|e| e.in_field("spec.interval"))
    }

    /// `spec.timeout` as a [`Duration`], within [`TIMEOUT_RANGE`].
    pub fn timeout(&self) -> Result<Duration, DurationError> {
        duration::parse_within(&self.timeout, TIMEOUT_RANGE).map_err(|e| e.in_field("spec.timeout"))
    }

    /// The folder to apply, without leading or trailing slashes (`""` for the root).
    pub fn path(&self) -> &str {
        self.path
            .as_deref()
            .map(|p| p.trim_start_matches("./").trim_matches('/'))
            .filter(|p| *p != ".")
            .unwrap_or("")
    }
}

/// The observed state of a GitRepository.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryStatus {
    /// The generation of the spec that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (True, False or Unknown, with a reason and a message to act on),
    /// `Reconciling` (while work is under way) and `Stalled` (an error that retrying will
    /// not fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The revision last applied successfully, e.g. `main@sha1:<40 hex>` or
    /// `v1.2.0@sha1:<40 hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,

    /// The last applied revision with the commit id shortened, e.g. `main@4f2c1a9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision_short: Option<String>,

    /// The revision of the last reconcile, whether it succeeded or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,

    /// The value of the `tether.dev/reconcile-requested-at` annotation last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// When the last push notice for this repository arrived from the hub (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_notified_at: Option<String>,

    /// The objects applied from the last applied revision: what pruning compares against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<ObjectRef>,
}

/// One Kubernetes object, as recorded in the inventory.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ObjectRef {
    /// The API group, empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The API version within the group, e.g. `v1`.
    pub version: String,
    /// The kind, e.g. `ConfigMap`.
    pub kind: String,
    /// The namespace, unset for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether two refs name the same object: the same group, kind, namespace and name.
    /// The version is left out, since one object is served under every version of its group.
    pub fn same_object(&self, other: &ObjectRef) -> bool {
        self.group == other.group
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

impl fmt::Display for ObjectRef {
    /// `v1/ConfigMap default/app`, or `apiextensions.k8s.io/v1/CustomResourceDefinition x`
    /// for a cluster-scoped object.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ", self.api_version(), self.kind)?;
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A revision as Tether reports it: `<ref name>@sha1:<commit>`.
pub fn format_revision(ref_name: &str, sha: &str) -> String {
    format!("{ref_name}@sha1:{sha}")
}

/// A revision shortened for a printer column: `main@sha1:4f2c1a9...` becomes `main@4f2c1a9`.
/// A pinned commit, `sha1:4f2c1a9...`, becomes `4f2c1a9`.
pub fn short_revision(revision: &str) -> String {
    let short = |sha: &str| sha.get(..7).unwrap_or(sha).to_owned();
    match revision.rsplit_once("@sha1:") {
        Some((name, sha)) => format!("{name}@{}", short(sha)),
        None => match revision.strip_prefix("sha1:") {
            Some(sha) => short(sha),
            None => revision.to_owned(),
        },
    }
}

/// The `GitRepository` CustomResourceDefinition as YAML, as committed in `crds/`.
pub fn crd_yaml() -> String {
    let crd = GitRepository::crd();
    // Serialising a CRD cannot fail: it is plain data with string keys.
    let yaml = serde_yaml_ng::to_string(&crd).unwrap_or_else(|e| format!("# {e}\n"));
    format!("# Generated from operator/src/crd.rs: run `make crds` after changing it.\n---\n{yaml}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec_from(yaml: &str) -> GitRepositorySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec = spec_from("url: https://example.com/org/repo.git\n");
        assert_eq!(spec.interval, "5m");
        assert_eq!(spec.timeout, "1m");
        assert!(spec.prune);
        assert!(!spec.suspend);
        assert!(!spec.wait);
        assert_eq!(
            spec.git_ref.target().unwrap(),
            RefTarget::Branch("main".into())
        );
        assert_eq!(spec.interval().unwrap().as_secs(), 300);
        assert_eq!(spec.timeout().unwrap().as_secs(), 60);
        assert_eq!(spec.path(), "");
    }

    #[test]
    fn ref_target_names_the_one_field_set() {
        let spec = spec_from("url: file:///tmp/r\nref: {tag: v1.2.0}\n");
        assert_eq!(
            spec.git_ref.target().unwrap(),
            RefTarget::Tag("v1.2.0".into())
        );
        let spec = spec_from("url: file:///tmp/r\nref: {semver: '^1'}\n");
        assert_eq!(
            spec.git_ref.target().unwrap(),
            RefTarget::Semver("^1".into())
        );
    }

    #[test]
    fn two_refs_at_once_are_refused() {
        let spec = spec_from("url: file:///tmp/r\nref: {branch: main, tag: v1}\n");
        let err = spec.git_ref.target().unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.ref: at most one of branch, tag, semver and commit may be set, found branch and tag"
        );
    }

    #[test]
    fn path_is_normalised() {
        let mut spec = spec_from("url: file:///tmp/r\npath: ./deploy/\n");
        assert_eq!(spec.path(), "deploy");
        spec.path = Some(".".into());
        assert_eq!(spec.path(), "");
        spec.path = Some("/a/b".into());
        assert_eq!(spec.path(), "a/b");
    }

    #[test]
    fn revisions_are_formatted_and_shortened() {
        let sha = "4f2c1a9e0b7d6c5a4f3e2d1c0b9a8f7e6d5c4b3a";
        let rev = format_revision("main", sha);
        assert_eq!(rev, format!("main@sha1:{sha}"));
        assert_eq!(short_revision(&rev), "main@4f2c1a9");
        assert_eq!(
            short_revision(&format_revision("v1.2.0", sha)),
            "v1.2.0@4f2c1a9"
        );
        assert_eq!(short_revision(&format!("sha1:{sha}")), "4f2c1a9");
    }

    #[test]
    fn object_ref_displays_like_kubectl() {
        let cm = ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: "app".into(),
        };
        assert_eq!(cm.to_string(), "v1/ConfigMap default/app");
        let ns = ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: "team-a".into(),
        };
        assert_eq!(ns.to_string(), "v1/Namespace team-a");
        let mut other_version = cm.clone();
        other_version.version = "v2".into();
        assert!(cm.same_object(&other_version));
    }

    #[test]
    fn url_pattern_accepts_the_documented_forms() {
        let url = regex::Regex::new(URL_PATTERN).unwrap();
        let re = |_: &str, s: &str| url.is_match(s);
        for ok in [
            "https://github.com/org/repo.git",
            "http://127.0.0.1:8080/repo.git",
            "ssh://git@127.0.0.1:2222/srv/repo.git",
            "git@github.com:org/repo.git",
            "git@127.0.0.1:/srv/git/repo.git",
            "file:///tmp/repo",
        ] {
            assert!(re(URL_PATTERN, ok), "{ok} should be accepted");
        }
        for bad in [
            "github.com/org/repo",
            "ftp://x/y",
            "https://",
            "",
            "git@host:",
            "git@host://repo",
        ] {
            assert!(!re(URL_PATTERN, bad), "{bad} should be refused");
        }
    }

    #[test]
    fn duration_pattern_matches_what_the_parser_accepts() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["30s", "5m", "1h", "1h30m", "500ms", "1.5h"] {
            assert!(re.is_match(ok), "{ok}");
            assert!(duration::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "5", "m", "5 m", "-5m", "1d", "5mins"] {
            assert!(!re.is_match(bad), "{bad}");
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crd_has_schema_validation_printer_columns_and_status() {
        let yaml = crd_yaml();
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("at most one of branch, tag, semver and commit may be set"));
        assert!(yaml.contains(DURATION_PATTERN));
        assert!(yaml.contains("shortNames"));
        assert!(yaml.contains("lastAppliedRevisionShort"));
        assert!(yaml.contains("status: {}"));
        let crd = GitRepository::crd();
        let names: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["URL", "Revision", "Ready", "Status", "Age"]);
    }
}
