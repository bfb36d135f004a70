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
