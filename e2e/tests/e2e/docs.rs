//! The shell commands in the docs, run. Every fenced shell block of README.md and docs/*.md is either
//! run here through `sh -eu`, from the repository root, against the local control plane and real local
//! servers (the operator and the hub as processes, git repositories on disk), or listed in [`BLOCKS`]
//! as skipped with the reason; a block that is neither fails
//! `every_shell_block_in_the_docs_is_run_or_skipped_for_a_reason`.
//!
//! What cannot exist here (the internet, a kubelet, a forge, a developer's own cluster) is swapped for a
//! local stand-in by checked substitutions: each must occur in the block exactly as often as the test
//! says, so that a changed doc fails the test that runs it instead of running half-substituted.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{config_map, git_repository, unguessable};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{field_args, install_crds, wait_for_output, wait_ready};
use tether_e2e::hub::{Forge, Hub, sha256_hex};
use tether_e2e::operator::Operator;
use tether_e2e::process::alive;
use tether_e2e::tool;
use tether_e2e::wait::wait_until;
use tether_e2e::workspace::{self, binary};

/// What the tests do with one shell block of the docs.
enum Use {
    /// A test here runs it; `by` names that test.
    Run { by: &'static str },
    /// Nothing runs it, for the reason given.
    Skip { why: &'static str },
}

/// Every shell block of the docs: its file, the start of its first line, and what is done with it.
const BLOCKS: &[(&str, &str, Use)] = &[
    (
        "docs/ci-access.md",
        "# TETHER_HUB (https://hub.example.com)",
        Use::Run {
            by: "ci_access_doc_static_token_job_deploys_through_a_real_hub",
        },
    ),
    (
        "README.md",
        "make run",
        Use::Skip {
            why: "`make test` is everything CI runs, this test included, so running it here would \
                  recurse; `make run` is a demo that runs in the foreground until stopped, and demo.rs \
                  runs the program it starts (target/debug/tether-demo) and follows what it prints",
        },
    ),
    (
        "README.md",
        "helm install tether-operator",
        Use::Run {
            by: "readme_quick_start_installs_the_chart_and_syncs_a_repository",
        },
    ),
    (
        "README.md",
        "eval \"$(make -s cluster-up)\"",
        Use::Run {
            by: "readme_cluster_up_starts_a_control_plane_that_cluster_down_stops",
        },
    ),
    (
        "docs/gitrepository.md",
        "kubectl wait --for=condition=Ready tgr/app",
        Use::Run {
            by: "gitrepository_doc_wait_and_list_see_the_documented_app_ready",
        },
    ),
    (
        "docs/hub.md",
        "body='",
        Use::Run {
            by: "hub_doc_generic_sender_is_accepted_by_a_real_hub",
        },
    ),
    (
        "docs/hub.md",
        "#!/bin/sh",
        Use::Run {
            by: "hub_doc_post_receive_hook_notifies_the_hub_of_each_pushed_ref",
        },
    ),
    (
        "docs/troubleshooting.md",
        "kubectl get tgr -A",
        Use::Run {
            // Its `kubectl logs` line needs the chart installed: the quick start test runs that line.
            by: "troubleshooting_doc_commands_show_the_status_and_request_a_reconcile",
        },
    ),
    (
        "docs/rendering.md",
        "# 1. A key pair.",
        Use::Run {
            by: "rendering_doc_sops_steps_encrypt_what_a_gitrepository_decrypts",
        },
    ),
    (
        "docs/troubleshooting.md",
        "kubectl annotate tgr app",
        Use::Run {
            by: "troubleshooting_doc_commands_show_the_status_and_request_a_reconcile",
        },
    ),
    (
        "docs/fleet.md",
        "TOKEN=$(openssl rand -hex 32)",
        Use::Run {
            by: "fleet_doc_token_requests_and_example_answer_match_a_real_hub",
        },
    ),
    (
        "docs/fleet.md",
        "curl -sf -H \"Authorization: Bearer $TOKEN\" https://hub.example.com/v1/fleet",
        Use::Run {
            by: "fleet_doc_token_requests_and_example_answer_match_a_real_hub",
        },
    ),
    (
        "docs/fleet.md",
        "curl -sN",
        Use::Run {
            by: "fleet_doc_token_requests_and_example_answer_match_a_real_hub",
        },
    ),
];

/// The fence languages that hold shell commands. Each counts, so that a new block cannot slip past
/// the check as ```bash.
const SHELL_FENCES: &[&str] = &["sh", "bash", "shell", "console", "zsh"];

/// A fenced block of a doc, or some of its lines, with where it is.
#[derive(Debug, Clone)]
struct Block {
    /// `file:line` of its first line.
    origin: String,
    text: String,
}

impl Block {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default().trim()
    }

    /// The block with `from` replaced by `to`, which must occur exactly `times` times.
    fn replace(mut self, from: &str, to: &str, times: usize) -> Result<Self> {
        let found = self.text.matches(from).count();
        ensure!(
            found == times,
            "{}: {from:?} occurs {found} time(s) in the block, the test expects {times}: the doc \
             changed, so update its test in e2e/tests/e2e/docs.rs\n{}",
            self.origin,
            self.text
        );
        self.text = self.text.replace(from, to);
        Ok(self)
    }

    /// The index of the one line that starts with `start` (leading spaces ignored).
    fn line_starting(&self, start: &str) -> Result<usize> {
        let found: Vec<usize> = self
            .text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(start))
            .map(|(i, _)| i)
            .collect();
        match found.as_slice() {
            [i] => Ok(*i),
            _ => bail!(
                "{}: {} line(s) start with {start:?}, the test expects 1: the doc changed, so update \
                 its test in e2e/tests/e2e/docs.rs\n{}",
                self.origin,
                found.len(),
                self.text
            ),
        }
    }

    /// Lines `range` of the block, as a block of their own.
    fn lines(&self, range: std::ops::Range<usize>) -> Self {
        let (file, first) = self.origin.rsplit_once(':').unwrap_or((&self.origin, "1"));
        let first: usize = first.parse().unwrap_or(1);
        let text: String = self
            .text
            .lines()
            .skip(range.start)
            .take(range.len())
            .map(|l| format!("{l}\n"))
            .collect();
        Self {
            origin: format!("{file}:{}", first + range.start),
            text,
        }
    }

    /// The block without its one line that starts with `start`, and that line on its own.
    fn take_line(self, start: &str) -> Result<(Self, Self)> {
        let i = self.line_starting(start)?;
        let line = self.lines(i..i + 1);
        let rest = self
            .text
            .lines()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        Ok((
            Self {
                origin: self.origin,
                text: rest,
            },
            line,
        ))
    }

