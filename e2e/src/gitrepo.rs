//! A `GitRepository` as a test sees it through kubectl: the CRD installed, its spec patched, a
//! reconcile requested, its status read, and waits on its conditions and revisions that fail with the
//! operator's log.

use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::kubectl::Kubectl;
use crate::operator::Operator;

/// Applies `crds/` to the shared control plane once per test binary and waits until established.
pub fn install_crds(kubectl: &Kubectl) -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let crds = crate::workspace::root().join("crds");
        result = kubectl
            .run(&["apply", "--server-side", "-f", &crds.display().to_string()])
            .and_then(|_| {
                kubectl.run(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    "crd/gitrepositories.tether.dev",
                ])
            })
            .map(|_| ());
    });
    result
}

/// A field of a `GitRepository` by JSONPath, e.g. `{.status.lastAppliedRevision}`.
pub fn get_field(kubectl: &Kubectl, namespace: &str, name: &str, path: &str) -> Result<String> {
    kubectl.run(&[
        "get",
        "-n",
        namespace,
        "gitrepository",
        name,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// `kubectl get tgr <name> -o jsonpath=<path>` as arguments for [`wait_for_output`].
pub fn field_args<'a>(ns: &'a str, name: &'a str, path: &'a str) -> Vec<&'a str> {
    vec!["get", "tgr", name, "-n", ns, "-o", path]
}

/// The `Ready` condition as `(status, reason, message)`.
pub fn ready_condition(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
) -> Result<(String, String, String)> {
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

/// `kubectl patch` of the spec with a JSON merge patch: `spec` is the spec's part, e.g.
/// `{"interval":"1h"}`.
pub fn patch_spec(kubectl: &Kubectl, ns: &str, name: &str, spec: &str) -> Result<()> {
    kubectl.run(&[
        "patch",
        "tgr",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{spec}}}"#),
    ])?;
    Ok(())
}

/// Asks for a reconcile now: the `tether.dev/reconcile-requested-at` annotation set to `token`.
pub fn request_reconcile(kubectl: &Kubectl, ns: &str, name: &str, token: &str) -> Result<()> {
    kubectl.run(&[
        "annotate",
        "tgr",
        name,
        "-n",
        ns,
        "--overwrite",
        &format!("tether.dev/reconcile-requested-at={token}"),
    ])?;
    Ok(())
}

/// [`request_reconcile`], then waits until the operator reports it handled: afterwards the cluster
/// reflects whatever the remote says now.
pub fn reconcile_now(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    token: &str,
    operator: &Operator,
) -> Result<()> {
    request_reconcile(kubectl, ns, name, token)?;
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastHandledReconcileAt}"),
        token,
        operator,
    )
}

/// `kubectl wait --for=condition=Ready tgr/<name>`, with the operator's log on failure.
pub fn wait_ready(
    kubectl: &Kubectl,
    namespace: &str,
    name: &str,
    timeout: &str,
    operator: &Operator,
) -> Result<()> {
    wait_condition(
        kubectl,
        namespace,
        name,
        "condition=Ready",
        timeout,
        operator,
    )
}

/// `kubectl wait --for=<what> tgr/<name>`, with the status and the operator's log on failure.
pub fn wait_condition(
    kubectl: &Kubectl,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: &str,
    operator: &Operator,
) -> Result<()> {
    let waited = kubectl.run(&[
        "wait",
        "-n",
        namespace,
        &format!("--for={what}"),
        &format!("--timeout={timeout}"),
        &format!("gitrepository/{name}"),
    ]);
    if let Err(e) = waited {
        let status = get_field(kubectl, namespace, name, "{.status}").unwrap_or_default();
        bail!(
            "{e}\nstatus: {status}\noperator log:\n{}",
            operator.log_tail()
        );
    }
    Ok(())
}

/// Polls `kubectl <args>` until it prints `want` (trimmed), within 60 s; fails with the last output and
/// the operator's log.
pub fn wait_for_output(
    kubectl: &Kubectl,
    args: &[&str],
    want: &str,
    operator: &Operator,
) -> Result<()> {
    kubectl
        .wait_for_output(
            args,
            want,
            Duration::from_secs(60),
            Duration::from_millis(250),
        )
        .with_context(|| format!("operator log:\n{}", operator.log_tail()))?;
    Ok(())
}

/// Waits until `status.lastAppliedRevision` is `revision` (e.g. `main@sha1:<sha>`).
pub fn wait_applied(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    revision: &str,
    operator: &Operator,
) -> Result<()> {
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastAppliedRevision}"),
        revision,
        operator,
    )
}

/// Waits until `revision` was attempted and `Ready` is False; returns the Ready condition.
pub fn wait_failed(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    revision: &str,
    operator: &Operator,
) -> Result<(String, String, String)> {
    wait_for_output(
        kubectl,
        &field_args(ns, name, "jsonpath={.status.lastAttemptedRevision}"),
        revision,
        operator,
    )?;
    wait_condition(kubectl, ns, name, "condition=Ready=False", "30s", operator)?;
    ready_condition(kubectl, ns, name)
}

/// Waits until the `Ready` condition's reason is `reason` (e.g. `DependencyNotReady`, whose failures
/// carry no revision for [`wait_failed`]); returns the Ready condition.
pub fn wait_reason(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    reason: &str,
    operator: &Operator,
) -> Result<(String, String, String)> {
    wait_for_output(
        kubectl,
        &field_args(
            ns,
            name,
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ),
        reason,
        operator,
    )?;
    ready_condition(kubectl, ns, name)
}

/// How many of the `GitRepository` objects `api` lists are `Ready=True`.
pub async fn count_ready(api: &kube::Api<tether_operator::crd::GitRepository>) -> Result<usize> {
    let list = api.list(&kube::api::ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|g| {
            g.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count())
}
