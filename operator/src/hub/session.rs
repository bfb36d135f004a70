//! One open connection to the hub: the watch set out, notices in, keepalive, the catch-up
//! that reports only the pushes missed, and (with `--hub-report-status`) the status records of
//! the fleet view: all of them after the connect, then what changed, at most every
//! [`REPORT_COALESCE`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{Sink, SinkExt, StreamExt};
use tether_protocol::{
    AgentMessage, FleetName, FleetRecord, HubMessage, MAX_RECORDS_PER_REPORT, Notice, RepoId,
    RepoKey, RepoState,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, warn};

use super::{HubClientConfig, HubClientError, HubMetrics};

/// The `delivery` of a [`Notice`] made from a catch-up entry rather than a live push.
pub const CATCHUP_DELIVERY: &str = "catchup";

/// How long to wait for the close frame to go out on shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Status changes closer together than this go to the hub as one report.
pub(super) const REPORT_COALESCE: Duration = Duration::from_millis(250);

/// A report message is cut after about this many bytes of records, well below the hub's default
/// `max_agent_message_bytes` (1 MiB).
const REPORT_BYTES: usize = 256 * 1024;

/// Why a session ended.
pub(super) enum SessionEnd {
    Shutdown,
    NoticesClosed,
    Lost(HubClientError),
}

/// The pushes this client already forwarded, per repo (in any letter case, as the hub matches
/// them), so a catch-up does not repeat them.
#[derive(Default)]
pub(super) struct Forwarded(HashMap<RepoKey, RepoState>);

impl Forwarded {
    /// Record `state`; whether it was new. The same push spelled in other letter case is not.
    fn record(&mut self, state: RepoState) -> bool {
        let key = state.repo.key();
        if let Some(seen) = self.0.get(&key)
            && (&seen.git_ref, &seen.sha, seen.received_at)
                == (&state.git_ref, &state.sha, state.received_at)
        {
            return false;
        }
        self.0.insert(key, state);
        true
    }

    /// Forget the repositories no longer watched.
    fn retain(&mut self, watched: &BTreeSet<RepoId>) {
        let watched: HashSet<RepoKey> = watched.iter().map(RepoId::key).collect();
        self.0.retain(|key, _| watched.contains(key));
    }
}

/// One open connection.
pub(super) struct Session<'a> {
    pub(super) config: &'a HubClientConfig,
    pub(super) watch: &'a mut watch::Receiver<BTreeSet<RepoId>>,
    pub(super) notices: &'a mpsc::Sender<Notice>,
    pub(super) metrics: &'a HubMetrics,
    pub(super) forwarded: &'a mut Forwarded,
}

