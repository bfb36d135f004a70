//! Hub replicas end to end: three `tether-hub` processes sharing one Redis (or a Redis Cluster),
//! HAProxy in front of them checking each one's `/readyz`, and three operators (three agents, each
//! in a namespace of its own as if in a cluster of its own) dialling HAProxy, so that they spread
//! over the replicas. One repository holds a folder per namespace; each commit changes all three.
//!
//! Every `GitRepository` has `interval: 1h`: within a test's deadline, only a notice or a catch-up
//! explains a change, so an operator on a replica other than the one a webhook reached applies
//! the push only if the replicas shared it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting, https_secret};
use tether_e2e::git_server::{HttpsGitServer, Upstream};
use tether_e2e::gitrepo::{field_args, install_crds, wait_ready};
use tether_e2e::haproxy::Haproxy;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{AgentSpec, Hub, HubOptions};
use tether_e2e::operator::Operator;
use tether_e2e::redis::{RedisCluster, RedisServer};
use tether_e2e::wait::{wait_until, wait_until_every};

/// How long a push may take to be applied by every operator. Generous for a loaded machine; the
/// interval (1 h) is far beyond it.
const LANDS_WITHIN: Duration = Duration::from_secs(30);
/// The pause between two polls through kubectl.
const POLL: Duration = Duration::from_millis(100);
/// How long a replica may take to notice that Redis went away, or came back.
const NOTICES_REDIS_WITHIN: Duration = Duration::from_secs(15);
/// How long the Redis outage of [`redis_stopped_for_20s_while_pushes_flow_loses_no_push`] lasts.
const OUTAGE: Duration = Duration::from_secs(20);
const REF: &str = "refs/heads/main";
/// The agents, one per namespace (and folder of the repository).
const AGENTS: [&str; 3] = ["alpha", "beta", "gamma"];
const REPLICAS: usize = 3;

/// What the replicas share.
enum SharedRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl SharedRedis {
    fn stop(&mut self) {
        match self {
            SharedRedis::Single(r) => r.stop(),
            SharedRedis::Cluster(c) => c.stop(),
        }
    }

    fn start_again(&mut self) -> Result<()> {
        match self {
            SharedRedis::Single(r) => r.start_again(),
            SharedRedis::Cluster(c) => c.start_again(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            SharedRedis::Single(r) => r.log_tail(),
            SharedRedis::Cluster(c) => c.log_tail(),
        }
    }
}

/// Three namespaces, a repository with a folder for each, Redis, three hub replicas, HAProxy in
/// front of them, and an operator per namespace dialling HAProxy. Fields drop in order: the
/// operators go first.
struct Scene {
    operators: Vec<Operator>,
    lb: Haproxy,
    hubs: Vec<Hub>,
    redis: SharedRedis,
    server: HttpsGitServer,
    repo: Upstream,
    namespaces: Vec<TestNamespace>,
    /// The last commit pushed.
    head: String,
}

impl Scene {
    fn start(prefix: &str, cluster: bool) -> Result<Scene> {
        let mut namespaces = Vec::new();
        for agent in AGENTS {
            namespaces.push(block(TestNamespace::create(&format!("{prefix}-{agent}")))?);
        }
        install_crds(namespaces[0].kubectl())?;
        let server = HttpsGitServer::start()?;
        let repo = server.create_repo("fleet")?;
        for (agent, ns) in AGENTS.iter().zip(&namespaces) {
            repo.write(
                &format!("{agent}/config.yaml"),
                &config_map(ns.name(), "settings", "v0"),
            )?;
        }
        let head = repo.commit("v0")?;
        repo.push_to(&server.remote(&repo))?;

        let (redis, url) = if cluster {
            let c = RedisCluster::start(3)?;
            let urls = c.urls();
            (SharedRedis::Cluster(c), urls)
        } else {
            let r = RedisServer::start()?;
            let url = r.url();
            (SharedRedis::Single(r), url)
        };
        let first = Hub::start_with(HubOptions {
            agents: AGENTS.iter().map(|a| AgentSpec::new(a, &["**"])).collect(),
            redis: Some(url),
            redis_cluster: cluster,
            ..HubOptions::default()
        })?;
        let mut hubs = vec![first];
        for _ in 1..REPLICAS {
            let replica = hubs[0].replica()?;
            hubs.push(replica);
        }
        let ports: Vec<u16> = hubs.iter().map(Hub::port).collect();
        let lb = Haproxy::start(&ports)?;
        // Round robin spreads the operators' connections only over backends it counts as up.
        lb.wait_backends(&[true; REPLICAS], Duration::from_secs(10))?;

        let mut operators = Vec::new();
        for (agent, ns) in AGENTS.iter().zip(&namespaces) {
            ns.kubectl()
                .apply(&https_secret(ns.name(), "auth", &server))?;
            ns.kubectl().apply(&git_repository(
                ns.name(),
                "app",
                &server.url("fleet"),
                &format!("  path: {agent}\n  interval: 1h\n  secretRef:\n    name: auth\n"),
            ))?;
            let flags = [
                format!("--hub-url=ws://127.0.0.1:{}", lb.port()),
                format!(
                    "--hub-token-file={}",
                    hubs[0].token_file_of(agent).display()
                ),
            ];
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            operators.push(Operator::start(ns.kubeconfig(), ns.name(), &refs)?);
        }
        let scene = Scene {
            operators,
            lb,
            hubs,
            redis,
            server,
            repo,
            namespaces,
            head,
        };
        for (ns, operator) in scene.namespaces.iter().zip(&scene.operators) {
            wait_ready(ns.kubectl(), ns.name(), "app", "60s", operator)?;
        }
        scene.wait_applied("v0", &scene.head.clone(), LANDS_WITHIN)?;
        Ok(scene)
    }

