//! The Helm charts and the docs, proved against the real API server: `helm lint`, `helm template` with
//! default and non-default values applied server-side, the operator's RBAC checked with
//! `kubectl auth can-i --as`, and every YAML example in the docs parsed (and `GitRepository` examples
//! dry-run applied), so that neither can drift from the code.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{config_map, crd, git_repository, greeting_args};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, wait_for_output, wait_ready};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::tool;
use tether_e2e::workspace::{self, binary};

fn chart(name: &str) -> PathBuf {
    workspace::root().join("charts").join(name)
}

/// `helm <args>` against the shared control plane, failing with its output when it fails.
pub(crate) fn helm(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(shared().binaries().path("helm"));
    cmd.env("KUBECONFIG", shared().kubeconfig()).args(args);
    tool::run_command(&mut cmd, None)
}

/// `kubectl <args>` against the shared control plane, with `stdin` (for `apply -f -`).
fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String> {
    Kubectl::for_plane(shared()).run_with_stdin(args, stdin)
}

/// `helm template` of a chart with a values file (YAML text), as release `release` in `namespace`.
fn template(
    chart_name: &str,
    release: &str,
    namespace: &str,
    values: &str,
    extra: &[&str],
) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values)?;
    let chart = chart(chart_name);
    let mut args = vec![
        "template",
        release,
        chart.to_str().context("chart path")?,
        "--namespace",
        namespace,
        "-f",
        file.to_str().context("values path")?,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// The documents of a multi-document YAML text, as JSON values (empty documents dropped).
pub(crate) fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
        })
        .with_context(|| format!("no {kind} named *{name_suffix} in the rendered chart"))
}

/// `kubectl auth can-i <verb> <resource> --as=<who> [more]`: true for yes, false for no.
fn can_i(who: &str, verb: &str, resource: &str, more: &[&str]) -> Result<bool> {
    let as_ = format!("--as={who}");
    let mut args = vec!["auth", "can-i", verb, resource, as_.as_str()];
    args.extend_from_slice(more);
    let answer = Kubectl::for_plane(shared()).output(&args)?;
    match answer.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("kubectl {}: {other:?} {}", args.join(" "), answer.stderr),
    }
}

fn assert_can(who: &str, verb: &str, resource: &str, more: &[&str]) -> Result<()> {
    ensure!(
        can_i(who, verb, resource, more)?,
        "{who} should be able to {verb} {resource} {more:?}"
    );
    Ok(())
}

fn assert_cannot(who: &str, verb: &str, resource: &str, more: &[&str]) -> Result<()> {
    ensure!(
        !can_i(who, verb, resource, more)?,
        "{who} should NOT be able to {verb} {resource} {more:?}"
    );
    Ok(())
}

/// Deletes the cluster-scoped objects of a rendered chart when a test ends (namespaced ones go with
/// their namespace).
struct ClusterScoped(String);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let _ = kubectl(
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&self.0),
        );
    }
}

fn cluster_scoped(rendered: &str) -> Result<ClusterScoped> {
    let mut out = String::new();
    for doc in documents(rendered)? {
        if matches!(
            doc["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        ) {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&doc)?);
        }
    }
    Ok(ClusterScoped(out))
}

/// A stand-in for the Prometheus Operator's ServiceMonitor CRD (which the local control plane lacks),
/// accepting any spec: it proves the chart's ServiceMonitor is a well-formed object of that kind, not
/// that its fields match Prometheus's schema.
fn install_service_monitor_crd() -> Result<()> {
    let definition = crd(
        "monitoring.coreos.com",
        "ServiceMonitor",
        "servicemonitors",
        "type: object\nx-kubernetes-preserve-unknown-fields: true\n",
    );
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&definition))?;
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        None,
    )?;
    Ok(())
}

const OPERATOR_VALUES_FULL: &str = r#"
scope: namespace
watchNamespace: WATCHED
replicas: 2
concurrency: 8
logFormat: plain
hub:
  url: wss://hub.example.com
  tokenSecret: {name: hub-token, key: agent-token}
  caSecret: {name: hub-ca, key: ca.pem}
  reportStatus: true
proxy:
  httpsProxy: http://proxy.example.com:3128
  noProxy: .cluster.local,10.0.0.0/8
imagePullSecrets: [{name: registry-a}, {name: registry-b}]
rbac:
  applyRules:
    - apiGroups: [""]
      resources: [configmaps, services]
      verbs: [get, list, watch, create, patch, delete]
    - apiGroups: [apps]
      resources: [deployments]
      verbs: [get, list, watch, create, patch, delete]
metrics:
  serviceMonitor:
    enabled: true
    labels: {release: prometheus, team: platform}
podLabels: {team: platform, tier: control}
podAnnotations: {a.example.com/one: "1", a.example.com/two: "2"}
cache: {existingClaim: tether-mirrors}
tolerations:
  - {key: dedicated, operator: Equal, value: gitops, effect: NoSchedule}
  - {key: spot, operator: Exists, effect: NoSchedule}
extraEnv:
  - {name: EXTRA_ONE, value: "1"}
  - {name: EXTRA_TWO, value: "2"}
"#;