    /// The block cut before its one line that starts with `start`: the lines before, the lines from it.
    fn split_before(self, start: &str) -> Result<(Self, Self)> {
        let i = self.line_starting(start)?;
        let all = self.text.lines().count();
        Ok((self.lines(0..i), self.lines(i..all)))
    }
}

/// The fenced blocks of `file` (relative to the repository root) whose language is one of `languages`.
fn fenced_blocks(file: &str, languages: &[&str]) -> Result<Vec<Block>> {
    let path = workspace::root().join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut blocks = Vec::new();
    // Every fence is followed, so that a fence shown inside another block cannot open one.
    let mut open: Option<(usize, bool, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                let language = info.split_whitespace().next().unwrap_or_default();
                open = Some((n + 2, languages.contains(&language), String::new()));
            }
            (Some((start, wanted, body)), Some(_)) => {
                if *wanted {
                    blocks.push(Block {
                        origin: format!("{file}:{start}"),
                        text: std::mem::take(body),
                    });
                }
                open = None;
            }
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    ensure!(open.is_none(), "{file}: a fenced block is never closed");
    Ok(blocks)
}

/// The shell block of `file` whose first line starts with `first_line`, which [`BLOCKS`] must list as
/// run.
fn doc_block(file: &str, first_line: &str) -> Result<Block> {
    ensure!(
        BLOCKS
            .iter()
            .any(|(f, l, u)| *f == file && *l == first_line && matches!(u, Use::Run { .. })),
        "{file}: the block starting {first_line:?} is not listed as run in BLOCKS"
    );
    let mut found: Vec<Block> = fenced_blocks(file, SHELL_FENCES)?
        .into_iter()
        .filter(|b| b.first_line().starts_with(first_line))
        .collect();
    ensure!(
        found.len() == 1,
        "{file}: {} shell block(s) start with {first_line:?}, the test expects 1: the doc changed, so \
         update e2e/tests/e2e/docs.rs",
        found.len()
    );
    found.pop().context("no block")
}

/// A shell as a person reading the docs would have one: `sh -eu` in the repository root (the docs say
/// "from a clone"), with this test's environment minus what would point the commands elsewhere (a
/// kubeconfig, an outer `make`'s flags, what cargo set for the test), plus `env`.
struct Shell {
    env: Vec<(String, String)>,
}

/// What a shell run printed.
struct Ran {
    stdout: String,
    stderr: String,
}

impl Shell {
    fn new() -> Self {
        Self { env: Vec::new() }
    }

