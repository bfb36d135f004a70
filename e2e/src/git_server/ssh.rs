//! `sshd` on a loopback port with a generated host key, serving any bare repository by absolute path to
//! one generated client key.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use super::{GitRemote, Upstream, init_bare, wait_ready};
use crate::process::{Lifetime, Process, free_port, tail};
use crate::tool;

const PROBE_REPO: &str = "tether-ready.git";

/// `sshd -D` on a loopback address that lets one generated key in as the current user (root in the
/// tests), so `ssh://USER@127.0.0.1:PORT/<absolute path>` reaches any bare repository on the machine.
#[derive(Debug)]
pub struct SshGitServer {
    sshd: Process,
    ip: Ipv4Addr,
    port: u16,
    user: String,
    known_hosts: String,
    wrong_known_hosts: String,
    dir: TempDir,
    files: AtomicUsize,
}

impl SshGitServer {
    /// Starts sshd on 127.0.0.1 and a free port with fresh host and client keys; returns once
    /// `git ls-remote` over SSH works.
    pub fn start() -> Result<Self> {
        Self::start_at(Ipv4Addr::LOCALHOST, free_port()?)
    }

    /// Starts sshd on port 22 of an address of its own in 127.0.0.0/8, so that scp-like URLs
    /// (`USER@HOST:/path`, which cannot name a port) reach it. Fails if the machine's own sshd
    /// listens on port 22 of every address.
    pub fn start_on_port_22() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // 127.22.x.y: x and y from the process id and a counter, never 0 or 255.
        let n = std::process::id()
            .wrapping_mul(64)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let ip = Ipv4Addr::new(127, 22, (n / 254 % 254 + 1) as u8, (n % 254 + 1) as u8);
        std::net::TcpListener::bind((ip, 22)).with_context(|| {
            format!("port 22 of {ip} is taken (does an sshd listen on 0.0.0.0:22?)")
        })?;
        Self::start_at(ip, 22)
    }

    fn start_at(ip: Ipv4Addr, port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-ssh-").tempdir()?;
        let d = dir.path();
        // sshd refuses to start without its privilege-separation folder; only root can make it, and only
        // root needs it.
        if !Path::new("/run/sshd").is_dir() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let host_public_key = keygen(&d.join("ssh_host_ed25519_key"), "tether-test-host")?;
        let other_host_public_key = keygen(&d.join("other_host_key"), "tether-test-other-host")?;
        let client_public_key = keygen(&d.join("id_ed25519"), "tether-test-client")?;
        keygen(&d.join("unauthorized_ed25519"), "tether-test-stranger")?;
        std::fs::write(d.join("authorized_keys"), format!("{client_public_key}\n"))?;
        init_bare(&d.join(PROBE_REPO))?;

        let user = tool::run("id", &["-un"], None)?;
        std::fs::write(d.join("sshd_config"), sshd_config(d, ip, port, &user))?;
        let known_hosts = host_line(ip, port, &host_public_key)?;
        let wrong_known_hosts = host_line(ip, port, &other_host_public_key)?;
        std::fs::write(d.join("known_hosts"), format!("{known_hosts}\n"))?;

        let log = d.join("sshd.log");
        let sshd = Process::spawn(
            "sshd",
            Path::new("/usr/sbin/sshd"),
            &[
                "-D".to_string(),
                "-e".to_string(),
                "-f".to_string(),
                d.join("sshd_config").display().to_string(),
            ],
            &log,
            Lifetime::TiedToStarter,
        )?;
        let mut server = Self {
            sshd,
            ip,
            port,
            user,
            known_hosts,
            wrong_known_hosts,
            dir,
            files: AtomicUsize::new(0),
        };
        let probe = server.remote_for_path(&server.dir.path().join(PROBE_REPO));
        wait_ready(
            "sshd",
            &mut server.sshd,
            SocketAddr::from((ip, port)),
            &probe,
            &log,
        )?;
        Ok(server)
    }

    /// The address it listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the client key logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `ssh://USER@HOST:PORT/<absolute path of the bare repository>` (no `:PORT` for 22).
    pub fn url(&self, upstream: &Upstream) -> String {
        self.url_for_path(upstream.bare_path())
    }

    /// `ssh://USER@HOST:PORT/<path>` for any bare repository on this machine (no `:PORT` for 22).
    pub fn url_for_path(&self, bare: &Path) -> String {
        let port = if self.port == 22 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!("ssh://{}@{}{port}{}", self.user, self.ip, bare.display())
    }

    /// The scp-like `USER@HOST:<path>` for a bare repository; only a server on port 22
    /// ([`SshGitServer::start_on_port_22`]) can be named so.
    pub fn scp_url_for_path(&self, bare: &Path) -> Result<String> {
        if self.port != 22 {
            bail!("an scp-like URL cannot name port {}", self.port);
        }
        Ok(format!("{}@{}:{}", self.user, self.ip, bare.display()))
    }

    /// The client's private key (OpenSSH format), for a Secret's `identity`.
    pub fn client_key_pem(&self) -> Result<String> {
        read(&self.client_key_path())
    }

    /// The client's private key as a file.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A valid private key the server does not accept (for the wrong-key test).
    pub fn unauthorized_key_pem(&self) -> Result<String> {
        read(&self.dir.path().join("unauthorized_ed25519"))
    }

    /// The server's host key as a `known_hosts` line: `[127.0.0.1]:PORT ssh-ed25519 AAAA...` (the
    /// bare address for port 22).
    pub fn known_hosts(&self) -> &str {
        &self.known_hosts
    }

    /// A `known_hosts` line for this address with a different host key, as if the server were an impostor.
    pub fn wrong_known_hosts(&self) -> &str {
        &self.wrong_known_hosts
    }

    /// `upstream` over SSH with the client key and the right `known_hosts`.
    pub fn remote(&self, upstream: &Upstream) -> GitRemote {
        self.remote_for_path(upstream.bare_path())
    }

    /// `upstream` over SSH with the client key and the given `known_hosts` contents (e.g.
    /// [`SshGitServer::wrong_known_hosts`], or an empty string for an unknown host).
    pub fn remote_with_known_hosts(
        &self,
        upstream: &Upstream,
        known_hosts: &str,
    ) -> Result<GitRemote> {
        let file = self.scratch_file("known_hosts", known_hosts)?;
        Ok(self.remote_using(upstream.bare_path(), &self.client_key_path(), &file))
    }

    /// `upstream` over SSH with the key the server does not accept and the right `known_hosts`.
    pub fn unauthorized_remote(&self, upstream: &Upstream) -> GitRemote {
        self.remote_using(
            upstream.bare_path(),
            &self.dir.path().join("unauthorized_ed25519"),
            &self.dir.path().join("known_hosts"),
        )
    }

    /// Any bare repository on this machine over SSH, with the client key and the right `known_hosts`.
    pub fn remote_for_path(&self, bare: &Path) -> GitRemote {
        self.remote_using(
            bare,
            &self.client_key_path(),
            &self.dir.path().join("known_hosts"),
        )
    }

    fn remote_using(&self, bare: &Path, key: &Path, known_hosts: &Path) -> GitRemote {
        // -F /dev/null: no user or system ssh_config; BatchMode: fail instead of asking anything.
        let command = format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes",
            key.display(),
            known_hosts.display()
        );
        GitRemote::new(self.url_for_path(bare)).with_env("GIT_SSH_COMMAND", command)
    }

    fn scratch_file(&self, prefix: &str, contents: &str) -> Result<PathBuf> {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("{prefix}-{n}"));
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    /// The last lines of sshd's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("sshd.log"), 30)
    }

    /// Stops sshd (also done on drop).
    pub fn stop(&mut self) {
        self.sshd.stop(Duration::from_secs(2));
    }
}

