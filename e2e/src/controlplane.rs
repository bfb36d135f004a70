//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.
//!
//! The binaries come from `hack/controlplane-bin.sh`, which builds them from their Go modules once and
//! caches them by version. Certificates, keys and the admin kubeconfig are made fresh for every start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use base64::Engine as _;

use crate::process::{Lifetime, Process, free_port};
use crate::tls::{TestCa, signing_key};
use crate::tool;
use crate::wait::{fatal, wait_until_every};

/// How long the control plane may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(90);

/// A user (in `system:masters`, by a static token) whose requests alone the API server writes to
/// its audit log ([`ControlPlane::audit_log`]), at the Metadata level: a test that must prove what
/// reached the API server runs its client as this user ([`ControlPlane::audited_kubeconfig`]).
/// Nobody else is audited, so the other tests pay nothing for it.
pub const AUDITED_USER: &str = "tether-audited";

/// The folder holding kube-apiserver, kube-controller-manager, kubectl, etcd and helm.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `TETHER_CONTROLPLANE_BIN` when set, else whatever `hack/controlplane-bin.sh` builds or finds cached.
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("TETHER_CONTROLPLANE_BIN") {
            return Self::at(PathBuf::from(dir));
        }
        Self::at(crate::workspace::built_by("controlplane-bin.sh")?)
    }

    fn at(dir: PathBuf) -> Result<Self> {
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ] {
            if !dir.join(name).is_file() {
                bail!(
                    "{} has no {name}; run hack/controlplane-bin.sh to build the control plane",
                    dir.display()
                );
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running control plane. Dropping it stops every process.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    binaries: Binaries,
    api_port: u16,
    processes: Vec<Process>,
}

impl ControlPlane {
    /// Makes certificates in `dir` and starts etcd, kube-apiserver and kube-controller-manager; returns
    /// once `/readyz` answers ok and the `default` namespace exists.
    pub fn start(dir: &Path, binaries: Binaries, lifetime: Lifetime) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki::write(dir)?;
        let api_port = free_port()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(api_port))?;
        let audited_token = crate::fixtures::unguessable("audited");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{audited_token},{AUDITED_USER},{AUDITED_USER},\"system:masters\"\n"),
        )?;
        std::fs::write(
            dir.join("audit-policy.yaml"),
            format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    users: [{AUDITED_USER}]\n  - level: None\n"
            ),
        )?;
        std::fs::write(
            dir.join("kubeconfig-audited"),
            pki.token_kubeconfig(api_port, &audited_token),
        )?;

        let mut plane = Self {
            dir: dir.to_path_buf(),
            binaries,
            api_port,
            processes: Vec::new(),
        };
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        plane.spawn(
            "etcd",
            vec![
                "--name=tether".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=tether={peer_url}"),
                // A throwaway store: durability buys nothing here and costs every write a sync.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            lifetime,
        )?;
        let p = |name: &str| dir.join(name).display().to_string();
        plane.spawn(
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                format!("--token-auth-file={}", p("tokens.csv")),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", p("audit.log")),
                // Written before the answer, so an answer means its event is in the file.
                "--audit-log-mode=blocking".into(),
            ],
            lifetime,
        )?;
        // The controller manager serves its own health port, which nothing here uses: a free port keeps
        // two control planes on one machine apart.
        let kcm_port = free_port()?;
        plane.spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--profiling=false".into(),
            ],
            lifetime,
        )?;
        plane.wait_ready()?;
        Ok(plane)
    }

    fn spawn(&mut self, name: &str, args: Vec<String>, lifetime: Lifetime) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let process = Process::spawn(name, &self.binaries.path(name), &args, &log, lifetime)?;
        self.processes.push(process);
        Ok(())
    }

    /// Polls `/readyz` and the `default` namespace with the real kubectl until both answer.
    fn wait_ready(&mut self) -> Result<()> {
        let what = format!("the control plane in {}", self.dir.display());
        let every = Duration::from_millis(200);
        let kubectl = self.binaries.path("kubectl");
        let kubeconfig = self.kubeconfig();
        let processes = &mut self.processes;
        wait_until_every(&what, READY_DEADLINE, every, || {
            for p in processes.iter_mut() {
                p.check_running().map_err(fatal)?;
            }
            let body = kubectl_output(&kubectl, &kubeconfig, &["get", "--raw", "/readyz"])?;
            ensure!(body.trim() == "ok", "last answer: {body}");
            let default = ["get", "namespace", "default", "-o", "name"];
            kubectl_output(&kubectl, &kubeconfig, &default)
        })?;
        Ok(())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kubeconfig for [`AUDITED_USER`], whose every request the audit log records.
    pub fn audited_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig-audited")
    }

    /// The API server's audit log: one JSON event per line, for [`AUDITED_USER`]'s requests only.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Pids by process name, in start order.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// A kube client for the admin user, bound to the calling runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig()).await
    }

    /// Leaves the processes running (for `make cluster-up`) and returns their pids.
    pub fn detach(mut self) -> Vec<(String, u32)> {
        let pids = self.pids();
        for p in std::mem::take(&mut self.processes) {
            p.release();
        }
        pids
    }

    /// Stops every process, the last started first.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kubectl --request-timeout=5s <args>` with `kubeconfig`: its stdout.
fn kubectl_output(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(kubectl);
    cmd.env("KUBECONFIG", kubeconfig)
        .arg("--request-timeout=5s")
        .args(args);
    tool::run_command(&mut cmd, None)
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    Ok(kube::Client::try_from(config_for(kubeconfig).await?)?)
}

/// The kube client configuration of a kubeconfig file's current context, to adjust before
/// building a client.
pub async fn config_for(kubeconfig: &Path) -> Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    Ok(
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?,
    )
}

/// The certificates of one control plane: a CA, the API server's serving certificate, an admin client
/// certificate (group `system:masters`) and the service-account signing key.
struct Pki {
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        let ca = TestCa::new("tether-local-ca")?;
        let server = ca.server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
            &[[127, 0, 0, 1].into(), [10, 96, 0, 1].into()],
        )?;
        let admin = ca.client("tether-admin", Some("system:masters"))?;
        let (sa_key, sa_pub) = signing_key()?;
        let files = [
            ("ca.crt", ca.cert_pem()),
            ("apiserver.crt", server.cert_pem.as_str()),
            ("apiserver.key", server.key_pem.as_str()),
            ("sa.key", sa_key.as_str()),
            ("sa.pub", sa_pub.as_str()),
        ];
        for (name, pem) in files {
            std::fs::write(dir.join(name), pem)?;
        }
        Ok(Self {
            ca_pem: ca.cert_pem().to_string(),
            admin_cert_pem: admin.cert_pem,
            admin_key_pem: admin.key_pem,
        })
    }

    /// A kubeconfig that authenticates with `token`.
    fn token_kubeconfig(&self, port: u16, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: tether-local\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: audited\n  user:\n    token: {token}\ncontexts:\n- name: audited\n  context:\n    cluster: tether-local\n    user: audited\n    namespace: default\ncurrent-context: audited\n"
        )
    }

    fn kubeconfig(&self, port: u16) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut out = String::new();
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: tether-local\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: tether-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: tether-local\n  context:\n    cluster: tether-local\n    user: tether-admin\n    namespace: default\ncurrent-context: tether-local\n",
            ca = b64(&self.ca_pem),
            cert = b64(&self.admin_cert_pem),
            key = b64(&self.admin_key_pem),
        );
        out
    }
}