    /// A shell with the control plane's `kubectl` and `helm` first on `PATH` and `kubeconfig` as
    /// `KUBECONFIG`.
    fn for_cluster(kubeconfig: &Path) -> Self {
        let path = format!(
            "{}:{}",
            shared().binaries().dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self::new()
            .env("PATH", &path)
            .env("KUBECONFIG", &kubeconfig.display().to_string())
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs `block` with `sh -eu`, ended (with everything it started in its process group) after
    /// `timeout`; fails with the commands and their output unless it exits 0.
    fn run(&self, block: &Block, timeout: Duration) -> Result<Ran> {
        let mut stdout = tempfile::tempfile()?;
        let mut stderr = tempfile::tempfile()?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--", "sh", "-eu", "-c", &block.text])
            .current_dir(workspace::root())
            .env_remove("KUBECONFIG")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        // What cargo set for this test crate (CARGO_MANIFEST_DIR, CARGO_PKG_*...): a `cargo build`
        // under `make` would see it, count build scripts that watch it as changed, and rebuild them
        // (and again at the next build outside).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key == "CARGO"
                || (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            {
                command.env_remove(key.as_ref());
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout.try_clone()?)
            .stderr(stderr.try_clone()?);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().context("starting sh (through setpriv)")?;
        let waited = wait_until(
            &format!("the commands of {}", block.origin),
            timeout,
            || child.try_wait()?.context("still running"),
        );
        if waited.is_err() {
            // The process group is the shell's pid.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        let ran = Ran {
            stdout: read_all(&mut stdout)?,
            stderr: read_all(&mut stderr)?,
        };
        let failure = match waited {
            Err(e) => format!("{e:#}"),
            Ok(status) if !status.success() => format!("`sh -eu` exited with {status}"),
            Ok(_) => return Ok(ran),
        };
        bail!(
            "{}: {failure}\n--- the commands\n{}--- stdout\n{}\n--- stderr\n{}",
            block.origin,
            block.text,
            ran.stdout,
            ran.stderr
        )
    }
}

fn read_all(file: &mut File) -> Result<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Whether `kubectl get tgr -A` printed a row for `namespace`/`name` whose READY is `True`.
fn listed_ready(stdout: &str, namespace: &str, name: &str) -> bool {
    stdout.lines().any(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        columns.len() > 2
            && columns[0] == namespace
            && columns[1] == name
            && columns.contains(&"True")
    })
}

#[test]
fn every_shell_block_in_the_docs_is_run_or_skipped_for_a_reason() -> Result<()> {
    let root = workspace::root();
    let this_file = include_str!("docs.rs");
    let mut problems = Vec::new();
    let mut claimed = vec![0usize; BLOCKS.len()];
    for path in crate::charts::doc_files()? {
        let file = path
            .strip_prefix(&root)?
            .to_str()
            .context("a doc path is not UTF-8")?
            .to_string();
        for block in fenced_blocks(&file, SHELL_FENCES)? {
            let first = block.first_line();
            let entries: Vec<usize> = BLOCKS
                .iter()
                .enumerate()
                .filter(|(_, (f, start, _))| *f == file && first.starts_with(start))
                .map(|(i, _)| i)
                .collect();
            match entries.as_slice() {
                [i] => claimed[*i] += 1,
                [] => problems.push(format!(
                    "{}: a shell block no test runs ({first:?}): run it in e2e/tests/e2e/docs.rs, \
                     or list it in BLOCKS as skipped and say why",
                    block.origin
                )),
                _ => problems.push(format!(
                    "{}: the block matches {} entries of BLOCKS",
                    block.origin,
                    entries.len()
                )),
            }
        }
    }
    for ((file, start, use_), count) in BLOCKS.iter().zip(&claimed) {
        if *count != 1 {
            problems.push(format!(
                "BLOCKS lists the block of {file} starting {start:?}, which the doc has {count} times"
            ));
        }
        match use_ {
            Use::Run { by } if !this_file.contains(&format!("fn {by}(")) => problems.push(format!(
                "BLOCKS says {by} runs the block of {file} starting {start:?}, but no such test is here"
            )),
            Use::Skip { why } if why.trim().is_empty() => problems.push(format!(
                "BLOCKS skips the block of {file} starting {start:?} without a reason"
            )),
            _ => {}
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    let skipped = BLOCKS
        .iter()
        .filter(|(_, _, u)| matches!(u, Use::Skip { .. }))
        .count();
    eprintln!(
        "shell blocks in the docs: {} run, {skipped} skipped",
        BLOCKS.len() - skipped
    );
    Ok(())
}

// --- README: the quick start ------------------------------------------------------------------------

/// podinfo's `kustomize/` folder: its manifests and the kustomization.yaml that lists them. Applied
/// as plain files, the kustomization (no Kubernetes object) would fail the revision: the quick start
/// passes only because Tether detects it and runs `kustomize build`.
const PODINFO: &[(&str, &str)] = &[
    (
        "kustomize/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
spec:
  minReadySeconds: 3
  selector:
    matchLabels: {app: podinfo}
  template:
    metadata:
      labels: {app: podinfo}
    spec:
      containers:
      - name: podinfod
        image: registry.example/podinfo:6
        ports:
        - {name: http, containerPort: 9898}
"#,
    ),
    (
        "kustomize/service.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: podinfo
spec:
  selector: {app: podinfo}
  ports:
  - {name: http, port: 9898, targetPort: http}
"#,
    ),
    (
        "kustomize/hpa.yaml",
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: podinfo
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  minReplicas: 2
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 99}}
"#,
    ),
    (
        "kustomize/kustomization.yaml",
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [deployment.yaml, service.yaml, hpa.yaml]
"#,
    ),
    ("README.md", "podinfo's manifests, for the quick start.\n"),
];

/// The quick start's Helm release (`tether-operator`, as the README names it) in its namespace:
/// uninstalled, which deletes the ClusterRoles and bindings the chart made, and the namespace deleted
/// when the test ends, however it ends.
struct Release {
    namespace: String,
    uninstalled: bool,
}

impl Release {
    const NAME: &str = "tether-operator";

    /// The ClusterRoles and ClusterRoleBindings of the release, by the chart's instance label.
    fn cluster_scoped() -> Result<Vec<String>> {
        let names = kubectl(&[
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            &format!("app.kubernetes.io/instance={}", Self::NAME),
            "-o",
            "name",
        ])?;
        Ok(names.lines().map(str::to_string).collect())
    }

    /// `helm uninstall`, and a check that the cluster-scoped objects went with it.
    fn uninstall(&mut self) -> Result<()> {
        let made = Self::cluster_scoped()?;
        ensure!(
            !made.is_empty(),
            "the release made no ClusterRoles or bindings"
        );
        crate::charts::helm(&["uninstall", Self::NAME, "-n", &self.namespace, "--wait"])?;
        self.uninstalled = true;
        let left = Self::cluster_scoped()?;
        ensure!(
            left.is_empty(),
            "helm uninstall left cluster-scoped objects: {left:?}"
        );
        Ok(())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = crate::charts::helm(&[
                "uninstall",
                Self::NAME,
                "-n",
                &self.namespace,
                "--ignore-not-found",
            ]);
        }
        let _ = kubectl(&[
            "delete",
            "namespace",
            &self.namespace,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// Runs kubectl against the shared control plane; fails with its stderr.
fn kubectl(args: &[&str]) -> Result<String> {
    tether_e2e::kubectl::Kubectl::for_plane(shared()).run(args)
}

/// A copy of the admin kubeconfig whose context's namespace is `namespace`, written into `dir`: the
/// quick start's unqualified commands (`kubectl wait tgr/podinfo`) then mean the test's namespace,
/// as they mean `default` on a fresh cluster.
fn kubeconfig_in_namespace(dir: &Path, namespace: &str) -> Result<PathBuf> {
    let admin = std::fs::read_to_string(shared().kubeconfig())?;
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin)?;
    let contexts = config["contexts"]
        .as_sequence_mut()
        .context("the admin kubeconfig has no contexts")?;
    for context in contexts {
        context["context"]["namespace"] = serde_yaml_ng::Value::String(namespace.to_string());
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(path)
}

/// README's quick start, from `helm install` to `kubectl get tgr -A`. Substituted: the release's
/// namespace (`tether`) and the GitRepository's (`default`) by namespaces of this test's own, and
/// podinfo on GitHub by a local repository of the same layout (branch `master`, manifests and the
/// kustomization.yaml under `kustomize/`, built by the real kustomize). No pod runs here (there is no kubelet): the chart's
/// Deployment stays Pending, and the operator binary runs out of cluster in its place, so that
/// `kubectl wait --for=condition=Ready` passes for real. Then troubleshooting.md's
/// `kubectl logs -n tether deploy/tether-operator` against that release, and `helm uninstall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quick_start_installs_the_chart_and_syncs_a_repository() -> Result<()> {
    let ns = TestNamespace::create("docs-quickstart").await?;
    install_crds(ns.kubectl())?;
    let n = ns.name();
    // Not created here: the block's `--create-namespace` does that.
    let mut release = Release {
        namespace: format!("{n}-tether"),
        uninstalled: false,
    };

    let mut repo = Upstream::new("podinfo")?;
    repo.checkout("master")?;
    for (path, text) in PODINFO {
        repo.write(path, text)?;
    }
    repo.commit("podinfo's manifests and kustomization")?;
    repo.push()?;

    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig_in_namespace(dir.path(), n)?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let block = doc_block("README.md", "helm install tether-operator")?
        .replace("-n tether ", &format!("-n {} ", release.namespace), 1)?
        .replace("namespace: default", &format!("namespace: {n}"), 1)?
        .replace(
            "https://github.com/stefanprodan/podinfo.git",
            &repo.file_url(),
            1,
        )?;
    let ran = Shell::for_cluster(&kubeconfig)
        .run(&block, Duration::from_secs(300))
        .with_context(|| {
            format!(
                "README's quick start failed; the operator's log:\n{}",
                operator.log_tail()
            )
        })?;
    ensure!(
        ran.stdout.contains("STATUS: deployed"),
        "helm install did not report the release deployed:\n{}",
        ran.stdout
    );
    ensure!(
        listed_ready(&ran.stdout, n, "podinfo"),
        "`kubectl get tgr -A` did not list {n}/podinfo as Ready:\n{}",
        ran.stdout
    );
    // What kustomize built was applied, in the GitRepository's namespace.
    let applied = ns.kubectl().run(&[
        "get",
        "deployments,services,horizontalpodautoscalers",
        "-n",
        n,
        "-l",
        "tether.dev/name=podinfo",
        "-o",
        "name",
    ])?;
    let mut applied: Vec<&str> = applied.lines().collect();
    applied.sort_unstable();
    ensure!(
        applied
            == [
                "deployment.apps/podinfo",
                "horizontalpodautoscaler.autoscaling/podinfo",
                "service/podinfo"
            ],
        "applied: {applied:?}"
    );

    // troubleshooting.md's `kubectl logs` line, against the release just installed. The
    // ReplicaSet controller makes the Pod; no node ever runs it, so the API server answers its log with
    // nothing: this proves the namespace and the Deployment's name, not what the operator would log.
    let (_, logs) =
        doc_block("docs/troubleshooting.md", "kubectl get tgr -A")?.take_line("kubectl logs ")?;
    let logs = logs.replace("-n tether ", &format!("-n {} ", release.namespace), 1)?;
    wait_until(
        "a Pod of the chart's Deployment",
        Duration::from_secs(60),
        || {
            let pods = ns.kubectl().run(&[
                "get",
                "pods",
                "-n",
                &release.namespace,
                "-l",
                &format!("app.kubernetes.io/instance={}", Release::NAME),
                "-o",
                "name",
            ])?;
            ensure!(!pods.trim().is_empty(), "no Pod yet");
            Ok(())
        },
    )?;
    let ran = Shell::for_cluster(&kubeconfig).run(&logs, Duration::from_secs(60))?;
    eprintln!(
        "{}: printed {:?} (no kubelet runs the Pod)",
        logs.origin, ran.stdout
    );

    release.uninstall()?;
    Ok(())
}

// --- README: the local control plane ----------------------------------------------------------------

/// Stops, when the test ends, a control plane that `make cluster-up` left running in `dir` (its
/// processes are detached, so nothing else would).
struct ClusterDown(PathBuf);

impl Drop for ClusterDown {
    fn drop(&mut self) {
        if self.0.join("pids").exists()
            && let Ok(program) = binary("tether-cluster")
        {
            let _ = Command::new(program)
                .arg("--state-dir")
                .arg(&self.0)
                .arg("down")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// README's `eval "$(make -s cluster-up)"`, `kubectl get namespaces`, `make cluster-down`, run for real
/// from the repository root, with the Makefile's `CLUSTER_DIR` (default `.run/cluster`) set on make's
/// command line to a folder of the test's own, so that a developer's cluster is never touched. The
/// block runs in two parts, cut before `make cluster-down`, so that the test can see the processes
/// between; after the first part the test asks the same shell where it now finds kubectl and helm.
#[test]
fn readme_cluster_up_starts_a_control_plane_that_cluster_down_stops() -> Result<()> {
    let state = tempfile::Builder::new()
        .prefix("tether-docs-cluster-")
        .tempdir()?;
    let dir = state.path().canonicalize()?;
    let _down = ClusterDown(dir.clone());
    let d = dir.display();
    let block = doc_block("README.md", "eval \"$(make -s cluster-up)\"")?
        .replace(
            "make -s cluster-up",
            &format!("make -s CLUSTER_DIR={d} cluster-up"),
            1,
        )?
        .replace(
            "make cluster-down",
            &format!("make CLUSTER_DIR={d} cluster-down"),
            1,
        )?;
    let (mut up, down) = block.split_before("make ")?;
    up.text.push_str(
        "# Added by the test: where this shell now finds its tools and its cluster.\n\
         echo '--- probe'\ncommand -v kubectl\ncommand -v helm\necho \"$KUBECONFIG\"\n",
    );
    // The first `make` may build tether-cluster.
    let ran = Shell::new().run(&up, Duration::from_secs(600))?;
    let (printed, probe) = ran
        .stdout
        .split_once("--- probe\n")
        .context("the probe printed nothing")?;
    ensure!(
        printed
            .lines()
            .any(|l| l.split_whitespace().next() == Some("default")),
        "`kubectl get namespaces` did not list default:\n{printed}\n{}",
        ran.stderr
    );
    let probe: Vec<&str> = probe.lines().collect();
    let [kubectl, helm, kubeconfig] = probe.as_slice() else {
        bail!("the probe printed {probe:?}");
    };
    let bin = Path::new(kubectl).parent().context("kubectl's folder")?;
    ensure!(
        Path::new(helm).parent() == Some(bin)
            && bin.join("kube-apiserver").is_file()
            && bin.join("etcd").is_file(),
        "the eval did not put the control plane's binaries first on PATH: kubectl is {kubectl}, helm \
         is {helm}"
    );
    ensure!(
        Path::new(kubeconfig).starts_with(&dir),
        "KUBECONFIG is {kubeconfig}, not in {d}"
    );

    let pids = std::fs::read_to_string(dir.join("pids")).context("cluster-up recorded no pids")?;
    let mut started = Vec::new();
    for line in pids.lines() {
        let (pid, name) = line.split_once(' ').context("a malformed pids line")?;
        started.push((pid.parse::<u32>()?, name.to_string()));
    }
    let mut names: Vec<&str> = started.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    ensure!(
        names == ["etcd", "kube-apiserver", "kube-controller-manager"],
        "cluster-up recorded {started:?}"
    );
    ensure!(
        started.iter().all(|(pid, _)| alive(*pid)),
        "not every recorded process is running: {started:?}"
    );

    Shell::new().run(&down, Duration::from_secs(300))?;
    let left: Vec<_> = started.iter().filter(|(pid, _)| alive(*pid)).collect();
    ensure!(
        left.is_empty(),
        "still running after cluster-down: {left:?}"
    );
    ensure!(
        !dir.join("pids").exists(),
        "cluster-down left its pids file"
    );
    Ok(())
}

// --- docs/gitrepository.md and docs/troubleshooting.md ----------------------------------------------

/// The `app` of docs/gitrepository.md's first example, applied from that example (its URL swapped for a
/// local repository, `team-a` for the test's namespace), with an operator watching it.
struct DocumentedApp {
    ns: TestNamespace,
    operator: Operator,
    _repo: Upstream,
}

async fn documented_app(prefix: &str) -> Result<DocumentedApp> {
    let ns = TestNamespace::create(prefix).await?;
    install_crds(ns.kubectl())?;
    let n = ns.name();
    let repo = Upstream::new("app")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "hello"))?;
    repo.commit("the app's settings")?;
    repo.push()?;
    let mut examples: Vec<Block> = fenced_blocks("docs/gitrepository.md", &["yaml"])?
        .into_iter()
        .filter(|b| b.text.contains("kind: GitRepository\n") && b.text.contains("\n  name: app\n"))
        .collect();
    ensure!(
        examples.len() == 1,
        "docs/gitrepository.md: {} GitRepository examples named app, the test expects 1",
        examples.len()
    );
    let example = examples
        .pop()
        .context("no example")?
        .replace(
            "https://git.example.com/team-a/app.git",
            &repo.file_url(),
            1,
        )?
        .replace("namespace: team-a", &format!("namespace: {n}"), 1)?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    ns.kubectl()
        .apply(&example.text)
        .with_context(|| example.origin.clone())?;
    Ok(DocumentedApp {
        ns,
        operator,
        _repo: repo,
    })
}

/// docs/gitrepository.md's "wait for it, as a script would": `kubectl wait` on the documented `app`
/// (in the test's namespace for `team-a`), then `kubectl get tgr -A` listing it Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitrepository_doc_wait_and_list_see_the_documented_app_ready() -> Result<()> {
    let app = documented_app("docs-tgr").await?;
    let n = app.ns.name();
    let block = doc_block(
        "docs/gitrepository.md",
        "kubectl wait --for=condition=Ready tgr/app",
    )?
    .replace("-n team-a ", &format!("-n {n} "), 1)?;
    let ran = Shell::for_cluster(app.ns.kubeconfig())
        .run(&block, Duration::from_secs(180))
        .with_context(|| {
            format!(
                "docs/gitrepository.md's wait failed; the operator's log:\n{}",
                app.operator.log_tail()
            )
        })?;
    ensure!(
        ran.stdout
            .contains("gitrepository.tether.dev/app condition met"),
        "kubectl wait did not report the condition met:\n{}",
        ran.stdout
    );
    ensure!(
        listed_ready(&ran.stdout, n, "app"),
        "`kubectl get tgr -A` did not list {n}/app as Ready:\n{}",
        ran.stdout
    );
    Ok(())
}

/// docs/troubleshooting.md's first two blocks on the documented `app`: get, describe and the
/// conditions by JSONPath show it Ready; the annotation asks for a reconcile, which the operator
/// acknowledges in `status.lastHandledReconcileAt`. The first block's `kubectl logs` line needs the
/// chart installed: `readme_quick_start_installs_the_chart_and_syncs_a_repository` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troubleshooting_doc_commands_show_the_status_and_request_a_reconcile() -> Result<()> {
    let app = documented_app("docs-troubleshoot").await?;
    let (n, kubectl) = (app.ns.name(), app.ns.kubectl());
    wait_ready(kubectl, n, "app", "120s", &app.operator)?;
    let shell = Shell::for_cluster(app.ns.kubeconfig());

    let (block, _) =
        doc_block("docs/troubleshooting.md", "kubectl get tgr -A")?.take_line("kubectl logs ")?;
    let block = block.replace("-n team-a ", &format!("-n {n} "), 2)?;
    let ran = shell.run(&block, Duration::from_secs(60))?;
    let out = &ran.stdout;
    ensure!(
        listed_ready(out, n, "app"),
        "`kubectl get tgr -A` did not list {n}/app as Ready:\n{out}"
    );
    let described = |field: &str, value: &str| {
        out.lines().any(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.trim() == value)
        })
    };
    ensure!(
        described("Name:", "app") && described("Namespace:", n) && out.contains("\nEvents:"),
        "`kubectl describe` did not describe {n}/app with its Events:\n{out}"
    );
    let conditions = out
        .lines()
        .find(|l| l.starts_with("[{"))
        .context(format!("no conditions printed by JSONPath:\n{out}"))?;
    let conditions: Vec<Value> = serde_json::from_str(conditions)
        .with_context(|| format!("the conditions are not JSON: {conditions}"))?;
    ensure!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "no Ready=True condition in {conditions:?}"
    );

