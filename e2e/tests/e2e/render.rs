//! Rendering end to end, with the real kustomize, helm and sops: a kustomize overlay over a base
//! outside `spec.path` and a helm chart with a vendored subchart and CRDs land exactly as the tools
//! render them (the test runs the same tool on a clone of the same commit and compares with the
//! cluster), and follow the next pushes; the inputs Tether refuses to render fail as a whole with a
//! message of their own; SOPS-encrypted files are decrypted with the age keys of a Secret, and their
//! plaintext reaches neither the log, the Events, the status nor the operator's folders.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use serde_json::Value;
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting, unguessable, widget_crd};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{
    get_field, install_crds, patch_spec, ready_condition, reconcile_now, wait_applied, wait_failed,
    wait_ready, wait_reason,
};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::render_tools::{self, RenderTools};
use tether_e2e::tool;

use crate::charts::documents;

// ---------------------------------------------------------------------------------------------
// What the tests compare with: the tools run on a clone, and the cluster read back.

/// A clone of `repo` at `commit` in a folder of its own: the folder, and the work tree in it.
fn clone_at(repo: &Upstream, commit: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("tether-render-clone-")
        .tempdir()?;
    let src = dir.path().join("src");
    repo.file_remote().clone_into(&src)?;
    let at = src.to_str().context("clone path is not UTF-8")?;
    tool::run(
        "git",
        &[
            "-C",
            at,
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit,
        ],
        None,
    )?;
    Ok((dir, src))
}

/// `kustomize build <path> --load-restrictor LoadRestrictionsRootOnly` on a clone of `commit`, as
/// the operator runs it: the objects it prints.
fn kustomize_build(
    tools: &RenderTools,
    repo: &Upstream,
    commit: &str,
    path: &str,
) -> Result<Vec<Value>> {
    let (_dir, src) = clone_at(repo, commit)?;
    let out = tool::run_command(
        Command::new(&tools.kustomize)
            .args([
                "build",
                path,
                "--load-restrictor",
                "LoadRestrictionsRootOnly",
            ])
            .current_dir(&src),
        None,
    )?;
    documents(&out)
}

/// `helm template <args>` on a clone of `commit`, with a home of its own and the inline values
/// `values` as the last values file (appended to `args` as `--values`): the objects it prints.
fn helm_template(
    tools: &RenderTools,
    repo: &Upstream,
    commit: &str,
    args: &[&str],
    values: &Value,
) -> Result<Vec<Value>> {
    let (dir, src) = clone_at(repo, commit)?;
    let home = dir.path().join("home");
    std::fs::create_dir(&home)?;
    let inline = dir.path().join("values.json");
    std::fs::write(&inline, serde_json::to_vec(values)?)?;
    let out = tool::run_command(
        Command::new(&tools.helm)
            .arg("template")
            .args(args)
            .arg("--values")
            .arg(&inline)
            .current_dir(&src)
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-kubeconfig")),
        None,
    )?;
    documents(&out)
}

/// `(kind, name)` of an object, rendered or from an inventory entry.
fn kind_name(object: &Value) -> Result<(String, String)> {
    let kind = object["kind"].as_str();
    let name = object["metadata"]["name"]
        .as_str()
        .or_else(|| object["name"].as_str());
    match (kind, name) {
        (Some(kind), Some(name)) => Ok((kind.to_string(), name.to_string())),
        _ => bail!("an object without kind or name: {object}"),
    }
}

