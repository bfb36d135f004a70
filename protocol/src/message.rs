//! The messages exchanged over the agent's websocket, as versioned JSON.
//!
//! The version lives in the websocket subprotocol, [`SUBPROTOCOL`] (`tether.v1`): a change that old peers
//! cannot read gets a new subprotocol, and the hub may speak several. Inside one version, each message is
//! a JSON object whose `type` field names it (`watch`, `catchup`, `push`, `error`); peers ignore fields
//! they do not know, so fields can be added without a new version.
//!
//! The conversation: the agent connects to [`CONNECT_PATH`] with `Authorization: Bearer <token>` and the
//! subprotocol, then sends [`AgentMessage::Watch`] with the full set of repositories it follows, and again
//! (the full set) whenever that set changes. The hub answers every watch with [`HubMessage::Catchup`]: the
//! latest push it knows for each watched repository, so an agent learns what it missed while away. Then
//! the hub sends [`HubMessage::Push`] for every accepted webhook that concerns a watched repository.
//! Both sides send websocket pings every [`PING_INTERVAL`]; a peer silent for [`DEAD_AFTER`] is dead.
//!
//! An operator that reports its status for the hub's fleet view (`--hub-report-status`) also sends
//! [`AgentMessage::Report`]: after each connect the full set of its `GitRepository` records (the first
//! message with `reset: true`, the rest of a large set in further messages), then only what changed.
//! A hub that keeps no fleet view answers it with an error and the connection stays open.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::repo::RepoId;

/// The websocket subprotocol, which carries the protocol version.
pub const SUBPROTOCOL: &str = "tether.v1";

/// The HTTP path the agent connects to.
pub const CONNECT_PATH: &str = "/v1/connect";

/// How often each side pings the other.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// A connection from which nothing (no message, ping or pong) arrived for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// A message from the agent (the operator) to the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The full set of repositories the agent follows; replaces any earlier set.
    Watch {
        /// Normalised repository ids.
        repos: Vec<RepoId>,
    },
    /// Some or all of the agent's `GitRepository` records, for the fleet view.
    Report {
        /// The records that follow replace every record the hub holds for this agent (the first
        /// message after a connect, or after the operator's own view restarted).
        #[serde(default)]
        reset: bool,
        /// The operator's version, sent with a reset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operator_version: Option<String>,
        /// Records added or changed.
        #[serde(default)]
        records: Vec<FleetRecord>,
        /// Records gone (the `GitRepository` was deleted).
        #[serde(default)]
        removed: Vec<FleetName>,
    },
}

/// At most this many records travel in one [`AgentMessage::Report`]; a larger set is split.
pub const MAX_RECORDS_PER_REPORT: usize = 500;

/// A record's `message` is cut to this many bytes (at a character boundary).
pub const MAX_RECORD_MESSAGE_BYTES: usize = 512;

/// A record's other strings are cut to this many bytes.
pub const MAX_RECORD_FIELD_BYTES: usize = 256;

/// Which `GitRepository` a record is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FleetName {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One `GitRepository` as its status reads in the cluster, for the hub's fleet view. Nothing in it
/// is secret: the message is the status condition's, which never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The repository it follows.
    pub repo: RepoId,
    /// What it follows: `refs/heads/<branch>`, `refs/tags/<tag>`, `semver:<range>` or `commit:<sha>`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit last applied in full (`status.lastAppliedRevision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// The commit last tried (`status.lastAttemptedRevision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted: Option<String>,
    /// The `Ready` condition's status: `True`, `False` or `Unknown`.
    pub ready: String,
    /// The `Ready` condition's reason.
    #[serde(default)]
    pub reason: String,
    /// The `Ready` condition's message, cut to [`MAX_RECORD_MESSAGE_BYTES`].
    #[serde(default)]
    pub message: String,
    /// When `Ready` last changed, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<u64>,
    /// How long the last push took from the hub's receipt to applied, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_latency_ms: Option<u64>,
}

impl FleetRecord {
    /// Which `GitRepository` this is.
    pub fn key(&self) -> FleetName {
        FleetName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The record with every string cut to its bound, so that no status can make a message large.
    pub fn bounded(mut self) -> Self {
        for field in [
            &mut self.namespace,
            &mut self.name,
            &mut self.git_ref,
            &mut self.ready,
            &mut self.reason,
        ] {
            cut(field, MAX_RECORD_FIELD_BYTES);
        }
        for field in [&mut self.applied, &mut self.attempted]
            .into_iter()
            .flatten()
        {
            cut(field, MAX_RECORD_FIELD_BYTES);
        }
        cut(&mut self.message, MAX_RECORD_MESSAGE_BYTES);
        self
    }
}

/// Cut `text` to at most `max` bytes at a character boundary, marking the cut with `…`.
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// A message from the hub to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubMessage {
    /// The answer to a watch: the latest push the hub knows for each watched repository
    /// (repositories it has never heard of are absent).
    Catchup {
        /// One entry per repository.
        latest: Vec<RepoState>,
    },
    /// A push to a watched repository.
    Push(Notice),
    /// Something the agent asked for was refused or not understood. The connection stays open.
    Error {
        /// What went wrong, for the agent's log.
        message: String,
    },
}

/// The latest push the hub knows for one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// The repository.
    pub repo: RepoId,
    /// The ref pushed, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit the ref points to after the push (all zeros when the ref was deleted).
    pub sha: String,
    /// When the hub received the webhook, in milliseconds since the Unix epoch.
    pub received_at: u64,
}

