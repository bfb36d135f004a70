//! Child processes that never outlive what started them.
//!
//! A test binary can end by a panic, a failed assertion or Ctrl-C; the servers it started must end with it.
//! Each child is started through `setpriv --pdeathsig KILL`, so the kernel kills it as soon as the thread
//! that started it is gone. [`Lifetime::Detached`] is for the shell's `make cluster-up`, whose processes
//! outlive the command and are stopped by `make cluster-down`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::wait::wait_until;

/// How long a started process may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when the starting thread ends (tests).
    TiedToStarter,
    /// Lives on, in its own process group, until stopped by pid (the shell).
    Detached,
}

/// A started server process whose output goes to a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, stdout and stderr written to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        lifetime: Lifetime,
    ) -> Result<Self> {
        Self::spawn_with_env(name, program, args, log, lifetime, &[])
    }

    /// [`Process::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        lifetime: Lifetime,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match lifetime {
            Lifetime::TiedToStarter => {
                let mut c = Command::new("setpriv");
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            Lifetime::Detached => {
                let mut c = Command::new(program);
                std::os::unix::process::CommandExt::process_group(&mut c, 0);
                c
            }
        };
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails with the tail of the log if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Asks the process to stop, then kills it after `grace`, and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.child.id(), "TERM");
        let child = &mut self.child;
        let exited = wait_until(&format!("{} to exit", self.name), grace, || {
            child.try_wait()?.context("still running")
        });
        if exited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Forgets the child without stopping it (detached processes are stopped by pid later).
    pub fn release(self) -> u32 {
        self.child.id()
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) with the system's `kill`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this pid is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z') | None)
        }
        Err(_) => false,
    }
}

/// Stops a process that is not our child: TERM, then KILL after `grace`. Returns once it is gone.
pub fn stop_pid(pid: u32, grace: Duration) -> Result<()> {
    if !alive(pid) {
        return Ok(());
    }
    let gone = || {
        ensure!(!alive(pid), "still running");
        Ok(())
    };
    signal(pid, "TERM");
    if wait_until(&format!("process {pid} to end on SIGTERM"), grace, gone).is_ok() {
        return Ok(());
    }
    signal(pid, "KILL");
    wait_until(
        &format!("process {pid} to end on SIGKILL"),
        Duration::from_secs(5),
        gone,
    )
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on 127.0.0.1, as the kernel hands them out.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The resident memory of process `pid`, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in the process status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// User plus system CPU time of a process so far, in seconds (`/proc/<pid>/stat`, 100 ticks a second).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    ensure!(fields.len() > 13, "/proc/{pid}/stat is too short: {stat}");
    // utime and stime are fields 14 and 15; after the command name, the 12th and 13th.
    Ok((fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / 100.0)
}
