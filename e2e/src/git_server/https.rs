//! `git http-backend` behind nginx and fcgiwrap: HTTPS from a test CA, basic auth, pushes allowed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use tempfile::TempDir;

use super::{GitRemote, Upstream, init_bare, wait_ready};
use crate::fixtures::unguessable;
use crate::process::{Lifetime, Process, free_port, tail};
use crate::tls::TestCa;
use crate::tool;

const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";
const PROBE_REPO: &str = "tether-ready";

/// What an [`HttpsGitServer`] accepts.
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    /// The basic-auth user.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Also listen on a plain-http port (same auth), for tests of `http://` URLs.
    pub plain_http: bool,
    /// Send each answer at most this many bytes a second, for tests that need a slow fetch.
    pub rate_limit: Option<u32>,
    /// Also listen on a second HTTPS port that answers every request with a redirect to the same
    /// path on the main port under another host name (`localhost`), for tests of redirects.
    pub redirect: bool,
}

impl Default for HttpsOptions {
    fn default() -> Self {
        Self {
            username: "tether".to_string(),
            password: unguessable("pw"),
            plain_http: false,
            rate_limit: None,
            redirect: false,
        }
    }
}

/// nginx (TLS, basic auth) in front of `git http-backend` run by fcgiwrap, serving every bare repository
/// in its own project root as `https://127.0.0.1:PORT/<name>.git`.
#[derive(Debug)]
pub struct HttpsGitServer {
    nginx: Process,
    fcgiwrap: Process,
    port: u16,
    http_port: Option<u16>,
    redirect_port: Option<u16>,
    username: String,
    password: String,
    ca_pem: String,
    dir: TempDir,
}

impl HttpsGitServer {
    /// Starts a server with a generated password and no plain-http port; returns once
    /// `git ls-remote` through it works.
    pub fn start() -> Result<Self> {
        Self::start_with(HttpsOptions::default())
    }

    /// Starts a server with `options`; returns once `git ls-remote` through it works.
    pub fn start_with(options: HttpsOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-https-").tempdir()?;
        let d = dir.path();
        for sub in ["repos", "tmp", "home"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let ca_pem = write_certificates(d)?;
        let hash = tool::run(
            "openssl",
            &["passwd", "-apr1", "-stdin"],
            Some(&format!("{}\n", options.password)),
        )?;
        std::fs::write(d.join("htpasswd"), format!("{}:{hash}\n", options.username))?;
        init_bare(&d.join("repos").join(format!("{PROBE_REPO}.git")))?;

        let port = free_port()?;
        let http_port = if options.plain_http {
            Some(free_port()?)
        } else {
            None
        };
        let redirect_port = if options.redirect {
            Some(free_port()?)
        } else {
            None
        };
        std::fs::write(
            d.join("nginx.conf"),
            nginx_conf(d, port, http_port, redirect_port, options.rate_limit),
        )?;

        let socket = d.join("fcgiwrap.sock");
        let fcgi_log = d.join("fcgiwrap.log");
        let fcgiwrap = Process::spawn(
            "fcgiwrap",
            Path::new("/usr/sbin/fcgiwrap"),
            &[
                "-f".to_string(),
                "-s".to_string(),
                format!("unix:{}", socket.display()),
            ],
            &fcgi_log,
            Lifetime::TiedToStarter,
        )?;
        let log = d.join("nginx.log");
        let nginx = Process::spawn(
            "nginx",
            Path::new("/usr/sbin/nginx"),
            &[
                "-p".to_string(),
                d.display().to_string(),
                "-c".to_string(),
                d.join("nginx.conf").display().to_string(),
                "-e".to_string(),
                d.join("error.log").display().to_string(),
                "-g".to_string(),
                "daemon off;".to_string(),
            ],
            &log,
            Lifetime::TiedToStarter,
        )?;
        let mut server = Self {
            nginx,
            fcgiwrap,
            port,
            http_port,
            redirect_port,
            username: options.username,
            password: options.password,
            ca_pem,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        self.fcgiwrap.check_running()?;
        let probe = self.remote_named(PROBE_REPO, &self.username, &self.password);
        let log = self.dir.path().join("error.log");
        wait_ready(
            "nginx",
            &mut self.nginx,
            ([127, 0, 0, 1], self.port).into(),
            &probe,
            &log,
        )
        .with_context(|| format!("fcgiwrap log:\n{}", self.fcgiwrap_log_tail()))
    }

    /// The HTTPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder whose `<name>.git` repositories are served.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    /// A new empty repository served by this server (`https://127.0.0.1:PORT/<name>.git`).
    pub fn create_repo(&self, name: &str) -> Result<Upstream> {
        Upstream::create(&self.root(), name)
    }

    /// `https://127.0.0.1:PORT/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}.git", self.port)
    }

    /// `http://127.0.0.1:HTTP_PORT/<name>.git`, when started with `plain_http`.
    pub fn http_url(&self, name: &str) -> Option<String> {
        self.http_port
            .map(|port| format!("http://127.0.0.1:{port}/{name}.git"))
    }

    /// `https://127.0.0.1:REDIRECT_PORT/<name>.git`, which redirects to
    /// `https://localhost:PORT/<name>.git`, when started with `redirect`.
    pub fn redirecting_url(&self, name: &str) -> Option<String> {
        self.redirect_port
            .map(|port| format!("https://127.0.0.1:{port}/{name}.git"))
    }

    /// The access log's lines for requests that came by the name `localhost` (the target of the
    /// redirects), each ending `auth=yes` or `auth=no`: whether it carried an Authorization header.
    pub fn requests_to_localhost(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|l| l.contains(" host=localhost "))
            .collect()
    }

