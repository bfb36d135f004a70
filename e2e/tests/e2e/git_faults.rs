//! Git work that goes wrong half-way: an operator killed mid-fetch restarts on the same cache and
//! repairs what the kill left; a remote that never answers neither starves other repositories nor
//! piles up threads; a redirect to another host never carries the credentials there.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, https_secret, indent};
use tether_e2e::git_server::{HttpsGitServer, HttpsOptions, Upstream};
use tether_e2e::gitrepo::{install_crds, ready_condition, wait_condition, wait_ready};
use tether_e2e::operator::Operator;
use tether_e2e::wait::wait_until;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// What a killed git process leaves behind: lock files and packs still being received.
fn leftovers(cache: &Path) -> Vec<PathBuf> {
    files_under(cache)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".lock") || name.starts_with("pack_git2_")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_fetch_restarts_on_its_cache_and_becomes_ready() -> Result<()> {
    let ns = TestNamespace::create("killed-fetch").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    // 200 KB/s: the 2 MB of random bytes below take about ten seconds to fetch.
    let server = HttpsGitServer::start_with(HttpsOptions {
        rate_limit: Some(200_000),
        ..HttpsOptions::default()
    })?;
    let repo = server.create_repo("large")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "large"))?;
    let mut noise = Vec::new();
    std::fs::File::open("/dev/urandom")?
        .take(2_000_000)
        .read_to_end(&mut noise)?;
    std::fs::write(repo.work_path().join("noise.bin"), noise)?;
    repo.commit("a large commit")?;
    repo.push_to(&server.remote(&repo))?;
    kubectl.apply(&https_secret(n, "git", &server))?;

    let mut operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &server.url(repo.name()),
        "  path: deploy\n  timeout: 5m\n  secretRef:\n    name: git\n",
    ))?;
    let cache = operator.cache_dir();
    wait_until(
        "a pack being received into the mirror",
        Duration::from_secs(60),
        || {
            let receiving = leftovers(&cache)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("pack_git2_"))
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
            if receiving {
                Ok(())
            } else {
                bail!(
                    "no pack_git2_* file with data yet:\n{}",
                    operator.log_tail()
                )
            }
        },
    )?;
    operator.kill();
    let left = leftovers(&cache);
    ensure!(!left.is_empty(), "the kill left nothing to repair");

    operator.restart()?;
    wait_ready(kubectl, n, "app", "120s", &operator)
        .with_context(|| format!("the kill left {left:?}"))?;
    let still = leftovers(&cache);
    ensure!(
        still.is_empty(),
        "files the killed fetch left are still in the mirror: {still:?}"
    );
    Ok(())
}

