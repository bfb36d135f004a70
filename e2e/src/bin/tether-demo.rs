//! `make run`: the whole loop on one machine. A real API server, an HTTPS git server holding a sample
//! config repo, the hub (HTTPS) with a generated config and a webhook hook on the repo, the operator
//! connected to the hub with CI access on, a `GitRepository` syncing, and a CI job's kubeconfig that
//! reaches the API server through the hub. Ctrl-C (or `make stop`) stops everything it started.
//!
//! Every process is started from the main thread through `setpriv --pdeathsig`, so they all end with
//! this program, however it ends.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use tether_e2e::ci::{CiToken, write_access_file, write_kubeconfig};
use tether_e2e::controlplane::{Binaries, ControlPlane};
use tether_e2e::fixtures::{git_repository, https_secret};
use tether_e2e::git_server::HttpsGitServer;
use tether_e2e::gitrepo::{install_crds, wait_ready};
use tether_e2e::hub::{Forge, Hub, HubOptions};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::process::Lifetime;

#[derive(Debug, Parser)]
#[command(about = "Tether's local demo: control plane, git server, hub, operator, a GitRepository")]
struct Args {
    /// Where the demo keeps its state (control plane data, logs, pid file).
    #[arg(long, env = "TETHER_DEMO_DIR", default_value = ".run/demo")]
    state_dir: PathBuf,
}

fn main() -> Result<()> {
    let Args { state_dir } = Args::parse();
    if let Err(e) = demo(&state_dir) {
        eprintln!("\nthe demo failed: {e:#}");
        eprintln!("logs are in {}", state_dir.display());
        std::process::exit(1);
    }
    Ok(())
}

/// Prints a step, runs it, prints how long it took (or fails naming the step).
fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprint!("==> {what} ... ");
    let began = Instant::now();
    let out = f().with_context(|| format!("while {what}"))?;
    eprintln!("ok ({:.1}s)", began.elapsed().as_secs_f64());
    Ok(out)
}