#[test]
fn charts_pass_helm_lint_with_default_and_full_values() -> Result<()> {
    for name in ["tether-operator", "tether-hub"] {
        let path = chart(name);
        let out = helm(&["lint", "--strict", path.to_str().context("path")?])?;
        ensure!(out.contains("0 chart(s) failed"), "{out}");
    }
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, OPERATOR_VALUES_FULL.replace("WATCHED", "apps"))?;
    helm(&[
        "lint",
        "--strict",
        chart("tether-operator").to_str().context("path")?,
        "-f",
        values.to_str().context("path")?,
    ])?;
    for hub_values in [HUB_VALUES_FULL, HUB_VALUES_REPLICAS] {
        std::fs::write(&values, hub_values)?;
        helm(&[
            "lint",
            "--strict",
            chart("tether-hub").to_str().context("path")?,
            "-f",
            values.to_str().context("path")?,
        ])?;
    }
    Ok(())
}

#[test]
fn operator_chart_refuses_values_that_cannot_work() -> Result<()> {
    for (values, why) in [
        ("scope: everywhere\n", "scope must be cluster or namespace"),
        (
            "hub: {url: wss://hub.example.com}\n",
            "hub.url needs hub.tokenSecret.name",
        ),
        (
            "ciAccess: {enabled: true}\n",
            "ciAccess.enabled needs hub.url",
        ),
        (
            "hub: {reportStatus: true}\n",
            "hub.reportStatus needs hub.url",
        ),
        (
            "hub: {url: wss://h, tokenSecret: {name: t}}\nciAccess: {enabled: true}\n",
            "ciAccess.enabled needs at least one entry",
        ),
    ] {
        let err = template("tether-operator", "t", "default", values, &[])
            .err()
            .with_context(|| format!("{values:?} was accepted"))?;
        ensure!(err.to_string().contains(why), "{err:#}");
    }
    Ok(())
}

#[test]
fn operator_chart_crd_is_the_one_in_crds() -> Result<()> {
    let rendered = template("tether-operator", "t", "default", "", &["--include-crds"])?;
    let docs = documents(&rendered)?;
    let from_chart = find(
        &docs,
        "CustomResourceDefinition",
        "gitrepositories.tether.dev",
    )?;
    let committed = std::fs::read_to_string(workspace::root().join("crds/gitrepository.yaml"))?;
    let committed = documents(&committed)?;
    ensure!(
        committed.len() == 1 && &committed[0] == from_chart,
        "the chart's CRD differs from crds/"
    );
    Ok(())
}

/// The operator's image ships the rendering tools the tests run: the versions its Dockerfile builds
/// are those hack/render-tools-bin.sh and hack/controlplane-bin.sh pin, and docs/rendering.md names.
#[test]
fn the_operator_image_renders_with_the_tool_versions_the_tests_use() -> Result<()> {
    let root = workspace::root();
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))
    };
    let dockerfile = read("operator/Dockerfile")?;
    let scripts = read("hack/render-tools-bin.sh")? + &read("hack/controlplane-bin.sh")?;
    let docs = read("docs/rendering.md")?;
    for tool in ["KUSTOMIZE", "HELM", "SOPS"] {
        let pinned = |text: &str, prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
                .with_context(|| format!("no line starting {prefix:?}"))
        };
        let in_image = pinned(&dockerfile, &format!("ARG {tool}_VERSION="))?;
        let in_script = pinned(&scripts, &format!("{tool}_VERSION=${{{tool}_VERSION:-"))?;
        let in_script = in_script.trim_end_matches('}');
        ensure!(
            in_image == in_script,
            "operator/Dockerfile builds {tool} {in_image}, the tests use {in_script}"
        );
        ensure!(
            docs.contains(&format!("{} {in_image}", tool.to_lowercase())),
            "docs/rendering.md does not name {} {in_image}",
            tool.to_lowercase()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_chart_with_default_values_applies_and_grants_what_the_operator_needs()
-> Result<()> {
    let ns = TestNamespace::create("chart-op").await?;
    install_crds(ns.kubectl())?;
    let release = ns.name();
    let rendered = template(
        "tether-operator",
        release,
        ns.name(),
        "",
        &["--include-crds"],
    )?;
    let _cleanup = cluster_scoped(&rendered)?;
    // The CRD is installed already (and shared with other tests): a server-side dry run of the whole
    // render, CRD included, then the real apply of the templates.
    kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&rendered),
    )?;
    let templates = template("tether-operator", release, ns.name(), "", &[])?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&templates))?;

    let docs = documents(&templates)?;
    let deployment = find(&docs, "Deployment", "tether-operator")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(pod["securityContext"]["runAsNonRoot"] == true);
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");
    ensure!(container["securityContext"]["readOnlyRootFilesystem"] == true);
    ensure!(container["securityContext"]["allowPrivilegeEscalation"] == false);
    ensure!(container["securityContext"]["capabilities"]["drop"] == serde_json::json!(["ALL"]));
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz");
    let env = container["env"].as_array().context("env")?;
    let named = |n: &str| env.iter().find(|e| e["name"] == n);
    ensure!(
        named("TETHER_NAMESPACE").is_none(),
        "cluster scope watches every namespace"
    );
    ensure!(
        named("TETHER_LEADER_ELECTION").is_none(),
        "one replica needs no leader election"
    );
    ensure!(
        named("TETHER_HUB_REPORT_STATUS").is_none(),
        "no status is reported without hub.reportStatus"
    );
    ensure!(
        named("TETHER_IDENTITY").context("TETHER_IDENTITY")?["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.name"
    );
    ensure!(named("TETHER_CACHE_DIR").context("cache dir")?["value"] == "/var/cache/tether");
    ensure!(
        container["volumeMounts"]
            .as_array()
            .context("mounts")?
            .iter()
            .any(|m| m["mountPath"] == "/var/cache/tether"),
        "the cache dir is writable"
    );

    // Nothing may connect to the operator but Prometheus, on the metrics port.
    let policy = find(&docs, "NetworkPolicy", "tether-operator")?;
    ensure!(policy["spec"]["policyTypes"] == serde_json::json!(["Ingress"]));
    ensure!(
        policy["spec"]["podSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"],
        "the policy selects the operator's pods"
    );
    ensure!(
        policy["spec"]["ingress"]
            == serde_json::json!([{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }]),
        "ingress: {}",
        policy["spec"]["ingress"]
    );

    let sa = format!(
        "system:serviceaccount:{}:{release}-tether-operator",
        ns.name()
    );
    let other = "default";
    for verb in ["get", "list", "watch", "patch"] {
        assert_can(&sa, verb, "gitrepositories.tether.dev", &["-n", other])?;
        assert_can(
            &sa,
            verb,
            "gitrepositories.tether.dev",
            &["--all-namespaces"],
        )?;
    }
    assert_can(
        &sa,
        "patch",
        "gitrepositories.tether.dev",
        &["--subresource=status", "-n", other],
    )?;
    assert_can(&sa, "create", "events.events.k8s.io", &["-n", other])?;
    assert_can(&sa, "get", "secrets", &["-n", other])?;
    assert_can(&sa, "impersonate", "serviceaccounts", &["-n", other])?;
    assert_can(
        &sa,
        "get",
        "customresourcedefinitions/gitrepositories.tether.dev",
        &[],
    )?;
    // Cluster-wide apply rights are broad by default, but never rights to grant rights or to be
    // someone else than a ServiceAccount.
    assert_can(&sa, "patch", "deployments.apps", &["-n", other])?;
    assert_cannot(&sa, "impersonate", "users", &[])?;
    assert_cannot(&sa, "impersonate", "groups", &[])?;
    assert_cannot(&sa, "escalate", "clusterroles", &[])?;
    assert_cannot(&sa, "bind", "clusterroles", &[])?;
    // No Lease Role without leader election.
    ensure!(
        find(&docs, "Role", "leader-election").is_err(),
        "one replica needs no leader election"
    );
    Ok(())
}

