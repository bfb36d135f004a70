//! Forges match owner and repository names without regard to case, so a webhook may name a
//! repository in other letters than the `GitRepository`'s URL does. The push must still land at
//! once: the `GitRepository` has `interval: 1h`, so only a notice can explain the change in time.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{commit_config_map, git_repository, greeting_args, https_secret};
use tether_e2e::git_server::HttpsGitServer;
use tether_e2e::gitrepo::{get_field, install_crds, wait_ready};
use tether_e2e::hub::{Forge, Hub};
use tether_e2e::operator::Operator;

/// How long a pushed change may take through a notice; the interval (1 h) is far beyond it.
const LANDS_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_naming_the_repository_in_other_letter_case_applies_the_push_at_once()
-> Result<()> {
    let ns = TestNamespace::create("repo-case").await?;
    let kubectl = ns.kubectl();
    install_crds(kubectl)?;
    let server = HttpsGitServer::start()?;
    // The server's paths are case-sensitive: only the URL as written clones.
    let repo = server.create_repo("Ops-Config")?;
    commit_config_map(&repo, ns.name(), "settings", "v0")?;
    repo.push_to(&server.remote(&repo))?;
    let url = server.url("Ops-Config");
    let as_the_forge_says = url.to_lowercase();
    assert_ne!(url, as_the_forge_says);

    let hub = Hub::start()?;
    repo.install_post_receive_hook(&hub.post_receive_hook(Forge::Github, &[&as_the_forge_says])?)?;
    kubectl.apply(&https_secret(ns.name(), "auth", &server))?;
    kubectl.apply(&git_repository(
        ns.name(),
        "app",
        &url,
        "  path: deploy\n  interval: 1h\n  secretRef:\n    name: auth\n",
    ))?;
    let operator = Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[
            &format!("--hub-url={}", hub.ws_url()),
            &format!("--hub-token-file={}", hub.token_file().display()),
        ],
    )?;
    wait_ready(kubectl, ns.name(), "app", "60s", &operator)?;
    hub.wait_for_log(
        &["watch set updated", "repos=1"],
        1,
        Duration::from_secs(30),
    )?;

    let sha = commit_config_map(&repo, ns.name(), "settings", "v1")?;
    repo.push_to(&server.remote(&repo))?;
    kubectl
        .wait_for_output(
            &greeting_args(ns.name(), "settings"),
            "v1",
            LANDS_WITHIN,
            Duration::from_millis(100),
        )
        .with_context(|| {
            format!(
                "operator log:\n{}\nhub log:\n{}\nhook deliveries:\n{}",
                operator.log_tail(),
                hub.log_tail(),
                std::fs::read_to_string(hub.hook_log()).unwrap_or_default()
            )
        })?;
    let deliveries = std::fs::read_to_string(hub.hook_log())?;
    ensure!(
        deliveries.contains(&format!("refs/heads/main {sha} 202")),
        "the hook's delivery was not accepted: {deliveries}"
    );
    let notified = get_field(kubectl, ns.name(), "app", "{.status.lastNotifiedAt}")?;
    ensure!(!notified.is_empty(), "no status.lastNotifiedAt");
    // The hub heard the repository in the forge's letters.
    let forge_id = as_the_forge_says
        .trim_start_matches("https://")
        .trim_end_matches(".git");
    ensure!(
        hub.log().contains(forge_id),
        "the hub's log does not show the webhook's spelling:\n{}",
        hub.log_tail()
    );
    Ok(())
}
