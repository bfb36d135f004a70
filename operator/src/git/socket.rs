//! libgit2's own socket timeouts, the bound on a git thread left running after its caller gave up.
//!
//! An operation's `spec.timeout` stops it through the transfer callbacks, but those are called only
//! while bytes move: a remote that accepts the connection and then says nothing holds the thread in
//! a read that no callback reaches (see `slots`). libgit2 fails a connect, and each read or write,
//! that takes longer than its socket timeouts; those are process-wide options in C globals.

use std::time::Duration;

/// The default for `--git-socket-timeout`: long enough for a server that computes a large pack
/// before its first byte, short enough that a thread stuck on a silent remote ends.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(300);

/// Sets libgit2's connect and read/write timeouts to `timeout` (at most `i32::MAX` ms).
///
/// Call it from `main`, before the async runtime or any other thread starts: libgit2 keeps these
/// options in globals without synchronization.
#[allow(unsafe_code)]
pub fn set_socket_timeouts(timeout: Duration) -> Result<(), git2::Error> {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: the only writers of libgit2's options are these two calls, made from `main` before
    // any thread exists, so nothing reads or writes the globals concurrently.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms)?;
        git2::opts::set_server_timeout_in_milliseconds(ms)?;
    }
    Ok(())
}