const OPERATOR_VALUES_CI: &str = r#"
hub:
  url: wss://hub.example.com
  tokenSecret: {name: hub-token}
ciAccess:
  enabled: true
  tokens:
    - name: deployer
      sha256: "83be5447375907e352eccf262f47a288924102f4e031dc650e189322653103d4"
      user: ci-deployer
      groups: ["tether:ci", "tether:deployers"]
    - name: reader
      sha256: "0000000000000000000000000000000000000000000000000000000000000001"
      user: ci-reader
  oidc:
    - issuer: https://token.actions.githubusercontent.com
      name: github
      audience: tether
      rules:
        - claims: {repository: "acme/app", ref: "refs/heads/main"}
          user: "github:{repository}"
          groups: ["deployers", "repo:{repository}"]
        - claims: {repository: "acme/ops"}
          user: ci-ops
          groups: ["operators"]
  limits: {max_requests_per_identity: 32}
  impersonate:
    users: ["github:acme/app"]
    groups: ["repo:acme/app"]
"#;

/// With CI access on, the chart renders the access file the operator accepts, mounts it, and lets
/// the operator impersonate exactly the users and groups it names (and the listed extras), no other
/// user or group, ServiceAccounts only as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_chart_with_ci_access_impersonates_exactly_the_named_identities() -> Result<()> {
    let ns = TestNamespace::create("chart-ci").await?;
    install_crds(ns.kubectl())?;
    let release = ns.name();
    let templates = template(
        "tether-operator",
        release,
        ns.name(),
        OPERATOR_VALUES_CI,
        &[],
    )?;
    let _cleanup = cluster_scoped(&templates)?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&templates))?;

    let docs = documents(&templates)?;
    let file = find(&docs, "ConfigMap", "ci-access")?["data"]["ci-access.yaml"]
        .as_str()
        .context("the ConfigMap has no ci-access.yaml")?;
    check_ci_access(file)?;
    let deployment = find(&docs, "Deployment", "tether-operator")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().context("env")?;
    ensure!(
        env.iter().any(|e| e["name"] == "TETHER_CI_ACCESS"
            && e["value"] == "/etc/tether/ci-access/ci-access.yaml"),
        "no TETHER_CI_ACCESS: {env:?}"
    );
    ensure!(
        deployment["spec"]["template"]["metadata"]["annotations"]["tether.dev/ci-access-checksum"]
            .is_string(),
        "a change to the access file would not roll the pods"
    );

    let sa = format!(
        "system:serviceaccount:{}:{release}-tether-operator",
        ns.name()
    );
    // Literal names from tokens and OIDC rules, and the listed renderings of templates.
    for user in ["ci-deployer", "ci-reader", "ci-ops", "github:acme/app"] {
        assert_can(&sa, "impersonate", &format!("users/{user}"), &[])?;
    }
    for group in [
        "tether:ci",
        "tether:deployers",
        "deployers",
        "operators",
        "repo:acme/app",
    ] {
        assert_can(&sa, "impersonate", &format!("groups/{group}"), &[])?;
    }
    assert_cannot(&sa, "impersonate", "users/admin", &[])?;
    // A template is never granted as written, nor another rendering of it.
    assert_cannot(&sa, "impersonate", "users/github:{repository}", &[])?;
    assert_cannot(&sa, "impersonate", "users/github:acme/other", &[])?;
    assert_cannot(&sa, "impersonate", "users", &[])?;
    assert_cannot(&sa, "impersonate", "groups/system:masters", &[])?;
    assert_cannot(&sa, "impersonate", "groups", &[])?;
    assert_cannot(&sa, "impersonate", "uids", &[])?;
    assert_cannot(&sa, "impersonate", "userextras/scopes", &[])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_chart_in_namespace_scope_grants_nothing_beyond_its_namespaces() -> Result<()> {
    let home = TestNamespace::create("chart-op-home").await?;
    let watched = TestNamespace::create("chart-op-watched").await?;
    install_crds(home.kubectl())?;
    install_service_monitor_crd()?;
    // The release is named after its namespace, so that cluster-scoped names are unique to this run.
    let release = home.name();
    let values = OPERATOR_VALUES_FULL.replace("WATCHED", watched.name());
    let rendered = template("tether-operator", release, home.name(), &values, &[])?;
    let _cleanup = cluster_scoped(&rendered)?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&rendered))?;

    let docs = documents(&rendered)?;
    let deployment = find(&docs, "Deployment", "tether-operator")?;
    ensure!(deployment["spec"]["replicas"] == 2);
    ensure!(deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0);
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(pod["imagePullSecrets"].as_array().map(Vec::len) == Some(2));
    ensure!(pod["tolerations"].as_array().map(Vec::len) == Some(2));
    let cache = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "cache"))
        .context("no cache volume")?;
    ensure!(
        cache["persistentVolumeClaim"]["claimName"] == "tether-mirrors"
            && cache["emptyDir"].is_null(),
        "the cache is not the claim: {cache}"
    );
    let env = pod["containers"][0]["env"].as_array().context("env")?;
    let value = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
            .unwrap_or(Value::Null)
    };
    ensure!(value("TETHER_NAMESPACE") == watched.name());
    ensure!(value("TETHER_LEADER_ELECTION") == "true");
    ensure!(value("TETHER_HUB_URL") == "wss://hub.example.com");
    ensure!(value("TETHER_HUB_TOKEN_FILE") == "/etc/tether/hub-token/agent-token");
    ensure!(value("TETHER_HUB_CA_FILE") == "/etc/tether/hub-ca/ca.pem");
    ensure!(value("TETHER_HUB_REPORT_STATUS") == "true");
    ensure!(value("HTTPS_PROXY") == "http://proxy.example.com:3128");
    ensure!(value("NO_PROXY") == ".cluster.local,10.0.0.0/8");
    ensure!(value("EXTRA_ONE") == "1" && value("EXTRA_TWO") == "2");
    let monitor = find(&docs, "ServiceMonitor", "tether-operator")?;
    ensure!(monitor["metadata"]["labels"]["team"] == "platform");

    let sa = format!(
        "system:serviceaccount:{}:{release}-tether-operator",
        home.name()
    );
    let w = watched.name();
    for verb in ["get", "list", "watch", "patch"] {
        assert_can(&sa, verb, "gitrepositories.tether.dev", &["-n", w])?;
    }
    assert_can(
        &sa,
        "patch",
        "gitrepositories.tether.dev",
        &["--subresource=status", "-n", w],
    )?;
    assert_can(&sa, "create", "events.events.k8s.io", &["-n", w])?;
    assert_can(&sa, "get", "secrets", &["-n", w])?;
    assert_can(&sa, "impersonate", "serviceaccounts", &["-n", w])?;
    assert_can(&sa, "patch", "configmaps", &["-n", w])?;
    assert_can(&sa, "delete", "deployments.apps", &["-n", w])?;
    assert_can(
        &sa,
        "get",
        "customresourcedefinitions/gitrepositories.tether.dev",
        &[],
    )?;
    // The Lease, in the release namespace, by its one name.
    assert_can(
        &sa,
        "create",
        "leases.coordination.k8s.io",
        &["-n", home.name()],
    )?;
    assert_can(
        &sa,
        "update",
        "leases.coordination.k8s.io/tether-operator",
        &["-n", home.name()],
    )?;
    assert_cannot(
        &sa,
        "update",
        "leases.coordination.k8s.io/someone-else",
        &["-n", home.name()],
    )?;

    // Nothing outside the watched namespace, and no kind beyond rbac.applyRules inside it.
    for elsewhere in [home.name(), "default", "kube-system"] {
        assert_cannot(&sa, "get", "secrets", &["-n", elsewhere])?;
        assert_cannot(
            &sa,
            "list",
            "gitrepositories.tether.dev",
            &["-n", elsewhere],
        )?;
        assert_cannot(&sa, "patch", "configmaps", &["-n", elsewhere])?;
        assert_cannot(&sa, "impersonate", "serviceaccounts", &["-n", elsewhere])?;
    }
    assert_cannot(
        &sa,
        "list",
        "gitrepositories.tether.dev",
        &["--all-namespaces"],
    )?;
    assert_cannot(&sa, "list", "secrets", &["-n", w])?;
    assert_cannot(&sa, "patch", "roles.rbac.authorization.k8s.io", &["-n", w])?;
    assert_cannot(&sa, "create", "namespaces", &[])?;
    assert_cannot(
        &sa,
        "get",
        "customresourcedefinitions/servicemonitors.monitoring.coreos.com",
        &[],
    )?;
    Ok(())
}

