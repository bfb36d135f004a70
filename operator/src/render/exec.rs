//! Running a rendering tool (kustomize, helm, sops) as a sealed subprocess: a clean environment
//! (no credentials, no proxy that works, no `PATH` unless asked), a private home, a time limit, a
//! cap on what it may print, and its error output cut down and cleaned of paths and keys.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The most of a tool's error output kept for a message.
const MAX_STDERR: usize = 4 << 10;

/// A proxy nothing listens on: whatever a tool tries to fetch over HTTP fails at once.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// One run of a tool.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The executable.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its working folder.
    pub dir: &'a Path,
    /// The private folder it may use as home and for temporary files.
    pub home: &'a Path,
    /// Variables besides the sealed ones.
    pub env: Vec<(&'static str, OsString)>,
    /// Fed to its standard input (closed at once when `None`).
    pub stdin: Option<Vec<u8>>,
    /// How long it may run.
    pub timeout: Duration,
    /// The most bytes it may write to its standard output.
    pub max_stdout: u64,
    /// Whether it may reach the network: the operator's `PATH` and proxy settings are passed on.
    pub network: bool,
}

/// Why a run gave no output.
#[derive(Debug, thiserror::Error)]
pub enum ExecFailure {
    /// The program could not be started.
    #[error("could not start {}: {source}", .program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its time limit and was killed.
    #[error("still running after {}s; stopped", .0.as_secs_f64())]
    Timeout(Duration),
    /// It printed more than `max_stdout` bytes and was killed.
    #[error("printed more than {0} bytes; stopped")]
    TooLarge(u64),
    /// It exited with an error; its error output, cut down.
    #[error("{stderr}")]
    Exit {
        /// The exit code, if it exited rather than being killed by a signal.
        code: Option<i32>,
        /// What it wrote to its error output (at most a few KiB).
        stderr: String,
    },
}

/// Runs `inv` and returns its standard output.
pub async fn run(inv: Invocation<'_>) -> Result<Vec<u8>, ExecFailure> {
    let mut command = tokio::process::Command::new(inv.program);
    command
        .args(&inv.args)
        .current_dir(inv.dir)
        .env_clear()
        .env("HOME", inv.home)
        .env("TMPDIR", inv.home)
        .env("XDG_CONFIG_HOME", inv.home.join(".config"))
        .env("XDG_CACHE_HOME", inv.home.join(".cache"))
        .env("XDG_DATA_HOME", inv.home.join(".local/share"))
        .env("LANG", "C")
        .stdin(if inv.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if inv.network {
        for var in [
            "PATH",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
        ] {
            if let Some(value) = std::env::var_os(var) {
                command.env(var, value);
            }
        }
    } else {
        command.env("PATH", "/nonexistent");
        for var in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "ALL_PROXY",
        ] {
            command.env(var, DEAD_PROXY);
        }
        command.env("NO_PROXY", "").env("no_proxy", "");
    }
    for (key, value) in &inv.env {
        command.env(key, value);
    }
    let mut child = command.spawn().map_err(|source| ExecFailure::Spawn {
        program: inv.program.to_owned(),
        source,
    })?;
    let stdin = child.stdin.take();
    let input = inv.stdin;
    let feed = async move {
        if let (Some(mut pipe), Some(input)) = (stdin, input) {
            // A tool that stops reading early (and fails) is told by its exit status, not here.
            let _ = pipe.write_all(&input).await;
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let limit = inv.max_stdout;
    let read_out = async {
        let mut out = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            pipe.take(limit.saturating_add(1))
                .read_to_end(&mut out)
                .await
                .map_err(|_| ExecFailure::TooLarge(limit))?;
        }
        if out.len() as u64 > limit {
            return Err(ExecFailure::TooLarge(limit));
        }
        Ok(out)
    };
    let read_err = async {
        let mut err = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.take(MAX_STDERR as u64).read_to_end(&mut err).await;
            // The rest is read and dropped, so that the tool never blocks on a full pipe.
            let _ = tokio::io::copy(pipe, &mut tokio::io::sink()).await;
        }
        err
    };
    let work = async {
        // Output over the cap ends the wait at once (the tool is killed below), rather than when
        // the tool closes its error output.
        let ((), out, err) = tokio::try_join!(
            async {
                feed.await;
                Ok(())
            },
            read_out,
            async { Ok(read_err.await) }
        )?;
        let status = child.wait().await.map_err(|source| ExecFailure::Spawn {
            program: inv.program.to_owned(),
            source,
        })?;
        Ok::<_, ExecFailure>((status, out, err))
    };
    let result = tokio::time::timeout(inv.timeout, work).await;
    let (status, out, err) = match result {
        Ok(Ok(done)) => done,
        Ok(Err(failure)) => {
            let _ = child.start_kill();
            return Err(failure);
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(ExecFailure::Timeout(inv.timeout));
        }
    };
    if status.success() {
        return Ok(out);
    }
    Err(ExecFailure::Exit {
        code: status.code(),
        stderr: String::from_utf8_lossy(&err).trim().to_owned(),
    })
}