    /// Commits `greeting` into every namespace's folder and pushes it; returns `(old, new)`.
    fn push(&mut self, greeting: &str) -> Result<(String, String)> {
        for (agent, ns) in AGENTS.iter().zip(&self.namespaces) {
            self.repo.write(
                &format!("{agent}/config.yaml"),
                &config_map(ns.name(), "settings", greeting),
            )?;
        }
        let new = self.repo.commit(greeting)?;
        self.repo.push_to(&self.server.remote(&self.repo))?;
        let old = std::mem::replace(&mut self.head, new.clone());
        Ok((old, new))
    }

    /// GitHub's push webhook for `old..new`, signed with the secret every replica shares.
    fn webhook(&self, old: &str, new: &str) -> Result<(Vec<String>, String)> {
        self.hubs[0].github_push_webhook(&self.server.url("fleet"), REF, old, new)
    }

    /// Posts the webhook to `127.0.0.1:port`: the status and the answer.
    fn post(&self, port: u16, webhook: &(Vec<String>, String)) -> Result<(u16, String)> {
        let (headers, body) = webhook;
        self.hubs[0].post_webhook_to(port, "github", headers, body.as_bytes())
    }

    /// Waits until every operator applied `sha` and its ConfigMap greets with `greeting`.
    fn wait_applied(&self, greeting: &str, sha: &str, within: Duration) -> Result<()> {
        self.wait_applied_by(&[0, 1, 2], greeting, sha, within)
    }

    /// [`Scene::wait_applied`] for the operators (indexes into [`AGENTS`]) `which`, all within one
    /// deadline.
    fn wait_applied_by(
        &self,
        which: &[usize],
        greeting_want: &str,
        sha: &str,
        within: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        let revision = format!("main@sha1:{sha}");
        for &i in which {
            let ns = &self.namespaces[i];
            let left = deadline.saturating_duration_since(Instant::now());
            ns.kubectl()
                .wait_for_output(
                    &field_args(
                        ns.name(),
                        "app",
                        "jsonpath={.status.lastAppliedRevision}",
                    ),
                    &revision,
                    left,
                    POLL,
                )
                .with_context(|| {
                    format!(
                        "operator {} (namespace {}) did not apply {greeting_want} within {within:?}\n{}",
                        AGENTS[i],
                        ns.name(),
                        self.logs()
                    )
                })?;
            let value = greeting(ns.kubectl(), ns.name(), "settings")?;
            ensure!(
                value == greeting_want,
                "{} applied {revision} but its ConfigMap greets with {value:?}, not {greeting_want:?}",
                AGENTS[i]
            );
        }
        Ok(())
    }