/// Now, in milliseconds since the Unix epoch: the unit of `received_at`. A clock set before 1970
/// reads as 0.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A push notice, sent once per accepted webhook per repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The repository.
    pub repo: RepoId,
    /// The ref pushed, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit the ref points to after the push (all zeros when the ref was deleted). A hint only:
    /// the agent resolves the ref itself.
    pub sha: String,
    /// The forge's delivery id (or one the hub derived), for correlating logs.
    pub delivery: String,
    /// When the hub received the webhook, in milliseconds since the Unix epoch.
    pub received_at: u64,
}

impl Notice {
    /// The repository state this notice leaves behind.
    pub fn state(&self) -> RepoState {
        RepoState {
            repo: self.repo.clone(),
            git_ref: self.git_ref.clone(),
            sha: self.sha.clone(),
            received_at: self.received_at,
        }
    }
}

/// A message that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid tether.v1 message: {source}")]
pub struct MessageError {
    #[source]
    source: serde_json::Error,
}

impl MessageError {
    /// A short fixed name for metrics and events.
    pub fn category(&self) -> &'static str {
        "invalid_message"
    }
}

impl AgentMessage {
    /// Encode as JSON text for a websocket text frame.
    pub fn to_json(&self) -> String {
        encode(self)
    }

    /// Decode a websocket text frame.
    pub fn from_json(text: &str) -> Result<Self, MessageError> {
        serde_json::from_str(text).map_err(|source| MessageError { source })
    }
}

impl HubMessage {
    /// Encode as JSON text for a websocket text frame.
    pub fn to_json(&self) -> String {
        encode(self)
    }

    /// Decode a websocket text frame. An unknown `type` is an error: log it and carry on.
    pub fn from_json(text: &str) -> Result<Self, MessageError> {
        serde_json::from_str(text).map_err(|source| MessageError { source })
    }
}

fn encode<T: Serialize>(value: &T) -> String {
    // These types hold only strings, integers and vectors, which always serialise.
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            r#"{{"type":"error","message":"could not encode message: {}"}}"#,
            e.to_string().replace('"', "'")
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repo::normalize;

    #[test]
    fn watch_has_a_stable_wire_form() {
        let msg = AgentMessage::Watch {
            repos: vec![normalize("https://github.com/Org/App.git").unwrap()],
        };
        assert_eq!(
            msg.to_json(),
            r#"{"type":"watch","repos":["github.com/Org/App"]}"#
        );
        assert_eq!(AgentMessage::from_json(&msg.to_json()).unwrap(), msg);
    }

    #[test]
    fn watch_normalises_the_repos_it_reads() {
        let msg =
            AgentMessage::from_json(r#"{"type":"watch","repos":["git@github.com:Org/App.git"]}"#)
                .unwrap();
        let AgentMessage::Watch { repos } = msg else {
            panic!("not a watch: {msg:?}");
        };
        assert_eq!(repos[0].as_str(), "github.com/Org/App");
    }

    #[test]
    fn push_and_catchup_round_trip() {
        let notice = Notice {
            repo: normalize("github.com/a/b").unwrap(),
            git_ref: "refs/heads/main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            delivery: "d-1".into(),
            received_at: 1_700_000_000_000,
        };
        let push = HubMessage::Push(notice.clone());
        let text = push.to_json();
        assert!(
            text.starts_with(r#"{"type":"push","repo":"github.com/a/b","ref":"refs/heads/main""#)
        );
        assert_eq!(HubMessage::from_json(&text).unwrap(), push);

        let catchup = HubMessage::Catchup {
            latest: vec![notice.state()],
        };
        assert_eq!(HubMessage::from_json(&catchup.to_json()).unwrap(), catchup);

        let err = HubMessage::Error {
            message: "no".into(),
        };
        assert_eq!(err.to_json(), r#"{"type":"error","message":"no"}"#);
    }

    #[test]
    fn a_report_round_trips_and_its_records_are_bounded() {
        let record = FleetRecord {
            namespace: "apps".into(),
            name: "web".into(),
            repo: normalize("https://git.example/a/b.git").unwrap(),
            git_ref: "refs/heads/main".into(),
            applied: Some("a".repeat(40)),
            attempted: None,
            ready: "False".into(),
            reason: "ApplyFailed".into(),
            message: "é".repeat(1000),
            changed_at: Some(1),
            push_latency_ms: None,
        };
        let msg = AgentMessage::Report {
            reset: true,
            operator_version: Some("0.1.0".into()),
            records: vec![record.clone().bounded()],
            removed: vec![FleetName {
                namespace: "apps".into(),
                name: "old".into(),
            }],
        };
        let text = msg.to_json();
        assert!(
            text.starts_with(r#"{"type":"report","reset":true"#),
            "{text}"
        );
        assert!(
            !text.contains("attempted"),
            "absent fields stay out: {text}"
        );
        assert_eq!(AgentMessage::from_json(&text).unwrap(), msg);
        let AgentMessage::Report { records, .. } = msg else {
            panic!("not a report");
        };
        let message = &records[0].message;
        assert!(
            message.len() <= MAX_RECORD_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
        assert_eq!(records[0].key().name, "web");
        // A report with nothing but its type is an empty change.
        assert_eq!(
            AgentMessage::from_json(r#"{"type":"report"}"#).unwrap(),
            AgentMessage::Report {
                reset: false,
                operator_version: None,
                records: vec![],
                removed: vec![]
            }
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_refused() {
        let msg = HubMessage::from_json(r#"{"type":"error","message":"x","extra":1}"#).unwrap();
        assert_eq!(
            msg,
            HubMessage::Error {
                message: "x".into()
            }
        );
        let err = HubMessage::from_json(r#"{"type":"teleport"}"#).unwrap_err();
        assert_eq!(err.category(), "invalid_message");
    }
}
