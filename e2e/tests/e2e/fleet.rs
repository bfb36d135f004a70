//! The fleet view end to end: two operators (two agents, each in its own namespace as if in its
//! own cluster) report their status to one hub with `--hub-report-status`; the hub's JSON and its
//! page, in a real headless Chromium, show each cluster behind, current, failing and gone.
//!
//! "Behind" is made observable without racing the operators: the forge's webhook for a commit is
//! sent before the commit reaches the git server (as a forge with lagging replicas can), so both
//! operators still resolve the old commit while the hub has seen the new one.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tether_e2e::browser::{Browser, artifacts_for};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, https_secret, unguessable};
use tether_e2e::git_server::{HttpsGitServer, Upstream};
use tether_e2e::gitrepo::install_crds;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{AgentSpec, Hub, HubOptions};
use tether_e2e::operator::Operator;
use tether_e2e::wait::wait_until_every;

/// How long a change may take to show in the fleet view.
const SHOWS_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const REF: &str = "refs/heads/main";

/// Two namespaces standing for two clusters, one repository with a folder for each, a hub that
/// knows both agents and one viewer, and an operator per namespace reporting its status.
struct Fleet {
    east: TestNamespace,
    west: TestNamespace,
    server: HttpsGitServer,
    repo: Upstream,
    hub: Hub,
    viewer: String,
    operators: Vec<Operator>,
    head: String,
}

impl Fleet {
    fn start(prefix: &str, tls: bool) -> Result<Fleet> {
        let east = block(TestNamespace::create(&format!("{prefix}-east")))?;
        let west = block(TestNamespace::create(&format!("{prefix}-west")))?;
        install_crds(east.kubectl())?;
        let server = HttpsGitServer::start()?;
        let repo = server.create_repo("fleet")?;
        repo.write(
            "east/config.yaml",
            &config_map(east.name(), "settings", "v0"),
        )?;
        let head = repo.commit_file(
            "west/config.yaml",
            &config_map(west.name(), "settings", "v0"),
            "v0",
        )?;
        repo.push_to(&server.remote(&repo))?;
        let viewer = unguessable("viewer");
        let hub = Hub::start_with(HubOptions {
            agents: vec![
                AgentSpec::new("east", &["**"]),
                AgentSpec::new("west", &["**"]),
            ],
            tls,
            viewers: vec![("ops".into(), viewer.clone())],
            ..HubOptions::default()
        })?;
        let mut fleet = Fleet {
            east,
            west,
            server,
            repo,
            hub,
            viewer,
            operators: Vec::new(),
            head,
        };
        for (ns, agent) in [(&fleet.east, "east"), (&fleet.west, "west")] {
            let url = fleet.server.url("fleet");
            ns.kubectl()
                .apply(&https_secret(ns.name(), "auth", &fleet.server))?;
            ns.kubectl().apply(&git_repository(
                ns.name(),
                "app",
                &url,
                &format!("  path: {agent}\n  interval: 1h\n  secretRef:\n    name: auth\n"),
            ))?;
            let ca = if tls {
                format!("--hub-ca-file={}", fleet.hub.ca_file().display())
            } else {
                String::new()
            };
            let mut flags = vec![
                format!("--hub-url={}", fleet.hub.ws_url()),
                format!(
                    "--hub-token-file={}",
                    fleet.hub.token_file_of(agent).display()
                ),
                "--hub-report-status".to_string(),
            ];
            if tls {
                flags.push(ca);
            }
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            fleet
                .operators
                .push(Operator::start(ns.kubeconfig(), ns.name(), &refs)?);
        }
        Ok(fleet)
    }

    /// `GET /v1/fleet` as the viewer.
    fn json(&self) -> Result<Value> {
        match self.hub.get("/v1/fleet", Some(&self.viewer))? {
            (200, body) => serde_json::from_str(&body).context("the fleet JSON"),
            (status, body) => bail!("GET /v1/fleet answered {status}: {body}"),
        }
    }

    /// Waits until `check` accepts the fleet JSON; fails with the last JSON and the logs.
    fn wait_json(&self, what: &str, check: impl Fn(&Value) -> Result<()>) -> Result<Value> {
        wait_until_every(what, SHOWS_WITHIN, POLL, || {
            let json = self.json()?;
            check(&json).with_context(|| format!("fleet: {json:#}"))?;
            Ok(json)
        })
        .with_context(|| self.logs())
    }

