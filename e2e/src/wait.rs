//! Waiting with a deadline: a probe polled until it succeeds or the time is up, failing with what the
//! probe said last. Every wait of the harness and the tests goes through here; none is a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// The pause between two attempts of [`wait_until`]: short, for probes that cost no process.
pub const EVERY: Duration = Duration::from_millis(50);

/// Polls `probe` every [`EVERY`] until it succeeds or `timeout` passes; returns the last error on
/// timeout, or at once an error marked [`fatal`].
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T>) -> Result<T> {
    wait_until_every(what, timeout, EVERY, probe)
}

/// [`wait_until`] with a pause of `every` between attempts, for probes that cost a process (kubectl).
pub fn wait_until_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(e) => {
                if let Some(e) = give_up(e, what, timeout, deadline) {
                    return Err(e);
                }
            }
        }
        std::thread::sleep(every);
    }
}

/// [`wait_until_every`] for an async probe (a kube client's request), pausing on the runtime.
pub async fn wait_until_async<T, F>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                if let Some(e) = give_up(e, what, timeout, deadline) {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The error to end a wait with, or `None` to try again.
fn give_up(
    e: anyhow::Error,
    what: &str,
    timeout: Duration,
    deadline: Instant,
) -> Option<anyhow::Error> {
    if e.is::<Fatal>() {
        Some(e.context(format!("{what}: given up")))
    } else if Instant::now() >= deadline {
        Some(e.context(format!("{what}: not done after {timeout:?}")))
    } else {
        None
    }
}

/// Marks a probe's error as final: the wait returns it at once instead of trying again until the
/// deadline (a server whose process has exited will not start answering).
pub fn fatal(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Fatal(error))
}

#[derive(Debug)]
struct Fatal(anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_success_ends_the_wait() -> Result<()> {
        let mut tries = 0;
        let got = wait_until("the third try", Duration::from_secs(5), || {
            tries += 1;
            anyhow::ensure!(tries == 3, "try {tries}");
            Ok(tries)
        })?;
        assert_eq!(got, 3);
        Ok(())
    }

    #[test]
    fn a_timeout_names_the_wait_and_keeps_the_last_error() {
        let err = wait_until_every(
            "something that never happens",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || -> Result<()> { anyhow::bail!("still no") },
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.starts_with("something that never happens: not done after 30ms"),
            "{err}"
        );
        assert!(err.ends_with("still no"), "{err}");
    }

    #[test]
    fn a_fatal_error_ends_the_wait_at_once() {
        let began = Instant::now();
        let mut tries = 0;
        let err = wait_until("a server", Duration::from_secs(30), || -> Result<()> {
            tries += 1;
            Err(fatal(anyhow::anyhow!("the process exited")))
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert_eq!(tries, 1);
        assert!(began.elapsed() < Duration::from_secs(5));
        assert_eq!(err, "a server: given up: the process exited");
    }
}