    /// Every line of the access log so far: one per request, on any of the server's ports.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The basic-auth user.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The basic-auth password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The test CA's certificate (PEM), for a Secret's `caFile` or `GIT_SSL_CAINFO`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The test CA's certificate as a file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `upstream` over HTTPS with the right credentials and the test CA trusted.
    pub fn remote(&self, upstream: &Upstream) -> GitRemote {
        self.remote_named(upstream.name(), &self.username, &self.password)
    }

    /// `upstream` over HTTPS with the given credentials (to see wrong ones refused).
    pub fn remote_with(&self, upstream: &Upstream, username: &str, password: &str) -> GitRemote {
        self.remote_named(upstream.name(), username, password)
    }

    /// `upstream` over HTTPS with the test CA trusted but no credentials at all.
    pub fn anonymous_remote(&self, upstream: &Upstream) -> GitRemote {
        GitRemote::new(self.url(upstream.name()))
            .with_env("GIT_SSL_CAINFO", self.ca_path().display().to_string())
    }

    /// `upstream` over the plain-http listener with the right credentials, when started with `plain_http`.
    pub fn http_remote(&self, upstream: &Upstream) -> Option<GitRemote> {
        self.http_url(upstream.name())
            .map(|url| with_basic_auth(GitRemote::new(url), &self.username, &self.password))
    }

    fn remote_named(&self, name: &str, username: &str, password: &str) -> GitRemote {
        with_basic_auth(GitRemote::new(self.url(name)), username, password)
            .with_env("GIT_SSL_CAINFO", self.ca_path().display().to_string())
    }

    /// The last lines of nginx's error log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("error.log"), 30)
    }

    /// The last lines of nginx's access log (one line per request, with the user and status).
    pub fn access_log_tail(&self) -> String {
        tail(&self.dir.path().join("access.log"), 30)
    }

    fn fcgiwrap_log_tail(&self) -> String {
        tail(&self.dir.path().join("fcgiwrap.log"), 30)
    }

    /// Stops nginx and fcgiwrap (also done on drop).
    pub fn stop(&mut self) {
        self.nginx.stop(Duration::from_secs(2));
        self.fcgiwrap.stop(Duration::from_secs(2));
    }
}

impl Drop for HttpsGitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends basic-auth credentials as a header, so the URL stays the one a user would write and the password
/// never appears in git's messages.
fn with_basic_auth(remote: GitRemote, username: &str, password: &str) -> GitRemote {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    remote
        .with_env("GIT_CONFIG_COUNT", "1")
        .with_env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .with_env(
            "GIT_CONFIG_VALUE_0",
            format!("Authorization: Basic {token}"),
        )
}

/// Writes `ca.crt`, `server.crt` and `server.key` (for 127.0.0.1 and localhost); returns the CA's PEM.
fn write_certificates(dir: &Path) -> Result<String> {
    let ca = TestCa::new("tether-test-git-ca")?;
    let server = ca.server("tether-test-git", &["localhost"], &[[127, 0, 0, 1].into()])?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    std::fs::write(dir.join("server.crt"), &server.cert_pem)?;
    std::fs::write(dir.join("server.key"), &server.key_pem)?;
    Ok(ca.cert_pem().to_string())
}

/// One nginx process (`master_process off`, so the kernel's parent-death signal reaches all of it) that
/// hands every request, after basic auth, to `git http-backend` through fcgiwrap.
fn nginx_conf(
    dir: &Path,
    port: u16,
    http_port: Option<u16>,
    redirect_port: Option<u16>,
    rate_limit: Option<u32>,
) -> String {
    let d = dir.display();
    let mut listen = format!("        listen 127.0.0.1:{port} ssl;\n");
    if let Some(http) = http_port {
        let _ = writeln!(listen, "        listen 127.0.0.1:{http};");
    }
    let limit = rate_limit
        .map(|bytes| format!("            limit_rate {bytes};\n"))
        .unwrap_or_default();
    let redirect = redirect_port
        .map(|other| {
            format!(
                r#"
    server {{
        listen 127.0.0.1:{other} ssl;
        server_name redirect;
        ssl_certificate {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        location / {{
            return 301 https://localhost:{port}$request_uri;
        }}
    }}
"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"# Written by tether-e2e for one test server.
user root;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    map $http_authorization $has_authorization {{
        "" no;
        default yes;
    }}
    log_format tether '$remote_addr $remote_user [$time_local] "$request" $status host=$host auth=$has_authorization';
    access_log {d}/access.log tether;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    server {{
{listen}        server_name localhost;
        ssl_certificate {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        client_max_body_size 0;

        location / {{
{limit}            auth_basic "tether test git";
            auth_basic_user_file {d}/htpasswd;

            fastcgi_pass unix:{d}/fcgiwrap.sock;
            fastcgi_read_timeout 300s;
            fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
            fastcgi_param GIT_PROJECT_ROOT {d}/repos;
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param GIT_CONFIG_GLOBAL /dev/null;
            fastcgi_param HOME {d}/home;
            fastcgi_param PATH /usr/local/bin:/usr/bin:/bin;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        }}
    }}
{redirect}}}
"#
    )
}