    let annotation = "jsonpath={.metadata.annotations.tether\\.dev/reconcile-requested-at}";
    let before = kubectl.run(&["get", "tgr", "app", "-n", n, "-o", annotation])?;
    ensure!(
        before.is_empty(),
        "a reconcile was requested already: {before}"
    );
    let block = doc_block("docs/troubleshooting.md", "kubectl annotate tgr app")?.replace(
        "-n team-a ",
        &format!("-n {n} "),
        1,
    )?;
    shell.run(&block, Duration::from_secs(60))?;
    let requested = kubectl.run(&["get", "tgr", "app", "-n", n, "-o", annotation])?;
    ensure!(!requested.is_empty(), "the annotation was not set");
    wait_for_output(
        kubectl,
        &field_args(n, "app", "jsonpath={.status.lastHandledReconcileAt}"),
        &requested,
        &app.operator,
    )?;
    Ok(())
}

// --- docs/hub.md --------------------------------------------------------------------------------------

/// `tether_hub_webhooks_total{provider="generic",outcome="accepted"}` of a running hub.
fn generic_accepted(hub: &Hub) -> Result<f64> {
    let value = hub
        .metrics()?
        .lines()
        .find(|l| {
            l.starts_with("tether_hub_webhooks_total{")
                && l.contains("provider=\"generic\"")
                && l.contains("outcome=\"accepted\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::parse::<f64>)
        .transpose()?;
    Ok(value.unwrap_or(0.0))
}

fn hub_url(hub: &Hub) -> String {
    format!("http://127.0.0.1:{}", hub.port())
}

/// docs/hub.md's sender for the generic webhook (`$sha` and `$SECRET` set, the hub's URL substituted):
/// the hub answers 202 with the push it accepted, and counts it.
#[test]
fn hub_doc_generic_sender_is_accepted_by_a_real_hub() -> Result<()> {
    let hub = Hub::start()?;
    let sha = "4f2c1a9e0b7d6c5a4f3e2d1c0b9a8f7e6d5c4b3a";
    let block = doc_block("docs/hub.md", "body='")?.replace(
        "https://hub.example.com/v1/webhooks/generic",
        &format!("{}/v1/webhooks/generic", hub_url(&hub)),
        1,
    )?;
    let ran = Shell::new()
        .env("sha", sha)
        .env("SECRET", &hub.secret(Forge::Generic)?)
        .run(&block, Duration::from_secs(60))
        .with_context(|| format!("the hub's log:\n{}", hub.log()))?;
    let answer: Value = serde_json::from_str(ran.stdout.trim())
        .with_context(|| format!("the hub's answer is not JSON: {:?}", ran.stdout))?;
    // `"status": "accepted"` is the body of a 202 only.
    ensure!(
        answer["status"] == "accepted"
            && answer["refs"] == serde_json::json!(["refs/heads/main"])
            && answer["repos"] == serde_json::json!(["git.example.com/team/app"]),
        "the hub answered {answer}"
    );
    ensure!(
        generic_accepted(&hub)? == 1.0,
        "the hub counted {} accepted generic webhooks, want 1",
        generic_accepted(&hub)?
    );
    Ok(())
}

/// `git push <the bare repository> <refspec>` from `repo`'s work tree with `env`, which the bare
/// repository's hooks inherit; returns git's stderr, where a hook's output shows as `remote: ...`.
fn push_with_env(repo: &Upstream, refspec: &str, env: &[(&str, String)]) -> Result<String> {
    let mut push = Command::new("git");
    push.current_dir(repo.work_path())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("push")
        .arg(repo.bare_path())
        .arg(refspec);
    let pushed = tool::output(&mut push, None)?;
    ensure!(
        pushed.status.success(),
        "git push {refspec} failed:\n{}",
        pushed.stderr
    );
    Ok(pushed.stderr)
}

/// docs/hub.md's `post-receive` hook, installed as it is shown in a real bare repository, with `HUB`,
/// `REPO_URL` and `SECRET` in the pusher's environment: a pushed branch reaches the hub as one accepted
/// generic webhook whose body names the repository, the ref and the new commit; a deleted ref sends
/// nothing; with the hub down the push still succeeds and says the hub was not notified.
#[test]
fn hub_doc_post_receive_hook_notifies_the_hub_of_each_pushed_ref() -> Result<()> {
    let mut hub = Hub::start()?;
    let repo = Upstream::new("hooked")?;
    let hook = doc_block("docs/hub.md", "#!/bin/sh")?;
    repo.install_post_receive_hook(&hook.text)?;
    let repo_url = "https://git.example.com/team/hooked.git";
    let env = [
        ("HUB", hub_url(&hub)),
        ("REPO_URL", repo_url.to_string()),
        ("SECRET", hub.secret(Forge::Generic)?),
    ];

    let first = repo.commit_file("deploy/config.yaml", "greeting: hello\n", "first")?;
    let said = push_with_env(&repo, "HEAD:refs/heads/main", &env)?;
    ensure!(
        !said.contains("not notified") && generic_accepted(&hub)? == 1.0,
        "the hook did not deliver the push (accepted: {}):\n{said}\nhub log:\n{}",
        generic_accepted(&hub)?,
        hub.log()
    );
    // Without a delivery header the hub names a delivery by the SHA-256 of its body.
    let body = format!(r#"{{"repo_urls":["{repo_url}"],"ref":"refs/heads/main","sha":"{first}"}}"#);
    let delivery = format!("generic:sha256:{}", sha256_hex(&body)?);
    ensure!(
        hub.log()
            .lines()
            .any(|l| l.contains("push accepted") && l.contains(&delivery)),
        "the hub accepted no push whose body is {body}; hub log:\n{}",
        hub.log()
    );

    push_with_env(&repo, "HEAD:refs/heads/extra", &env)?;
    ensure!(
        generic_accepted(&hub)? == 2.0,
        "a new branch was not delivered"
    );
    let said = push_with_env(&repo, ":refs/heads/extra", &env)?;
    ensure!(
        generic_accepted(&hub)? == 2.0 && !said.contains("not notified"),
        "deleting a branch sent a webhook (accepted: {}):\n{said}",
        generic_accepted(&hub)?
    );

    hub.stop();
    repo.commit_file("deploy/config.yaml", "greeting: again\n", "second")?;
    let said = push_with_env(&repo, "HEAD:refs/heads/main", &env)?;
    ensure!(
        said.contains("tether hub not notified for refs/heads/main"),
        "with the hub down, the push did not say the hub was not notified:\n{said}"
    );
    Ok(())
}

// --- docs/fleet.md ------------------------------------------------------------------------------------

/// The keys of the fleet JSON whose values the hub takes from its own clock.
const FLEET_CLOCK_TIMES: &[&str] = &["generated_at", "since", "last_seen", "received_at"];

/// `value` with every clock time (a number under one of [`FLEET_CLOCK_TIMES`]) replaced by
/// `"<time>"`, so that a real answer compares with the doc's example; `null` stays `null`.
fn without_clock_times(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| {
                    let v = if FLEET_CLOCK_TIMES.contains(&key.as_str()) && v.is_u64() {
                        Value::from("<time>")
                    } else {
                        without_clock_times(v)
                    };
                    (key.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_clock_times).collect()),
        other => other.clone(),
    }
}

/// Every object key anywhere in `value`.
fn json_keys(value: &Value, keys: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                keys.insert(key.clone());
                json_keys(v, keys);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| json_keys(v, keys)),
        _ => {}
    }
}

/// The records behind docs/fleet.md's example answer, per cluster, as an operator reports them:
/// each deployment with its repository and ref, without what the hub works out (`cluster`,
/// `state`, `behind`).
fn fleet_example_records(
    example: &Value,
) -> Result<std::collections::BTreeMap<String, Vec<Value>>> {
    let mut records = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for repo in example["repos"]
        .as_array()
        .context("the example has no repos")?
    {
        for d in repo["deployments"]
            .as_array()
            .context("a repo of the example has no deployments")?
        {
            let mut record = d.clone();
            let fields = record
                .as_object_mut()
                .context("a deployment of the example is not an object")?;
            let cluster = fields
                .remove("cluster")
                .and_then(|c| c.as_str().map(str::to_string))
                .context("a deployment of the example names no cluster")?;
            fields.remove("state");
            fields.remove("behind");
            fields.insert("repo".into(), repo["repo"].clone());
            fields.insert("ref".into(), repo["ref"].clone());
            records.entry(cluster).or_default().push(record);
        }
    }
    Ok(records)
}

type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An agent connected to `hub` as `name` (with its token from the hub's files), having sent `report`.
async fn reporting_agent(hub: &Hub, name: &str, report: &Value) -> Result<AgentSocket> {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let token = std::fs::read_to_string(hub.token_file_of(name))?;
    let mut request =
        format!("{}{}", hub.ws_url(), tether_protocol::CONNECT_PATH).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    request.headers_mut().insert(
        "sec-websocket-protocol",
        tether_protocol::SUBPROTOCOL.parse()?,
    );
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .with_context(|| format!("agent {name}: connecting to the hub timed out"))?
    .with_context(|| format!("agent {name}: connecting to the hub"))?;
    socket
        .send(Message::Text(report.to_string().into()))
        .await
        .with_context(|| format!("agent {name}: sending its report"))?;
    Ok(socket)
}

/// docs/fleet.md against a real hub. The token block prints a token and its hash as `sha256sum`
/// makes it, and the hub names that token as a viewer. Agents report the records behind the doc's
/// example answer, the webhook of its latest push arrives, the cluster the example shows away
/// connects and goes, the one it shows never connected never does: the doc's `curl` lines, with
/// the token, then get the example back (the hub's clock times aside), and its filter keeps the one
/// behind deployment; without the token they fail. The event stream's block gets a `fleet` event
/// with the view's version. Every field of the answer has its row in the doc's tables.
#[test]
fn fleet_doc_token_requests_and_example_answer_match_a_real_hub() -> Result<()> {
    use tether_e2e::hub::{AgentSpec, HubOptions, hmac_sha256_hex};
    use tether_e2e::wait::wait_until_every;

    let ran = Shell::new().run(
        &doc_block("docs/fleet.md", "TOKEN=$(openssl rand -hex 32)")?,
        Duration::from_secs(30),
    )?;
    let printed = |label: &str| {
        ran.stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("the token block printed no {label:?}:\n{}", ran.stdout))
    };
    let token = printed("viewer token (give it to the viewer):")?;
    let hash = printed("token_sha256 (for the hub config):")?;
    ensure!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "the token block made {token:?}, not 64 hex characters"
    );
    ensure!(
        hash == sha256_hex(&token)?,
        "the token block printed {hash:?} as the token's SHA-256"
    );

    let json_blocks = fenced_blocks("docs/fleet.md", &["json"])?;
    ensure!(
        json_blocks.len() == 1,
        "docs/fleet.md has {} JSON blocks, the test expects the one example answer",
        json_blocks.len()
    );
    let example: Value = serde_json::from_str(&json_blocks[0].text)
        .with_context(|| format!("{}: the example answer is not JSON", json_blocks[0].origin))?;
    let clusters = example["clusters"]
        .as_array()
        .context("the example has no clusters")?;
    let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    let hub = Hub::start_with(HubOptions {
        agents: names.iter().map(|n| AgentSpec::new(n, &["**"])).collect(),
        viewers: vec![("platform-team".into(), token.clone())],
        ..HubOptions::default()
    })?;

    for repo in example["repos"].as_array().into_iter().flatten() {
        let Some(sha) = repo["latest_push"]["sha"].as_str() else {
            continue;
        };
        let body = serde_json::json!({
            "repo_urls": [format!("https://{}.git", repo["repo"].as_str().unwrap_or_default())],
            "ref": repo["ref"],
            "sha": sha,
        })
        .to_string();
        let signature = hmac_sha256_hex(&hub.secret(Forge::Generic)?, &body)?;
        let status = hub.post_webhook(
            "generic",
            &[format!("X-Tether-Signature: sha256={signature}")],
            body.as_bytes(),
        )?;
        ensure!(status == 202, "the push of {sha} answered {status}");
    }

    let records = fleet_example_records(&example)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut connected = Vec::new();
    for cluster in clusters {
        let name = cluster["name"]
            .as_str()
            .context("a cluster without a name")?;
        if cluster["since"].is_null() {
            continue;
        }
        let report = serde_json::json!({
            "type": "report",
            "reset": true,
            "operator_version": cluster["operator_version"],
            "records": records.get(name).cloned().unwrap_or_default(),
        });
        let mut socket = runtime.block_on(reporting_agent(&hub, name, &report))?;
        if cluster["connected"] == true {
            connected.push(socket);
        } else {
            runtime
                .block_on(socket.close(None))
                .with_context(|| format!("agent {name}: closing"))?;
        }
    }

    let requests = doc_block(
        "docs/fleet.md",
        "curl -sf -H \"Authorization: Bearer $TOKEN\" https://hub.example.com/v1/fleet",
    )?
    .replace("https://hub.example.com", &hub_url(&hub), 2)?;
    let answers = wait_until_every(
        "the doc's requests to get the doc's example answer",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let ran = Shell::new()
                .env("TOKEN", &token)
                .run(&requests, Duration::from_secs(30))?;
            let answers = serde_json::Deserializer::from_str(&ran.stdout)
                .into_iter::<Value>()
                .collect::<Result<Vec<Value>, _>>()
                .with_context(|| format!("the answers are not JSON: {}", ran.stdout))?;
            ensure!(
                answers.len() == 2,
                "{} answers to two requests",
                answers.len()
            );
            let (got, want) = (
                without_clock_times(&answers[0]),
                without_clock_times(&example),
            );
            ensure!(
                got == want,
                "the hub answered\n{got:#}\nthe doc's example is\n{want:#}"
            );
            Ok(answers)
        },
    )
    .with_context(|| format!("the hub's log:\n{}", hub.log()))?;
    let filtered = &answers[1];
    let kept: Vec<(String, String)> = filtered["repos"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["deployments"].as_array().into_iter().flatten())
        .map(|d| (d["cluster"].to_string(), d["state"].to_string()))
        .collect();
    ensure!(
        kept == vec![("\"prod-us\"".to_string(), "\"behind\"".to_string())],
        "state=behind&repo=platform/config kept {kept:?}: {filtered:#}"
    );
    ensure!(
        Shell::new()
            .env("TOKEN", "not-a-viewer-token")
            .run(&requests, Duration::from_secs(30))
            .is_err(),
        "the doc's requests succeeded without a viewer token"
    );

    let events = doc_block("docs/fleet.md", "curl -sN")?
        .replace("https://hub.example.com", &hub_url(&hub), 1)?
        .replace("curl -sN ", "curl -sN --max-time 2 ", 1)?;
    // The stream never ends by itself: curl stops it at --max-time and says so with exit code 28.
    let events = Block {
        text: format!("{} || test $? -eq 28\n", events.text.trim_end()),
        ..events
    };
    let ran = Shell::new()
        .env("TOKEN", &token)
        .run(&events, Duration::from_secs(30))?;
    let version = ran
        .stdout
        .strip_prefix("event: fleet\ndata: ")
        .and_then(|rest| rest.lines().next())
        .map(str::parse::<u64>);
    ensure!(
        matches!(version, Some(Ok(_))),
        "the event stream began {:?}, not with a fleet event and a version",
        ran.stdout
    );

    let doc = std::fs::read_to_string(workspace::root().join("docs/fleet.md"))?;
    let mut keys = std::collections::BTreeSet::new();
    json_keys(&answers[0], &mut keys);
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|key| {
            !doc.lines().any(|line| {
                line.starts_with("| `")
                    && line
                        .split('|')
                        .nth(1)
                        .is_some_and(|cell| cell.contains(&format!("`{key}`")))
            })
        })
        .collect();
    ensure!(
        undocumented.is_empty(),
        "docs/fleet.md's tables have no row for {undocumented:?}"
    );
    drop(connected);
    Ok(())
}

