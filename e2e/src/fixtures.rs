//! What the tests, the benches and the demo apply and commit: manifests (Namespaces, ConfigMaps, CRDs,
//! a small app), `GitRepository` objects and the Secrets they name, and values no one can guess.

use anyhow::Result;

use crate::git_server::{HttpsGitServer, SshGitServer, Upstream};
use crate::kubectl::Kubectl;

/// A Namespace.
pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// A ConfigMap `name` in `ns` whose `data.greeting` is `greeting` (read back by [`greeting`]).
pub fn config_map(ns: &str, name: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  greeting: {greeting}\n"
    )
}

/// Writes [`config_map`] to `deploy/config.yaml` and commits it ("greet with <greeting>"); returns the
/// commit.
pub fn commit_config_map(repo: &Upstream, ns: &str, name: &str, greeting: &str) -> Result<String> {
    repo.commit_file(
        "deploy/config.yaml",
        &config_map(ns, name, greeting),
        &format!("greet with {greeting}"),
    )
}

/// `kubectl get configmap <name> -n <ns> -o jsonpath={.data.greeting}` as arguments, for polling.
pub fn greeting_args<'a>(ns: &'a str, name: &'a str) -> [&'a str; 7] {
    [
        "get",
        "configmap",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.data.greeting}",
    ]
}

/// `data.greeting` of the ConfigMap `name` in `ns`, as [`config_map`] wrote it.
pub fn greeting(kubectl: &Kubectl, ns: &str, name: &str) -> Result<String> {
    kubectl.run(&greeting_args(ns, name))
}

/// A `GitRepository` with `extra` spec lines (indented by two spaces).
pub fn git_repository(ns: &str, name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  url: {url}\n{extra}"
    )
}

/// A Secret `name` in `ns` with `server`'s basic-auth user, password and CA, for a `GitRepository`'s
/// `secretRef` over HTTPS.
pub fn https_secret(ns: &str, name: &str, server: &HttpsGitServer) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  username: {user}\n  password: {pw}\n  caFile: |\n{ca}",
        user = server.username(),
        pw = server.password(),
        ca = indent(server.ca_pem(), 4),
    )
}

/// A Secret `name` in `ns` with `server`'s client key and host key, for a `GitRepository`'s
/// `secretRef` over SSH.
pub fn ssh_secret(ns: &str, name: &str, server: &SshGitServer) -> Result<String> {
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  identity: |\n{key}  known_hosts: |\n{hosts}",
        key = indent(&server.client_key_pem()?, 4),
        hosts = indent(server.known_hosts(), 4),
    ))
}

/// A namespaced CRD `<plural>.<group>` of kind `kind`, with one served and stored version `v1` whose
/// `openAPIV3Schema` is `schema` (YAML, not indented).
pub fn crd(group: &str, kind: &str, plural: &str, schema: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: {plural}, singular: {singular}, kind: {kind}}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
{schema}"#,
        singular = kind.to_lowercase(),
        schema = indent(schema, 8),
    )
}

/// A namespaced CRD `widgets.<group>` (kind `Widget`, `spec.size` an integer), for tests that apply
/// a CRD and its objects.
pub fn widget_crd(group: &str) -> String {
    crd(
        group,
        "Widget",
        "widgets",
        "type: object\nproperties:\n  spec:\n    type: object\n    properties:\n      size: {type: integer}\n",
    )
}

/// A small app under `deploy/`: a Namespace of its own, a Deployment, a Service and a ConfigMap in
/// the test's namespace.
pub fn write_app(repo: &Upstream, ns: &str, greeting: &str) -> Result<()> {
    repo.write("deploy/namespace.yaml", &namespace(&format!("{ns}-app")))?;
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

/// `text` with every line indented by `by` spaces, for a block scalar in YAML.
pub fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// `<prefix>-<pid>-<time>`: a value unlikely to repeat between runs or to be guessed by a test that
/// means to be wrong (passwords, tokens, webhook secrets).
pub fn unguessable(prefix: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{prefix}-{:x}-{:x}{:x}",
        std::process::id(),
        now.as_secs(),
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_the_yaml_the_tests_apply() -> Result<()> {
        let crd: serde_json::Value = serde_yaml_ng::from_str(&widget_crd("example.dev"))?;
        assert_eq!(crd["metadata"]["name"], "widgets.example.dev");
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(
            schema["properties"]["spec"]["properties"]["size"]["type"],
            "integer"
        );
        let repo: serde_json::Value =
            serde_yaml_ng::from_str(&git_repository("ns", "app", "file:///r.git", "  path: x\n"))?;
        assert_eq!(repo["spec"]["url"], "file:///r.git");
        assert_eq!(repo["spec"]["path"], "x");
        assert_eq!(indent("a\nb", 2), "  a\n  b\n");
        Ok(())
    }
}
