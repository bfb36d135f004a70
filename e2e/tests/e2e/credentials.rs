//! Scenario 4: credentials from a Secret, over HTTPS (basic auth, a private CA) and SSH (a key and
//! known_hosts). The right ones work; wrong ones fail with a clear reason; the secret's values show
//! up in no status, Event or log line.

use anyhow::{Context as _, Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, namespace};
use tether_e2e::git_server::{HttpsGitServer, HttpsOptions, SshGitServer, Upstream};
use tether_e2e::gitrepo::{install_crds, ready_condition, wait_applied, wait_failed, wait_ready};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::proxy::HttpProxy;
use tether_e2e::tool;

/// `kubectl create secret generic <name>` with literal values.
fn create_secret(kubectl: &Kubectl, ns: &str, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        name.into(),
        "-n".into(),
        ns.into(),
    ];
    args.extend(data.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl.run(&args)?;
    Ok(())
}

/// Fails if any of `secrets` appears in the namespace's `GitRepository` objects, its Events, or
/// the operator's log.
fn assert_nowhere(
    kubectl: &Kubectl,
    ns: &str,
    operator: &Operator,
    secrets: &[&str],
) -> Result<()> {
    let places = [
        (
            "GitRepository objects",
            kubectl.run(&["get", "tgr", "-n", ns, "-o", "yaml"])?,
        ),
        (
            "Events",
            kubectl.run(&["get", "events", "-n", ns, "-o", "yaml"])?,
        ),
        ("operator log", operator.log()),
    ];
    ensure!(
        places[2].1.contains("reconcile failed"),
        "the operator logged no failure, so its log proves nothing"
    );
    for (place, text) in &places {
        for secret in secrets {
            ensure!(
                !text.contains(secret),
                "a secret value appears in the {place}:\n{text}"
            );
        }
    }
    Ok(())
}

/// An HTTPS git server with a repository `private` holding `files` in one pushed commit, and the
/// Secret `git-https` (username, password, the server's CA) that reads it. Returns the server, the
/// repository and the commit.
fn private_https_repo(
    kubectl: &Kubectl,
    ns: &str,
    files: &[(&str, String)],
) -> Result<(HttpsGitServer, Upstream, String)> {
    private_repo_on(HttpsOptions::default(), kubectl, ns, files)
}