/// A TCP server that accepts connections, reads what comes and answers nothing; counts the
/// connections, and the most it held open at once.
struct SilentServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn silent_server() -> Result<SilentServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let (count, most) = (Arc::clone(&accepted), Arc::clone(&most_open));
    let task = tokio::spawn(async move {
        let open = Arc::new(AtomicUsize::new(0));
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(SilentServer {
        port,
        accepted,
        most_open,
        task,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_remote_neither_starves_other_repositories_nor_piles_up_connections() -> Result<()>
{
    let ns = TestNamespace::create("silent-remote").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let silent = silent_server().await?;
    let repo = Upstream::new("healthy")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "healthy"))?;
    repo.commit("healthy")?;
    repo.push()?;

    // One git slot: the silent remote's operation must give it back.
    let operator = Operator::start(ns.kubeconfig(), n, &["--max-concurrent-git=1"])?;
    kubectl.apply(&git_repository(
        n,
        "silent",
        &format!("http://127.0.0.1:{}/r.git", silent.port),
        "  timeout: 2s\n",
    ))?;
    wait_until(
        "the silent remote's first connection",
        Duration::from_secs(30),
        || {
            ensure!(
                silent.accepted.load(Ordering::SeqCst) >= 1,
                "no connection yet"
            );
            Ok(())
        },
    )?;
    kubectl.apply(&git_repository(
        n,
        "healthy",
        &repo.file_url(),
        "  path: deploy\n",
    ))?;
    wait_ready(kubectl, n, "healthy", "60s", &operator)?;

    // The operation ends at its timeout (or, should it outlive it, its retries find it still
    // running and start no other): retries never hold two connections at once.
    wait_until(
        "a retry of the silent remote",
        Duration::from_secs(60),
        || {
            let (_, _, message) = ready_condition(kubectl, n, "silent")?;
            ensure!(
                message.contains("timed out") || message.contains("has not ended yet"),
                "Ready says {message:?}"
            );
            ensure!(
                silent.accepted.load(Ordering::SeqCst) >= 2,
                "no retry connected yet"
            );
            Ok(())
        },
    )?;
    let most = silent.most_open.load(Ordering::SeqCst);
    silent.task.abort();
    ensure!(
        most == 1,
        "the silent remote held {most} connections at once: retries piled up"
    );
    Ok(())
}

/// libgit2's socket timeout (`--git-socket-timeout`) ends the operation a silent remote holds: the
/// operator closes the connection the remote never answers, and the next retry connects anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_remote_is_dropped_after_the_git_socket_timeout() -> Result<()> {
    let ns = TestNamespace::create("silent-timeout").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
    // Reads what the operator sends, answers nothing, and counts the connections the operator ends.
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });

    let operator = Operator::start(ns.kubeconfig(), n, &["--git-socket-timeout=3s"])?;
    kubectl.apply(&git_repository(
        n,
        "silent",
        &format!("http://127.0.0.1:{port}/r.git"),
        "  timeout: 2s\n",
    ))?;
    wait_until(
        "the operator closing the silent connection, and connecting again",
        Duration::from_secs(60),
        || {
            let (opened, ended) = (
                accepted.load(Ordering::SeqCst),
                closed.load(Ordering::SeqCst),
            );
            ensure!(
                ended >= 1 && opened >= 2,
                "{opened} connection(s), {ended} closed"
            );
            Ok(())
        },
    )
    .with_context(|| operator.log_tail())?;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_never_carries_the_credentials() -> Result<()> {
    let ns = TestNamespace::create("redirect").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let server = HttpsGitServer::start_with(HttpsOptions {
        redirect: true,
        ..HttpsOptions::default()
    })?;
    let repo = server.create_repo("moved")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "moved"))?;
    repo.commit("moved")?;
    repo.push_to(&server.remote(&repo))?;
    let url = server
        .redirecting_url(repo.name())
        .context("the server has a redirecting port")?;
    let token = tether_e2e::fixtures::unguessable("token");
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bearer\n  namespace: {n}\nstringData:\n  \
         bearerToken: {token}\n  caFile: |\n{ca}",
        ca = indent(server.ca_pem(), 4),
    ))?;
    kubectl.apply(&https_secret(n, "basic", &server))?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    for (name, secret) in [("with-token", "bearer"), ("with-password", "basic")] {
        kubectl.apply(&git_repository(
            n,
            name,
            &url,
            &format!("  path: deploy\n  timeout: 10s\n  secretRef:\n    name: {secret}\n"),
        ))?;
        wait_condition(kubectl, n, name, "condition=Ready=False", "60s", &operator)?;
        let (_, reason, message) = ready_condition(kubectl, n, name)?;
        ensure!(
            reason == "GitOperationFailed" || reason == "AuthenticationFailed",
            "{name}: reason {reason:?}: {message}"
        );
        ensure!(
            !message.contains(&token),
            "{name}: the token is in the status"
        );
    }
    let leaked: Vec<String> = server
        .requests_to_localhost()
        .into_iter()
        .filter(|l| l.ends_with("auth=yes"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "the redirect's target got credentials:\n{}",
        leaked.join("\n")
    );
    ensure!(
        !operator.log().contains(&token),
        "the token is in the operator's log"
    );
    Ok(())
}