impl Drop for SshGitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Generates an ed25519 key pair at `path` and `path.pub`; returns the public key line.
fn keygen(path: &Path, comment: &str) -> Result<String> {
    let p = path.to_str().context("key path is not UTF-8")?;
    tool::run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p],
        None,
    )?;
    read(Path::new(&format!("{p}.pub"))).map(|s| s.trim().to_string())
}

/// `[IP]:PORT <type> <key>` (`IP <type> <key>` for port 22) from a public key line
/// `<type> <key> <comment>`.
fn host_line(ip: Ipv4Addr, port: u16, public_key: &str) -> Result<String> {
    let host = if port == 22 {
        ip.to_string()
    } else {
        format!("[{ip}]:{port}")
    };
    let mut fields = public_key.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(key)) => Ok(format!("{host} {kind} {key}")),
        _ => bail!("unexpected public key line {public_key:?}"),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn sshd_config(dir: &Path, ip: Ipv4Addr, port: u16, user: &str) -> String {
    let d = dir.display();
    format!(
        "# Written by tether-e2e for one test server.\n\
         Port {port}\n\
         ListenAddress {ip}\n\
         HostKey {d}/ssh_host_ed25519_key\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         AllowUsers {user}\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PrintMotd no\n\
         X11Forwarding no\n\
         AllowTcpForwarding no\n\
         MaxStartups 200:30:400\n\
         SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null\n\
         LogLevel VERBOSE\n"
    )
}
