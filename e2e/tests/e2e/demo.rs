//! `make run`'s demo, as a person uses it: start it, follow what it prints (edit, commit, push in the
//! work tree it names), see the change land, run the CI job's kubectl it prints through the hub, stop
//! it with SIGTERM (what `make stop` sends).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::process::{Lifetime, Process};
use tether_e2e::wait::wait_until;
use tether_e2e::workspace::binary;

/// The value after `prefix` on the first printed line that starts with it (leading spaces ignored).
fn printed(log: &str, prefix: &str) -> Option<String> {
    log.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
}

#[test]
fn the_demo_applies_a_push_at_once_and_stops_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("demo.log");
    let mut demo = Process::spawn(
        "tether-demo",
        &binary("tether-demo")?,
        &[format!(
            "--state-dir={}",
            dir.path().join("state").display()
        )],
        &log,
        Lifetime::TiedToStarter,
    )?;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        "the demo says it is running",
        Duration::from_secs(180),
        || {
            ensure!(read().contains("Tether is running"), "not yet");
            Ok(())
        },
    )
    .with_context(|| format!("demo output:\n{}", read()))?;
    let out = read();
    let work = printed(&out, "cd ").context("no work tree printed")?;
    let kubeconfig = printed(&out, "export KUBECONFIG=").context("no KUBECONFIG printed")?;

    // What the demo tells a person to do.
    let config = std::path::Path::new(&work).join("deploy/config.yaml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("hello from Tether", "hello again"))?;
    let git = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("git")
            .current_dir(&work)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(args)
            .status()?;
        ensure!(status.success(), "git {} failed", args.join(" "));
        Ok(())
    };
    git(&["commit", "-qam", "a new greeting"])?;
    git(&["push", "-q", "origin", "main"])?;

    let kubectl = Kubectl::new(
        tether_e2e::cluster::shared().binaries().path("kubectl"),
        kubeconfig.into(),
    );
    wait_until(
        "the new greeting in the cluster",
        Duration::from_secs(30),
        || {
            let message = kubectl.run(&[
                "get",
                "configmap",
                "greeting",
                "-n",
                "tether-demo",
                "-o",
                "jsonpath={.data.message}",
            ])?;
            ensure!(message == "hello again", "the greeting is {message:?}");
            Ok(())
        },
    )
    .with_context(|| format!("demo output:\n{}", read()))?;
    // Built by kustomize: the kustomization's label is on the object, which the file itself lacks.
    let part_of = kubectl.run(&[
        "get",
        "configmap",
        "greeting",
        "-n",
        "tether-demo",
        "-o",
        "jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}",
    ])?;
    ensure!(
        part_of == "tether-demo",
        "the demo's ConfigMap lacks its kustomization's label: {part_of:?}"
    );

    // The CI job's commands it prints, through the hub, as the CI user.
    let ci_kubeconfig =
        printed(&out, "kubectl --kubeconfig ").context("no CI kubeconfig printed")?;
    let ci = Kubectl::new(
        tether_e2e::cluster::shared().binaries().path("kubectl"),
        ci_kubeconfig.into(),
    );
    let whoami = ci.run(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    ensure!(whoami == "ci-demo", "the CI kubeconfig acts as {whoami:?}");
    let names = ci.run(&["get", "configmaps", "-n", "tether-demo", "-o", "name"])?;
    ensure!(names.contains("configmap/greeting"), "{names}");

    demo.stop(Duration::from_secs(30));
    let out = read();
    ensure!(
        out.contains("==> stopped"),
        "the demo did not stop cleanly:\n{out}"
    );
    Ok(())
}