impl Session<'_> {
    pub(super) async fn run<S, F>(
        mut self,
        ws: WebSocketStream<S>,
        mut shutdown: Pin<&mut F>,
    ) -> SessionEnd
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        F: Future<Output = ()>,
    {
        let dead_after = self.config.dead_after;
        let keepalive = self.config.keepalive;
        let (mut sink, mut stream) = ws.split();

        let mut watching = true;
        if let Err(e) = self.send_watch(&mut sink).await {
            return SessionEnd::Lost(e);
        }
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dead = sleep_until(Instant::now() + dead_after);
        tokio::pin!(dead);
        let mut reports = self.config.reports.clone();
        // What the hub holds for this agent, once this connection's first report went out.
        let mut reported: Option<BTreeMap<FleetName, FleetRecord>> = None;
        let mut report_due = reports.as_ref().map(|_| Instant::now());

        loop {
            tokio::select! {
                changed = report_changed(&mut reports), if report_due.is_none() => {
                    if changed {
                        report_due = Some(Instant::now() + REPORT_COALESCE);
                    } else {
                        reports = None;
                    }
                }
                () = sleep_until(report_due.unwrap_or_else(Instant::now)), if report_due.is_some() => {
                    report_due = None;
                    let current = reports.as_mut().and_then(|r| r.borrow_and_update().clone());
                    if let Some(current) = current {
                        let messages = report_messages(&current, reported.as_ref());
                        for message in messages {
                            if let Err(e) = send(&mut sink, Message::Text(message.to_json().into()), dead_after).await {
                                return SessionEnd::Lost(e);
                            }
                        }
                        reported = Some((*current).clone());
                    }
                }
                () = &mut shutdown => {
                    let frame = CloseFrame { code: CloseCode::Away, reason: "operator shutting down".into() };
                    let _ = timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
                    return SessionEnd::Shutdown;
                }
                () = &mut dead => return SessionEnd::Lost(HubClientError::Dead { after: dead_after }),
                _ = ping.tick() => {
                    if let Err(e) = send(&mut sink, Message::Ping(Default::default()), dead_after).await {
                        return SessionEnd::Lost(e);
                    }
                }
                changed = self.watch.changed(), if watching => match changed {
                    Ok(()) => {
                        if let Err(e) = self.send_watch(&mut sink).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    // The controller dropped its sender: keep following the last set.
                    Err(_) => watching = false,
                },
                frame = stream.next() => {
                    let message = match frame {
                        None => return SessionEnd::Lost(HubClientError::Closed { reason: "stream ended".into() }),
                        Some(Err(e)) => return SessionEnd::Lost(HubClientError::Connection { source: Box::new(e) }),
                        Some(Ok(message)) => message,
                    };
                    dead.as_mut().reset(Instant::now() + dead_after);
                    let text = match message {
                        Message::Text(text) => text,
                        Message::Close(frame) => {
                            if let Some(f) = &frame
                                && f.code == CloseCode::Away
                            {
                                let reason = f.reason.to_string();
                                return SessionEnd::Lost(HubClientError::GoingAway { reason });
                            }
                            let reason = match frame {
                                Some(f) if f.reason.is_empty() => format!("code {}", u16::from(f.code)),
                                Some(f) => format!("code {}: {}", u16::from(f.code), f.reason),
                                None => "no close code".to_string(),
                            };
                            return SessionEnd::Lost(HubClientError::Closed { reason });
                        }
                        // Pings are answered by tungstenite; pongs and pings only prove liveness.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                        Message::Binary(_) => {
                            debug!("ignoring a binary frame from the hub");
                            continue;
                        }
                    };
                    for notice in self.notices_in(text.as_str()) {
                        tokio::select! {
                            () = &mut shutdown => return SessionEnd::Shutdown,
                            sent = self.notices.send(notice) => if sent.is_err() {
                                return SessionEnd::NoticesClosed;
                            }
                        }
                        self.metrics.notices.inc();
                    }
                }
            }
        }
    }

    /// Send the full watch set as it is now.
    async fn send_watch<K>(&mut self, sink: &mut K) -> Result<(), HubClientError>
    where
        K: Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        let repos = self.watch.borrow_and_update().clone();
        self.forwarded.retain(&repos);
        debug!(repos = repos.len(), "sending the watch set to the hub");
        let text = AgentMessage::Watch {
            repos: repos.into_iter().collect(),
        }
        .to_json();
        send(sink, Message::Text(text.into()), self.config.dead_after).await
    }

    /// The notices a text frame carries (none for an error or an unreadable message).
    fn notices_in(&mut self, text: &str) -> Vec<Notice> {
        match HubMessage::from_json(text) {
            Ok(HubMessage::Push(notice)) => {
                debug!(repo = %notice.repo, git_ref = %notice.git_ref, delivery = %notice.delivery, "push notice");
                let delay_ms = tether_protocol::unix_ms().saturating_sub(notice.received_at);
                self.metrics.notice_delay.observe(delay_ms as f64 / 1000.0);
                // A push that raced the watch can reach us twice: in the catch-up and live.
                if self.forwarded.record(notice.state()) {
                    vec![notice]
                } else {
                    Vec::new()
                }
            }
            Ok(HubMessage::Catchup { latest }) => {
                let missed: Vec<Notice> = latest
                    .into_iter()
                    .filter(|state| self.forwarded.record(state.clone()))
                    .map(|state| Notice {
                        repo: state.repo,
                        git_ref: state.git_ref,
                        sha: state.sha,
                        delivery: CATCHUP_DELIVERY.to_string(),
                        received_at: state.received_at,
                    })
                    .collect();
                debug!(missed = missed.len(), "catch-up from the hub");
                missed
            }
            Ok(HubMessage::Error { message }) => {
                warn!(hub_error = %message, "the hub reported a problem with this agent's request");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, category = e.category(), "ignoring a message from the hub that could not be read");
                Vec::new()
            }
        }
    }
}

