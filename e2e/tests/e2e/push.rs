//! Push notices end to end: a real `git push` to the HTTPS test server, whose `post-receive` hook sends a
//! signed forge webhook to the real `tether-hub`, which tells the operator over the websocket the operator
//! opened. Every `GitRepository` here has `interval: 1h`, so only a notice can explain a change within
//! the test's deadline.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{
    commit_config_map, git_repository, greeting, greeting_args, https_secret, namespace, ssh_secret,
};
use tether_e2e::git_server::{HttpsGitServer, SshGitServer, Upstream};
use tether_e2e::gitrepo::{get_field, install_crds, wait_ready};
use tether_e2e::http::metric_value;
use tether_e2e::hub::{AgentSpec, Forge, Hub, HubOptions, hmac_sha256_hex};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::netns::IsolatedNetns;
use tether_e2e::operator::Operator;
use tether_e2e::wait::{wait_until, wait_until_every};

/// How long a pushed change may take to be applied through a notice. Generous for a loaded machine;
/// the interval (1 h) is far beyond it.
const LANDS_WITHIN: Duration = Duration::from_secs(30);

/// The pause between two polls through kubectl.
const POLL: Duration = Duration::from_millis(100);

/// A namespace, an HTTPS git server with one repository `app` (a ConfigMap `settings` under `deploy/`),
/// and a hub.
struct Scene {
    ns: TestNamespace,
    server: HttpsGitServer,
    repo: Upstream,
    hub: Hub,
}

impl Scene {
    fn start(prefix: &str, hub: HubOptions) -> Result<Self> {
        let ns = futures_block(TestNamespace::create(prefix))?;
        install_crds(ns.kubectl())?;
        let server = HttpsGitServer::start()?;
        let repo = server.create_repo("app")?;
        commit_config_map(&repo, ns.name(), "settings", "v0")?;
        repo.push_to(&server.remote(&repo))?;
        let hub = Hub::start_with(hub)?;
        Ok(Self {
            ns,
            server,
            repo,
            hub,
        })
    }

    fn kubectl(&self) -> &Kubectl {
        self.ns.kubectl()
    }

    /// The HTTPS credentials and CA as a Secret, and a `GitRepository` `name` on `url` with a 1 h interval.
    fn apply_git_repository(&self, name: &str, url: &str) -> Result<()> {
        let secret = https_secret(self.ns.name(), &format!("{name}-auth"), &self.server);
        self.kubectl().apply(&secret)?;
        self.kubectl().apply(&git_repository(
            self.ns.name(),
            name,
            url,
            &format!("  path: deploy\n  interval: 1h\n  secretRef:\n    name: {name}-auth\n"),
        ))?;
        Ok(())
    }

    /// A Secret `name` with the SSH server's client key and host key, for `secretRef`.
    fn apply_ssh_secret(&self, name: &str, server: &SshGitServer) -> Result<()> {
        self.kubectl()
            .apply(&ssh_secret(self.ns.name(), name, server)?)?;
        Ok(())
    }

    /// An operator for this namespace connected to the hub with `token_file`.
    fn operator(&self, token_file: &std::path::Path, extra: &[&str]) -> Result<Operator> {
        self.operator_in(token_file, extra, None)
    }

