//! The control plane a test binary shares, and a namespace of its own for each test.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

use crate::controlplane::{Binaries, ControlPlane};
use crate::kubectl::Kubectl;
use crate::process::{Lifetime, alive};

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The test binary's control plane, started on first use.
///
/// It is started from a thread that lives as long as the process, so that the kernel kills its processes
/// when the test binary ends, however it ends (see [`crate::process`]).
pub fn shared() -> &'static ControlPlane {
    let started = SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let _ = tx.send(start_fresh().map_err(|e| format!("{e:#}")));
                loop {
                    std::thread::park();
                }
            });
        match spawned {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err("the control-plane thread died".into())),
            Err(e) => Err(e.to_string()),
        }
    });
    match started {
        Ok(plane) => plane,
        Err(e) => panic!("the local control plane did not start: {e}"),
    }
}

fn start_fresh() -> Result<ControlPlane> {
    let root = std::env::temp_dir().join("tether-e2e");
    remove_stale_runs(&root);
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let binaries = Binaries::locate()?;
    let began = Instant::now();
    let plane = ControlPlane::start(&dir, binaries, Lifetime::TiedToStarter)?;
    eprintln!(
        "control plane ready in {:.1}s at {} (kubeconfig {})",
        began.elapsed().as_secs_f64(),
        plane.api_url(),
        plane.kubeconfig().display()
    );
    Ok(plane)
}

/// Removes the folders of earlier test runs whose process is gone.
fn remove_stale_runs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| !alive(pid));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A namespace owned by one test, deleted when it is dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubeconfig: PathBuf,
    kubectl: Kubectl,
}

impl TestNamespace {
    /// Creates `<prefix>-<n>-<pid>` on the shared control plane.
    pub async fn create(prefix: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let plane = shared();
        let name = format!(
            "{prefix}-{}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        let client = plane.client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| anyhow!("creating namespace {name}: {e}"))?;
        Ok(Self {
            name,
            kubeconfig: plane.kubeconfig(),
            kubectl: Kubectl::for_plane(plane),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// A kube client bound to the calling runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        crate::controlplane::client_for(&self.kubeconfig).await
    }

    /// Deletes the namespace now and waits for the API server to accept it.
    pub async fn delete(self) -> Result<()> {
        let client = self.client().await?;
        Api::<Namespace>::all(client)
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Best effort: the namespace controller finishes the deletion in the background.
        let _ = self.kubectl.run(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}
