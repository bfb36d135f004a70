//! Where the workspace is, and the binaries built from it (`tether-operator`, `tether-hub`,
//! `tether-demo`, `tether-cluster`) that the tests run as processes.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (the folder of the top `Cargo.toml`).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the workspace's binaries are: `TETHER_BIN_DIR`, else the cargo target folder's `debug/`.
/// `make e2e` builds them first.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("debug")
}

/// A path to one of the workspace's binaries, checked to exist.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (cargo build -p {name}), or set TETHER_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// Runs the build script `hack/<name>` (which builds what is missing and caches it) and returns the
/// folder it prints last: where its binaries are.
pub fn built_by(name: &str) -> Result<PathBuf> {
    let script = root().join("hack").join(name);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        stdout.lines().last().unwrap_or_default().trim(),
    ))
}