    /// [`Scene::operator`] inside a network namespace, when given.
    fn operator_in(
        &self,
        token_file: &std::path::Path,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Result<Operator> {
        let mut flags = vec![
            format!("--hub-url={}", self.hub.ws_url()),
            format!("--hub-token-file={}", token_file.display()),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        Operator::start_in(self.ns.kubeconfig(), self.ns.name(), &refs, netns)
    }

    /// Commits a new greeting and pushes it with the real `git push` over HTTPS (the hook runs).
    fn push_greeting(&self, greeting: &str) -> Result<String> {
        let sha = commit_config_map(&self.repo, self.ns.name(), "settings", greeting)?;
        self.repo.push_to(&self.server.remote(&self.repo))?;
        Ok(sha)
    }

    /// Waits until ConfigMap `name` greets with `want`, within `within`.
    fn wait_greeting(
        &self,
        name: &str,
        want: &str,
        within: Duration,
        operator: &Operator,
    ) -> Result<Duration> {
        let args = greeting_args(self.ns.name(), name);
        wait_output(self.kubectl(), &args, want, within, || {
            format!(
                "operator log:\n{}\nhub log:\n{}\nhook deliveries:\n{}",
                operator.log_tail(),
                self.hub.log_tail(),
                std::fs::read_to_string(self.hub.hook_log()).unwrap_or_default()
            )
        })
    }
}

/// Polls `kubectl <args>` until it prints `want`; returns how long that took, or fails with the last
/// output and `context()`.
fn wait_output(
    kubectl: &Kubectl,
    args: &[&str],
    want: &str,
    within: Duration,
    context: impl Fn() -> String,
) -> Result<Duration> {
    kubectl
        .wait_for_output(args, want, within, POLL)
        .with_context(context)
}

/// Runs a future to completion from synchronous code inside a multi-threaded test runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The operator's hub reconnect counter, read from its `/metrics`.
fn operator_reconnects(operator: &Operator) -> Result<f64> {
    metric_value(&operator.metrics()?, "hub_reconnects_total")
        .context("no hub_reconnects_total metric")
}

/// Waits until the hub has the agent's watch set holding `repos` repositories, `count` times in the
/// current log (once per connection).
fn wait_watching(hub: &Hub, repos: usize, count: usize) -> Result<()> {
    hub.wait_for_log(
        &["watch set updated", &format!("repos={repos}")],
        count,
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_webhook_from_a_post_receive_hook_applies_the_change_at_once() -> Result<()> {
    let scene = Scene::start("push-github", HubOptions::default())?;
    let https = scene.server.url("app");
    let ssh = format!("ssh://git@127.0.0.1:{}/app.git", scene.server.port() + 1);
    scene.repo.install_post_receive_hook(
        &scene
            .hub
            .post_receive_hook(Forge::Github, &[&https, &ssh])?,
    )?;
    scene.apply_git_repository("app", &https)?;
    let operator = scene.operator(&scene.hub.token_file(), &[])?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    scene.wait_greeting("settings", "v0", LANDS_WITHIN, &operator)?;
    wait_watching(&scene.hub, 1, 1)?;

    let sha = scene.push_greeting("v1")?;
    let took = scene.wait_greeting("settings", "v1", LANDS_WITHIN, &operator)?;
    eprintln!("github push → applied (polled through kubectl): {took:?}");
    assert_eq!(
        get_field(
            scene.kubectl(),
            scene.ns.name(),
            "app",
            "{.status.lastAppliedRevision}"
        )?,
        format!("main@sha1:{sha}")
    );
    let notified = get_field(
        scene.kubectl(),
        scene.ns.name(),
        "app",
        "{.status.lastNotifiedAt}",
    )?;
    assert!(!notified.is_empty(), "no status.lastNotifiedAt");
    let deliveries = std::fs::read_to_string(scene.hub.hook_log())?;
    assert!(
        deliveries.contains(&format!("refs/heads/main {sha} 202")),
        "the hook's delivery was not accepted: {deliveries}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_gitea_webhooks_reach_repositories_named_by_https_and_ssh_urls() -> Result<()> {
    let scene = Scene::start("push-forms", HubOptions::default())?;
    let ssh_server = SshGitServer::start()?;
    let https = scene.server.url("app");
    // The same bare repository, served over SSH by absolute path.
    let ssh = ssh_server.url_for_path(scene.repo.bare_path());
    // The https form a forge might print: user info, no `.git`.
    let https_other_form = https
        .replace("https://", "https://someone@")
        .trim_end_matches(".git")
        .to_string();

    // Over https, and a second GitRepository over ssh:// applying into a namespace of its own.
    scene.apply_git_repository("app", &https)?;
    let ssh_target = format!("{}-ssh", scene.ns.name());
    scene.kubectl().apply(&namespace(&ssh_target))?;
    scene.apply_ssh_secret("app-ssh", &ssh_server)?;
    scene.kubectl().apply(&git_repository(
        scene.ns.name(),
        "app-over-ssh",
        &ssh,
        &format!(
            "  path: deploy\n  interval: 1h\n  targetNamespace: {ssh_target}\n  secretRef:\n    name: app-ssh\n"
        ),
    ))?;
    let operator = scene.operator(&scene.hub.token_file(), &[])?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    wait_ready(
        scene.kubectl(),
        scene.ns.name(),
        "app-over-ssh",
        "60s",
        &operator,
    )?;
    wait_watching(&scene.hub, 2, 1)?;

    let notified = |name: &str| {
        get_field(
            scene.kubectl(),
            scene.ns.name(),
            name,
            "{.status.lastNotifiedAt}",
        )
    };
    let revision = |name: &str| {
        get_field(
            scene.kubectl(),
            scene.ns.name(),
            name,
            "{.status.lastAppliedRevision}",
        )
    };
    for (forge, greeting, urls) in [
        (Forge::Gitlab, "gitlab", [https.as_str(), ssh.as_str()]),
        (
            Forge::Gitea,
            "gitea",
            [https_other_form.as_str(), ssh.as_str()],
        ),
    ] {
        let before = (notified("app")?, notified("app-over-ssh")?);
        scene
            .repo
            .install_post_receive_hook(&scene.hub.post_receive_hook(forge, &urls)?)?;
        let sha = scene.push_greeting(greeting)?;
        scene.wait_greeting("settings", greeting, LANDS_WITHIN, &operator)?;
        for name in ["app", "app-over-ssh"] {
            wait_until_every(
                &format!("{name} applies {sha} after a {} webhook", forge.name()),
                LANDS_WITHIN,
                POLL,
                || {
                    let applied = revision(name)?;
                    ensure!(applied == format!("main@sha1:{sha}"), "at {applied:?}");
                    Ok(())
                },
            )
            .with_context(|| operator.log_tail())?;
        }
        let after = (notified("app")?, notified("app-over-ssh")?);
        assert_ne!(after.0, before.0, "app was not notified by {forge:?}");
        assert_ne!(
            after.1, before.1,
            "app-over-ssh was not notified by {forge:?}"
        );
    }
    scene
        .kubectl()
        .run(&["delete", "namespace", &ssh_target, "--wait=false"])?;
    Ok(())
}

/// Forges name a repository's SSH address in scp form (`git@host:owner/app.git`, which cannot carry a
/// port): a GitHub webhook saying so reaches a `GitRepository` written in scp form and one written as
/// `ssh://` with the default port spelled out. Neither names the https URL, so only the scp form can
/// have matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_scp_form_in_the_webhook_reaches_scp_and_ssh_urls_of_the_repository() -> Result<()> {
    let scene = Scene::start("push-scp", HubOptions::default())?;
    let ssh_server = SshGitServer::start_on_port_22()?;
    let bare = scene.repo.bare_path();
    let scp = ssh_server.scp_url_for_path(bare)?;
    let ssh = format!(
        "ssh://{}@{}:22{}",
        ssh_server.user(),
        ssh_server.ip(),
        bare.display()
    );
    let https = scene.server.url("app");
    scene.repo.install_post_receive_hook(
        &scene
            .hub
            .post_receive_hook(Forge::Github, &[&https, &scp])?,
    )?;
    scene.apply_ssh_secret("app-ssh", &ssh_server)?;
    let mut targets = Vec::new();
    for (name, url) in [("app-scp", &scp), ("app-ssh", &ssh)] {
        let target = format!("{}-{}", scene.ns.name(), &name[4..]);
        scene.kubectl().apply(&namespace(&target))?;
        scene.kubectl().apply(&git_repository(
            scene.ns.name(),
            name,
            url,
            &format!(
                "  path: deploy\n  interval: 1h\n  targetNamespace: {target}\n  secretRef:\n    name: app-ssh\n"
            ),
        ))?;
        targets.push(target);
    }
    let operator = scene.operator(&scene.hub.token_file(), &[])?;
    for name in ["app-scp", "app-ssh"] {
        wait_ready(scene.kubectl(), scene.ns.name(), name, "60s", &operator)?;
    }
    // Both URLs are one repository to the hub.
    wait_watching(&scene.hub, 1, 1)?;

    let sha = scene.push_greeting("over-scp")?;
    for name in ["app-scp", "app-ssh"] {
        wait_until_every(
            &format!("{name} applies {sha} after a webhook naming it in scp form"),
            LANDS_WITHIN,
            POLL,
            || {
                let applied = get_field(
                    scene.kubectl(),
                    scene.ns.name(),
                    name,
                    "{.status.lastAppliedRevision}",
                )?;
                ensure!(applied == format!("main@sha1:{sha}"), "at {applied:?}");
                Ok(())
            },
        )
        .with_context(|| operator.log_tail())?;
    }
    let deliveries = std::fs::read_to_string(scene.hub.hook_log())?;
    assert!(
        deliveries.contains(&format!("refs/heads/main {sha} 202")),
        "the hook's delivery was not accepted: {deliveries}"
    );
    for target in targets {
        scene
            .kubectl()
            .run(&["delete", "namespace", &target, "--wait=false"])?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_made_while_the_hub_is_down_is_applied_once_it_is_back() -> Result<()> {
    let mut scene = Scene::start("push-catchup", HubOptions::default())?;
    let https = scene.server.url("app");
    scene
        .repo
        .install_post_receive_hook(&scene.hub.post_receive_hook(Forge::Github, &[&https])?)?;
    scene.apply_git_repository("app", &https)?;
    let operator = scene.operator(&scene.hub.token_file(), &[])?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    wait_watching(&scene.hub, 1, 1)?;

    // The hub goes away; the push's webhook fails, as a forge's delivery to a down hub would.
    scene.hub.stop();
    let sha = scene.push_greeting("missed")?;
    let deliveries = std::fs::read_to_string(scene.hub.hook_log())?;
    assert!(
        deliveries.contains(&format!("{sha} 000")),
        "the webhook should have failed while the hub was down: {deliveries}"
    );
    // The forge redelivers once the hub is back (GitHub's "redeliver"). The operator is held frozen
    // meanwhile, so it cannot be connected when the webhook arrives, and the hub is restarted once
    // more before it thaws: the sha must come from the hub's store, through the catch-up on reconnect.
    tether_e2e::process::signal(operator.pid(), "STOP");
    let redelivered = redeliver_while_the_operator_is_away(&mut scene, &https, &sha);
    tether_e2e::process::signal(operator.pid(), "CONT");
    redelivered?;
    scene.wait_greeting("settings", "missed", LANDS_WITHIN, &operator)?;
    wait_watching(&scene.hub, 1, 1)?;

    // The hub restarted on the same data dir: a later push through the hook lands too.
    scene.push_greeting("after")?;
    scene.wait_greeting("settings", "after", LANDS_WITHIN, &operator)?;
    Ok(())
}

/// Starts the hub, posts a signed webhook for `sha` that no agent can hear (none is connected), and
/// restarts the hub on the same data dir.
fn redeliver_while_the_operator_is_away(scene: &mut Scene, https: &str, sha: &str) -> Result<()> {
    scene.hub.start_again()?;
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{sha}","repository":{{"clone_url":"{https}"}}}}"#
    );
    let secret = scene.hub.secret(Forge::Github)?;
    let status = scene.hub.post_webhook(
        "github",
        &[
            "X-GitHub-Event: push".to_string(),
            "X-GitHub-Delivery: redelivery-1".to_string(),
            format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_sha256_hex(&secret, &body)?
            ),
        ],
        body.as_bytes(),
    )?;
    if status != 202 {
        bail!(
            "the redelivery got {status}; hub log:\n{}",
            scene.hub.log_tail()
        );
    }
    let sent = metric_value(&scene.hub.metrics()?, "notices_sent_total").unwrap_or(0.0);
    if sent != 0.0 {
        bail!("the hub sent {sent} notice(s) while no agent could be connected");
    }
    scene.hub.stop();
    scene.hub.start_again()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_hub_is_detected_as_dead_and_the_operator_reconnects_when_it_thaws() -> Result<()>
{
    let scene = Scene::start("push-frozen", HubOptions::default())?;
    let https = scene.server.url("app");
    scene
        .repo
        .install_post_receive_hook(&scene.hub.post_receive_hook(Forge::Github, &[&https])?)?;
    scene.apply_git_repository("app", &https)?;
    let operator = scene.operator(
        &scene.hub.token_file(),
        &["--hub-keepalive=1s", "--hub-dead-after=3s"],
    )?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    wait_watching(&scene.hub, 1, 1)?;
    let before = operator_reconnects(&operator)?;

    scene.hub.freeze();
    // Silent for dead-after: the operator drops the connection and starts dialling again.
    let dead = wait_until("the operator declares the hub dead", LANDS_WITHIN, || {
        ensure!(operator.log().contains(r#"category="dead""#), "not yet");
        Ok(())
    });
    scene.hub.thaw();
    dead.with_context(|| operator.log_tail())?;

    // Thawed: a fresh session sends its watch set again, and a push lands through it.
    wait_watching(&scene.hub, 1, 2)?;
    assert!(operator_reconnects(&operator)? > before);
    scene.push_greeting("thawed")?;
    scene.wait_greeting("settings", "thawed", LANDS_WITHIN, &operator)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unknown_unauthorised_and_oversized_requests_are_refused_and_trigger_nothing()
-> Result<()> {
    let good = AgentSpec::new("e2e", &["**"]);
    let narrow = AgentSpec::new("narrow", &["elsewhere.example/**"]);
    let scene = Scene::start(
        "push-refused",
        HubOptions {
            agents: vec![good, narrow],
            max_body_bytes: 16 * 1024,
            ..HubOptions::default()
        },
    )?;
    let https = scene.server.url("app");
    scene.apply_git_repository("app", &https)?;
    let operator = scene.operator(&scene.hub.token_file(), &[])?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    wait_watching(&scene.hub, 1, 1)?;

    // Two more operators on the same repository, each in a namespace of its own: one with a token the
    // hub does not know, one whose agent may not hear about this repository.
    let strangers = [
        ("push-wrongtoken", scene.hub.wrong_token_file()?),
        ("push-narrow", scene.hub.token_file_of("narrow")),
    ];
    let mut others = Vec::new();
    for (prefix, token) in strangers {
        let ns = TestNamespace::create(prefix).await?;
        ns.kubectl()
            .apply(&https_secret(ns.name(), "app-auth", &scene.server))?;
        ns.kubectl().apply(&git_repository(
            ns.name(),
            "app",
            &https,
            &format!(
                "  path: deploy\n  interval: 1h\n  targetNamespace: {}\n  secretRef:\n    name: app-auth\n",
                ns.name()
            ),
        ))?;
        let op = Operator::start(
            ns.kubeconfig(),
            ns.name(),
            &[
                &format!("--hub-url={}", scene.hub.ws_url()),
                &format!("--hub-token-file={}", token.display()),
            ],
        )?;
        wait_ready(ns.kubectl(), ns.name(), "app", "60s", &op)?;
        others.push((ns, op));
    }
    let (wrong_ns, wrong_op) = &others[0];
    let (narrow_ns, narrow_op) = &others[1];
    wait_until("the wrong token is refused", LANDS_WITHIN, || {
        let log = wrong_op.log();
        ensure!(
            log.contains("refused the agent token (HTTP 401)"),
            "not yet"
        );
        Ok(())
    })
    .with_context(|| wrong_op.log_tail())?;
    wait_until(
        "the narrow agent is told the repository is not for it",
        LANDS_WITHIN,
        || {
            let log = narrow_op.log();
            ensure!(log.contains("the hub reported a problem"), "not yet");
            Ok(())
        },
    )
    .with_context(|| narrow_op.log_tail())?;
    let metrics = scene.hub.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("agent_refusals_total") && l.contains("unauthorized")),
        "no unauthorized refusal counted:\n{metrics}"
    );

    // A push nobody announces yet: the forged webhooks below must not make anyone apply it.
    let sha = scene.push_greeting("forged")?;
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{sha}","repository":{{"clone_url":"{https}"}}}}"#
    );
    let forged = scene.hub.post_webhook(
        "github",
        &[
            "X-GitHub-Event: push".to_string(),
            format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_sha256_hex("not the secret", &body)?
            ),
        ],
        body.as_bytes(),
    )?;
    assert_eq!(forged, 401, "forged signature");
    let unsigned = scene.hub.post_webhook(
        "gitlab",
        &["X-Gitlab-Event: Push Hook".to_string()],
        body.as_bytes(),
    )?;
    assert_eq!(unsigned, 401, "GitLab webhook without its token");
    let secret = scene.hub.secret(Forge::Github)?;
    let huge = format!("{body}{}", " ".repeat(32 * 1024));
    let oversized = scene.hub.post_webhook(
        "github",
        &[
            "X-GitHub-Event: push".to_string(),
            format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_sha256_hex(&secret, &huge)?
            ),
        ],
        huge.as_bytes(),
    )?;
    assert_eq!(oversized, 413, "oversized body");
    let metrics = scene.hub.metrics()?;
    assert_eq!(
        metric_value(&metrics, "notices_sent_total").unwrap_or(0.0),
        0.0,
        "a refused webhook sent a notice:\n{metrics}"
    );
    assert_eq!(
        get_field(
            scene.kubectl(),
            scene.ns.name(),
            "app",
            "{.status.lastNotifiedAt}"
        )?,
        "",
        "a refused webhook notified the operator"
    );

    // The hub keeps serving: a valid, signed webhook for that same push lands at once, for the good
    // agent only.
    let signed = scene.hub.post_webhook(
        "github",
        &[
            "X-GitHub-Event: push".to_string(),
            format!(
                "X-Hub-Signature-256: sha256={}",
                hmac_sha256_hex(&secret, &body)?
            ),
        ],
        body.as_bytes(),
    )?;
    assert_eq!(signed, 202, "hub log:\n{}", scene.hub.log_tail());
    scene.wait_greeting("settings", "forged", LANDS_WITHIN, &operator)?;
    for (ns, op) in [(wrong_ns, wrong_op), (narrow_ns, narrow_op)] {
        assert_eq!(
            get_field(ns.kubectl(), ns.name(), "app", "{.status.lastNotifiedAt}")?,
            "",
            "{} heard of the push:\n{}",
            ns.name(),
            op.log_tail()
        );
        assert_eq!(
            greeting(ns.kubectl(), ns.name(), "settings")?,
            "v0",
            "{} applied the push",
            ns.name()
        );
    }
    Ok(())
}

/// The operator in a network namespace whose firewall drops every new inbound connection: the API
/// server, the git server and the hub stay outside, and a push still lands at once, over the
/// connections the operator opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_lands_while_nothing_can_connect_into_the_operators_network() -> Result<()> {
    let scene = Scene::start("push-no-inbound", HubOptions::default())?;
    let mut netns = IsolatedNetns::create()?;
    let api_port = tether_e2e::cluster::shared().api_port();
    for port in [api_port, scene.server.port(), scene.hub.port()] {
        netns.relay_out(port)?;
    }
    let https = scene.server.url("app");
    scene
        .repo
        .install_post_receive_hook(&scene.hub.post_receive_hook(Forge::Github, &[&https])?)?;
    scene.apply_git_repository("app", &https)?;
    let operator = scene.operator_in(&scene.hub.token_file(), &[], Some(netns.name()))?;
    wait_ready(scene.kubectl(), scene.ns.name(), "app", "60s", &operator)?;
    wait_watching(&scene.hub, 1, 1)?;

    // Nothing gets in: the admin port answers inside the namespace, not from the host.
    let health = format!("http://127.0.0.1:{}/healthz", operator.admin_port());
    ensure_inside(&netns, &health)?;
    assert!(
        !netns.accepts_inbound(operator.admin_port()),
        "a connection from outside reached the operator's admin port at {}",
        netns.inner_addr()
    );

    scene.push_greeting("v1")?;
    scene.wait_greeting("settings", "v1", LANDS_WITHIN, &operator)?;
    Ok(())
}

/// Fails unless `curl url` succeeds from inside the namespace (within a deadline).
fn ensure_inside(netns: &IsolatedNetns, url: &str) -> Result<()> {
    wait_until_every(
        "the admin server answers inside the namespace",
        Duration::from_secs(20),
        POLL,
        || {
            ensure!(
                netns.run_inside("curl", &["-sf", "-m", "2", url])?,
                "not yet"
            );
            Ok(())
        },
    )
}