/// docs/ci-access.md's CI job with a static token, against a TLS hub and an operator with CI
/// access: `kubectl auth whoami` names the mapped user, and the apply lands in the namespace
/// (substituted for `apps`) from a folder of manifests (substituted for `deploy/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_access_doc_static_token_job_deploys_through_a_real_hub() -> Result<()> {
    use tether_e2e::ci::{CiToken, operator_flags, wait_tunnel, write_access_file};
    use tether_e2e::hub::HubOptions;

    let ns = TestNamespace::create("doc-ci").await?;
    install_crds(ns.kubectl())?;
    let user = "ci-doc-deployer";
    ns.kubectl().apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ci-doc, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit }}
subjects:
  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {user} }}
"#,
        ns = ns.name()
    ))?;
    let hub = Hub::start_with(HubOptions {
        tls: true,
        ..HubOptions::default()
    })?;
    let dir = tempfile::tempdir()?;
    let token = CiToken::new("doc", user, &[]);
    let access = dir.path().join("ci-access.yaml");
    write_access_file(&access, std::slice::from_ref(&token))?;
    let flags = operator_flags(&hub, &access);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &refs)?;
    wait_tunnel(&hub, Duration::from_secs(60)).with_context(|| operator.log_tail())?;
    let manifests = dir.path().join("deploy");
    std::fs::create_dir(&manifests)?;
    std::fs::write(
        manifests.join("config.yaml"),
        config_map(ns.name(), "from-ci", "deployed by a CI job"),
    )?;

    let block = doc_block(
        "docs/ci-access.md",
        "# TETHER_HUB (https://hub.example.com)",
    )?
    .replace("-n apps", &format!("-n {}", ns.name()), 1)?
    .replace(" deploy/", &format!(" {}/", manifests.display()), 1)?;
    let path = format!(
        "{}:{}",
        shared().binaries().dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ran = Shell::new()
        .env("PATH", &path)
        .env("TETHER_HUB", &hub.https_url())
        .env("TETHER_AGENT", "e2e")
        .env("CI_TOKEN", &token.token)
        .env("HUB_CA", &hub.ca_file().display().to_string())
        .run(&block, Duration::from_secs(60))
        .with_context(|| operator.log_tail())?;
    ensure!(ran.stdout.contains(user), "whoami: {}", ran.stdout);
    let message = ns.kubectl().run(&[
        "get",
        "configmap",
        "from-ci",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.data.greeting}",
    ])?;
    ensure!(
        message == "deployed by a CI job",
        "the ConfigMap holds {message:?}"
    );
    Ok(())
}

