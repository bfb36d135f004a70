//! Flux's source-controller and kustomize-controller as local processes, for benchmarks that set
//! Tether beside them on the same control plane: their CRDs applied, both controllers started
//! against a kubeconfig with their release defaults (watching one namespace, leader election off),
//! source-controller's artifact storage served on a loopback port that kustomize-controller fetches
//! from; the objects they reconcile (`GitRepository` of `source.toolkit.fluxcd.io/v1`, `Kustomization`
//! of `kustomize.toolkit.fluxcd.io/v1`, the Secret they read) and waits on their `Ready`.
//!
//! The binaries come from `TETHER_FLUX_BIN`, else from `hack/flux-bin.sh` (which builds them once
//! from their Go modules and caches them by version). Flux's resources are always named by their
//! full resource name here: its `GitRepository` has the same plural (`gitrepositories`) as Tether's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::fixtures::indent;
use crate::git_server::HttpsGitServer;
use crate::http::http_get;
use crate::kubectl::Kubectl;
use crate::process::{Lifetime, Process, free_port, tail};
use crate::wait::{fatal, wait_until_every};

/// Flux's `GitRepository`, by its full resource name.
pub const GIT_REPOSITORIES: &str = "gitrepositories.source.toolkit.fluxcd.io";
/// Flux's `Kustomization`, by its full resource name.
pub const KUSTOMIZATIONS: &str = "kustomizations.kustomize.toolkit.fluxcd.io";
/// The annotation that asks a Flux object to reconcile now (what `flux reconcile` and the
/// notification-controller's Receiver set).
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// The versions `hack/flux-bin.sh` builds.
pub const SOURCE_CONTROLLER_VERSION: &str = "v1.9.3";
/// See [`SOURCE_CONTROLLER_VERSION`].
pub const KUSTOMIZE_CONTROLLER_VERSION: &str = "v1.9.6";

/// The folder holding `source-controller`, `kustomize-controller` and `crds/`.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("TETHER_FLUX_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace::built_by("flux-bin.sh")?,
    };
    for name in ["source-controller", "kustomize-controller", "crds"] {
        ensure!(
            dir.join(name).exists(),
            "{} is missing: run `bash hack/flux-bin.sh` and set TETHER_FLUX_BIN to the folder it prints",
            dir.join(name).display()
        );
    }
    Ok(dir)
}

/// Applies Flux's CRDs (source and kustomize) and waits until the two this harness uses are
/// established.
pub fn install_crds(kubectl: &Kubectl) -> Result<()> {
    let crds = bin_dir()?.join("crds");
    kubectl
        .run(&["apply", "--server-side", "-f", &crds.display().to_string()])
        .context("applying Flux's CRDs")?;
    for crd in [GIT_REPOSITORIES, KUSTOMIZATIONS] {
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            &format!("crd/{crd}"),
        ])?;
    }
    Ok(())
}

/// Both controllers, watching one namespace; stopped when dropped.
#[derive(Debug)]
pub struct Flux {
    source: Process,
    kustomize: Process,
    source_health_port: u16,
    kustomize_health_port: u16,
    storage_port: u16,
    dir: tempfile::TempDir,
}

impl Flux {
    /// Starts source-controller and kustomize-controller against `kubeconfig`, each watching only
    /// `namespace` (`--watch-all-namespaces=false`, the namespace given as `RUNTIME_NAMESPACE`) with
    /// `--concurrent=<concurrent>`, and returns once both report ready on their health endpoint.
    pub fn start(kubeconfig: &Path, namespace: &str, concurrent: u16) -> Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("tether-flux-").tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let storage_port = free_port()?;
        let source_health_port = free_port()?;
        let kustomize_health_port = free_port()?;
        let env = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUNTIME_NAMESPACE", namespace.to_string()),
            ("HOME", dir.path().display().to_string()),
        ];
        let common = |health: u16| -> Result<Vec<String>> {
            Ok(vec![
                format!("--metrics-addr=127.0.0.1:{}", free_port()?),
                format!("--health-addr=127.0.0.1:{health}"),
                format!("--concurrent={concurrent}"),
                "--watch-all-namespaces=false".to_string(),
                "--enable-leader-election=false".to_string(),
                "--log-level=info".to_string(),
            ])
        };
        let mut source_args = common(source_health_port)?;
        source_args.extend([
            format!("--storage-path={}", storage.display()),
            format!("--storage-addr=127.0.0.1:{storage_port}"),
            format!("--storage-adv-addr=127.0.0.1:{storage_port}"),
        ]);
        let source = Process::spawn_with_env(
            "source-controller",
            &bin.join("source-controller"),
            &source_args,
            &dir.path().join("source-controller.log"),
            Lifetime::TiedToStarter,
            &env,
        )?;
        let kustomize = Process::spawn_with_env(
            "kustomize-controller",
            &bin.join("kustomize-controller"),
            &common(kustomize_health_port)?,
            &dir.path().join("kustomize-controller.log"),
            Lifetime::TiedToStarter,
            &env,
        )?;
        let mut flux = Self {
            source,
            kustomize,
            source_health_port,
            kustomize_health_port,
            storage_port,
            dir,
        };
        flux.wait_ready(Duration::from_secs(60))?;
        Ok(flux)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        for (port, which) in [
            (self.source_health_port, 0),
            (self.kustomize_health_port, 1),
        ] {
            let name = if which == 0 {
                "source-controller"
            } else {
                "kustomize-controller"
            };
            let tails = self.log_tail();
            wait_until_every(
                &format!("{name} ready on 127.0.0.1:{port}/readyz"),
                timeout,
                Duration::from_millis(100),
                || {
                    let process = if which == 0 {
                        &mut self.source
                    } else {
                        &mut self.kustomize
                    };
                    process.check_running().map_err(fatal)?;
                    let (status, body) = http_get(port, "/readyz")?;
                    ensure!(status == 200, "readyz answered {status}: {body}");
                    Ok(())
                },
            )
            .with_context(|| tails.clone())?;
        }
        Ok(())
    }

    /// The pids of source-controller and kustomize-controller, for RSS and CPU.
    pub fn pids(&self) -> [u32; 2] {
        [self.source.pid(), self.kustomize.pid()]
    }

    /// Where source-controller serves its artifacts (`http://127.0.0.1:PORT`).
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.storage_port)
    }

    /// The last lines of both controllers' logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let d = self.dir.path();
        format!(
            "source-controller log:\n{}\nkustomize-controller log:\n{}",
            tail(&d.join("source-controller.log"), 20),
            tail(&d.join("kustomize-controller.log"), 20)
        )
    }

    /// Stops both controllers (also done on drop).
    pub fn stop(&mut self) {
        self.source.stop(Duration::from_secs(5));
        self.kustomize.stop(Duration::from_secs(5));
    }
}

