//! The test git servers themselves, proved with the real `git` CLI and no Kubernetes: HTTPS with basic
//! auth and a test CA, pushes and hooks through it, SSH with a key and a checked host key, `file://`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tether_e2e::git_server::{GitRemote, HttpsGitServer, HttpsOptions, SshGitServer, Upstream};
use tether_e2e::wait::wait_until;

/// A repository with one commit on `main`, a lightweight tag and an annotated tag, pushed to its bare repo.
fn seeded(upstream: &Upstream) -> Result<String> {
    upstream.write("deploy/configmap.yaml", "kind: ConfigMap\n")?;
    upstream.write("README.md", "hello\n")?;
    let head = upstream.commit("first")?;
    upstream.tag("v1.0.0")?;
    upstream.annotated_tag("v1.0.1", "release 1.0.1")?;
    upstream.push()?;
    Ok(head)
}

#[test]
fn upstream_commits_tags_and_deletes_with_the_real_git_cli() -> Result<()> {
    let upstream = Upstream::new("fixture")?;
    let first = seeded(&upstream)?;
    let remote = upstream.file_remote();
    assert!(remote.url().starts_with("file:///"), "{}", remote.url());
    assert_eq!(remote.resolve("refs/heads/main")?, Some(first.clone()));
    assert_eq!(remote.resolve("refs/tags/v1.0.0")?, Some(first.clone()));
    // An annotated tag is its own object; ls-remote shows the peeled commit beside it.
    let annotated = upstream.rev_parse("refs/tags/v1.0.1")?;
    assert_ne!(annotated, first);
    assert_eq!(remote.resolve("refs/tags/v1.0.1")?, Some(annotated));
    assert_eq!(remote.resolve("refs/tags/v1.0.1^{}")?, Some(first.clone()));

    upstream.remove("README.md")?;
    let second = upstream.commit("remove the readme")?;
    upstream.push()?;
    assert_ne!(second, first);
    assert_eq!(remote.resolve("refs/heads/main")?, Some(second.clone()));
    let files = upstream.git(&["ls-tree", "-r", "--name-only", &second])?;
    assert_eq!(files, "deploy/configmap.yaml");
    let author = upstream.git(&["log", "-1", "--format=%an <%ae> / %cn <%ce>"])?;
    assert_eq!(
        author,
        "Tether Tests <tests@tether.invalid> / Tether Tests <tests@tether.invalid>"
    );
    Ok(())
}

#[test]
fn https_with_the_right_password_clones_and_lists_refs() -> Result<()> {
    let server = HttpsGitServer::start()?;
    let upstream = server.create_repo("app")?;
    let head = seeded(&upstream)?;

    let remote = server.remote(&upstream);
    assert_eq!(remote.url(), server.url("app"));
    assert!(
        remote
            .url()
            .starts_with(&format!("https://127.0.0.1:{}/", server.port()))
    );
    assert_eq!(remote.resolve("refs/heads/main")?, Some(head.clone()));

    let dest = tempfile::tempdir()?;
    let clone = dest.path().join("app");
    remote.clone_into(&clone)?;
    assert_eq!(
        std::fs::read_to_string(clone.join("deploy/configmap.yaml"))?,
        "kind: ConfigMap\n"
    );
    assert!(server.ca_pem().contains("BEGIN CERTIFICATE"));
    Ok(())
}