/// Resolves when the reported records change (`true`), or when nobody will change them again
/// (`false`); never without a report channel.
async fn report_changed(
    reports: &mut Option<watch::Receiver<Option<crate::fleet::Records>>>,
) -> bool {
    match reports {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The report messages that bring the hub from `reported` (`None`: nothing yet on this
/// connection, so a reset) to `current`, each within [`MAX_RECORDS_PER_REPORT`] records and about
/// [`REPORT_BYTES`].
fn report_messages(
    current: &BTreeMap<FleetName, FleetRecord>,
    reported: Option<&BTreeMap<FleetName, FleetRecord>>,
) -> Vec<AgentMessage> {
    let (records, removed): (Vec<&FleetRecord>, Vec<&FleetName>) = match reported {
        None => (current.values().collect(), Vec::new()),
        Some(before) => (
            current
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(_, v)| v)
                .collect(),
            before
                .keys()
                .filter(|k| !current.contains_key(*k))
                .collect(),
        ),
    };
    let reset = reported.is_none();
    if !reset && records.is_empty() && removed.is_empty() {
        return Vec::new();
    }
    let mut messages = Vec::new();
    let mut chunk: (Vec<FleetRecord>, Vec<FleetName>, usize) = (Vec::new(), Vec::new(), 0);
    let flush = |chunk: &mut (Vec<FleetRecord>, Vec<FleetName>, usize),
                 messages: &mut Vec<AgentMessage>| {
        let first = messages.is_empty();
        messages.push(AgentMessage::Report {
            reset: reset && first,
            operator_version: (reset && first).then(|| env!("CARGO_PKG_VERSION").to_string()),
            records: std::mem::take(&mut chunk.0),
            removed: std::mem::take(&mut chunk.1),
        });
        chunk.2 = 0;
    };
    for name in removed {
        if chunk.0.len() + chunk.1.len() >= MAX_RECORDS_PER_REPORT || chunk.2 >= REPORT_BYTES {
            flush(&mut chunk, &mut messages);
        }
        chunk.2 += name.namespace.len() + name.name.len() + 32;
        chunk.1.push(name.clone());
    }
    for record in records {
        if chunk.0.len() + chunk.1.len() >= MAX_RECORDS_PER_REPORT || chunk.2 >= REPORT_BYTES {
            flush(&mut chunk, &mut messages);
        }
        chunk.2 += serde_json::to_string(record).map_or(0, |t| t.len());
        chunk.0.push(record.clone());
    }
    if !chunk.0.is_empty() || !chunk.1.is_empty() || messages.is_empty() {
        flush(&mut chunk, &mut messages);
    }
    messages
}

/// Send one frame; a send that does not complete within `limit` means the hub stopped reading.
async fn send<K>(sink: &mut K, message: Message, limit: Duration) -> Result<(), HubClientError>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    match timeout(limit, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HubClientError::Connection {
            source: Box::new(e),
        }),
        Err(_) => Err(HubClientError::Dead { after: limit }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(name: &str, applied: &str) -> (FleetName, FleetRecord) {
        let r = FleetRecord {
            namespace: "apps".into(),
            name: name.into(),
            repo: tether_protocol::normalize("https://git.example/a/b").unwrap(),
            git_ref: "refs/heads/main".into(),
            applied: Some(applied.into()),
            attempted: None,
            ready: "True".into(),
            reason: "Succeeded".into(),
            message: "m".repeat(400),
            changed_at: None,
            push_latency_ms: None,
        };
        (r.key(), r)
    }

    fn parts(m: &AgentMessage) -> (bool, usize, usize) {
        match m {
            AgentMessage::Report {
                reset,
                records,
                removed,
                ..
            } => (*reset, records.len(), removed.len()),
            AgentMessage::Watch { .. } => panic!("not a report"),
        }
    }

    #[test]
    fn a_connect_reports_everything_then_only_changes_in_bounded_messages() {
        let current: BTreeMap<_, _> = (0..1200).map(|i| record(&format!("r{i}"), "s1")).collect();
        let first = report_messages(&current, None);
        let shapes: Vec<_> = first.iter().map(parts).collect();
        assert!(shapes.len() >= 3, "{shapes:?}");
        assert_eq!(shapes.iter().map(|s| s.1).sum::<usize>(), 1200);
        assert!(
            shapes[0].0 && shapes[1..].iter().all(|s| !s.0),
            "{shapes:?}"
        );
        assert!(shapes.iter().all(|s| s.1 <= MAX_RECORDS_PER_REPORT));
        assert!(
            first
                .iter()
                .all(|m| m.to_json().len() < REPORT_BYTES + 4096),
            "each message stays near the byte bound"
        );
        // Small records are bounded by count.
        let small: BTreeMap<_, _> = (0..1001)
            .map(|i| {
                let (k, mut r) = record(&format!("r{i}"), "s1");
                r.message.clear();
                (k, r)
            })
            .collect();
        let counted: Vec<_> = report_messages(&small, None).iter().map(parts).collect();
        assert_eq!(
            counted,
            vec![(true, 500, 0), (false, 500, 0), (false, 1, 0)]
        );
        match &first[0] {
            AgentMessage::Report {
                operator_version, ..
            } => assert!(operator_version.is_some()),
            AgentMessage::Watch { .. } => unreachable!(),
        }

        let mut next = current.clone();
        next.insert(record("r1", "s2").0, record("r1", "s2").1);
        next.remove(&record("r2", "s1").0);
        let changes = report_messages(&next, Some(&current));
        assert_eq!(
            changes.iter().map(parts).collect::<Vec<_>>(),
            vec![(false, 1, 1)]
        );
        assert!(report_messages(&next, Some(&next)).is_empty());
        // An empty set after a connect is still said, so the hub forgets what it held.
        let empty = report_messages(&BTreeMap::new(), None);
        assert_eq!(
            empty.iter().map(parts).collect::<Vec<_>>(),
            vec![(true, 0, 0)]
        );
    }

    #[test]
    fn catchup_skips_pushes_already_forwarded() {
        let repo = tether_protocol::normalize("https://git.example/a/b.git").unwrap();
        let state = RepoState {
            repo: repo.clone(),
            git_ref: "refs/heads/main".into(),
            sha: "1".repeat(40),
            received_at: 1,
        };
        let mut seen = Forwarded::default();
        assert!(seen.record(state.clone()));
        assert!(!seen.record(state.clone()));
        let newer = RepoState {
            sha: "2".repeat(40),
            received_at: 2,
            ..state.clone()
        };
        assert!(seen.record(newer.clone()));
        // The same push, the repository spelled in other letter case: not new.
        let shouted = RepoState {
            repo: tether_protocol::normalize("https://git.example/A/B.git").unwrap(),
            ..newer.clone()
        };
        assert!(!seen.record(shouted));
        // Still watched when the watch set spells it otherwise.
        let other_case: BTreeSet<RepoId> =
            [tether_protocol::normalize("https://git.example/A/b").unwrap()].into();
        seen.retain(&other_case);
        assert!(
            !seen.record(newer.clone()),
            "kept while watched in any case"
        );
        seen.retain(&BTreeSet::new());
        assert!(seen.record(newer), "forgotten once no longer watched");
    }
}