    fn logs(&self) -> String {
        let operators: Vec<String> = self.operators.iter().map(|o| o.log_tail()).collect();
        format!(
            "hub log:\n{}\noperator logs:\n{}",
            self.hub.log_tail(),
            operators.join("\n---\n")
        )
    }

    /// Commits new ConfigMaps for both clusters (east's as `east_doc`) without pushing; the sha.
    fn commit(&self, greeting: &str, east_doc: Option<&str>) -> Result<String> {
        let east = match east_doc {
            Some(doc) => doc.to_string(),
            None => config_map(self.east.name(), "settings", greeting),
        };
        self.repo.write("east/config.yaml", &east)?;
        self.repo.commit_file(
            "west/config.yaml",
            &config_map(self.west.name(), "settings", greeting),
            greeting,
        )
    }

    fn push(&self) -> Result<()> {
        self.repo.push_to(&self.server.remote(&self.repo))
    }

    /// The forge's webhook for `new` (after `old`), sent now.
    fn webhook(&self, old: &str, new: &str) -> Result<()> {
        let (headers, body) =
            self.hub
                .github_push_webhook(&self.server.url("fleet"), REF, old, new)?;
        let status = self.hub.post_webhook("github", &headers, body.as_bytes())?;
        ensure!(status == 202, "the webhook answered {status}");
        Ok(())
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The one repository entry of the view.
fn repo_entry(json: &Value) -> Result<&Value> {
    let repos = json["repos"].as_array().context("no repos array")?;
    ensure!(
        repos.len() == 1,
        "expected one repository, got {}",
        repos.len()
    );
    Ok(&repos[0])
}

/// The deployment of `cluster` in the one repository entry.
fn deployment<'a>(json: &'a Value, cluster: &str) -> Result<&'a Value> {
    repo_entry(json)?["deployments"]
        .as_array()
        .context("no deployments")?
        .iter()
        .find(|d| d["cluster"] == cluster)
        .with_context(|| format!("no deployment of {cluster}"))
}

fn cluster<'a>(json: &'a Value, name: &str) -> Result<&'a Value> {
    json["clusters"]
        .as_array()
        .context("no clusters array")?
        .iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no cluster {name}"))
}

