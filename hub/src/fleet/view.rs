//! The fleet view's shape, as `GET /v1/fleet` returns it and the page shows it, and its filters.
//!
//! Field names are stable: tools may read them. Times are milliseconds since the Unix epoch.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tether_protocol::{RepoKey, RepoState};

use super::Agent;

/// A commit id of all zeros: a deleted ref.
const DELETED: &str = "0000000000000000000000000000000000000000";

/// Where one `GitRepository` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Ready, and running the latest push the hub saw for its ref (or no push is known).
    Current,
    /// Ready, but the hub saw a later push for its ref than what it runs.
    Behind,
    /// Ready is False: the reason says why.
    Failing,
    /// Ready is Unknown: a revision is being applied.
    Progressing,
    /// `spec.suspend` is set.
    Suspended,
}

impl State {
    /// Every state, in the order the page lists them.
    pub const ALL: [State; 5] = [
        State::Current,
        State::Behind,
        State::Failing,
        State::Progressing,
        State::Suspended,
    ];

    /// The word used in JSON, URLs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Current => "current",
            State::Behind => "behind",
            State::Failing => "failing",
            State::Progressing => "progressing",
            State::Suspended => "suspended",
        }
    }

    /// The state a word names.
    pub fn parse(word: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// How many `GitRepository` records are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All of them.
    pub total: usize,
    /// In [`State::Current`].
    pub current: usize,
    /// In [`State::Behind`].
    pub behind: usize,
    /// In [`State::Failing`].
    pub failing: usize,
    /// In [`State::Progressing`].
    pub progressing: usize,
    /// In [`State::Suspended`].
    pub suspended: usize,
}

impl Counts {
    fn count(&mut self, state: State) {
        self.total += 1;
        match state {
            State::Current => self.current += 1,
            State::Behind => self.behind += 1,
            State::Failing => self.failing += 1,
            State::Progressing => self.progressing += 1,
            State::Suspended => self.suspended += 1,
        }
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.total += other.total;
        self.current += other.current;
        self.behind += other.behind;
        self.failing += other.failing;
        self.progressing += other.progressing;
        self.suspended += other.suspended;
    }

    /// Each state with its count.
    pub fn by_state(&self) -> [(&'static str, usize); 5] {
        [
            ("current", self.current),
            ("behind", self.behind),
            ("failing", self.failing),
            ("progressing", self.progressing),
            ("suspended", self.suspended),
        ]
    }
}

/// What the view shows: the clusters (agents) and the repositories they run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// When this view was made.
    pub generated_at: u64,
    /// Every configured agent (only the filtered one with `cluster=`).
    pub clusters: Vec<ClusterView>,
    /// Each repository and ref some cluster runs, with the clusters that match the filter.
    pub repos: Vec<RepoView>,
    /// Matching deployments not listed (the page lists at most so many; the JSON lists all).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hidden: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One agent's cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The agent's name in the hub's config.
    pub name: String,
    /// Whether its operator is connected now.
    pub connected: bool,
    /// Since when it is connected, or away; absent if it never connected.
    pub since: Option<u64>,
    /// When anything last arrived from it.
    pub last_seen: Option<u64>,
    /// Its operator's version, once it reported status.
    pub operator_version: Option<String>,
    /// Its `GitRepository` records by state.
    pub repos: Counts,
}

/// The latest push the hub saw for a repository and ref.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushView {
    /// The commit pushed.
    pub sha: String,
    /// When the hub received it.
    pub received_at: u64,
}

/// One repository and ref, and where each cluster stands on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoView {
    /// The repository id.
    pub repo: String,
    /// What is followed (`refs/heads/main`, `semver:>=1.0`, ...).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The latest push the hub saw for it, if any.
    pub latest_push: Option<PushView>,
    /// The matching records by state.
    pub clusters: Counts,
    /// The matching records.
    pub deployments: Vec<Deployment>,
}

