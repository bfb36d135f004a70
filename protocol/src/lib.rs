//! The contract between `tether-hub` and `tether-operator`.
//!
//! - [`repo`]: repository identity, the normalised form of a clone URL that both sides compare.
//! - [`url`]: the one reading of git's URL forms (scheme, user info, host, port, path), and URLs
//!   shown without their password.
//! - [`message`]: the versioned JSON messages on the agent's websocket, and the connection constants.
//! - [`backoff`]: the reconnect policy (exponential backoff, full jitter, reset after a stable period).
//! - [`tunnel`]: the CI tunnel's constants and, with the `tunnel` feature, its two ends: a websocket
//!   as a byte stream, multiplexed by yamux.

pub mod backoff;
pub mod message;
pub mod repo;
pub mod tunnel;
pub mod url;

pub use backoff::Backoff;
pub use message::{
    AgentMessage, CONNECT_PATH, DEAD_AFTER, FleetName, FleetRecord, HubMessage,
    MAX_RECORD_FIELD_BYTES, MAX_RECORD_MESSAGE_BYTES, MAX_RECORDS_PER_REPORT, Notice,
    PING_INTERVAL, RepoState, SUBPROTOCOL, cut, unix_ms,
};
pub use repo::{RepoError, RepoId, RepoKey, normalize};