const HUB_VALUES_FULL: &str = r#"
config:
  hub:
    max_connections: 5000
    agents:
      - name: prod
        token_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        repos: ["github.com/acme/*"]
      - name: staging
        token_sha256: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
        repos: ["**"]
    webhooks:
      - provider: github
        repos: ["github.com/acme/**"]
        secret: {file: /etc/tether-hub/webhooks/github-webhook/secret}
      - provider: gitlab
        repos: ["gitlab.com/**"]
        secret: {file: /etc/tether-hub/webhooks/gitlab-webhook/token}
webhookSecrets:
  - name: github-webhook
  - name: gitlab-webhook
tls:
  secretName: hub-tls
service:
  type: LoadBalancer
  loadBalancerSourceRanges: [192.0.2.0/24, 198.51.100.0/24]
ingress:
  enabled: true
  className: nginx
  annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: "3600", nginx.ingress.kubernetes.io/backend-protocol: HTTPS}
  hosts:
    - host: hub.example.com
      paths: [{path: /v1, pathType: Prefix}, {path: /v1/connect, pathType: Exact}]
    - host: hub.example.org
      paths: [{path: /v1, pathType: Prefix}]
  tls:
    - {secretName: hub-example-com, hosts: [hub.example.com]}
    - {secretName: hub-example-org, hosts: [hub.example.org]}
