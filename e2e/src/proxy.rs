//! `tinyproxy` on a loopback port: a real HTTP proxy that tunnels `CONNECT` to any port and logs each
//! request, so a test can tell which connections went through it.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::process::{Lifetime, Process, free_port, tail};
use crate::wait::{fatal, wait_until};

/// A running `tinyproxy`, stopped on drop.
#[derive(Debug)]
pub struct HttpProxy {
    process: Process,
    port: u16,
    /// `user:password` the proxy requires, if any.
    credentials: Option<String>,
    dir: TempDir,
}

impl HttpProxy {
    /// Starts `tinyproxy -d` that lets 127.0.0.1 through to any port; returns once it accepts.
    pub fn start() -> Result<Self> {
        Self::launch(None)
    }

    /// [`HttpProxy::start`], requiring basic authentication (`Proxy-Authorization`) as `user` with
    /// `password`; anything else is answered 407.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Self> {
        Self::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-proxy-").tempdir()?;
        let d = dir.path();
        let port = free_port()?;
        // No ConnectPort line: CONNECT is allowed to every port. No User: it keeps the test's user,
        // which can write the log.
        std::fs::write(
            d.join("tinyproxy.conf"),
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 64\n\
                 LogFile \"{log}\"\nLogLevel Info\nPidFile \"{pid}\"\nDisableViaHeader Yes\n{auth}",
                log = d.join("tinyproxy.log").display(),
                pid = d.join("tinyproxy.pid").display(),
                auth = auth
                    .map(|(user, password)| format!("BasicAuth {user} {password}\n"))
                    .unwrap_or_default(),
            ),
        )?;
        let mut process = Process::spawn(
            "tinyproxy",
            Path::new("tinyproxy"),
            &[
                "-d".to_string(),
                "-c".to_string(),
                d.join("tinyproxy.conf").display().to_string(),
            ],
            &d.join("stderr.log"),
            Lifetime::TiedToStarter,
        )?;
        wait_until(
            &format!("tinyproxy on 127.0.0.1:{port}"),
            Duration::from_secs(20),
            || {
                process.check_running().map_err(fatal)?;
                TcpStream::connect(("127.0.0.1", port))
                    .with_context(|| format!("connecting to 127.0.0.1:{port}"))
            },
        )?;
        Ok(Self {
            process,
            port,
            credentials: auth.map(|(user, password)| format!("{user}:{password}")),
            dir,
        })
    }

    /// `http://[user:password@]127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        match &self.credentials {
            Some(credentials) => format!("http://{credentials}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// How many `CONNECT` tunnels to `target` (`host:port`) it has opened so far.
    pub fn tunnels_to(&self, target: &str) -> usize {
        let needle = format!("CONNECT {target} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("tinyproxy.log"), 20)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(2));
    }
}