/// [`private_https_repo`] on a server started with `options`.
fn private_repo_on(
    options: HttpsOptions,
    kubectl: &Kubectl,
    ns: &str,
    files: &[(&str, String)],
) -> Result<(HttpsGitServer, Upstream, String)> {
    let server = HttpsGitServer::start_with(options)?;
    let repo = server.create_repo("private")?;
    for (path, contents) in files {
        repo.write(path, contents)?;
    }
    let commit = repo.commit("first")?;
    repo.push_to(&server.remote(&repo))?;
    create_secret(
        kubectl,
        ns,
        "git-https",
        &[
            ("username", server.username()),
            ("password", server.password()),
            ("caFile", server.ca_pem()),
        ],
    )?;
    Ok((server, repo, commit))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_basic_auth_and_a_private_ca_and_a_wrong_password() -> Result<()> {
    let ns = TestNamespace::create("creds-https").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let files = [("deploy/config.yaml", config_map(n, "settings", "one"))];
    let (server, repo, _) = private_https_repo(kubectl, n, &files)?;
    let ca = server.ca_pem().to_string();
    let wrong_password = format!("not-{}-at-all", server.password());
    create_secret(
        kubectl,
        n,
        "git-https-wrong",
        &[
            ("username", server.username()),
            ("password", &wrong_password),
            ("caFile", &ca),
        ],
    )?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let url = server.url("private");
    kubectl.apply(&git_repository(
        n,
        "right",
        &url,
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-https}\n",
    ))?;
    wait_ready(kubectl, n, "right", "90s", &operator)?;

    // A push through the server lands.
    repo.write("deploy/config.yaml", &config_map(n, "settings", "two"))?;
    let second = repo.commit("second")?;
    repo.push_to(&server.remote(&repo))?;
    wait_applied(
        kubectl,
        n,
        "right",
        &format!("main@sha1:{second}"),
        &operator,
    )?;

    kubectl.apply(&git_repository(
        n,
        "wrong",
        &url,
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-https-wrong}\n",
    ))?;
    // Resolving fails, so no revision is ever attempted.
    let (_, reason, message) = wait_failed(kubectl, n, "wrong", "", &operator)?;
    ensure!(
        reason == "AuthenticationFailed",
        "reason {reason:?}, message {message:?}"
    );
    ensure!(
        message.contains("authentication") && message.contains("127.0.0.1"),
        "message does not say what failed where: {message}"
    );
    // The right one is unaffected.
    ensure!(
        ready_condition(kubectl, n, "right")?.0 == "True",
        "the right credentials stopped working"
    );
    assert_nowhere(kubectl, n, &operator, &[server.password(), &wrong_password])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_with_a_key_and_known_hosts_and_a_wrong_host_key() -> Result<()> {
    let ns = TestNamespace::create("creds-ssh").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let server = SshGitServer::start()?;
    let repo = Upstream::new("over-ssh")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "one"))?;
    repo.commit("first")?;
    repo.push_to(&server.remote(&repo))?;

    let key = server.client_key_pem()?;
    create_secret(
        kubectl,
        n,
        "git-ssh",
        &[("identity", &key), ("known_hosts", server.known_hosts())],
    )?;
    create_secret(
        kubectl,
        n,
        "git-ssh-impostor",
        &[
            ("identity", &key),
            ("known_hosts", server.wrong_known_hosts()),
        ],
    )?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let url = server.url(&repo);
    kubectl.apply(&git_repository(
        n,
        "right",
        &url,
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-ssh}\n",
    ))?;
    wait_ready(kubectl, n, "right", "90s", &operator)?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "two"))?;
    let second = repo.commit("second")?;
    repo.push_to(&server.remote(&repo))?;
    wait_applied(
        kubectl,
        n,
        "right",
        &format!("main@sha1:{second}"),
        &operator,
    )?;

    // The same host key as a hashed entry, as `ssh-keyscan -H` and `HashKnownHosts yes` write them.
    let hashed = hashed_known_hosts(server.known_hosts())?;
    ensure!(hashed.starts_with("|1|"), "not hashed: {hashed}");
    create_secret(
        kubectl,
        n,
        "git-ssh-hashed",
        &[("identity", &key), ("known_hosts", &hashed)],
    )?;
    let hashed_target = format!("{n}-hashed");
    kubectl.apply(&namespace(&hashed_target))?;
    kubectl.apply(&git_repository(
        n,
        "hashed",
        &url,
        &format!(
            "  path: deploy\n  interval: 2s\n  targetNamespace: {hashed_target}\n  secretRef: {{name: git-ssh-hashed}}\n"
        ),
    ))?;
    wait_ready(kubectl, n, "hashed", "90s", &operator)?;
    kubectl.run(&["delete", "namespace", &hashed_target, "--wait=false"])?;

    kubectl.apply(&git_repository(
        n,
        "impostor",
        &url,
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-ssh-impostor}\n",
    ))?;
    let (_, reason, message) = wait_failed(kubectl, n, "impostor", "", &operator)?;
    ensure!(
        reason == "AuthenticationFailed",
        "reason {reason:?}, message {message:?}"
    );
    ensure!(
        message.contains("host key") && message.contains("known_hosts"),
        "message does not say the host key is wrong: {message}"
    );
    // The private key's body is a secret too.
    let key_body: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    assert_nowhere(kubectl, n, &operator, &key_body)?;
    Ok(())
}

/// `known_hosts` text with every host name hashed, by OpenSSH's own `ssh-keygen -H`.
fn hashed_known_hosts(plain: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("known_hosts");
    std::fs::write(&file, format!("{plain}\n"))?;
    let path = file.to_str().context("a temporary path is not UTF-8")?;
    tool::run("ssh-keygen", &["-H", "-f", path], None)?;
    Ok(std::fs::read_to_string(&file)?)
}

/// Git over HTTPS goes through the proxy the operator's environment names (`HTTPS_PROXY`, a real
/// tinyproxy here that asks for a user name and password, given in the URL), and straight to the server when `NO_PROXY` lists it (by a CIDR block, which
/// libgit2's own reading of `NO_PROXY` does not know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_over_https_goes_through_the_proxy_the_environment_names() -> Result<()> {
    let ns = TestNamespace::create("creds-proxy").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let server = HttpsGitServer::start()?;
    let repo = server.create_repo("proxied")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "one"))?;
    repo.commit("first")?;
    repo.push_to(&server.remote(&repo))?;
    create_secret(
        kubectl,
        n,
        "git-auth",
        &[
            ("username", server.username()),
            ("password", server.password()),
            ("caFile", server.ca_pem()),
        ],
    )?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &server.url("proxied"),
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-auth}\n",
    ))?;
    let proxy_password = "proxy-secret-4d1a";
    let proxy = HttpProxy::start_with_basic_auth("tether", proxy_password)?;
    let target = format!("127.0.0.1:{}", server.port());

    let through = Operator::start_with_env(
        ns.kubeconfig(),
        n,
        &[],
        &[("HTTPS_PROXY", &proxy.url()), ("NO_PROXY", "")],
    )?;
    wait_ready(kubectl, n, "app", "90s", &through)?;
    // One operation resolves and fetches over one connection: one tunnel at least.
    ensure!(
        proxy.tunnels_to(&target) >= 1,
        "git did not go through the proxy; its log:\n{}",
        proxy.log_tail()
    );
    // The proxy's password came from HTTPS_PROXY and goes nowhere else, not even into the error of a
    // tunnel the proxy could not open (to a port where nothing listens).
    kubectl.apply(&git_repository(
        n,
        "nowhere",
        &format!(
            "https://127.0.0.1:{}/nothing.git",
            tether_e2e::process::free_port()?
        ),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    let (_, reason, message) = wait_failed(kubectl, n, "nowhere", "", &through)?;
    ensure!(reason == "GitOperationFailed", "{reason}: {message}");
    assert_nowhere(kubectl, n, &through, &[proxy_password])?;
    kubectl.run(&["delete", "tgr", "nowhere", "-n", n])?;
    drop(through);

    // The server in NO_PROXY (as a CIDR block): a new commit is fetched without the proxy.
    let before = proxy.tunnels_to(&target);
    let direct = Operator::start_with_env(
        ns.kubeconfig(),
        n,
        &[],
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "10.0.0.0/8,127.0.0.0/8"),
        ],
    )?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "two"))?;
    let second = repo.commit("second")?;
    repo.push_to(&server.remote(&repo))?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{second}"), &direct)?;
    ensure!(
        proxy.tunnels_to(&target) == before,
        "with 127.0.0.0/8 in NO_PROXY the operator still used the proxy:\n{}",
        proxy.log_tail()
    );
    Ok(())
}