persistence:
  storageClassName: fast
  size: 5Gi
podLabels: {team: platform, tier: edge}
extraEnv:
  - {name: EXTRA_ONE, value: "1"}
  - {name: EXTRA_TWO, value: "2"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_chart_applies_with_default_and_full_values() -> Result<()> {
    for (i, values) in ["", HUB_VALUES_FULL].into_iter().enumerate() {
        let ns = TestNamespace::create(&format!("chart-hub{i}")).await?;
        let rendered = template("tether-hub", "hub", ns.name(), values, &[])?;
        kubectl(&["apply", "--server-side", "-f", "-"], Some(&rendered))?;
        let docs = documents(&rendered)?;
        let deployment = find(&docs, "Deployment", "tether-hub")?;
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        ensure!(pod["automountServiceAccountToken"] == false);
        ensure!(pod["securityContext"]["runAsNonRoot"] == true);
        ensure!(container["securityContext"]["readOnlyRootFilesystem"] == true);
        ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");
        let secret = find(&docs, "Secret", "tether-hub-config")?;
        let config: Value = serde_yaml_ng::from_str(
            secret["stringData"]["hub.yaml"]
                .as_str()
                .context("hub.yaml")?,
        )?;
        ensure!(config["data_dir"] == "/var/lib/tether-hub");
        ensure!(config["listen"] == "0.0.0.0:8443");
        if values.is_empty() {
            ensure!(container["livenessProbe"]["httpGet"]["scheme"] == "HTTP");
            ensure!(config.get("tls").is_none());
            continue;
        }
        ensure!(container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS");
        ensure!(config["tls"]["cert_file"] == "/etc/tether-hub/tls/tls.crt");
        ensure!(config["agents"].as_array().map(Vec::len) == Some(2));
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .context("mounts")?
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        for path in [
            "/etc/tether-hub/webhooks/github-webhook",
            "/etc/tether-hub/webhooks/gitlab-webhook",
            "/etc/tether-hub/tls",
            "/var/lib/tether-hub",
        ] {
            ensure!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
        }
        let ingress = find(&docs, "Ingress", "tether-hub")?;
        ensure!(ingress["spec"]["rules"].as_array().map(Vec::len) == Some(2));
        ensure!(ingress["spec"]["tls"].as_array().map(Vec::len) == Some(2));
        let service = find(&docs, "Service", "tether-hub")?;
        ensure!(service["spec"]["type"] == "LoadBalancer");
        let pvc = kubectl(
            &[
                "get",
                "pvc",
                "-n",
                ns.name(),
                "hub-tether-hub-data",
                "-o",
                "jsonpath={.spec.storageClassName}",
            ],
            None,
        )?;
        ensure!(pvc == "fast", "{pvc}");
    }
    Ok(())
}

/// The config the chart writes is one the hub accepts (`tether-hub --check-config`).
#[test]
fn hub_chart_config_passes_the_hubs_own_check() -> Result<()> {
    let values = r#"
config:
  hub:
    agents:
      - name: prod
        token_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        repos: ["github.com/acme/*", "gitlab.com/acme/**"]
    webhooks:
      - provider: github
        repos: ["github.com/acme/**"]
        secret: {env: TETHER_GITHUB_SECRET}
      - provider: generic
        repos: ["**"]
        secret: {env: TETHER_GENERIC_SECRET}
"#;
    let rendered = template("tether-hub", "hub", "default", values, &[])?;
    let docs = documents(&rendered)?;
    let secret = find(&docs, "Secret", "tether-hub-config")?;
    let config = secret["stringData"]["hub.yaml"]
        .as_str()
        .context("hub.yaml")?;
    check_hub_config(config)
}

const HUB_VALUES_REPLICAS: &str = r#"
replicas: 3
redis:
  existingSecret: hub-redis
  cluster: true
  keyPrefix: "hub-a:"
peers:
  existingSecret: hub-peers
config:
  hub:
    agents:
      - name: prod
        token_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        repos: ["github.com/acme/*"]
"#;

/// The env entry `name` of a container.
fn env_entry<'a>(container: &'a Value, name: &str) -> Result<&'a Value> {
    container["env"]
        .as_array()
        .context("env")?
        .iter()
        .find(|e| e["name"] == name)
        .with_context(|| format!("no env {name}: {}", container["env"]))
}