/// Both clusters run `sha` in state `state` (`behind` or `current`).
fn both(json: &Value, state: &str, applied: &str) -> Result<()> {
    for name in ["east", "west"] {
        ensure!(
            cluster(json, name)?["connected"] == true,
            "{name} not connected"
        );
        let d = deployment(json, name)?;
        ensure!(d["state"] == state, "{name} is {}, not {state}", d["state"]);
        ensure!(
            d["applied"] == applied,
            "{name} applied {}, not {applied}",
            d["applied"]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_show_behind_then_current_then_one_failing_then_one_gone() -> Result<()> {
    let mut fleet = Fleet::start("fleet-json", false)?;
    let v0 = fleet.head.clone();

    // Nothing of the fleet without a viewer token; an agent's token is not one.
    for (path, bearer) in [
        ("/v1/fleet", None),
        ("/v1/fleet", Some(unguessable("nobody"))),
        (
            "/v1/fleet",
            Some(
                std::fs::read_to_string(fleet.hub.token_file_of("east"))?
                    .trim()
                    .to_string(),
            ),
        ),
        ("/v1/fleet/events", None),
        ("/fleet?part=main", None),
    ] {
        let (status, body) = fleet.hub.get(path, bearer.as_deref())?;
        ensure!(
            status == 401,
            "{path} with {bearer:?} answered {status}: {body}"
        );
        ensure!(!body.contains("east"), "{path} leaked the fleet: {body}");
    }
    let (status, _) = fleet.hub.get("/fleet", None)?;
    ensure!(
        status == 303,
        "the page without a session answered {status}, not a redirect to the login"
    );

    fleet.wait_json("both clusters current on the first commit", |j| {
        both(j, "current", &v0)?;
        ensure!(repo_entry(j)?["ref"] == REF);
        ensure!(
            cluster(j, "east")?["operator_version"].is_string(),
            "no operator version"
        );
        Ok(())
    })?;

    // The hub hears of v1 before the git server has it: both clusters are behind.
    let v1 = fleet.commit("v1", None)?;
    fleet.webhook(&v0, &v1)?;
    let json = fleet.wait_json("both clusters behind v1", |j| {
        both(j, "behind", &v0)?;
        ensure!(
            repo_entry(j)?["latest_push"]["sha"] == v1.as_str(),
            "latest push is not v1"
        );
        Ok(())
    })?;
    ensure!(repo_entry(&json)?["clusters"]["behind"] == 2);

    // The push lands: both turn current, each with its push → applied latency.
    fleet.push()?;
    fleet.webhook(&v0, &v1)?;
    let json = fleet.wait_json("both clusters current on v1", |j| both(j, "current", &v1))?;
    for name in ["east", "west"] {
        let latency = deployment(&json, name)?["push_latency_ms"].as_u64();
        ensure!(
            latency.is_some_and(|ms| ms < 30_000),
            "{name} latency {latency:?}"
        );
    }

    // A commit that breaks east's folder only: east fails with its reason, west runs it.
    let v2 = fleet.commit("v2", Some("kind: ConfigMap\nmetadata: [not, a, map]\n"))?;
    fleet.push()?;
    fleet.webhook(&v1, &v2)?;
    let json = fleet.wait_json("east failing on v2, west current", |j| {
        let east = deployment(j, "east")?;
        ensure!(east["state"] == "failing", "east is {}", east["state"]);
        ensure!(east["attempted"] == v2.as_str() && east["applied"] == v1.as_str());
        ensure!(east["behind"] == true, "east runs v1 while v2 was pushed");
        let west = deployment(j, "west")?;
        ensure!(west["state"] == "current" && west["applied"] == v2.as_str());
        Ok(())
    })?;
    let east = deployment(&json, "east")?;
    let reason = east["reason"].as_str().unwrap_or_default();
    ensure!(
        !reason.is_empty() && reason != "Succeeded",
        "east's reason: {reason:?}"
    );
    ensure!(
        east["message"]
            .as_str()
            .unwrap_or_default()
            .contains("config.yaml"),
        "east's message names the file: {east}"
    );
    let (status, body) = fleet
        .hub
        .get("/v1/fleet?state=failing", Some(&fleet.viewer))?;
    ensure!(status == 200, "filter answered {status}");
    let failing: Value = serde_json::from_str(&body)?;
    ensure!(
        deployment(&failing, "west").is_err() && deployment(&failing, "east").is_ok(),
        "state=failing keeps east only: {failing:#}"
    );
    let (status, body) = fleet
        .hub
        .get("/v1/fleet?state=sideways", Some(&fleet.viewer))?;
    ensure!(
        status == 400 && body.contains("sideways"),
        "{status} {body}"
    );
    wait_until_every("the hub's failing gauge", SHOWS_WITHIN, POLL, || {
        let text = fleet.hub.metrics()?;
        let failing = text
            .lines()
            .find(|l| l.starts_with("tether_hub_fleet_repos{state=\"failing\"}"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok());
        ensure!(failing == Some(1.0), "failing gauge {failing:?}");
        ensure!(metric_value(&text, "fleet_clusters").is_some());
        Ok(())
    })?;

    // West's operator stops: west shows disconnected, since about then; east stays.
    let stopped_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let started = Instant::now();
    fleet.operators[1].kill();
    let json = fleet.wait_json("west disconnected", |j| {
        ensure!(
            cluster(j, "west")?["connected"] == false,
            "west still connected"
        );
        ensure!(cluster(j, "east")?["connected"] == true);
        Ok(())
    })?;
    let since = cluster(&json, "west")?["since"]
        .as_u64()
        .context("no since")?;
    let slack = started.elapsed().as_millis() as u64 + 2_000;
    ensure!(
        since + 2_000 >= stopped_at && since <= stopped_at + slack,
        "west disconnected since {since}, stopped at {stopped_at}"
    );
    // What west last reported stays visible, as of when it went.
    ensure!(deployment(&json, "west")?["applied"] == v2.as_str());
    Ok(())
}

/// How long the page may take to follow a change.
const PAGE_WITHIN: Duration = Duration::from_secs(30);

/// How many elements match `css` now.
fn count(browser: &Browser, css: &str) -> Result<usize> {
    Ok(browser.find_all(css)?.len())
}

/// Waits until exactly `n` elements match `css`.
fn wait_count(browser: &Browser, css: &str, n: usize) -> Result<()> {
    wait_until_every(&format!("{n} of `{css}`"), PAGE_WITHIN, POLL, || {
        let found = count(browser, css)?;
        ensure!(found == n, "{found} match");
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_viewer_logs_in_watches_a_push_land_without_reload_filters_and_follows_a_link()
-> Result<()> {
    let fleet = Fleet::start("fleet-page", true)?;
    let v0 = fleet.head.clone();
    fleet.wait_json("both clusters current on the first commit", |j| {
        both(j, "current", &v0)
    })?;
    let browser = Browser::start(&artifacts_for("fleet-page"))?;
    let base = fleet.hub.https_url();

    // Without a session the page leads to the login form; a wrong token is refused there.
    browser.goto(&format!("{base}/fleet"))?;
    let token = browser.wait_for("input[name=token]", PAGE_WITHIN)?;
    ensure!(browser.current_url()?.ends_with("/fleet/login"));
    token.send_keys("not-a-viewer-token")?;
    browser.find("form.card button[type=submit]")?.click()?;
    browser.wait_for("p.error", PAGE_WITHIN)?;
    browser.screenshot("login")?;
    browser
        .find("input[name=token]")?
        .send_keys(&fleet.viewer)?;
    browser.find("form.card button[type=submit]")?.click()?;

    // Both clusters, connected; the session cookie is out of scripts' reach and same-site only.
    browser.wait_for(
        "tr.cluster[data-cluster=east][data-connected=true]",
        PAGE_WITHIN,
    )?;
    browser.wait_for(
        "tr.cluster[data-cluster=west][data-connected=true]",
        PAGE_WITHIN,
    )?;
    let cookie = browser
        .cookie("tether_fleet")?
        .context("no session cookie after the login")?;
    ensure!(
        cookie.http_only && cookie.secure && cookie.same_site.as_deref() == Some("Strict"),
        "cookie flags: {cookie:?}"
    );
    browser.wait_for("#live[data-state=live]", PAGE_WITHIN)?;
    // A mark that a reload would wipe.
    browser.execute("window.tetherMark = 'kept'; return true;", &[])?;

    // The hub hears of v1 before the git server has it: both rows turn behind, live.
    let v1 = fleet.commit("v1", None)?;
    fleet.webhook(&v0, &v1)?;
    wait_count(&browser, "tr.deployment[data-state=behind]", 2)?;
    browser.screenshot("behind")?;

    // The push lands: nothing needs attention any more, both count as current.
    fleet.push()?;
    fleet.webhook(&v0, &v1)?;
    wait_count(&browser, "tr.deployment", 0)?;
    browser.wait_until_text("tr.repo td.state-current", PAGE_WITHIN, |t| t.trim() == "2")?;
    let mark = browser.execute("return window.tetherMark || null;", &[])?;
    ensure!(
        mark == "kept",
        "the page reloaded to show the push (mark {mark})"
    );
    browser.screenshot("current")?;

    // Filter to the repository: every deployment of it is listed.
    let repo = browser.find("input[name=repo]")?;
    repo.clear()?;
    repo.send_keys("fleet")?;
    browser.find("#filters button[type=submit]")?.click()?;
    wait_count(&browser, "tr.deployment", 2)?;
    ensure!(browser.current_url()?.contains("repo=fleet"));

    // East's own link is shareable: it opens the page narrowed to it, its row marked.
    let link = browser
        .find("tr.deployment[data-cluster=east] a.self")?
        .attr("href")?
        .context("no link on east's row")?;
    browser
        .find("tr.deployment[data-cluster=east] a.self")?
        .click()?;
    browser.wait_for("tr.deployment.target[data-cluster=east]", PAGE_WITHIN)?;
    let url = browser.current_url()?;
    ensure!(url.ends_with(&link), "followed {link}, at {url}");
    wait_count(&browser, "tr.cluster", 1)?;
    browser.screenshot("followed")?;

    // The one error allowed is the refused login's own 401, which the browser logs as such.
    let errors = browser.console_errors()?;
    let (refused, others): (Vec<String>, Vec<String>) = errors
        .into_iter()
        .partition(|e| e.contains("/fleet/login") && e.contains("401"));
    ensure!(
        refused.len() == 1,
        "the refused login was not logged once: {refused:?}"
    );
    ensure!(others.is_empty(), "console errors: {others:#?}");
    Ok(())
}
