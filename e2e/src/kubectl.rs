//! The real `kubectl`, pointed at a control plane.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::controlplane::ControlPlane;
use crate::wait::wait_until_every;

/// Runs the `kubectl` built with the control plane against its admin kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn for_plane(plane: &ControlPlane) -> Self {
        Self {
            program: plane.binaries().path("kubectl"),
            kubeconfig: plane.kubeconfig(),
        }
    }

    /// Runs kubectl and returns its stdout; fails with its stderr when it exits non-zero.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `stdin` (for `apply -f -`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(&self.program)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a YAML text.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.run_with_stdin(&["apply", "-f", "-"], Some(yaml))
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