/// One `GitRepository` in one cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// The agent's name.
    pub cluster: String,
    /// The `GitRepository`'s namespace.
    pub namespace: String,
    /// The `GitRepository`'s name.
    pub name: String,
    /// Where it stands.
    pub state: State,
    /// Whether the hub saw a later push for its ref than what it runs (whatever its state).
    pub behind: bool,
    /// The commit it last applied.
    pub applied: Option<String>,
    /// The commit it last tried.
    pub attempted: Option<String>,
    /// The `Ready` condition: status, reason, message.
    pub ready: String,
    /// The `Ready` reason.
    pub reason: String,
    /// The `Ready` message.
    pub message: String,
    /// When `Ready` last changed.
    pub changed_at: Option<u64>,
    /// The last push → applied latency in milliseconds.
    pub push_latency_ms: Option<u64>,
}

/// What to show. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// One cluster, by name.
    pub cluster: Option<String>,
    /// Repositories whose id contains this, in any letter case.
    pub repo: Option<String>,
    /// One namespace.
    pub namespace: Option<String>,
    /// One state.
    pub state: Option<State>,
}

impl Filter {
    /// The filter a query string's fields describe; an unknown state is refused, naming it.
    pub fn from_query(query: &HashMap<String, String>) -> Result<Filter, String> {
        let field = |name: &str| {
            query
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let state = match field("state") {
            None => None,
            Some(word) => Some(State::parse(&word).ok_or_else(|| {
                format!(
                    "state={word:?} is not one of {}",
                    State::ALL.map(State::as_str).join(", ")
                )
            })?),
        };
        Ok(Filter {
            cluster: field("cluster"),
            repo: field("repo").map(|r| r.to_lowercase()),
            namespace: field("namespace"),
            state,
        })
    }

    /// Whether anything is filtered.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// Where a record stands against the latest push for its ref.
fn state_of(
    ready: &str,
    reason: &str,
    applied: Option<&str>,
    latest: Option<&RepoState>,
) -> (State, bool) {
    let behind = latest.is_some_and(|p| p.sha != DELETED && applied != Some(p.sha.as_str()));
    let state = match ready {
        "False" => State::Failing,
        "Unknown" if reason == "Suspended" => State::Suspended,
        "Unknown" => State::Progressing,
        _ if behind => State::Behind,
        _ => State::Current,
    };
    (state, behind)
}

/// The latest push per repository (by key) and ref.
pub(super) type Pushes = HashMap<RepoKey, HashMap<String, RepoState>>;

/// Which deployments a view lists (every count covers them all either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every one that matches the filter (the JSON).
    All,
    /// At most this many (the page); `attention` leaves out the current ones.
    AtMost {
        /// How many rows at most; the rest are counted in [`FleetView::hidden`].
        max: usize,
        /// Only those that need attention (not current).
        attention: bool,
    },
}

/// The view of `agents` (name, connected now, what is known) against `pushes`, filtered, listing
/// the deployments `rows` asks for.
pub(super) fn build<'a>(
    agents: impl Iterator<Item = (&'a str, bool, &'a Agent)>,
    pushes: &Pushes,
    filter: &Filter,
    rows: Rows,
    now: u64,
) -> FleetView {
    let mut clusters = Vec::new();
    let mut repos: BTreeMap<(String, String), RepoView> = BTreeMap::new();
    // Records of many clusters name the same repositories: fold each id to its key once.
    let mut keys: HashMap<&str, RepoKey> = HashMap::new();
    let mut listed = 0;
    let mut hidden = 0;
    for (name, connected, agent) in agents {
        let mut counts = Counts::default();
        for record in agent.records.values() {
            let key = keys
                .entry(record.repo.as_str())
                .or_insert_with(|| record.repo.key());
            let latest = pushes
                .get(key)
                .and_then(|by_ref| by_ref.get(record.git_ref.as_str()));
            let (state, behind) = state_of(
                &record.ready,
                &record.reason,
                record.applied.as_deref(),
                latest,
            );
            counts.count(state);
            let matches = filter.cluster.as_deref().is_none_or(|c| c == name)
                && filter
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == record.namespace)
                && filter.state.is_none_or(|s| s == state)
                && filter
                    .repo
                    .as_deref()
                    .is_none_or(|r| key.as_str().contains(r));
            if !matches {
                continue;
            }
            let slot = (key.as_str().to_string(), record.git_ref.clone());
            let entry = match repos.get_mut(&slot) {
                Some(e) => e,
                None => repos.entry(slot).or_insert_with(|| RepoView {
                    repo: record.repo.as_str().to_string(),
                    git_ref: record.git_ref.clone(),
                    latest_push: latest.map(|p| PushView {
                        sha: p.sha.clone(),
                        received_at: p.received_at,
                    }),
                    clusters: Counts::default(),
                    deployments: Vec::new(),
                }),
            };
            entry.clusters.count(state);
            let wanted = match rows {
                Rows::All => true,
                Rows::AtMost { max, attention } => {
                    if attention && state == State::Current {
                        false
                    } else if listed >= max {
                        hidden += 1;
                        false
                    } else {
                        true
                    }
                }
            };
            if !wanted {
                continue;
            }
            listed += 1;
            entry.deployments.push(Deployment {
                cluster: name.to_string(),
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                state,
                behind,
                applied: record.applied.clone(),
                attempted: record.attempted.clone(),
                ready: record.ready.clone(),
                reason: record.reason.clone(),
                message: record.message.clone(),
                changed_at: record.changed_at,
                push_latency_ms: record.push_latency_ms,
            });
        }
        if filter.cluster.as_deref().is_none_or(|c| c == name) {
            clusters.push(ClusterView {
                name: name.to_string(),
                connected,
                since: agent.since,
                last_seen: agent.last_seen,
                operator_version: agent.operator_version.clone(),
                repos: counts,
            });
        }
    }
    let mut repos: Vec<RepoView> = repos.into_values().collect();
    for r in &mut repos {
        r.deployments.sort_by(|a, b| {
            (&a.cluster, &a.namespace, &a.name).cmp(&(&b.cluster, &b.namespace, &b.name))
        });
    }
    repos.sort_by(|a, b| (&a.repo, &a.git_ref).cmp(&(&b.repo, &b.git_ref)));
    FleetView {
        generated_at: now,
        clusters,
        repos,
        hidden,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::record;
    use super::*;
    use tether_protocol::FleetRecord;

    fn agent(records: Vec<FleetRecord>) -> Agent {
        Agent {
            records: records.into_iter().map(|r| (r.key(), r)).collect(),
            ..Agent::default()
        }
    }

    fn push(sha: &str) -> Pushes {
        let repo = tether_protocol::normalize("https://git.example/org/config").unwrap();
        let state = RepoState {
            repo: repo.clone(),
            git_ref: "refs/heads/main".into(),
            sha: sha.into(),
            received_at: 5,
        };
        HashMap::from([(
            repo.key(),
            HashMap::from([("refs/heads/main".to_string(), state)]),
        )])
    }

    #[test]
    fn each_record_is_current_behind_or_failing_against_the_latest_push() {
        let east = agent(vec![record("a", "web", "new", "True")]);
        let west = agent(vec![record("a", "web", "old", "True")]);
        let north = agent(vec![record("a", "web", "new", "False")]);
        let mut unknown = record("a", "web", "old", "Unknown");
        unknown.reason = "Suspended".into();
        let south = agent(vec![unknown]);
        let agents = [
            ("east", true, &east),
            ("west", true, &west),
            ("north", false, &north),
            ("south", true, &south),
        ];
        let view = build(
            agents.into_iter(),
            &push("new"),
            &Filter::default(),
            Rows::All,
            9,
        );
        assert_eq!(view.repos.len(), 1);
        let states: Vec<(&str, State, bool)> = view.repos[0]
            .deployments
            .iter()
            .map(|d| (d.cluster.as_str(), d.state, d.behind))
            .collect();
        assert_eq!(
            states,
            vec![
                ("east", State::Current, false),
                ("north", State::Failing, false),
                ("south", State::Suspended, true),
                ("west", State::Behind, true),
            ]
        );
        assert_eq!(view.repos[0].clusters.behind, 1);
        assert_eq!(view.repos[0].latest_push.as_ref().unwrap().sha, "new");
        // No push known: nothing is behind.
        let view = build(
            agents.into_iter(),
            &HashMap::new(),
            &Filter::default(),
            Rows::All,
            9,
        );
        assert_eq!(view.repos[0].clusters.behind, 0);
        // A deleted ref makes nobody behind either.
        let view = build(
            agents.into_iter(),
            &push(DELETED),
            &Filter::default(),
            Rows::All,
            9,
        );
        assert_eq!(view.repos[0].clusters.behind, 0);
    }

    #[test]
    fn a_page_lists_at_most_its_rows_and_counts_everything() {
        let many = agent(
            (0..5)
                .map(|i| record("a", &format!("r{i}"), "old", "True"))
                .chain(std::iter::once(record("a", "fresh", "new", "True")))
                .collect(),
        );
        let agents = [("east", true, &many)];
        let page = Rows::AtMost {
            max: 3,
            attention: true,
        };
        let view = build(
            agents.into_iter(),
            &push("new"),
            &Filter::default(),
            page,
            0,
        );
        let listed: usize = view.repos.iter().map(|r| r.deployments.len()).sum();
        assert_eq!((listed, view.hidden), (3, 2), "3 of the 5 behind listed");
        assert!(
            view.repos[0]
                .deployments
                .iter()
                .all(|d| d.state == State::Behind),
            "the current one needs no attention"
        );
        assert_eq!(view.repos[0].clusters.total, 6, "all are counted");
        assert_eq!(view.clusters[0].repos.behind, 5);
        let all = build(
            agents.into_iter(),
            &push("new"),
            &Filter::default(),
            Rows::All,
            0,
        );
        assert_eq!(all.repos[0].deployments.len(), 6);
        assert_eq!(all.hidden, 0);
    }

    #[test]
    fn filters_narrow_deployments_and_clusters_and_refuse_unknown_states() {
        let east = agent(vec![
            record("a", "web", "new", "True"),
            record("b", "db", "old", "True"),
        ]);
        let west = agent(vec![record("a", "web", "old", "False")]);
        let agents = [("east", true, &east), ("west", false, &west)];
        let query = |pairs: &[(&str, &str)]| {
            let q: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Filter::from_query(&q)
        };
        let view = build(
            agents.into_iter(),
            &push("new"),
            &query(&[("state", "behind")]).unwrap(),
            Rows::All,
            0,
        );
        let names: Vec<_> = view.repos[0]
            .deployments
            .iter()
            .map(|d| (d.cluster.as_str(), d.name.as_str()))
            .collect();
        assert_eq!(names, vec![("east", "db")]);
        assert_eq!(
            view.clusters.len(),
            2,
            "clusters stay without a cluster filter"
        );

        let view = build(
            agents.into_iter(),
            &push("new"),
            &query(&[("cluster", "west"), ("repo", "ORG/config")]).unwrap(),
            Rows::All,
            0,
        );
        assert_eq!(view.clusters.len(), 1);
        assert_eq!(view.clusters[0].repos.failing, 1);
        assert_eq!(view.repos[0].deployments.len(), 1);

        let view = build(
            agents.into_iter(),
            &push("new"),
            &query(&[("namespace", "nowhere")]).unwrap(),
            Rows::All,
            0,
        );
        assert!(view.repos.is_empty());

        let err = query(&[("state", "sideways")]).unwrap_err();
        assert!(err.contains("sideways") && err.contains("behind"), "{err}");
        assert!(query(&[("state", " ")]).unwrap().is_empty());
    }
}