    /// Waits until every agent is connected to exactly one of the replicas flagged `alive`, with its
    /// watch set there, and the replicas' `tether_hub_agents_connected` add up to the agents;
    /// returns each agent's replica (indexes into [`Scene::hubs`]).
    fn wait_placed(&self, alive: &[bool]) -> Result<Vec<usize>> {
        wait_until_every(
            "every agent connected to one replica, its watch set",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let mut placed = Vec::new();
                for agent in AGENTS {
                    let on: Vec<usize> = (0..REPLICAS)
                        .filter(|&r| {
                            alive[r] && self.hubs[r].connected_agents().iter().any(|a| a == agent)
                        })
                        .collect();
                    ensure!(
                        on.len() == 1,
                        "agent {agent} is connected to replicas {on:?}"
                    );
                    ensure!(
                        watching(&self.hubs[on[0]], agent),
                        "agent {agent} has not set its watch on replica {}",
                        on[0]
                    );
                    placed.push(on[0]);
                }
                let mut connected = 0.0;
                for r in (0..REPLICAS).filter(|&r| alive[r]) {
                    connected +=
                        metric_value(&self.hubs[r].metrics()?, "tether_hub_agents_connected")
                            .context("no tether_hub_agents_connected")?;
                }
                ensure!(
                    connected == AGENTS.len() as f64,
                    "the replicas count {connected} agents connected"
                );
                Ok(placed)
            },
        )
        .with_context(|| self.logs())
    }