#[test]
fn https_refuses_a_wrong_password_no_credentials_and_an_untrusted_certificate() -> Result<()> {
    let server = HttpsGitServer::start()?;
    let upstream = server.create_repo("app")?;
    seeded(&upstream)?;

    let wrong = server.remote_with(&upstream, server.username(), "not-the-password");
    let err = wrong
        .ls_remote()
        .err()
        .context("a wrong password was accepted")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("401") || text.contains("Authentication failed") || text.contains("Username"),
        "unexpected error for a wrong password: {text}"
    );
    ensure!(
        server.access_log_tail().contains("\" 401 "),
        "no 401 in the access log:\n{}",
        server.access_log_tail()
    );
    ensure!(
        !text.contains("not-the-password"),
        "the password leaked into: {text}"
    );

    let anonymous = server.anonymous_remote(&upstream);
    ensure!(
        anonymous.ls_remote().is_err(),
        "a request without credentials was accepted"
    );

    // The right credentials, but the test CA not trusted: TLS verification must fail.
    let untrusted = GitRemote::new(server.url("app"))
        .with_env("GIT_SSL_CAINFO", "/dev/null")
        .with_env("GIT_SSL_CAPATH", "/nonexistent");
    let err = untrusted
        .ls_remote()
        .err()
        .context("a certificate from an untrusted CA was accepted")?;
    ensure!(
        format!("{err:#}").contains("certificate") || format!("{err:#}").contains("SSL"),
        "unexpected error for an untrusted certificate: {err:#}"
    );
    Ok(())
}

#[test]
fn push_over_https_lands_and_runs_the_post_receive_hook() -> Result<()> {
    let server = HttpsGitServer::start_with(HttpsOptions {
        plain_http: true,
        ..HttpsOptions::default()
    })?;
    let upstream = server.create_repo("hooked")?;
    let marker = tempfile::tempdir()?;
    let seen = marker.path().join("pushed");
    upstream.install_post_receive_hook(&format!(
        "#!/bin/sh\n# stdin: old new ref, one line per updated ref\n{{ echo \"user=$REMOTE_USER\"; cat; }} >> '{}'\n",
        seen.display()
    ))?;

    upstream.write("deploy/app.yaml", "kind: Namespace\n")?;
    let head = upstream.commit("over https")?;
    let remote = server.remote(&upstream);
    upstream.push_to(&remote)?;

    let bare_head = GitRemote::new(upstream.file_url()).resolve("refs/heads/main")?;
    assert_eq!(bare_head, Some(head.clone()));
    let hook_saw = wait_until("the post-receive hook", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&seen)?;
        ensure!(text.contains("refs/heads/main"), "not yet: {text:?}");
        Ok(text)
    })?;
    assert!(
        hook_saw.contains(&head),
        "the hook saw {hook_saw:?}, not {head}"
    );
    // It ran behind the web server, as the authenticated user.
    assert!(
        hook_saw.contains(&format!("user={}", server.username())),
        "the hook saw {hook_saw:?}"
    );

    // A moved tag and a second commit go through too, and the server logged the authenticated pushes.
    upstream.tag("v1")?;
    let second = upstream.commit_file("deploy/app.yaml", "kind: Namespace # 2\n", "second")?;
    upstream.push_to(&remote)?;
    assert_eq!(remote.resolve("refs/heads/main")?, Some(second.clone()));
    assert_eq!(remote.resolve("refs/tags/v1")?, Some(head));
    upstream.tag("v1")?;
    upstream.push_to(&remote)?;
    assert_eq!(remote.resolve("refs/tags/v1")?, Some(second));
    assert!(
        server.access_log_tail().contains(server.username()),
        "access log: {}",
        server.access_log_tail()
    );

    // The optional plain-http listener serves the same repositories behind the same auth.
    let plain = server
        .http_remote(&upstream)
        .context("plain http was asked for")?;
    assert!(
        plain.url().starts_with("http://127.0.0.1:"),
        "{}",
        plain.url()
    );
    assert_eq!(
        plain.resolve("refs/heads/main")?,
        remote.resolve("refs/heads/main")?
    );
    ensure!(
        GitRemote::new(server.http_url("hooked").context("http url")?)
            .ls_remote()
            .is_err()
    );
    Ok(())
}