/// Mirrors are shared by URL, so a `GitRepository` without credentials for a private repository
/// must not be served from the mirror another one filled, not even for a commit pinned by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_commit_of_a_private_repository_needs_credentials_of_its_own() -> Result<()> {
    let ns = TestNamespace::create("creds-pinned").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let files = [
        ("deploy/config.yaml", config_map(n, "settings", "one")),
        ("secret/stolen.yaml", config_map(n, "stolen", "private")),
    ];
    let (server, _repo, commit) = private_https_repo(kubectl, n, &files)?;
    // The CA is no secret: it lets the thief reach the server, not read from it.
    create_secret(kubectl, n, "ca-only", &[("caFile", server.ca_pem())])?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let url = server.url("private");
    kubectl.apply(&git_repository(
        n,
        "owner",
        &url,
        "  path: deploy\n  interval: 2s\n  secretRef: {name: git-https}\n",
    ))?;
    wait_applied(
        kubectl,
        n,
        "owner",
        &format!("main@sha1:{commit}"),
        &operator,
    )?;

    // The mirror now holds the commit; a GitRepository without credentials pins it.
    kubectl.apply(&git_repository(
        n,
        "thief",
        &url,
        &format!("  path: secret\n  ref: {{commit: {commit}}}\n  secretRef: {{name: ca-only}}\n"),
    ))?;
    let (_, reason, message) = wait_failed(kubectl, n, "thief", "", &operator)?;
    ensure!(
        reason == "AuthenticationFailed",
        "reason {reason:?}, message {message:?}"
    );
    ensure!(
        !kubectl
            .run(&["get", "configmap", "-n", n, "-o", "name"])?
            .contains("stolen"),
        "the private repository's manifests were applied for a GitRepository without credentials"
    );
    Ok(())
}

/// A password bound for a plain `http://` URL is never sent: the GitRepository fails as an invalid
/// spec naming the way out, and the git server sees no request at all. An operator started with
/// `--allow-http-credentials` sends it and syncs the same object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_over_plain_http_only_when_the_operator_allows_it() -> Result<()> {
    let ns = TestNamespace::create("creds-http").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let files = [("deploy/config.yaml", config_map(n, "settings", "clear"))];
    let options = HttpsOptions {
        plain_http: true,
        ..HttpsOptions::default()
    };
    let (server, _repo, commit) = private_repo_on(options, kubectl, n, &files)?;
    let url = server
        .http_url("private")
        .context("the server has a plain-http port")?;
    let before = server.requests().len();

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "clear",
        &url,
        "  path: deploy\n  secretRef: {name: git-https}\n",
    ))?;
    let (_, reason, message) = wait_failed(kubectl, n, "clear", "", &operator)?;
    ensure!(
        reason == "InvalidSpec" && message.contains("--allow-http-credentials"),
        "reason {reason:?}, message {message:?}"
    );
    let sent = server.requests();
    ensure!(
        sent.len() == before,
        "the git server was asked while the credentials were refused:\n{}",
        sent[before..].join("\n")
    );
    drop(operator);

    let operator = Operator::start(ns.kubeconfig(), n, &["--allow-http-credentials"])?;
    wait_applied(
        kubectl,
        n,
        "clear",
        &format!("main@sha1:{commit}"),
        &operator,
    )?;
    ensure!(
        server.requests()[before..]
            .iter()
            .any(|l| l.ends_with("auth=yes")),
        "the allowed fetch carried no credentials:\n{}",
        server.access_log_tail()
    );
    Ok(())
}
