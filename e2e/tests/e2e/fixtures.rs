//! Manifests and `GitRepository` objects the operator tests share.

use tether_e2e::git_server::Upstream;
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::{Operator, get_field, wait_condition, wait_for_output};

/// A small app under `deploy/`: a Namespace of its own, a Deployment, a Service and a ConfigMap in
/// the test's namespace.
pub fn write_app(repo: &Upstream, ns: &str, greeting: &str) -> anyhow::Result<()> {
    repo.write(
        "deploy/namespace.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}-app\n"),
    )?;
    repo.write("deploy/config.yaml", &config_map(ns, "settings", greeting))?;
    repo.write(
        "deploy/app.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  selector: {{app: web}}
  ports:
  - port: 80
"#
        ),
    )?;
    repo.write("README.md", "Not a manifest: left alone.\n")?;
    Ok(())
}

/// A namespaced CRD `widgets.<group>` (kind `Widget`, `spec.size` an integer), for tests that apply
/// a CRD and its objects.
pub fn widget_crd(group: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
"#
    )
}

pub fn config_map(ns: &str, name: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  greeting: {greeting}\n"
    )
}

/// A `GitRepository` with `extra` spec lines (indented by two spaces).
pub fn git_repository(ns: &str, name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  url: {url}\n{extra}"
    )
}

/// `kubectl get gitrepo <name> -o jsonpath=<path>` as arguments for [`wait_for_output`].
pub fn field_args<'a>(ns: &'a str, name: &'a str, path: &'a str) -> Vec<&'a str> {
    vec!["get", "gitrepo", name, "-n", ns, "-o", path]
}

/// Waits until `status.lastAppliedRevision` is `revision` (e.g. `main@sha1:<sha>`).
pub fn wait_applied(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    revision: &str,
    operator: &Operator,
) -> anyhow::Result<()> {
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastAppliedRevision}"),
        revision,
        operator,
    )
}

/// The `Ready` condition as `(status, reason, message)`.
pub fn ready_condition(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
) -> anyhow::Result<(String, String, String)> {
    let read = |what: &str| {
        get_field(
            kubectl,
            ns,
            name,
            &format!("{{.status.conditions[?(@.type==\"Ready\")].{what}}}"),
        )
    };
    Ok((read("status")?, read("reason")?, read("message")?))
}

/// Waits until `revision` was attempted and `Ready` is False; returns the Ready condition.
pub fn wait_failed(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    revision: &str,
    operator: &Operator,
) -> anyhow::Result<(String, String, String)> {
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastAttemptedRevision}"),
        revision,
        operator,
    )?;
    wait_condition(kubectl, ns, name, "condition=Ready=False", "30s", operator)?;
    ready_condition(kubectl, ns, name)
}

/// `<kind>/<name>` of every object of `kinds` in `ns`, one a line, as kubectl prints them.
pub fn names(kubectl: &Kubectl, ns: &str, kinds: &str) -> anyhow::Result<String> {
    Ok(kubectl
        .run(&["get", kinds, "-n", ns, "-o", "name"])?
        .trim()
        .to_string())
}

/// `data.greeting` of a ConfigMap.
pub fn greeting(kubectl: &Kubectl, ns: &str, name: &str) -> anyhow::Result<String> {
    kubectl.run(&[
        "get",
        "configmap",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.data.greeting}",
    ])
}

/// Asks for a reconcile with the `tether.dev/reconcile-requested-at` annotation and waits until the
/// operator reports it handled: afterwards the cluster reflects whatever the remote says now.
pub fn reconcile_now(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    token: &str,
    operator: &Operator,
) -> anyhow::Result<()> {
    kubectl.run(&[
        "annotate",
        "gitrepo",
        name,
        "-n",
        ns,
        "--overwrite",
        &format!("tether.dev/reconcile-requested-at={token}"),
    ])?;
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastHandledReconcileAt}"),
        token,
        operator,
    )
}