fn demo(state_dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(state_dir);
    std::fs::create_dir_all(state_dir)?;
    let state_dir = state_dir.canonicalize()?;
    std::fs::write(state_dir.join("demo.pid"), std::process::id().to_string())?;

    let binaries = step("finding the control-plane binaries", Binaries::locate)?;
    let plane = step(
        "starting etcd, kube-apiserver and kube-controller-manager",
        || {
            ControlPlane::start(
                &state_dir.join("cluster"),
                binaries,
                Lifetime::TiedToStarter,
            )
        },
    )?;
    let kubectl = Kubectl::for_plane(&plane);
    step("installing the GitRepository CRD", || {
        install_crds(&kubectl)
    })?;

    let git = step(
        "starting the HTTPS git server (nginx + git http-backend)",
        HttpsGitServer::start,
    )?;
    let repo = step("creating the sample config repo", || {
        let repo = git.create_repo("demo-app")?;
        repo.write("deploy/namespace.yaml", SAMPLE_NAMESPACE)?;
        repo.write("deploy/config.yaml", &sample_config("hello from Tether"))?;
        repo.write("deploy/app.yaml", SAMPLE_APP)?;
        repo.write("deploy/ci-access.yaml", SAMPLE_CI_RBAC)?;
        repo.write("deploy/kustomization.yaml", SAMPLE_KUSTOMIZATION)?;
        repo.commit("the demo app")?;
        repo.push()?;
        // A person commits here with their own identity, or this one when they have none.
        repo.git(&["config", "user.name", "Tether Demo"])?;
        repo.git(&["config", "user.email", "demo@tether.invalid"])?;
        Ok(repo)
    })?;
    let hub = step("starting the hub (HTTPS, its own test CA)", || {
        Hub::start_with(HubOptions {
            tls: true,
            ..HubOptions::default()
        })
    })?;
    step("installing the webhook hook on the repo", || {
        let script = hub.post_receive_hook(Forge::Github, &[&git.url("demo-app")])?;
        repo.install_post_receive_hook(&script)?;
        Ok(())
    })?;

    let ci_token = CiToken::new("demo-ci", CI_USER, &["tether:ci"]);
    let ci_kubeconfig = step(
        "writing the CI access file and a CI job's kubeconfig",
        || {
            write_access_file(
                &state_dir.join("ci-access.yaml"),
                std::slice::from_ref(&ci_token),
            )?;
            write_kubeconfig(
                &state_dir.join("ci.kubeconfig"),
                &format!("{}/k8s-proxy/e2e", hub.https_url()),
                &hub.ca_file(),
                &ci_token.token,
            )
        },
    )?;
    let operator = step(
        "starting the operator, connected to the hub, with CI access",
        || {
            let token = hub.token_file().display().to_string();
            let ca = hub.ca_file().display().to_string();
            let access = state_dir.join("ci-access.yaml").display().to_string();
            Operator::start(
                &plane.kubeconfig(),
                "default",
                &[
                    "--hub-url",
                    &hub.ws_url(),
                    "--hub-token-file",
                    &token,
                    "--hub-ca-file",
                    &ca,
                    "--ci-access",
                    &access,
                ],
            )
        },
    )?;
    step("applying a GitRepository and waiting for Ready", || {
        kubectl.apply(&https_secret("default", "demo-git", &git))?;
        kubectl.apply(&git_repository(
            "default",
            "demo",
            &git.url("demo-app"),
            "  path: deploy\n  interval: 1h\n  secretRef:\n    name: demo-git\n",
        ))?;
        wait_ready(&kubectl, "default", "demo", "120s", &operator)
    })?;

    let bin = plane.binaries().dir().display().to_string();
    let work = repo.work_path().display();
    println!(
        r#"
Tether is running. Everything below stops with Ctrl-C here, or `make stop` from another shell.

  API server  {api}
  git server  {git_url}  (user {user}; the work tree below pushes to it)
  hub         {hub_url}  (webhooks at /v1/webhooks/github, CI access at /k8s-proxy/e2e)
  operator    {admin}/metrics   log: {log}

In another shell:

  export KUBECONFIG={kubeconfig} PATH={bin}:$PATH
  kubectl get tgr -w

deploy/ holds a kustomization, so Tether applies what `kustomize build deploy` makes of it (every
object labelled app.kubernetes.io/part-of=tether-demo). Change the app and push; the interval is 1h,
so the hub's push notice is what applies it:

  cd {work}
  sed -i 's/hello from Tether/hello again/' deploy/config.yaml
  git commit -am 'a new greeting' && git push origin main
  kubectl get configmap greeting -n tether-demo -o jsonpath='{{.data.message}}'

A CI job outside the cluster reaches the API server through the hub, as the user {ci_user} (the
token in its kubeconfig maps to it; the RoleBinding in deploy/ci-access.yaml grants it edit in
tether-demo, nothing else):

  kubectl --kubeconfig {ci_kubeconfig} auth whoami
  kubectl --kubeconfig {ci_kubeconfig} get configmaps -n tether-demo
"#,
        ci_user = CI_USER,
        ci_kubeconfig = ci_kubeconfig.display(),
        api = plane.api_url(),
        git_url = git.url("demo-app"),
        user = git.username(),
        hub_url = hub.https_url(),
        admin = operator.admin_url(),
        log = state_dir.join("operator.log").display(),
        kubeconfig = plane.kubeconfig().display(),
    );
    // Keep the operator's log where the message says it is.
    let log_link = state_dir.join("operator.log");
    let _ = std::fs::remove_file(&log_link);
    let _ = std::os::unix::fs::symlink(operator.log_path(), &log_link);

    wait_for_stop()?;
    eprintln!("\n==> stopping the operator, the hub, the git server and the control plane");
    drop(operator);
    drop(hub);
    drop(git);
    drop(plane);
    let _ = std::fs::remove_file(state_dir.join("demo.pid"));
    eprintln!("==> stopped");
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_stop() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}

/// The user the demo's CI token acts as.
const CI_USER: &str = "ci-demo";

/// Grants the CI user edit rights in the demo namespace, from the config repo like the rest.
const SAMPLE_CI_RBAC: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: ci-demo-edit
  namespace: tether-demo
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: edit
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: ci-demo
"#;

/// The demo's kustomization: its files, and a label on every object (which plain files would not get).
const SAMPLE_KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [namespace.yaml, config.yaml, app.yaml, ci-access.yaml]
labels:
  - pairs:
      app.kubernetes.io/part-of: tether-demo
";

const SAMPLE_NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tether-demo\n";

fn sample_config(message: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: greeting\n  namespace: tether-demo\ndata:\n  message: {message}\n"
    )
}

const SAMPLE_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: tether-demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: tether-demo
spec:
  selector: {app: web}
  ports:
  - port: 80
"#;
