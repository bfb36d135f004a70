//! One-shot runs of command-line tools (git, kubectl, helm, openssl, ssh-keygen, curl): stdin fed,
//! stdout and stderr captured, a failure told with the command line, its exit status and its output.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// What a command that ran to its end printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end with `stdin` written to it (nothing when `None`), whatever its exit status.
pub fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<Finished> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} (is it installed?)", program(cmd)))?;
    let pipe = child.stdin.take();
    // Written beside the reading, so that a command that prints much before it reads all cannot
    // block both sides on full pipes.
    let out = std::thread::scope(|scope| {
        let writer = scope.spawn(move || match (stdin, pipe) {
            (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
            _ => Ok(()),
        });
        let out = child.wait_with_output();
        (out, writer.join())
    });
    let (out, written) = out;
    let out = out.with_context(|| format!("waiting for {}", program(cmd)))?;
    match written {
        Ok(Ok(())) => {}
        // The command ended without reading all of it; its exit status tells why.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Ok(Err(e)) => return Err(e).with_context(|| format!("writing to {}", program(cmd))),
        Err(_) => bail!("the thread writing to {} panicked", program(cmd)),
    }
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// [`output`], failing unless the command exits 0; returns its stdout as printed.
pub fn run_command(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let done = output(cmd, stdin)?;
    if !done.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        bail!(
            "`{} {}` failed ({}):\n{}{}",
            program(cmd),
            args.join(" "),
            done.status,
            done.stderr,
            done.stdout,
        );
    }
    Ok(done.stdout)
}

/// Runs `program` with `args` and `stdin`, failing unless it exits 0; returns its stdout trimmed.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = run_command(Command::new(program).args(args), stdin)?;
    Ok(out.trim().to_string())
}

/// The program's file name (`kubectl`, not the whole path of the cached binary).
fn program(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_reaches_the_command_and_stdout_comes_back() -> Result<()> {
        assert_eq!(run("cat", &[], Some("hello\n"))?, "hello");
        let big = "x".repeat(1 << 20);
        let out = run_command(&mut Command::new("cat"), Some(&big))?;
        assert_eq!(out.len(), big.len());
        Ok(())
    }

    #[test]
    fn a_failure_names_the_command_its_status_and_its_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("`sh -c echo oops >&2; exit 3` failed ("),
            "{err}"
        );
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }
}