/// Whether an absent field in the cluster can stand for a rendered one: null, `{}` or `[]`.
fn empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Checks that `rendered` is contained in `live`: every field the tool rendered is in the live object
/// with the same value (the live one has the server's fields besides), lists item by item. The error
/// names the first field that differs, as a path from the object's root.
fn is_subset(rendered: &Value, live: &Value, at: &str) -> Result<(), String> {
    match (rendered, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let here = format!("{at}.{key}");
                match have.get(key) {
                    Some(found) => is_subset(value, found, &here)?,
                    None if empty(value) => {}
                    None => return Err(format!("{here}: rendered {value}, absent in the cluster")),
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => {
            if want.len() != have.len() {
                return Err(format!(
                    "{at}: {} items rendered, {} in the cluster: {live}",
                    want.len(),
                    have.len()
                ));
            }
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                is_subset(w, h, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (want, have) if want == have => Ok(()),
        (want, have) => Err(format!("{at}: rendered {want}, the cluster has {have}")),
    }
}

/// Checks that the cluster holds what `rendered` says, as the GitRepository `owner` applied it: its
/// inventory is the same set of objects (kind, name), and each live object has every rendered field.
fn check_cluster(kubectl: &Kubectl, ns: &str, owner: &str, rendered: &[Value]) -> Result<()> {
    let want = rendered
        .iter()
        .map(kind_name)
        .collect::<Result<BTreeSet<_>>>()?;
    let inventory = get_field(kubectl, ns, owner, "{.status.inventory}")?;
    let inventory: Vec<Value> =
        serde_json::from_str(&inventory).with_context(|| format!("inventory {inventory:?}"))?;
    let have = inventory
        .iter()
        .map(kind_name)
        .collect::<Result<BTreeSet<_>>>()?;
    ensure!(
        want == have,
        "{owner}: rendered {want:?}, but the inventory holds {have:?}"
    );
    for object in rendered {
        let (kind, name) = kind_name(object)?;
        let live = kubectl
            .run_with_stdin(
                &["get", "-n", ns, "-f", "-", "-o", "json"],
                Some(&object.to_string()),
            )
            .with_context(|| format!("reading {kind} {name} back"))?;
        let mut live: Value = serde_json::from_str(&live)?;
        // kubectl answers `get -f` with a List, here of one item.
        if live["kind"] == "List" {
            live = match live["items"].as_array().map(Vec::as_slice) {
                Some([one]) => one.clone(),
                _ => bail!("kubectl get {kind} {name} printed {live}"),
            };
        }
        is_subset(object, &live, "").map_err(|e| anyhow!("{kind} {name}: {e}"))?;
    }
    Ok(())
}

/// The rendered object of `kind` whose name is `name`.
fn find<'a>(rendered: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    rendered
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered output"))
}

/// `kubectl get <kind> <name> -n <ns> -o jsonpath=<path>`.
fn live(kubectl: &Kubectl, ns: &str, kind: &str, name: &str, path: &str) -> Result<String> {
    kubectl.run(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// Fails when `<kind>/<name>` exists in `ns`.
fn ensure_gone(kubectl: &Kubectl, ns: &str, kind: &str, name: &str) -> Result<()> {
    let found = kubectl.run(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "--ignore-not-found",
        "-o",
        "name",
    ])?;
    ensure!(
        found.trim().is_empty(),
        "{kind} {name} is still in the cluster"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Kustomize.

/// A fleet repository as teams lay them out: `apps/base` (a Deployment, a Service, a ConfigMap
/// generated from `settings.properties`), a `components/debug` component, and the overlay
/// `clusters/dev` over both, with an image override, a strategic-merge patch and a JSON 6902 patch.
fn write_fleet(repo: &Upstream, ns: &str, settings: &str) -> Result<()> {
    repo.write(
        "apps/base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- deployment.yaml
- service.yaml
configMapGenerator:
- name: web-config
  files:
  - settings.properties
",
    )?;
    repo.write("apps/base/settings.properties", settings)?;
    repo.write(
        "apps/base/deployment.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
        volumeMounts:
        - {name: config, mountPath: /etc/web}
      volumes:
      - name: config
        configMap: {name: web-config}
",
    )?;
    repo.write(
        "apps/base/service.yaml",
        "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
",
    )?;
    repo.write(
        "components/debug/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources:
- debug-flags.yaml
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      template:
        spec:
          containers:
          - name: web
            env:
            - {name: DEBUG, value: \"true\"}
",
    )?;
    repo.write(
        "components/debug/debug-flags.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: debug-flags\ndata:\n  verbose: \"yes\"\n",
    )?;
    repo.write(
        "clusters/dev/kustomization.yaml",
        &format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {ns}
resources:
- ../../apps/base
components:
- ../../components/debug
images:
- name: registry.example/web
  newName: registry.example/web-dev
  newTag: \"2.0\"
patches:
- path: replicas.yaml
- path: service-port.yaml
  target: {{kind: Service, name: web}}
"
        ),
    )?;
    repo.write(
        "clusters/dev/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
    )?;
    repo.write(
        "clusters/dev/service-port.yaml",
        "- op: replace\n  path: /spec/ports/0/port\n  value: 8081\n",
    )?;
    repo.write("README.md", "The dev cluster: clusters/dev.\n")?;
    Ok(())
}

/// The name kustomize gave the ConfigMap generated as `web-config` (with its content hash).
fn generated_config(rendered: &[Value]) -> Result<String> {
    let names: Vec<&str> = rendered
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("web-config-"))
        .collect();
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        other => bail!("expected one generated web-config-<hash> ConfigMap, found {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kustomize_overlay_lands_as_kustomize_builds_it_and_a_new_generator_input_replaces_its_configmap()
-> Result<()> {
    let tools = render_tools::locate()?;
    let ns = TestNamespace::create("render-kustomize").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("fleet")?;
    write_fleet(&repo, n, "color=blue\n")?;
    let first = repo.commit("the dev overlay")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    // No spec.render: the kustomization file in clusters/dev tells it.
    kubectl.apply(&git_repository(
        n,
        "fleet",
        &repo.file_url(),
        "  path: clusters/dev\n  interval: 2s\n",
    ))?;
    wait_ready(kubectl, n, "fleet", "90s", &operator)?;
    wait_applied(
        kubectl,
        n,
        "fleet",
        &format!("main@sha1:{first}"),
        &operator,
    )?;

    let rendered = kustomize_build(tools, &repo, &first, "clusters/dev")?;
    ensure!(
        rendered.len() == 4,
        "kustomize rendered {} objects: {rendered:?}",
        rendered.len()
    );
    check_cluster(kubectl, n, "fleet", &rendered)?;
    // What each part of the overlay did, read from the cluster.
    let old = generated_config(&rendered)?;
    let image = live(
        kubectl,
        n,
        "deployment",
        "web",
        "{.spec.template.spec.containers[0].image}",
    )?;
    ensure!(
        image == "registry.example/web-dev:2.0",
        "images: override: {image}"
    );
    let replicas = live(kubectl, n, "deployment", "web", "{.spec.replicas}")?;
    ensure!(
        replicas == "3",
        "strategic-merge patch: replicas {replicas}"
    );
    let env = live(
        kubectl,
        n,
        "deployment",
        "web",
        "{.spec.template.spec.containers[0].env[0].name}",
    )?;
    ensure!(env == "DEBUG", "the component's patch: env {env:?}");
    let volume = live(
        kubectl,
        n,
        "deployment",
        "web",
        "{.spec.template.spec.volumes[0].configMap.name}",
    )?;
    ensure!(volume == old, "the volume names {volume:?}, not {old:?}");
    let port = live(kubectl, n, "service", "web", "{.spec.ports[0].port}")?;
    ensure!(port == "8081", "JSON 6902 patch: port {port}");
    let settings = live(
        kubectl,
        n,
        "configmap",
        &old,
        "{.data.settings\\.properties}",
    )?;
    ensure!(
        settings.trim() == "color=blue",
        "generated data {settings:?}"
    );

    // A new input for the generator: a ConfigMap of a new name, the Deployment pointed at it, and
    // the old one pruned.
    repo.write("apps/base/settings.properties", "color=green\n")?;
    let second = repo.commit("green")?;
    repo.push()?;
    wait_applied(
        kubectl,
        n,
        "fleet",
        &format!("main@sha1:{second}"),
        &operator,
    )?;
    let rendered = kustomize_build(tools, &repo, &second, "clusters/dev")?;
    let new = generated_config(&rendered)?;
    ensure!(new != old, "the generated name did not change: {new}");
    check_cluster(kubectl, n, "fleet", &rendered)?;
    let volume = live(
        kubectl,
        n,
        "deployment",
        "web",
        "{.spec.template.spec.volumes[0].configMap.name}",
    )?;
    ensure!(volume == new, "the volume names {volume:?}, not {new:?}");
    ensure_gone(kubectl, n, "configmap", &old)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Helm.

/// A chart at `chart/`: a vendored subchart in `charts/sub`, a CRD of `group` in `crds/` and a
/// template making one of its objects, a ConfigMap of values, one to remove later, and a hook that
/// `--no-hooks` leaves out; `values-dev.yaml` sets the `color` given.
fn write_chart(repo: &Upstream, group: &str, color: &str) -> Result<()> {
    repo.write(
        "chart/Chart.yaml",
        "apiVersion: v2
name: shop
version: 0.1.0
dependencies:
- name: sub
  version: 0.1.0
  repository: file://charts/sub
",
    )?;
    repo.write(
        "chart/values.yaml",
        "color: blue\nenv: base\ngreeting: hello\nwidget:\n  size: 1\n",
    )?;
    repo.write(
        "chart/values-dev.yaml",
        &format!("color: {color}\nenv: dev\nwidget:\n  size: 3\nsub:\n  note: from-dev\n"),
    )?;
    repo.write("chart/crds/widgets.yaml", &widget_crd(group))?;
    repo.write(
        "chart/templates/widget.yaml",
        &format!(
            "apiVersion: {group}/v1
kind: Widget
metadata:
  name: {{{{ .Release.Name }}}}-widget
spec:
  size: {{{{ .Values.widget.size }}}}
"
        ),
    )?;
    repo.write(
        "chart/templates/settings.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
  labels:
    chart: {{ .Chart.Name }}-{{ .Chart.Version }}
data:
  color: {{ .Values.color | quote }}
  env: {{ .Values.env | quote }}
  greeting: {{ .Values.greeting | quote }}
  namespace: {{ .Release.Namespace | quote }}
  kube: {{ .Capabilities.KubeVersion.Version | quote }}
",
    )?;
    repo.write(
        "chart/templates/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  here: \"yes\"\n",
    )?;
    repo.write(
        "chart/templates/hook.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-hook
  annotations:
    helm.sh/hook: pre-install
data:
  hook: \"yes\"
",
    )?;
    repo.write(
        "chart/charts/sub/Chart.yaml",
        "apiVersion: v2\nname: sub\nversion: 0.1.0\n",
    )?;
    repo.write("chart/charts/sub/values.yaml", "note: from-sub\n")?;
    repo.write(
        "chart/charts/sub/templates/note.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-sub\ndata:\n  note: {{ .Values.note | quote }}\n",
    )?;
    Ok(())
}

/// The API server's version as helm's `--kube-version` takes it (`v1.36.3`).
fn server_version(kubectl: &Kubectl) -> Result<String> {
    let out: Value = serde_json::from_str(&kubectl.run(&["version", "-o", "json"])?)?;
    out["serverVersion"]["gitVersion"]
        .as_str()
        .map(str::to_string)
        .context("kubectl version prints no serverVersion.gitVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_chart_with_a_subchart_and_crds_lands_as_helm_templates_it_and_follows_its_values()
-> Result<()> {
    let tools = render_tools::locate()?;
    let ns = TestNamespace::create("render-helm").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let group = format!("{n}.e2e.tether.dev");
    let repo = Upstream::new("shop")?;
    write_chart(&repo, &group, "green")?;
    let first = repo.commit("the shop chart")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    // No spec.render: Chart.yaml in chart/ tells it. The release is the GitRepository's name, in
    // its namespace.
    kubectl.apply(&git_repository(
        n,
        "shop",
        &repo.file_url(),
        "  path: chart\n  interval: 2s\n  helm:\n    valuesFiles: [values-dev.yaml]\n    values:\n      greeting: from-spec\n",
    ))?;
    wait_ready(kubectl, n, "shop", "90s", &operator)?;
    wait_applied(kubectl, n, "shop", &format!("main@sha1:{first}"), &operator)?;

    let version = server_version(kubectl)?;
    let args = [
        "shop",
        "./chart",
        "--namespace",
        n,
        "--include-crds",
        "--no-hooks",
        "--skip-tests",
        "--kube-version",
        &version,
        "--values",
        "./chart/values-dev.yaml",
    ];
    let inline = serde_json::json!({"greeting": "from-spec"});
    let rendered = helm_template(tools, &repo, &first, &args, &inline)?;
    let kinds: BTreeSet<(String, String)> =
        rendered.iter().map(kind_name).collect::<Result<_>>()?;
    ensure!(
        kinds
            == BTreeSet::from(
                [
                    ("CustomResourceDefinition", format!("widgets.{group}")),
                    ("Widget", "shop-widget".to_string()),
                    ("ConfigMap", "shop-settings".to_string()),
                    ("ConfigMap", "shop-extra".to_string()),
                    ("ConfigMap", "shop-sub".to_string()),
                ]
                .map(|(k, n)| (k.to_string(), n))
            ),
        "helm rendered {kinds:?}"
    );
    check_cluster(kubectl, n, "shop", &rendered)?;
    // The values as layered: the chart's, values-dev.yaml's, spec.helm.values; the subchart's
    // value from the parent's values file; the cluster's version.
    let data = &find(&rendered, "ConfigMap", "shop-settings")?["data"];
    ensure!(
        data["color"] == "green"
            && data["env"] == "dev"
            && data["greeting"] == "from-spec"
            && data["namespace"] == n
            && data["kube"] == version.as_str(),
        "shop-settings rendered {data}"
    );
    let note = live(kubectl, n, "configmap", "shop-sub", "{.data.note}")?;
    ensure!(note == "from-dev", "the subchart's note {note:?}");
    let size = live(
        kubectl,
        n,
        &format!("widgets.{group}"),
        "shop-widget",
        "{.spec.size}",
    )?;
    ensure!(size == "3", "widget size {size:?}");
    ensure_gone(kubectl, n, "configmap", "shop-hook")?;

    // A value changed in the values file: the object follows at the next push.
    write_chart(&repo, &group, "purple")?;
    let second = repo.commit("purple for dev")?;
    repo.push()?;
    wait_applied(
        kubectl,
        n,
        "shop",
        &format!("main@sha1:{second}"),
        &operator,
    )?;
    let rendered = helm_template(tools, &repo, &second, &args, &inline)?;
    check_cluster(kubectl, n, "shop", &rendered)?;
    let color = live(kubectl, n, "configmap", "shop-settings", "{.data.color}")?;
    ensure!(color == "purple", "color {color:?} after the push");

    // A template removed: its object is pruned.
    repo.remove("chart/templates/extra.yaml")?;
    let third = repo.commit("no extra")?;
    repo.push()?;
    wait_applied(kubectl, n, "shop", &format!("main@sha1:{third}"), &operator)?;
    let rendered = helm_template(tools, &repo, &third, &args, &inline)?;
    ensure!(find(&rendered, "ConfigMap", "shop-extra").is_err());
    check_cluster(kubectl, n, "shop", &rendered)?;
    ensure_gone(kubectl, n, "configmap", "shop-extra")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Refusals.

/// The files of `deploy/` in one commit, given the namespace and the greeting of `settings`.
type Layout = fn(&str, &str) -> Vec<(&'static str, String)>;

/// One commit Tether must refuse to render, and what its Ready message must say.
struct Refusal {
    what: &'static str,
    files: Layout,
    message_names: &'static [&'static str],
}

/// A kustomization of `settings` with `extra` lines.
fn kustomization(extra: &str) -> String {
    format!("resources:\n- config.yaml\n{extra}")
}

/// A chart of `settings` and the template `name` with `body`.
fn chart_with(
    ns: &str,
    greeting: &str,
    name: &'static str,
    body: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "deploy/Chart.yaml",
            "apiVersion: v2\nname: app\nversion: 0.1.0\n".to_string(),
        ),
        (
            "deploy/templates/config.yaml",
            config_map(ns, "settings", greeting),
        ),
        (name, body.to_string()),
    ]
}

/// The good layout: a kustomization of `settings`.
fn kustomized(ns: &str, greeting: &str) -> Vec<(&'static str, String)> {
    vec![
        ("deploy/kustomization.yaml", kustomization("")),
        ("deploy/config.yaml", config_map(ns, "settings", greeting)),
    ]
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        what: "a remote base",
        files: |ns, greeting| {
            vec![
                (
                    "deploy/kustomization.yaml",
                    kustomization("- https://github.com/org/repo//base?ref=v1\n"),
                ),
                ("deploy/config.yaml", config_map(ns, "settings", greeting)),
            ]
        },
        message_names: &[
            "deploy/kustomization.yaml: resources[1]",
            "is a remote base",
            "--allow-remote-bases",
        ],
    },
    Refusal {
        what: "an exec plugin",
        files: |ns, greeting| {
            vec![
                (
                    "deploy/kustomization.yaml",
                    kustomization("transformers:\n- annotate.yaml\n"),
                ),
                ("deploy/config.yaml", config_map(ns, "settings", greeting)),
                (
                    "deploy/annotate.yaml",
                    "apiVersion: example.dev/v1
kind: Annotator
metadata:
  name: annotate
  annotations:
    config.kubernetes.io/function: |
      exec:
        path: ./fn.sh
"
                    .to_string(),
                ),
                ("deploy/fn.sh", "#!/bin/sh\ncat\n".to_string()),
            ]
        },
        message_names: &[
            "kustomize build deploy",
            "external plugins disabled",
            "Tether runs no exec or KRM-function plugins",
        ],
    },
    Refusal {
        what: "a base outside the repository",
        files: |ns, greeting| {
            vec![
                (
                    "deploy/kustomization.yaml",
                    kustomization("- ../../../../etc\n"),
                ),
                ("deploy/config.yaml", config_map(ns, "settings", greeting)),
            ]
        },
        message_names: &[
            "deploy/kustomization.yaml: resources[1] \"../../../../etc\"",
            "leads outside the repository",
        ],
    },
    Refusal {
        what: "a chart past spec.timeout",
        files: |ns, greeting| {
            chart_with(
                ns,
                greeting,
                "deploy/templates/slow.yaml",
                "{{- range $i := until 10000 }}{{- range $j := until 10000 }}{{- end }}{{- end }}\n",
            )
        },
        message_names: &[
            "helm template app deploy",
            "still running after 2s",
            "spec.timeout",
        ],
    },
    Refusal {
        what: "a chart printing more than --max-revision-bytes",
        files: |ns, greeting| {
            chart_with(
                ns,
                greeting,
                "deploy/templates/big.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n\
                 {{- range $i := until 5000 }}\n  k{{ $i }}: {{ repeat 60 \"x\" | quote }}\n{{- end }}\n",
            )
        },
        message_names: &[
            "helm template app deploy",
            "limit of 200000 bytes",
            "--max-revision-bytes",
        ],
    },
];

/// Replaces `deploy/` by `files`.
fn lay_out(repo: &Upstream, files: &[(&str, String)]) -> Result<()> {
    if repo.work_path().join("deploy").exists() {
        repo.remove("deploy")?;
    }
    for (path, contents) in files {
        repo.write(path, contents)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_tether_refuses_fails_whole_with_its_own_message_and_the_next_commit_recovers()
-> Result<()> {
    render_tools::locate()?;
    let ns = TestNamespace::create("render-refused").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("refused")?;
    lay_out(&repo, &kustomized(n, "v0"))?;
    let good = repo.commit("a kustomization")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &["--max-revision-bytes=200000"])?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  timeout: 2s\n",
    ))?;
    wait_ready(kubectl, n, "app", "90s", &operator)?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{good}"), &operator)?;

    for (i, case) in REFUSALS.iter().enumerate() {
        let after = format!("v{}", i + 1);
        // The commit also changes a good object: it may not reach the cluster either.
        lay_out(&repo, &(case.files)(n, &after))?;
        let bad = repo.commit(&format!("add {}", case.what))?;
        repo.push()?;

        let (_, reason, message) =
            wait_failed(kubectl, n, "app", &format!("main@sha1:{bad}"), &operator)?;
        eprintln!("{}: {reason}: {message}", case.what);
        ensure!(
            reason == "RenderFailed",
            "{}: reason {reason:?}, message {message:?}",
            case.what
        );
        for want in case.message_names {
            ensure!(
                message.contains(want),
                "{}: the Ready message does not say {want:?}: {message}",
                case.what
            );
        }
        let kept = greeting(kubectl, n, "settings")?;
        ensure!(
            kept == format!("v{i}"),
            "{}: settings changed to {kept:?} by a revision that did not render",
            case.what
        );
        ensure_gone(kubectl, n, "configmap", "big")?;

        // The next good commit recovers, and carries the change.
        lay_out(&repo, &kustomized(n, &after))?;
        let fixed = repo.commit(&format!("remove {}", case.what))?;
        repo.push()?;
        wait_applied(kubectl, n, "app", &format!("main@sha1:{fixed}"), &operator)?;
        wait_ready(kubectl, n, "app", "30s", &operator)?;
        ensure!(greeting(kubectl, n, "settings")? == after);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. SOPS.

/// A new age identity: `(recipient, private key)`, from the real `age-keygen`.
fn age_identity() -> Result<(String, String)> {
    let out = tool::run("age-keygen", &[], None)?;
    let recipient = out
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .context("age-keygen printed no public key")?;
    let key = out
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .context("age-keygen printed no private key")?;
    Ok((recipient.to_string(), key.to_string()))
}

/// `plaintext` encrypted by the real sops for `recipient`, as `format` (`yaml` or `dotenv`); for YAML
/// only `data` and `stringData` are encrypted, so the object stays readable.
fn sops_encrypt(
    tools: &RenderTools,
    recipient: &str,
    format: &str,
    plaintext: &str,
) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("tether-sops-").tempdir()?;
    let file = dir.path().join(format!("plain.{format}"));
    std::fs::write(&file, plaintext)?;
    let mut cmd = Command::new(&tools.sops);
    cmd.current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .args(["encrypt", "--age", recipient]);
    if format == "yaml" {
        cmd.args(["--encrypted-regex", "^(data|stringData)$"]);
    }
    cmd.args(["--input-type", format, "--output-type", format])
        .arg(&file);
    let out = tool::run_command(&mut cmd, None)?;
    ensure!(
        !out.contains(plaintext.trim()),
        "sops left the plaintext in: {out}"
    );
    Ok(out)
}

/// A Secret `sops-age` in `ns` whose `identity.agekey` is `key`.
fn age_secret(ns: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sops-age\n  namespace: {ns}\nstringData:\n  identity.agekey: {key}\n"
    )
}

/// `data.<key>` of the Secret `name`, decoded.
fn secret_value(kubectl: &Kubectl, ns: &str, name: &str, key: &str) -> Result<String> {
    let encoded = live(kubectl, ns, "secret", name, &format!("{{.data.{key}}}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .with_context(|| format!("secret {name} {key}: {encoded:?}"))?;
    Ok(String::from_utf8(bytes)?)
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Fails unless the render folder holds nothing at all.
fn ensure_render_dir_empty(operator: &Operator) -> Result<()> {
    let dir = operator.render_dir();
    let left: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    ensure!(
        left.is_empty(),
        "the render folder {} holds {left:?} while no render runs",
        dir.display()
    );
    Ok(())
}

/// Sets `spec.suspend` and waits until the operator reports it: then no render of `name` runs.
fn suspend(kubectl: &Kubectl, ns: &str, name: &str, on: bool, operator: &Operator) -> Result<()> {
    patch_spec(kubectl, ns, name, &format!(r#"{{"suspend":{on}}}"#))?;
    if on {
        wait_reason(kubectl, ns, name, "Suspended", operator)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sops_encrypted_files_are_decrypted_with_age_keys_and_their_plaintext_is_kept_out_of_sight()
-> Result<()> {
    let tools = render_tools::locate()?;
    let ns = TestNamespace::create("render-sops").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let (recipient, key) = age_identity()?;
    let password = unguessable("db-password");
    let token = unguessable("api-token");
    let plain_password = unguessable("plain-password");

    let repo = Upstream::new("secrets")?;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: {n}\ntype: Opaque\nstringData:\n  password: {password}\n"
    );
    repo.write(
        "deploy/secret.enc.yaml",
        &sops_encrypt(tools, &recipient, "yaml", &secret)?,
    )?;
    repo.write(
        "deploy/api.env",
        &sops_encrypt(tools, &recipient, "dotenv", &format!("API_TOKEN={token}\n"))?,
    )?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v1"))?;
    // Plain manifests, for a second GitRepository: decrypted without kustomize.
    let plain = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: plain-db\n  namespace: {n}\nstringData:\n  password: {plain_password}\n"
    );
    repo.write(
        "plain/secret.yaml",
        &sops_encrypt(tools, &recipient, "yaml", &plain)?,
    )?;
    repo.write(
        "deploy/kustomization.yaml",
        &format!(
            "namespace: {n}
resources:
- secret.enc.yaml
- config.yaml
secretGenerator:
- name: api
  envs:
  - api.env
generatorOptions:
  disableNameSuffixHash: true
"
        ),
    )?;
    let first = repo.commit("encrypted secrets")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&age_secret(n, &key))?;
    kubectl.apply(&git_repository(
        n,
        "secrets",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  ignore: [plain/]\n  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n",
    ))?;
    kubectl.apply(&git_repository(
        n,
        "plain",
        &repo.file_url(),
        "  path: plain\n  interval: 2s\n  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n",
    ))?;
    wait_ready(kubectl, n, "secrets", "90s", &operator)?;
    wait_applied(
        kubectl,
        n,
        "secrets",
        &format!("main@sha1:{first}"),
        &operator,
    )?;
    let got = secret_value(kubectl, n, "db", "password")?;
    ensure!(got == password, "db password {got:?}");
    let got = secret_value(kubectl, n, "api", "API_TOKEN")?;
    ensure!(got == token, "api token {got:?}");
    wait_ready(kubectl, n, "plain", "60s", &operator)?;
    let got = secret_value(kubectl, n, "plain-db", "password")?;
    ensure!(got == plain_password, "plain-db password {got:?}");

    // Nothing of the renders is left once none runs.
    suspend(kubectl, n, "plain", true, &operator)?;
    suspend(kubectl, n, "secrets", true, &operator)?;
    ensure_render_dir_empty(&operator)?;

    // A key that opens nothing: the next commit fails, naming the encrypted file, and applies
    // nothing.
    let (_, wrong) = age_identity()?;
    kubectl.apply(&age_secret(n, &wrong))?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v2"))?;
    let second = repo.commit("v2 under a wrong key")?;
    repo.push()?;
    suspend(kubectl, n, "secrets", false, &operator)?;
    let (_, reason, message) = wait_failed(
        kubectl,
        n,
        "secrets",
        &format!("main@sha1:{second}"),
        &operator,
    )?;
    eprintln!("a wrong key: {reason}: {message}");
    ensure!(
        reason == "DecryptionFailed",
        "reason {reason:?}, message {message:?}"
    );
    ensure!(
        message.contains("deploy/api.env") || message.contains("deploy/secret.enc.yaml"),
        "the message names no encrypted file: {message}"
    );
    ensure!(
        message.contains(&format!("{n}/sops-age")),
        "the message names not the Secret: {message}"
    );
    ensure!(greeting(kubectl, n, "settings")? == "v1");

    // No key Secret at all: DecryptionFailed too (not AuthenticationFailed, which is git's).
    kubectl.run(&["delete", "secret", "sops-age", "-n", n])?;
    reconcile_now(kubectl, n, "secrets", "without-the-key-secret", &operator)?;
    let (_, reason, message) = ready_condition(kubectl, n, "secrets")?;
    ensure!(
        reason == "DecryptionFailed" && message.contains("not found"),
        "without the key Secret: {reason}: {message}"
    );

    suspend(kubectl, n, "secrets", true, &operator)?;
    ensure_render_dir_empty(&operator)?;

    // The plaintext is nowhere but in the Secrets it was for.
    let mut places = vec![
        ("the operator's log".to_string(), operator.log()),
        (
            "the Events".to_string(),
            kubectl.run(&["get", "events", "-n", n, "-o", "yaml"])?,
        ),
        (
            "the GitRepositories".to_string(),
            kubectl.run(&["get", "tgr", "-n", n, "-o", "yaml"])?,
        ),
    ];
    let dirs = [operator.cache_dir(), operator.render_dir()];
    let mut scanned = 0;
    for dir in &dirs {
        for file in files_under(dir)? {
            let bytes = std::fs::read(&file)?;
            places.push((
                file.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
            scanned += 1;
        }
    }
    ensure!(scanned > 0, "no file under the cache folder {dirs:?}");
    // Each value as written, and as a Secret's data holds it (an object logged whole).
    let mut secrets = Vec::new();
    for value in [&password, &token, &plain_password, &key, &wrong] {
        secrets.push(value.to_string());
        secrets.push(base64::engine::general_purpose::STANDARD.encode(value));
    }
    for (place, text) in &places {
        for value in &secrets {
            ensure!(
                !text.contains(value.as_str()),
                "{place} holds a plaintext or key value {value:?}"
            );
        }
    }
    Ok(())
}