#[test]
fn ssh_with_the_key_and_known_host_lists_refs_and_pushes() -> Result<()> {
    let server = SshGitServer::start()?;
    let upstream = Upstream::new("over-ssh")?;
    let head = seeded(&upstream)?;

    let remote = server.remote(&upstream);
    assert_eq!(
        remote.url(),
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            server.user(),
            server.port(),
            upstream.bare_path().display()
        )
    );
    assert_eq!(remote.resolve("refs/heads/main")?, Some(head));

    let second = upstream.commit_file("deploy/more.yaml", "kind: Service\n", "over ssh")?;
    upstream.push_to(&remote)?;
    assert_eq!(remote.resolve("refs/heads/main")?, Some(second));

    let known = server.known_hosts();
    assert!(
        known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", server.port())),
        "{known}"
    );
    let key = server.client_key_pem()?;
    assert!(
        key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{key}"
    );
    // The same known_hosts line, given as text, works like the server's own file.
    let from_text = server.remote_with_known_hosts(&upstream, known)?;
    from_text.ls_remote()?;
    Ok(())
}

#[test]
fn ssh_refuses_a_wrong_host_key_an_unknown_host_and_a_wrong_client_key() -> Result<()> {
    let server = SshGitServer::start()?;
    let upstream = Upstream::new("guarded")?;
    seeded(&upstream)?;

    let impostor = server.remote_with_known_hosts(&upstream, server.wrong_known_hosts())?;
    let err = impostor
        .ls_remote()
        .err()
        .context("a wrong host key was accepted")?;
    ensure!(
        format!("{err:#}").contains("HOST IDENTIFICATION HAS CHANGED")
            || format!("{err:#}").contains("Host key verification failed"),
        "unexpected error for a wrong host key: {err:#}"
    );

    let unknown = server.remote_with_known_hosts(&upstream, "")?;
    let err = unknown
        .ls_remote()
        .err()
        .context("an unknown host was accepted")?;
    ensure!(
        format!("{err:#}").contains("Host key verification failed"),
        "unexpected error for an unknown host: {err:#}"
    );

    let stranger = server.unauthorized_remote(&upstream);
    let err = stranger
        .ls_remote()
        .err()
        .context("a key not in authorized_keys was accepted")?;
    ensure!(
        format!("{err:#}").contains("Permission denied"),
        "unexpected error for a wrong client key: {err:#}"
    );
    Ok(())
}

#[test]
fn one_repository_is_served_over_https_ssh_and_file_alike() -> Result<()> {
    let https = HttpsGitServer::start()?;
    let ssh = SshGitServer::start()?;
    let upstream = https.create_repo("everywhere")?;
    let head = seeded(&upstream)?;
    for remote in [
        https.remote(&upstream),
        ssh.remote(&upstream),
        upstream.file_remote(),
    ] {
        assert_eq!(
            remote.resolve("refs/heads/main")?,
            Some(head.clone()),
            "{}",
            remote.url()
        );
    }
    Ok(())
}

#[test]
fn servers_end_with_the_thread_that_started_them_even_when_leaked() -> Result<()> {
    // Leak both servers so Drop never runs: only the kernel's parent-death signal can stop them.
    let (https_port, ssh_port, dirs) = std::thread::spawn(|| -> Result<_> {
        let https = HttpsGitServer::start()?;
        let ssh = SshGitServer::start()?;
        let ports = (https.port(), ssh.port());
        let https_dir = https.root().parent().map(std::path::Path::to_path_buf);
        let ssh_dir = ssh
            .client_key_path()
            .parent()
            .map(std::path::Path::to_path_buf);
        std::mem::forget(https);
        std::mem::forget(ssh);
        Ok((ports.0, ports.1, [https_dir, ssh_dir]))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the starting thread panicked"))??;

    for port in [https_port, ssh_port] {
        wait_until(
            &format!("port {port} to close"),
            Duration::from_secs(10),
            || {
                ensure!(
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                    "still accepting"
                );
                Ok(())
            },
        )?;
    }
    for dir in dirs.into_iter().flatten() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
