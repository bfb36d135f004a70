//! `tether-cluster up|down`: the local control plane for a shell, behind `make cluster-up` and
//! `make cluster-down`.
//!
//! `up` starts it in the background and prints exactly two lines on stdout, so that
//! `eval "$(make -s cluster-up)"` sets up the shell; progress and errors go to stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tether_e2e::controlplane::{Binaries, ControlPlane};
use tether_e2e::process::{Lifetime, alive, stop_pid};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Start and stop Tether's local Kubernetes control plane"
)]
struct Args {
    /// Where the certificates, data, logs and pids of the control plane live.
    #[arg(long, env = "TETHER_CLUSTER_DIR", default_value = ".run/cluster")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver and kube-controller-manager in the background.
    Up,
    /// Stop them and wait until every process has ended.
    Down,
}

fn main() -> Result<()> {
    let Args { state_dir, command } = Args::parse();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    match command {
        Cmd::Up => up(&state_dir),
        Cmd::Down => down(&state_dir),
    }
}

fn up(dir: &std::path::Path) -> Result<()> {
    let pids_file = dir.join("pids");
    if let Some(running) = running_pids(&pids_file)?
        && !running.is_empty()
    {
        eprintln!("the control plane in {} is already running", dir.display());
        print_exports(dir)?;
        return Ok(());
    }
    // Clear what an earlier run left, but keep nothing that could mix two clusters' data.
    for entry in ["etcd", "apiserver-certs", "pids"] {
        let _ = std::fs::remove_file(dir.join(entry));
        let _ = std::fs::remove_dir_all(dir.join(entry));
    }
    let binaries = Binaries::locate()?;
    let began = Instant::now();
    eprintln!("starting etcd, kube-apiserver and kube-controller-manager ...");
    let plane = ControlPlane::start(dir, binaries, Lifetime::Detached)?;
    let kubeconfig = plane.kubeconfig();
    let url = plane.api_url();
    let bin = plane.binaries().dir().to_path_buf();
    let pids = plane.detach();
    let text: String = pids.iter().map(|(n, p)| format!("{p} {n}\n")).collect();
    std::fs::write(&pids_file, text)?;
    eprintln!(
        "control plane ready in {:.1}s at {url}; logs in {}",
        began.elapsed().as_secs_f64(),
        dir.display()
    );
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("export PATH={}:$PATH", bin.display());
    Ok(())
}

fn print_exports(dir: &std::path::Path) -> Result<()> {
    let bin = Binaries::locate()?;
    println!("export KUBECONFIG={}", dir.join("kubeconfig").display());
    println!("export PATH={}:$PATH", bin.dir().display());
    Ok(())
}

/// The pids recorded by `up` that are still alive, or `None` when there is no record.
fn running_pids(pids_file: &std::path::Path) -> Result<Option<Vec<(u32, String)>>> {
    let Ok(text) = std::fs::read_to_string(pids_file) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pid, name)) = line.split_once(' ') else {
            bail!("{}: malformed line {line:?}", pids_file.display());
        };
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("{}: bad pid in {line:?}", pids_file.display()))?;
        if alive(pid) {
            out.push((pid, name.to_string()));
        }
    }
    Ok(Some(out))
}

fn down(dir: &std::path::Path) -> Result<()> {
    let pids_file = dir.join("pids");
    let Some(running) = running_pids(&pids_file)? else {
        eprintln!("no control plane recorded in {}", dir.display());
        return Ok(());
    };
    // Stop in reverse start order: the controller manager, the API server, then etcd.
    for (pid, name) in running.iter().rev() {
        stop_pid(*pid, Duration::from_secs(15)).with_context(|| format!("stopping {name}"))?;
        eprintln!("stopped {name} ({pid})");
    }
    std::fs::remove_file(&pids_file)?;
    Ok(())
}
