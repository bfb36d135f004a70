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