    /// A metric of replica `r`.
    fn metric(&self, r: usize, name: &str) -> Result<f64> {
        metric_value(&self.hubs[r].metrics()?, name)
            .with_context(|| format!("no {name} on replica {r}"))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, hub) in self.hubs.iter().enumerate() {
            // HAProxy's checks open a connection every 500 ms; their lines would hide the rest.
            let log = hub.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("connection accepted"))
                .collect();
            out.push_str(&format!(
                "--- replica {i} (port {}) log:\n{}\n",
                hub.port(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        for (agent, op) in AGENTS.iter().zip(&self.operators) {
            out.push_str(&format!("--- operator {agent} log:\n{}\n", op.log_tail()));
        }
        out.push_str(&format!("--- haproxy log:\n{}\n", self.lb.log_tail()));
        out.push_str(&format!("--- redis log:\n{}\n", self.redis.log_tail()));
        out
    }
}

/// Whether `agent` sent its watch set on every connection to `hub` so far.
fn watching(hub: &Hub, agent: &str) -> bool {
    let log = hub.log();
    let names = |line: &str| {
        line.split_whitespace()
            .any(|w| w.strip_prefix("agent=").map(|n| n.trim_matches('"')) == Some(agent))
    };
    let connected = log
        .lines()
        .filter(|l| l.contains("agent connected") && names(l))
        .count();
    let watches = log
        .lines()
        .filter(|l| l.contains("watch set updated") && names(l))
        .count();
    connected > 0 && watches >= connected
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The replicas holding at least one agent, from a placement.
fn holding(placed: &[usize]) -> Vec<usize> {
    let mut on: Vec<usize> = placed.to_vec();
    on.sort_unstable();
    on.dedup();
    on
}

/// Relay and dedup, on whichever Redis the scene shares: the agents spread over the replicas, a
/// webhook posted to one replica reaches every operator, and the same delivery posted to another
/// replica is a duplicate.
fn relays_and_dedups(mut scene: Scene) -> Result<()> {
    let placed = scene.wait_placed(&[true; REPLICAS])?;
    eprintln!("agents {AGENTS:?} on replicas {placed:?} (through HAProxy, round robin)");
    ensure!(
        holding(&placed).len() > 1,
        "HAProxy put every agent on one replica ({placed:?}): the test needs them spread"
    );
    let (old, new) = scene.push("v1")?;
    let webhook = scene.webhook(&old, &new)?;
    let began = Instant::now();
    let (status, answer) = scene.post(scene.hubs[0].port(), &webhook)?;
    ensure!(
        status == 202,
        "replica 0 answered {status}: {answer}\n{}",
        scene.logs()
    );
    scene.wait_applied("v1", &new, LANDS_WITHIN)?;
    eprintln!(
        "webhook to replica 0 → applied by all three operators: {:?}",
        began.elapsed()
    );

    let (status, answer) = scene.post(scene.hubs[1].port(), &webhook)?;
    ensure!(
        status == 200,
        "the redelivery to replica 1 answered {status}: {answer}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&answer).with_context(|| format!("the answer {answer:?}"))?;
    ensure!(
        json["status"] == "duplicate",
        "the redelivery to replica 1 was not a duplicate: {answer}"
    );
    let metrics = scene.hubs[1].metrics()?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "tether_hub_webhooks_total{outcome=\"duplicate\",provider=\"github\"} 1"),
        "replica 1 did not count one duplicate:\n{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_relay_every_webhook_to_every_operator_and_dedup_across_replicas()
-> Result<()> {
    let scene = Scene::start("replicas-relay", false)?;
    relays_and_dedups(scene)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_redis_cluster_relay_and_dedup() -> Result<()> {
    let scene = Scene::start("replicas-cluster", true)?;
    relays_and_dedups(scene)
}

/// Posts `webhook` through the load balancer until a replica takes it (202, or 200 duplicate when
/// an earlier attempt was accepted but its answer lost), as a forge redelivers a failed delivery;
/// returns the statuses of the attempts.
fn deliver_through_lb(scene: &Scene, webhook: &(Vec<String>, String)) -> Result<Vec<u16>> {
    let mut attempts = Vec::new();
    wait_until_every(
        "a replica behind HAProxy taking the webhook",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (status, answer) = scene.post(scene.lb.port(), webhook)?;
            attempts.push(status);
            match status {
                202 => Ok(()),
                200 if answer.contains("\"duplicate\"") => Ok(()),
                _ => bail!("answered {status}: {answer}"),
            }
        },
    )
    .with_context(|| format!("attempts: {attempts:?}\n{}", scene.logs()))?;
    Ok(attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_pushes_flow_loses_no_push() -> Result<()> {
    replica_killed_while_pushes_flow("replicas-kill", false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_pushes_flow_on_a_redis_cluster_loses_no_push() -> Result<()> {
    replica_killed_while_pushes_flow("replicas-kill-cluster", true)
}

fn replica_killed_while_pushes_flow(prefix: &str, cluster: bool) -> Result<()> {
    let mut scene = Scene::start(prefix, cluster)?;
    let placed = scene.wait_placed(&[true; REPLICAS])?;
    // The replica holding the most agents (at least one).
    let victim = (0..REPLICAS)
        .max_by_key(|r| placed.iter().filter(|p| *p == r).count())
        .unwrap_or(0);
    eprintln!("agents {AGENTS:?} on replicas {placed:?}; replica {victim} is killed after push 2");
    let mut last = (String::new(), Instant::now());
    for i in 1..=5 {
        let greeting = format!("v{i}");
        let (old, new) = scene.push(&greeting)?;
        let webhook = scene.webhook(&old, &new)?;
        if i == 3 {
            scene.hubs[victim].kill()?;
        }
        let attempts = deliver_through_lb(&scene, &webhook)?;
        eprintln!("push {i}: delivery statuses through HAProxy {attempts:?}");
        last = (new, Instant::now());
    }
    let (sha, posted) = last;
    let within = LANDS_WITHIN.saturating_sub(posted.elapsed());
    scene.wait_applied("v5", &sha, within)?;
    eprintln!(
        "last webhook → applied by all three operators: {:?}",
        posted.elapsed()
    );
    let mut alive = [true; REPLICAS];
    alive[victim] = false;
    let now = scene.wait_placed(&alive)?;
    eprintln!("after the kill, agents on replicas {now:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_20s_while_pushes_flow_loses_no_push() -> Result<()> {
    redis_stopped_while_pushes_flow("replicas-redis-down", false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_stopped_for_20s_while_pushes_flow_loses_no_push() -> Result<()> {
    redis_stopped_while_pushes_flow("replicas-cluster-down", true)
}

fn redis_stopped_while_pushes_flow(prefix: &str, cluster: bool) -> Result<()> {
    let mut scene = Scene::start(prefix, cluster)?;
    let placed = scene.wait_placed(&[true; REPLICAS])?;
    eprintln!("agents {AGENTS:?} on replicas {placed:?}");
    ensure!(
        holding(&placed).len() > 1,
        "HAProxy put every agent on one replica ({placed:?}): the test needs them spread"
    );
    scene.redis.stop();
    let stopped = Instant::now();
    for r in 0..REPLICAS {
        let hub = &scene.hubs[r];
        wait_until(
            &format!("replica {r} reporting itself degraded"),
            NOTICES_REDIS_WITHIN,
            || {
                let (status, body) = hub.readyz()?;
                ensure!(
                    status == 200 && body.starts_with("degraded:"),
                    "/readyz answered {status}: {body}"
                );
                let up = metric_value(&hub.metrics()?, "tether_hub_redis_up");
                ensure!(up == Some(0.0), "tether_hub_redis_up is {up:?}");
                Ok(())
            },
        )
        .with_context(|| scene.logs())?;
    }

    // Push k goes to replica k; the operators there apply it at once, the others cannot hear of it.
    let mut sha = String::new();
    for r in 0..REPLICAS {
        let greeting = format!("v{}", r + 1);
        let (old, new) = scene.push(&greeting)?;
        let webhook = scene.webhook(&old, &new)?;
        let (status, answer) = scene.post(scene.hubs[r].port(), &webhook)?;
        ensure!(
            status == 202,
            "replica {r} answered {status} without Redis: {answer}\n{}",
            scene.logs()
        );
        let here: Vec<usize> = (0..AGENTS.len()).filter(|&a| placed[a] == r).collect();
        scene.wait_applied_by(&here, &greeting, &new, LANDS_WITHIN)?;
        let pending = scene.metric(r, "tether_hub_redis_pending")?;
        ensure!(
            pending >= 1.0,
            "replica {r} accepted a push without Redis but has {pending} batches pending"
        );
        sha = new;
    }
    let behind: Vec<usize> = (0..AGENTS.len())
        .filter(|&a| placed[a] != REPLICAS - 1)
        .collect();
    for &a in &behind {
        let ns = &scene.namespaces[a];
        let value = greeting(ns.kubectl(), ns.name(), "settings")?;
        ensure!(
            value != "v3",
            "{} applied v3 while Redis was away, though it is on replica {}, not {}",
            AGENTS[a],
            placed[a],
            REPLICAS - 1
        );
    }

    // The outage itself: Redis stays away for OUTAGE, then comes back empty.
    wait_until_every(
        "the Redis outage to have lasted its time",
        OUTAGE + Duration::from_secs(10),
        Duration::from_millis(250),
        || {
            ensure!(
                stopped.elapsed() >= OUTAGE,
                "away for {:?}",
                stopped.elapsed()
            );
            Ok(())
        },
    )?;
    scene.redis.start_again()?;
    let back = Instant::now();
    scene.wait_applied("v3", &sha, LANDS_WITHIN)?;
    eprintln!(
        "Redis back → operators {behind:?} on v3 after {:?}",
        back.elapsed()
    );
    for r in 0..REPLICAS {
        let hub = &scene.hubs[r];
        wait_until(
            &format!("replica {r} sharing again"),
            NOTICES_REDIS_WITHIN,
            || {
                let (status, body) = hub.readyz()?;
                ensure!(
                    status == 200 && body.trim() == "ok",
                    "/readyz answered {status}: {body}"
                );
                let metrics = hub.metrics()?;
                let up = metric_value(&metrics, "tether_hub_redis_up");
                let pending = metric_value(&metrics, "tether_hub_redis_pending");
                ensure!(
                    up == Some(1.0) && pending == Some(0.0),
                    "tether_hub_redis_up {up:?}, tether_hub_redis_pending {pending:?}"
                );
                Ok(())
            },
        )
        .with_context(|| scene.logs())?;
    }
    Ok(())
}

/// A Role in `ns` that lets the CI user read ConfigMaps, and nothing else.
fn reader_rbac(ns: &str, user: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{ name: ci-reader, namespace: {ns} }}\nrules:\n  - apiGroups: [\"\"]\n    resources: [configmaps]\n    verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{ name: ci-reader, namespace: {ns} }}\nroleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ci-reader }}\nsubjects:\n  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {user} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_access_and_the_fleet_view_reach_an_agent_held_by_another_replica() -> Result<()> {
    use tether_e2e::ci::{CiToken, write_access_file, write_kubeconfig};
    use tether_e2e::kubectl::Kubectl;

    let ns = block(TestNamespace::create("replicas-ci"))?;
    install_crds(ns.kubectl())?;
    let user = "ci-reader";
    ns.kubectl().apply(&reader_rbac(ns.name(), user))?;
    ns.kubectl()
        .apply(&config_map(ns.name(), "visible", "through-any-replica"))?;
    let server = HttpsGitServer::start()?;
    let repo = server.create_repo("ci")?;
    let head = repo.commit_file(
        "deploy/config.yaml",
        &config_map(ns.name(), "settings", "v0"),
        "v0",
    )?;
    repo.push_to(&server.remote(&repo))?;

    // Behind a password, which the URL carries and no log may show.
    let password = tether_e2e::fixtures::unguessable("redis-password");
    let redis = RedisServer::start_with_password(&password)?;
    let viewer = tether_e2e::fixtures::unguessable("viewer");
    let first = Hub::start_with(HubOptions {
        agents: vec![AgentSpec::new("ci", &["**"])],
        tls: true,
        redis: Some(redis.url()),
        peers: true,
        viewers: vec![("ops".into(), viewer.clone())],
        ..HubOptions::default()
    })?;
    let mut hubs = vec![first];
    for _ in 1..REPLICAS {
        let replica = hubs[0].replica()?;
        hubs.push(replica);
    }

    // The operator dials one replica; the others hold nothing of it.
    let dir = tempfile::Builder::new().prefix("tether-ci-").tempdir()?;
    let token = CiToken::new("reader", user, &[]);
    let access = dir.path().join("ci-access.yaml");
    write_access_file(&access, std::slice::from_ref(&token))?;
    ns.kubectl()
        .apply(&https_secret(ns.name(), "auth", &server))?;
    ns.kubectl().apply(&git_repository(
        ns.name(),
        "app",
        &server.url("ci"),
        "  path: deploy\n  interval: 1h\n  secretRef:\n    name: auth\n",
    ))?;
    let flags = [
        format!("--hub-url={}", hubs[0].ws_url()),
        format!("--hub-token-file={}", hubs[0].token_file_of("ci").display()),
        format!("--hub-ca-file={}", hubs[0].ca_file().display()),
        format!("--ci-access={}", access.display()),
        "--hub-report-status".to_string(),
    ];
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &refs)?;
    wait_ready(ns.kubectl(), ns.name(), "app", "60s", &operator)?;
    let logs = || {
        let hubs: Vec<String> = hubs.iter().map(Hub::log_tail).collect();
        format!(
            "operator log:\n{}\nhub logs:\n{}",
            operator.log_tail(),
            hubs.join("\n---\n")
        )
    };
    wait_until("the CI tunnel open at replica 0", LANDS_WITHIN, || {
        let open = metric_value(&hubs[0].metrics()?, "tether_hub_tunnels_connected");
        ensure!(open == Some(1.0), "tunnels connected: {open:?}");
        Ok(())
    })
    .with_context(logs)?;

    // kubectl against each replica: the two without the tunnel forward to the one with it.
    let kubectl = tether_e2e::cluster::shared().binaries().path("kubectl");
    for (i, hub) in hubs.iter().enumerate() {
        let config = write_kubeconfig(
            &dir.path().join(format!("replica-{i}.kubeconfig")),
            &format!("{}/k8s-proxy/ci", hub.https_url()),
            &hub.ca_file(),
            &token.token,
        )?;
        let ci = Kubectl::new(kubectl.clone(), config);
        let got = wait_until_every(
            &format!("a CI request through replica {i}"),
            LANDS_WITHIN,
            POLL,
            || {
                ci.run(&[
                    "get",
                    "configmap",
                    "visible",
                    "-n",
                    ns.name(),
                    "-o",
                    "jsonpath={.data.greeting}",
                ])
            },
        )
        .with_context(logs)?;
        ensure!(got == "through-any-replica", "replica {i} answered {got:?}");
        // The cluster still decides: the reader may not list Secrets, whichever replica it asks.
        let denied = ci.run(&["get", "secrets", "-n", ns.name()]);
        let message = format!("{denied:?}");
        ensure!(
            denied.is_err() && message.contains("forbidden"),
            "replica {i}: listing Secrets was not refused by the API server: {message}"
        );
    }
    // Through the load balancer, each kubectl a new connection to whichever replica is next.
    let ports: Vec<u16> = hubs.iter().map(Hub::port).collect();
    let lb = Haproxy::start_tls(&ports)?;
    lb.wait_backends(&[true; REPLICAS], Duration::from_secs(10))?;
    let config = write_kubeconfig(
        &dir.path().join("lb.kubeconfig"),
        &format!("https://127.0.0.1:{}/k8s-proxy/ci", lb.port()),
        &hubs[0].ca_file(),
        &token.token,
    )?;
    let through_lb = Kubectl::new(kubectl.clone(), config);
    for round in 0..REPLICAS * 2 {
        let got = through_lb
            .run(&[
                "get",
                "configmap",
                "visible",
                "-n",
                ns.name(),
                "-o",
                "jsonpath={.data.greeting}",
            ])
            .with_context(logs)?;
        ensure!(
            got == "through-any-replica",
            "round {round} answered {got:?}"
        );
    }
    let forwarded = hubs[1..]
        .iter()
        .filter(|h| {
            h.log()
                .contains("CI request forwarded to the replica holding the tunnel")
        })
        .count();
    ensure!(
        forwarded == 2,
        "{forwarded} of the other replicas forwarded"
    );
    ensure!(
        !operator.log().contains("x-tether-peer-secret"),
        "the peer secret reached the operator"
    );
    for (i, hub) in hubs.iter().enumerate() {
        ensure!(
            !hub.log().contains(&password),
            "replica {i}'s log shows the Redis password"
        );
    }

    // The fleet view on a replica the agent is not connected to shows it, live and current.
    for (i, hub) in hubs.iter().enumerate() {
        wait_until_every(
            &format!("replica {i}'s fleet view of the agent"),
            LANDS_WITHIN,
            POLL,
            || {
                let (status, body) = hub.get("/v1/fleet", Some(&viewer))?;
                ensure!(status == 200, "{status} {body}");
                let json: serde_json::Value = serde_json::from_str(&body)?;
                let cluster = &json["clusters"][0];
                ensure!(
                    cluster["name"] == "ci" && cluster["connected"] == true,
                    "{cluster}"
                );
                let d = &json["repos"][0]["deployments"][0];
                ensure!(d["applied"] == head.as_str(), "deployment {d}");
                Ok(())
            },
        )
        .with_context(logs)?;
    }
    Ok(())
}