/// Three replicas: they share Redis and forward to each other's peer port, pod to pod; each keeps
/// its data dir in an emptyDir; a PodDisruptionBudget and topology spread keep some up; the
/// objects pass the API server; and the config passes the hub's own check. One replica has none
/// of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_chart_with_three_replicas_shares_redis_and_spreads_its_pods() -> Result<()> {
    let ns = TestNamespace::create("chart-hub-replicas").await?;
    let rendered = template("tether-hub", "hub", ns.name(), HUB_VALUES_REPLICAS, &[])?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&rendered))?;
    let docs = documents(&rendered)?;
    let deployment = find(&docs, "Deployment", "tether-hub")?;
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    ensure!(deployment["spec"]["replicas"] == 3);
    ensure!(deployment["spec"]["strategy"]["type"] == "RollingUpdate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    let pdb = find(&docs, "PodDisruptionBudget", "tether-hub")?;
    ensure!(pdb["spec"]["minAvailable"] == 1, "{pdb}");
    ensure!(pdb["spec"]["selector"]["matchLabels"] == *selector, "{pdb}");

    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .context("no topologySpreadConstraints")?;
    let keys: Vec<&str> = spread
        .iter()
        .filter_map(|c| c["topologyKey"].as_str())
        .collect();
    ensure!(
        keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
        "{keys:?}"
    );
    for c in spread {
        ensure!(c["whenUnsatisfiable"] == "ScheduleAnyway", "{c}");
        ensure!(c["labelSelector"]["matchLabels"] == *selector, "{c}");
    }

    ensure!(
        env_entry(container, "POD_NAME")?["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    );
    ensure!(
        env_entry(container, "POD_IP")?["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    );
    ensure!(env_entry(container, "TETHER_HUB_PEER_ADVERTISE")?["value"] == "$(POD_IP):8444");
    let ports = container["ports"].as_array().context("ports")?;
    ensure!(
        ports
            .iter()
            .any(|p| p["name"] == "peers" && p["containerPort"] == 8444),
        "no peers containerPort: {ports:?}"
    );
    ensure!(container["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(container["livenessProbe"]["httpGet"]["path"] == "/healthz");

    // The peer port stays off the Service: replicas dial each other's pod IP.
    let service = find(&docs, "Service", "tether-hub")?;
    let service_ports = service["spec"]["ports"].as_array().context("ports")?;
    ensure!(service_ports.len() == 1, "{service_ports:?}");
    ensure!(service_ports[0]["targetPort"] == "hub", "{service_ports:?}");
    // Only the hub's own pods may reach it.
    let policy = find(&docs, "NetworkPolicy", "tether-hub")?;
    let peer_rule = policy["spec"]["ingress"]
        .as_array()
        .context("ingress")?
        .iter()
        .find(|r| r["ports"][0]["port"] == 8444)
        .context("no NetworkPolicy rule for the peer port")?;
    ensure!(
        peer_rule["from"][0]["podSelector"]["matchLabels"] == *selector,
        "{peer_rule}"
    );

    // Each pod its own data dir; no claim.
    ensure!(
        !docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"),
        "a PVC was rendered for three replicas"
    );
    let volumes = pod["volumes"].as_array().context("volumes")?;
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name}: {volumes:?}"))
    };
    ensure!(volume("data")?["emptyDir"].is_object());
    ensure!(volume("redis")?["secret"]["secretName"] == "hub-redis");
    ensure!(volume("peers")?["secret"]["secretName"] == "hub-peers");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .context("mounts")?
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for path in ["/etc/tether-hub/redis", "/etc/tether-hub/peers"] {
        ensure!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }

    let secret = find(&docs, "Secret", "tether-hub-config")?;
    let text = secret["stringData"]["hub.yaml"]
        .as_str()
        .context("hub.yaml")?;
    let config: Value = serde_yaml_ng::from_str(text)?;
    ensure!(
        config["redis"]["url"]["file"] == "/etc/tether-hub/redis/url",
        "{config}"
    );
    ensure!(config["redis"]["cluster"] == true, "{config}");
    ensure!(config["redis"]["key_prefix"] == "hub-a:", "{config}");
    ensure!(config["peers"]["listen"] == "0.0.0.0:8444", "{config}");
    ensure!(
        config["peers"]["secret"]["file"] == "/etc/tether-hub/peers/secret",
        "{config}"
    );

    // The hub accepts the config, with the Secrets' files where the pod would have them and the
    // advertised address the pod would set.
    let dir = tempfile::tempdir()?;
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, "redis://10.0.0.1:7000,redis://10.0.0.2:7000\n")?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "0123456789abcdef0123456789abcdef\n")?;
    let local = text
        .replace(
            "/etc/tether-hub/redis/url",
            url_file.to_str().context("path")?,
        )
        .replace(
            "/etc/tether-hub/peers/secret",
            secret_file.to_str().context("path")?,
        );
    let file = dir.path().join("hub.yaml");
    std::fs::write(&file, &local)?;
    let out = Command::new(binary("tether-hub")?)
        .env("TETHER_HUB_PEER_ADVERTISE", "10.1.2.3:8444")
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()?;
    ensure!(
        out.status.success(),
        "tether-hub --check-config refused:\n{local}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // One replica: none of the above.
    let single = documents(&template("tether-hub", "hub", ns.name(), "", &[])?)?;
    ensure!(!single.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    ensure!(!single.iter().any(|d| d["kind"] == "NetworkPolicy"));
    ensure!(single.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let one = find(&single, "Deployment", "tether-hub")?;
    ensure!(one["spec"]["strategy"]["type"] == "Recreate");
    let one_pod = &one["spec"]["template"]["spec"];
    ensure!(one_pod.get("topologySpreadConstraints").is_none());
    ensure!(env_entry(&one_pod["containers"][0], "POD_IP").is_err());
    ensure!(one_pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz");
    let one_secret = find(&single, "Secret", "tether-hub-config")?;
    let one_config: Value = serde_yaml_ng::from_str(
        one_secret["stringData"]["hub.yaml"]
            .as_str()
            .context("hub.yaml")?,
    )?;
    ensure!(one_config.get("redis").is_none() && one_config.get("peers").is_none());
    Ok(())
}

/// More than one replica without Redis or the peer secret cannot work: the chart says so.
#[test]
fn hub_chart_refuses_replicas_without_redis_and_peer_secrets() -> Result<()> {
    for (values, why) in [
        ("replicas: 3\n", "replicas: 3 needs redis.existingSecret"),
        (
            "replicas: 3\npeers: {existingSecret: hub-peers}\n",
            "replicas: 3 needs redis.existingSecret",
        ),
        (
            "replicas: 2\nredis: {existingSecret: hub-redis}\n",
            "replicas: 2 needs peers.existingSecret",
        ),
        (
            "peers: {existingSecret: hub-peers}\n",
            "peers.existingSecret needs redis.existingSecret",
        ),
        (
            "replicas: 2\nredis: {existingSecret: r}\npeers: {existingSecret: p}\npersistence: {existingClaim: data}\n",
            "persistence.existingClaim cannot be used with replicas: 2",
        ),
    ] {
        let err = template("tether-hub", "hub", "default", values, &[])
            .err()
            .with_context(|| format!("{values:?} was accepted"))?;
        ensure!(err.to_string().contains(why), "{err:#}");
    }
    // With both Secrets it renders.
    template("tether-hub", "hub", "default", HUB_VALUES_REPLICAS, &[])?;
    Ok(())
}

/// Runs `tether-hub --check-config` on a config text, with every `secret: {env: NAME}` set.
/// `tether-operator check-ci-access` accepts the file.
fn check_ci_access(text: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ci-access.yaml");
    std::fs::write(&file, text)?;
    let out = Command::new(binary("tether-operator")?)
        .arg("check-ci-access")
        .arg(&file)
        .output()?;
    ensure!(
        out.status.success(),
        "tether-operator check-ci-access refused:\n{text}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CI pipeline example (no CI system runs here): YAML that asks for an ID token with the
/// audience the access file example expects and points kubectl at the hub.
fn check_ci_pipeline(text: &str) -> Result<()> {
    let parsed: Value = serde_yaml_ng::from_str(text)?;
    ensure!(parsed.is_object(), "not a YAML mapping");
    ensure!(
        text.contains("audience=tether") || text.contains("aud: tether"),
        "asks for no token with the audience tether"
    );
    ensure!(text.contains("/k8s-proxy/"), "points kubectl at no hub");
    Ok(())
}

/// kubectl reads the kubeconfig and finds its current context and an https server.
fn check_kubeconfig(text: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kubeconfig");
    std::fs::write(&file, text)?;
    let reader = Kubectl::new(shared().binaries().path("kubectl"), file);
    let context = reader.run(&["config", "current-context"])?;
    let server = reader.run(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ])?;
    ensure!(
        !context.trim().is_empty() && server.starts_with("https://"),
        "the kubeconfig has no current context with an https server (context {context:?}, server {server:?})"
    );
    Ok(())
}

fn check_hub_config(config: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("hub.yaml");
    std::fs::write(&file, config)?;
    let parsed: Value = serde_yaml_ng::from_str(config)?;
    let mut command = Command::new(binary("tether-hub")?);
    for webhook in parsed["webhooks"].as_array().into_iter().flatten() {
        if let Some(name) = webhook["secret"]["env"].as_str() {
            command.env(name, "a-test-secret");
        }
    }
    // Several replicas: a Redis URL (several node URLs for a cluster) and a peer secret.
    if let Some(name) = parsed["redis"]["url"]["env"].as_str() {
        let url = if parsed["redis"]["cluster"] == true {
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000"
        } else {
            "redis://:a-password@10.0.0.1:6379/0"
        };
        command.env(name, url);
    }
    if let Some(name) = parsed["peers"]["secret"]["env"].as_str() {
        command.env(name, "a-peer-secret-of-32-bytes-or-so..");
    }
    let out = command
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()?;
    ensure!(
        out.status.success(),
        "tether-hub --check-config refused:\n{config}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A fenced YAML block of a Markdown file, with where it starts.
struct YamlBlock {
    origin: String,
    text: String,
}

fn yaml_blocks(path: &Path) -> Result<Vec<YamlBlock>> {
    let text = std::fs::read_to_string(path)?;
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some((n + 1, String::new())),
            Some((start, body)) if line.trim_start() == "```" => {
                blocks.push(YamlBlock {
                    origin: format!("{}:{start}", path.display()),
                    text: std::mem::take(body),
                });
                current = None;
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    ensure!(
        current.is_none(),
        "{}: an unclosed ```yaml block",
        path.display()
    );
    Ok(blocks)
}

pub(crate) fn doc_files() -> Result<Vec<PathBuf>> {
    let root = workspace::root();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every YAML block in README.md and docs/*.md is one of: Kubernetes objects (each passes a
/// server-side dry run, `GitRepository` ones against the CRD), a hub config (`# hub.yaml`, passes
/// `tether-hub --check-config`), or chart values (`# tether-operator values`, `# tether-hub values`,
/// which render). Anything else fails, so that no example goes unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_yaml_example_in_the_docs_is_valid() -> Result<()> {
    let ns = TestNamespace::create("docs").await?;
    install_crds(ns.kubectl())?;
    let mut checked = std::collections::BTreeMap::<&str, usize>::new();
    for file in doc_files()? {
        for block in yaml_blocks(&file)? {
            let first = block.text.lines().next().unwrap_or_default().trim();
            let origin = &block.origin;
            let kind = match first {
                "# hub.yaml" => {
                    check_hub_config(&block.text).with_context(|| origin.clone())?;
                    "hub config"
                }
                "# ci-access.yaml" => {
                    check_ci_access(&block.text).with_context(|| origin.clone())?;
                    "CI access file"
                }
                "# kubeconfig" => {
                    check_kubeconfig(&block.text).with_context(|| origin.clone())?;
                    "kubeconfig"
                }
                "# .github/workflows/deploy.yml" | "# .gitlab-ci.yml" => {
                    check_ci_pipeline(&block.text).with_context(|| origin.clone())?;
                    "CI pipeline"
                }
                "# tether-operator values" | "# tether-hub values" => {
                    let chart_name = first.trim_start_matches("# ").trim_end_matches(" values");
                    template(chart_name, "docs", ns.name(), &block.text, &[])
                        .with_context(|| origin.clone())?;
                    "chart values"
                }
                _ => {
                    let docs = documents(&block.text).with_context(|| origin.clone())?;
                    ensure!(!docs.is_empty(), "{origin}: an empty YAML block");
                    for mut doc in docs {
                        ensure!(
                            doc["apiVersion"].is_string()
                                && doc["kind"].is_string()
                                && doc["metadata"]["name"].is_string(),
                            "{origin}: neither a Kubernetes object (apiVersion, kind, metadata.name) \
                             nor marked `# hub.yaml`, `# ci-access.yaml`, `# kubeconfig`, a CI pipeline or \
                             `# <chart> values`"
                        );
                        // The examples name namespaces of their own; try them in this test's.
                        doc["metadata"]["namespace"] = Value::from(ns.name());
                        let yaml = serde_yaml_ng::to_string(&doc)?;
                        kubectl(
                            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
                            Some(&yaml),
                        )
                        .with_context(|| format!("{origin}: {} refused", doc["kind"]))?;
                    }
                    "Kubernetes objects"
                }
            };
            *checked.entry(kind).or_default() += 1;
        }
    }
    eprintln!("checked YAML blocks in the docs: {checked:?}");
    for kind in [
        "hub config",
        "CI access file",
        "kubeconfig",
        "chart values",
        "Kubernetes objects",
    ] {
        ensure!(
            checked.contains_key(kind),
            "no {kind} example found: is the test still reading the docs?"
        );
    }
    Ok(())
}

/// The operator, out of cluster but with only the rights the chart gives its ServiceAccount (its
/// kubeconfig impersonates that account), still syncs a repository: apply, update and prune.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_with_only_the_charts_rights_syncs_a_repository() -> Result<()> {
    let home = TestNamespace::create("chart-sa-home").await?;
    let watched = TestNamespace::create("chart-sa-watched").await?;
    install_crds(home.kubectl())?;
    let release = home.name();
    let values = format!("scope: namespace\nwatchNamespace: {}\n", watched.name());
    let rendered = template("tether-operator", release, home.name(), &values, &[])?;
    let _cleanup = cluster_scoped(&rendered)?;
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&rendered))?;

    // The admin kubeconfig, acting as the chart's ServiceAccount.
    let account = format!(
        "system:serviceaccount:{}:{release}-tether-operator",
        home.name()
    );
    let admin = std::fs::read_to_string(shared().kubeconfig())?;
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin)?;
    config["users"][0]["user"]["as"] = serde_yaml_ng::Value::String(account);
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml_ng::to_string(&config)?)?;
    let as_account = kubectl(
        &[
            "--kubeconfig",
            kubeconfig.to_str().context("kubeconfig path")?,
            "get",
            "configmaps",
            "-n",
            home.name(),
        ],
        None,
    );
    ensure!(
        as_account.is_err(),
        "the impersonating kubeconfig is not limited to the chart's rights"
    );

    let ns = watched.name();
    let repo = Upstream::new("chart-sa")?;
    repo.write("deploy/config.yaml", &config_map(ns, "settings", "hello"))?;
    repo.write("deploy/extra.yaml", &config_map(ns, "extra", "x"))?;
    repo.commit("two ConfigMaps")?;
    repo.push()?;
    let operator = Operator::start(&kubeconfig, ns, &[])?;
    watched.kubectl().apply(&git_repository(
        ns,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    wait_ready(watched.kubectl(), ns, "app", "60s", &operator)?;

    repo.write("deploy/config.yaml", &config_map(ns, "settings", "changed"))?;
    repo.remove("deploy/extra.yaml")?;
    repo.commit("change one, drop the other")?;
    repo.push()?;
    let k = watched.kubectl();
    wait_for_output(k, &greeting_args(ns, "settings"), "changed", &operator)?;
    wait_for_output(
        k,
        &[
            "get",
            "configmap",
            "-n",
            ns,
            "-l",
            "tether.dev/name=app",
            "-o",
            "name",
        ],
        "configmap/settings",
        &operator,
    )?;
    ensure!(
        !operator.log().contains("forbidden"),
        "the operator hit a permission it lacks:\n{}",
        operator.log_tail()
    );
    Ok(())
}