/// `text` made fit for a status message: the private folder's path left out (so paths read from
/// the repository root), age private keys masked, and at most `max` bytes kept.
pub fn clean(text: &str, scratch: &Path, max: usize) -> String {
    let mut text = text.to_owned();
    let root = scratch.to_string_lossy();
    if !root.is_empty() {
        text = text.replace(&format!("{root}/src/"), "");
        text = text.replace(&format!("{root}/src"), ".");
        text = text.replace(&*root, "<render folder>");
    }
    let text = mask_age_keys(&text);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Every age private key (`AGE-SECRET-KEY-1` and its Bech32 tail) replaced by a marker.
pub fn mask_age_keys(text: &str) -> String {
    const PREFIX: &str = "AGE-SECRET-KEY-1";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        out.push_str("AGE-SECRET-KEY-1<redacted>");
        let tail = &rest[at + PREFIX.len()..];
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, max: u64) -> Invocation<'static> {
        Invocation {
            program: Path::new("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            dir: Path::new("/"),
            home: Path::new("/tmp"),
            env: vec![],
            stdin: None,
            timeout,
            max_stdout: max,
            network: false,
        }
    }

    #[tokio::test]
    async fn output_comes_back_and_the_environment_is_sealed() {
        let out = run(sh(
            "printf '%s|%s|%s' \"$HOME\" \"$HTTPS_PROXY\" \"${KUBECONFIG:-none}\"",
            Duration::from_secs(10),
            1024,
        ))
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("/tmp|{DEAD_PROXY}|none")
        );
    }

    #[tokio::test]
    async fn a_tool_past_its_time_is_stopped() {
        let started = std::time::Instant::now();
        let err = run(sh("while :; do :; done", Duration::from_millis(300), 1024))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecFailure::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_tool_printing_too_much_is_stopped() {
        let err = run(sh(
            "while :; do echo tether; done",
            Duration::from_secs(20),
            1 << 16,
        ))
        .await
        .unwrap_err();
        assert!(matches!(err, ExecFailure::TooLarge(65536)), "{err}");
    }

    #[tokio::test]
    async fn a_failure_carries_the_error_output() {
        let err = run(sh("echo broken >&2; exit 3", Duration::from_secs(10), 1024))
            .await
            .unwrap_err();
        match err {
            ExecFailure::Exit { code, stderr } => {
                assert_eq!(code, Some(3));
                assert_eq!(stderr, "broken");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn messages_lose_the_private_folder_and_keys() {
        let scratch = Path::new("/var/cache/tether/render/render-x1");
        let text = "Error: accumulating resources from '/var/cache/tether/render/render-x1/src/apps/base': \
                    key AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGP, yes";
        assert_eq!(
            clean(text, scratch, 500),
            "Error: accumulating resources from 'apps/base': key AGE-SECRET-KEY-1<redacted>, yes"
        );
        assert_eq!(clean("ééé", scratch, 3), "é…");
    }
}
