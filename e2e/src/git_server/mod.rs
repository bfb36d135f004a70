//! Real git servers for the tests, from Debian's packages: HTTPS through `git http-backend` behind nginx
//! and fcgiwrap (basic auth, a test CA), SSH through `sshd`, and `file://`; plus [`Upstream`], a bare
//! repository with a work clone that the tests change with the real `git` CLI.
//!
//! Servers are started with [`Lifetime::TiedToStarter`](crate::process::Lifetime), so the kernel kills
//! them when the thread that started them ends. Start them on the test's own thread (a `#[test]` or the
//! body of a `#[tokio::test]`), never inside `spawn_blocking`, whose pooled threads end on their own
//! schedule. Dropping a server stops it too.
//!
//! Every `git` run here ignores the machine's configuration (`GIT_CONFIG_GLOBAL=/dev/null`,
//! `GIT_CONFIG_NOSYSTEM=1`), never prompts, and commits as a fixed author.

mod https;
mod ssh;
mod upstream;

use std::ffi::OsStr;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::tool;
use crate::wait::{fatal, wait_until};

pub use https::{HttpsGitServer, HttpsOptions};
pub use ssh::SshGitServer;
pub use upstream::Upstream;

/// How long a server may take to answer `git ls-remote` after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The author and committer of every commit the tests make.
pub const AUTHOR_NAME: &str = "Tether Tests";
pub const AUTHOR_EMAIL: &str = "tests@tether.invalid";

/// How the `git` CLI reaches one repository: a URL (without credentials) and the environment that carries
/// the rest (basic-auth header, CA file, SSH command).
#[derive(Debug, Clone)]
pub struct GitRemote {
    url: String,
    env: Vec<(String, String)>,
}

impl GitRemote {
    /// A remote reached with nothing but its URL (`file://`, or to see a server refuse).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable to every `git` run against this remote.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The URL, as a `GitRepository` would name it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The extra environment `git` needs for this remote.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `git ls-remote`: every ref as `(object id, ref name)`, in the server's order.
    pub fn ls_remote(&self) -> Result<Vec<(String, String)>> {
        let out = run_git(None, &["ls-remote", &self.url], &self.env)?;
        Ok(out
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(oid, name)| (oid.to_string(), name.to_string()))
            .collect())
    }

    /// The object id `ref_name` (e.g. `refs/heads/main`) points at on the server, if it exists.
    pub fn resolve(&self, ref_name: &str) -> Result<Option<String>> {
        Ok(self
            .ls_remote()?
            .into_iter()
            .find(|(_, name)| name == ref_name)
            .map(|(oid, _)| oid))
    }

    /// `git clone` into `dest` (which must not exist or be empty).
    pub fn clone_into(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_str().context("clone destination is not UTF-8")?;
        run_git(None, &["clone", "--quiet", &self.url, dest], &self.env)?;
        Ok(())
    }
}

/// A `git` command with the tests' fixed environment; `extra` is applied last.
fn git_command(dir: Option<&Path>, extra: &[(String, String)]) -> Command {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    for key in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSL_CAINFO",
        "GIT_SSL_NO_VERIFY",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
        .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL)
        .env("LC_ALL", "C");
    for (key, value) in extra {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `git` and returns its trimmed stdout; fails with the command and its stderr.
pub(crate) fn run_git<S: AsRef<OsStr>>(
    dir: Option<&Path>,
    args: &[S],
    extra: &[(String, String)],
) -> Result<String> {
    let mut cmd = git_command(dir, extra);
    cmd.args(args);
    Ok(tool::run_command(&mut cmd, None)?.trim().to_string())
}

/// Waits for a started server: its process must stay up, its port accept TCP, and `git ls-remote` on
/// `probe` succeed. On failure the error carries the tail of `log`.
pub(crate) fn wait_ready(
    name: &str,
    process: &mut crate::process::Process,
    addr: std::net::SocketAddr,
    probe: &GitRemote,
    log: &Path,
) -> Result<()> {
    let started = Instant::now();
    let result = wait_until(&format!("{name} on {addr}"), READY_TIMEOUT, || {
        process.check_running().map_err(fatal)?;
        TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        probe.ls_remote()
    });
    match result {
        Ok(_) => Ok(()),
        // check_running already quotes the log when the process died; quote it for every other case.
        Err(e) => Err(e.context(format!(
            "{name} did not become ready in {:?}; last lines of {}:\n{}",
            started.elapsed(),
            log.display(),
            crate::process::tail(log, 30)
        ))),
    }
}

/// Creates a bare repository at `path` that accepts pushes over smart HTTP.
pub(crate) fn init_bare(path: &Path) -> Result<()> {
    run_git(
        None,
        &[
            OsStr::new("-c"),
            OsStr::new("init.defaultBranch=main"),
            OsStr::new("init"),
            OsStr::new("--quiet"),
            OsStr::new("--bare"),
            path.as_os_str(),
        ],
        &[],
    )?;
    run_git(Some(path), &["config", "http.receivepack", "true"], &[])?;
    Ok(())
}
