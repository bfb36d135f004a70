//! The real `tether-operator` binary, run as a process against the local control plane: started with a
//! cache and an admin port of its own, killed and restarted, its log and its metrics read; stopped when
//! dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http;
use crate::process::{Lifetime, Process, free_port, tail};
use crate::workspace::binary;

/// A running operator watching one namespace.
#[derive(Debug)]
pub struct Operator {
    process: Process,
    admin_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    args: Vec<String>,
    kubeconfig: PathBuf,
    netns: Option<String>,
    env: Vec<(String, String)>,
}

impl Operator {
    /// Starts `tether-operator --namespace <namespace>` with `extra` flags.
    pub fn start(kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Result<Self> {
        Self::start_in(kubeconfig, namespace, extra, None)
    }

    /// [`Operator::start`] with extra environment variables (e.g. `HTTPS_PROXY`).
    pub fn start_with_env(
        kubeconfig: &Path,
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(kubeconfig, namespace, extra, None, env)
    }

    /// [`Operator::start`] inside the network namespace `netns` (through `ip netns exec`), its admin
    /// server on every address there, when `netns` is given.
    pub fn start_in(
        kubeconfig: &Path,
        namespace: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Result<Self> {
        Self::launch(kubeconfig, namespace, extra, netns, Vec::new())
    }

    fn launch(
        kubeconfig: &Path,
        namespace: &str,
        extra: &[&str],
        netns: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tether-operator-")
            .tempdir()?;
        let admin_port = free_port()?;
        let admin_host = if netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut args = vec![
            format!("--admin-addr={admin_host}:{admin_port}"),
            format!("--cache-dir={}", dir.path().join("cache").display()),
            format!("--render-dir={}", dir.path().join("render").display()),
            format!("--namespace={namespace}"),
            "--concurrency=4".to_string(),
        ];
        // A flag given in `extra` replaces the default above (the operator refuses a flag twice).
        let given = |flag: &str| {
            let name = flag.split('=').next().unwrap_or(flag);
            extra.iter().any(|e| e.split('=').next() == Some(name))
        };
        args.retain(|a| !given(a));
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join("operator.log");
        let netns = netns.map(str::to_string);
        let process = spawn(kubeconfig, &args, &log, netns.as_deref(), &env)?;
        Ok(Self {
            process,
            admin_port,
            log,
            _dir: dir,
            args,
            kubeconfig: kubeconfig.to_path_buf(),
            netns,
            env,
        })
    }

    /// The folder of its mirror cache (`--cache-dir`), kept across restarts.
    pub fn cache_dir(&self) -> PathBuf {
        self._dir.path().join("cache")
    }

    /// The folder its renders happen in (`--render-dir`): empty whenever no render runs.
    pub fn render_dir(&self) -> PathBuf {
        self._dir.path().join("render")
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The operator's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        http::metrics(self.admin_port).context("the operator's metrics")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.stop(Duration::ZERO);
    }

    /// Starts the same operator again, on the same cache and log (appended).
    pub fn restart(&mut self) -> Result<()> {
        self.process.stop(Duration::from_secs(5));
        let previous = self.log();
        self.process = spawn(
            &self.kubeconfig,
            &self.args,
            &self.log,
            self.netns.as_deref(),
            &self.env,
        )?;
        // Keep the earlier run's lines for failure messages.
        let _ = std::fs::write(self.log.with_extension("previous.log"), previous);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // As the servers do: a test that drops its operator has it gone, not still reconciling.
        self.process.stop(Duration::from_secs(5));
    }
}

fn spawn(
    kubeconfig: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&str>,
    env: &[(String, String)],
) -> Result<Process> {
    let operator = binary("tether-operator")?;
    let mut all = Vec::new();
    let program = match netns {
        Some(ns) => {
            all.extend(["netns", "exec", ns].map(String::from));
            all.push(operator.display().to_string());
            PathBuf::from("ip")
        }
        None => operator,
    };
    all.push("--log-format=plain".to_string());
    all.extend(args.iter().cloned());
    Process::spawn_with_env(
        "tether-operator",
        &program,
        &all,
        log,
        Lifetime::TiedToStarter,
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info,tether_operator=debug".to_string()),
            // The test repositories are local folders.
            ("TETHER_ALLOW_FILE_URLS", "true".to_string()),
            // As the image and the chart run it (operator/Dockerfile).
            ("MALLOC_ARENA_MAX", "2".to_string()),
        ]
        .into_iter()
        .chain(crate::render_tools::operator_env())
        .chain(env.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .collect::<Vec<_>>(),
    )
    .context("starting tether-operator")
}
