//! Manifests and `GitRepository` objects the operator tests share.

use tether_e2e::git_server::Upstream;

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