// --- docs/rendering.md: SOPS with age ----------------------------------------------------------------

/// docs/rendering.md's steps for SOPS with age, run as written in a folder holding the `secret.yaml`
/// and `db.env` they name (the namespace swapped for this test's; the real age-keygen and sops): the
/// key made, the key Secret created, a Secret and an env file encrypted. Committed with a
/// kustomization that generates a Secret from the env file, a `GitRepository` with `decryption`
/// applies both, decrypted; the committed files hold no plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendering_doc_sops_steps_encrypt_what_a_gitrepository_decrypts() -> Result<()> {
    let ns = TestNamespace::create("docs-sops").await?;
    install_crds(ns.kubectl())?;
    let (n, kubectl) = (ns.name(), ns.kubectl());
    let tools = tether_e2e::render_tools::locate()?;
    let work = tempfile::tempdir()?;
    let password = unguessable("password");
    let dsn = unguessable("dsn");
    std::fs::write(
        work.path().join("secret.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-password\nstringData:\n  password: {password}\n"
        ),
    )?;
    std::fs::write(work.path().join("db.env"), format!("DSN={dsn}\n"))?;

    let block = doc_block("docs/rendering.md", "# 1. A key pair.")?.replace(
        "-n team-a ",
        &format!("-n {n} "),
        1,
    )?;
    let block = Block {
        text: format!("cd '{}'\n{}", work.path().display(), block.text),
        ..block
    };
    let sops_dir = tools.sops.parent().context("sops has a folder")?;
    let path = format!(
        "{}:{}:{}",
        sops_dir.display(),
        shared().binaries().dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Shell::for_cluster(ns.kubeconfig())
        .env("PATH", &path)
        .run(&block, Duration::from_secs(60))?;

    let encrypted = std::fs::read_to_string(work.path().join("secret.enc.yaml"))?;
    let env = std::fs::read_to_string(work.path().join("db.enc.env"))?;
    ensure!(
        !encrypted.contains(&password) && encrypted.contains("sops:"),
        "secret.enc.yaml is not encrypted:\n{encrypted}"
    );
    ensure!(
        !env.contains(&dsn) && env.contains("sops_mac="),
        "db.enc.env is not encrypted:\n{env}"
    );

    let repo = Upstream::new("docs-sops")?;
    repo.write("app/secret.enc.yaml", &encrypted)?;
    repo.write("app/db.enc.env", &env)?;
    repo.write(
        "app/kustomization.yaml",
        "resources: [secret.enc.yaml]\nsecretGenerator:\n- name: db\n  envs: [db.enc.env]\ngeneratorOptions:\n  disableNameSuffixHash: true\n",
    )?;
    repo.commit("encrypted secrets")?;
    repo.push()?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "apps",
        &repo.file_url(),
        "  path: app\n  interval: 1h\n  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n",
    ))?;
    wait_ready(kubectl, n, "apps", "120s", &operator)?;
    for (secret, key, want) in [("db-password", "password", &password), ("db", "DSN", &dsn)] {
        let data = kubectl.run(&[
            "get",
            "secret",
            secret,
            "-n",
            n,
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ])?;
        let value =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data.trim())?;
        ensure!(
            value == want.as_bytes(),
            "Secret {secret} holds {:?} under {key}, want the decrypted value",
            String::from_utf8_lossy(&value)
        );
    }
    Ok(())
}
