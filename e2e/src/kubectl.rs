//! The real `kubectl`, pointed at a control plane: run with stdin, polled until it prints what a test
//! waits for.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::controlplane::ControlPlane;
use crate::tool::{self, Finished};
use crate::wait::wait_until_every;

/// Runs the `kubectl` built with the control plane against its admin kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn for_plane(plane: &ControlPlane) -> Self {
        Self::new(plane.binaries().path("kubectl"), plane.kubeconfig())
    }

    /// The `kubectl` at `program`, against `kubeconfig`.
    pub fn new(program: PathBuf, kubeconfig: PathBuf) -> Self {
        Self {
            program,
            kubeconfig,
        }
    }

    /// Runs kubectl and returns its stdout; fails with its stderr when it exits non-zero.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `stdin` (for `apply -f -`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        tool::run_command(&mut self.command(args), stdin)
    }

    /// Runs kubectl whatever its exit status, for commands that answer by it (`auth can-i` says no
    /// with 1).
    pub fn output(&self, args: &[&str]) -> Result<Finished> {
        tool::output(&mut self.command(args), None)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// `kubectl apply -f -` of a YAML text.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.run_with_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    /// `<kind>/<name>` of every object of `kinds` (e.g. `deployments,configmaps`) in `ns`, one a line,
    /// as kubectl prints them.
    pub fn names(&self, ns: &str, kinds: &str) -> Result<String> {
        Ok(self
            .run(&["get", kinds, "-n", ns, "-o", "name"])?
            .trim()
            .to_string())
    }

    /// Runs `kubectl <args>` every `every` until it prints `want` (trimmed), within `within`; returns
    /// how long that took, or fails with what it printed last.
    pub fn wait_for_output(
        &self,
        args: &[&str],
        want: &str,
        within: Duration,
        every: Duration,
    ) -> Result<Duration> {
        let began = Instant::now();
        let what = format!("kubectl {} prints {want:?}", args.join(" "));
        wait_until_every(&what, within, every, || {
            let out = self.run(args)?;
            ensure!(out.trim() == want, "last printed {out:?}");
            Ok(())
        })?;
        Ok(began.elapsed())
    }
}

/// `kubectl get configmap <name> --watch` printing `data.value` at each change, read by a thread of
/// its own: the benches' clock for "the change is in the cluster". Stopped when dropped.
#[derive(Debug)]
pub struct ValueWatch {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<(String, Instant)>,
}

impl ValueWatch {
    /// Watches the ConfigMap `name` in `ns` of the shared control plane.
    pub fn start(ns: &str, name: &str) -> Result<Self> {
        use std::io::BufRead as _;
        let plane = crate::cluster::shared();
        let mut child = Command::new(plane.binaries().path("kubectl"))
            .env("KUBECONFIG", plane.kubeconfig())
            .args([
                "get",
                "configmap",
                name,
                "-n",
                ns,
                "--watch",
                "-o",
                "jsonpath={.data.value}{\"\\n\"}",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting kubectl --watch: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout from kubectl --watch"))?;
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send((line.trim().to_string(), Instant::now())).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, events })
    }

    /// Takes values until one is `want`; returns when it arrived.
    pub fn wait_for(&self, want: &str, within: Duration) -> Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((value, at)) if value == want => return Ok(at),
                Ok(_) => {}
                Err(_) => anyhow::bail!("the ConfigMap's value was not {want:?} within {within:?}"),
            }
        }
    }
}

impl Drop for ValueWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