impl Drop for Flux {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Secret `name` in `ns` with `server`'s basic-auth user, password and CA, in the keys a Flux
/// `GitRepository`'s `secretRef` reads (`username`, `password`, `ca.crt`).
pub fn https_secret(ns: &str, name: &str, server: &HttpsGitServer) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  username: {user}\n  password: {pw}\n  ca.crt: |\n{ca}",
        user = server.username(),
        pw = server.password(),
        ca = indent(server.ca_pem(), 4),
    )
}

/// What one Flux sync is made of: a `GitRepository` and a `Kustomization` of the same name.
#[derive(Debug, Clone)]
pub struct Sync<'a> {
    /// The namespace of both objects, and the `targetNamespace` of what is applied.
    pub namespace: &'a str,
    /// The name of both objects.
    pub name: &'a str,
    /// The repository's HTTPS URL.
    pub url: &'a str,
    /// The branch to follow.
    pub branch: &'a str,
    /// The Secret in the namespace with the credentials ([`https_secret`]).
    pub secret: &'a str,
    /// The folder of plain manifests, e.g. `./deploy` (kustomize-controller generates a
    /// kustomization for it).
    pub path: &'a str,
    /// Both objects' `interval`, e.g. `1h`.
    pub interval: &'a str,
}

impl Sync<'_> {
    /// The two objects as YAML documents, for `kubectl apply`: the `Kustomization` with
    /// `prune: true` and the `sourceRef` naming the `GitRepository`.
    pub fn yaml(&self) -> String {
        let Sync {
            namespace,
            name,
            url,
            branch,
            secret,
            path,
            interval,
        } = self;
        format!(
            r#"apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: {name}
  namespace: {namespace}
spec:
  url: {url}
  ref:
    branch: {branch}
  interval: {interval}
  secretRef:
    name: {secret}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: {name}
  namespace: {namespace}
spec:
  interval: {interval}
  path: {path}
  prune: true
  targetNamespace: {namespace}
  sourceRef:
    kind: GitRepository
    name: {name}
"#
        )
    }
}

/// Asks source-controller to look at the remote now: the `reconcile.fluxcd.io/requestedAt`
/// annotation of the Flux `GitRepository` set to `token`, as Flux's Receiver does on a push webhook.
pub fn request_reconcile(kubectl: &Kubectl, ns: &str, name: &str, token: &str) -> Result<()> {
    kubectl.run(&[
        "annotate",
        GIT_REPOSITORIES,
        name,
        "-n",
        ns,
        "--overwrite",
        &format!("{REQUESTED_AT}={token}"),
    ])?;
    Ok(())
}

/// A field of a Flux `Kustomization` by JSONPath, e.g. `{.status.lastAppliedRevision}`.
pub fn kustomization_field(kubectl: &Kubectl, ns: &str, name: &str, path: &str) -> Result<String> {
    kubectl.run(&[
        "get",
        KUSTOMIZATIONS,
        name,
        "-n",
        ns,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// Waits until the `Kustomization` `name` is Ready with `status.lastAppliedRevision` equal to
/// `revision` (`main@sha1:<sha>`); fails with its status and the controllers' logs.
pub fn wait_applied(
    kubectl: &Kubectl,
    ns: &str,
    name: &str,
    revision: &str,
    timeout: Duration,
    flux: &Flux,
) -> Result<()> {
    let path = "{.status.conditions[?(@.type==\"Ready\")].status} {.status.lastAppliedRevision}";
    let want = format!("True {revision}");
    let waited = wait_until_every(
        &format!("Flux Kustomization {ns}/{name} Ready at {revision}"),
        timeout,
        Duration::from_millis(100),
        || {
            let got = kustomization_field(kubectl, ns, name, path)?;
            ensure!(got.trim() == want, "it says {got:?}");
            Ok(())
        },
    );
    if let Err(e) = waited {
        let status = kustomization_field(kubectl, ns, name, "{.status}").unwrap_or_default();
        let source = kubectl
            .run(&[
                "get",
                GIT_REPOSITORIES,
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status}",
            ])
            .unwrap_or_default();
        bail!(
            "{e:#}\nKustomization status: {status}\nGitRepository status: {source}\n{}",
            flux.log_tail()
        );
    }
    Ok(())
}
