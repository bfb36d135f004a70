//! The tools the operator renders with: kustomize and sops from `hack/render-tools-bin.sh` (built
//! from their Go modules once, cached by version), helm from the control plane's folder. The
//! operator the harness starts is pointed at them; the tests run the same binaries themselves to
//! compute what the cluster must hold.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Result, bail};

use crate::controlplane::Binaries;

/// The three tools, by path.
#[derive(Debug, Clone)]
pub struct RenderTools {
    pub kustomize: PathBuf,
    pub helm: PathBuf,
    pub sops: PathBuf,
}

static TOOLS: OnceLock<Result<RenderTools, String>> = OnceLock::new();

/// The tools: `TETHER_RENDER_BIN` (the folder holding kustomize and sops) when set, else whatever
/// `hack/render-tools-bin.sh` builds or finds cached; helm beside the control plane's binaries.
pub fn locate() -> Result<&'static RenderTools> {
    TOOLS
        .get_or_init(|| find().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn find() -> Result<RenderTools> {
    let dir = match std::env::var_os("TETHER_RENDER_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace::built_by("render-tools-bin.sh")?,
    };
    let tools = RenderTools {
        kustomize: dir.join("kustomize"),
        sops: dir.join("sops"),
        helm: Binaries::locate()?.path("helm"),
    };
    for tool in [&tools.kustomize, &tools.sops, &tools.helm] {
        if !tool.is_file() {
            bail!(
                "{} is missing; run hack/render-tools-bin.sh (kustomize, sops) and \
                 hack/controlplane-bin.sh (helm)",
                tool.display()
            );
        }
    }
    Ok(tools)
}

/// The operator's environment for the tools, when they are found (an operator without them
/// still starts, and reports a render it cannot do).
pub fn operator_env() -> Vec<(&'static str, String)> {
    match locate() {
        Ok(t) => vec![
            ("TETHER_KUSTOMIZE", t.kustomize.display().to_string()),
            ("TETHER_HELM", t.helm.display().to_string()),
            ("TETHER_SOPS", t.sops.display().to_string()),
        ],
        Err(_) => Vec::new(),
    }
}
