//! `make bench` (push part): push → applied latency through the hub. A real `git push` to the HTTPS
//! test server, whose `post-receive` hook sends a signed GitHub webhook to `tether-hub`, which notifies
//! the operator (a `GitRepository` with `interval: 1h`); the clock runs from `git push` returning to the
//! changed ConfigMap arriving on a watch on the API server (`kubectl get --watch`). Prints p50/p95/p99;
//! asserts nothing.
//!
//! Usage: `bench-push [PUSHES]` (default 50). Binaries come from `TETHER_BIN_DIR` (release builds in
//! `make bench`).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::git_server::HttpsGitServer;
use tether_e2e::hub::{Forge, Hub};
use tether_e2e::operator::{Operator, install_crds};

/// How long one push may take to be applied before the run is abandoned.
const PUSH_DEADLINE: Duration = Duration::from_secs(30);

/// Ends the watching kubectl with the benchmark, however it ends.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let pushes: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("the argument is a number of pushes")?,
        None => 50,
    };
    let plane = shared();
    let ns = TestNamespace::create("bench-push").await?;
    let kubectl = ns.kubectl();
    install_crds(kubectl)?;

    let server = HttpsGitServer::start()?;
    let repo = server.create_repo("app")?;
    repo.write("deploy/config.yaml", &config_map(ns.name(), "v0"))?;
    repo.commit("v0")?;
    repo.push_to(&server.remote(&repo))?;
    let hub = Hub::start()?;
    let url = server.url("app");
    repo.install_post_receive_hook(&hub.post_receive_hook(Forge::Github, &[&url])?)?;

    let ca: String = server
        .ca_pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-auth\n  namespace: {ns}\nstringData:\n  username: {user}\n  password: {pw}\n  caFile: |\n{ca}---\napiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata:\n  name: app\n  namespace: {ns}\nspec:\n  url: {url}\n  path: deploy\n  interval: 1h\n  secretRef:\n    name: app-auth\n",
        ns = ns.name(),
        user = server.username(),
        pw = server.password(),
    ))?;
    let operator = Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[
            &format!("--hub-url={}", hub.ws_url()),
            &format!("--hub-token-file={}", hub.token_file().display()),
        ],
    )?;
    hub.wait_for_log(
        &["watch set updated", "repos=1"],
        1,
        Duration::from_secs(60),
    )?;

    let applied = Instant::now() + Duration::from_secs(60);
    while kubectl
        .run(&[
            "get",
            "configmap",
            "settings",
            "-n",
            ns.name(),
            "-o",
            "name",
        ])
        .is_err()
    {
        if Instant::now() > applied {
            bail!(
                "the first revision was never applied:\n{}",
                operator.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every value the ConfigMap takes, as the API server's watch delivers it, with its arrival time.
    let mut child = Command::new(plane.binaries().path("kubectl"))
        .env("KUBECONFIG", plane.kubeconfig())
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            ns.name(),
            "--watch",
            "-o",
            "jsonpath={.data.greeting}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl --watch")?;
    let stdout = child.stdout.take().context("no stdout from kubectl")?;
    let _watch = Watch(child);
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line.trim().to_string(), Instant::now())).is_err() {
                return;
            }
        }
    });
    wait_for(&rx, "v0", Duration::from_secs(60)).with_context(|| operator.log_tail())?;

    let mut samples = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        let greeting = format!("v{i}");
        repo.write("deploy/config.yaml", &config_map(ns.name(), &greeting))?;
        repo.commit(&greeting)?;
        repo.push_to(&server.remote(&repo))?;
        let pushed = Instant::now();
        let seen = wait_for(&rx, &greeting, PUSH_DEADLINE).with_context(|| {
            format!(
                "push {i}\noperator log:\n{}\nhub log:\n{}",
                operator.log_tail(),
                hub.log_tail()
            )
        })?;
        samples.push(seen.saturating_duration_since(pushed));
    }

    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "push → applied ({} pushes, git push returning → ConfigMap on an API watch): p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, mean {:.0} ms, min {:.0} ms, max {:.0} ms",
        samples.len(),
        ms(pct(0.50)),
        ms(pct(0.95)),
        ms(pct(0.99)),
        ms(mean),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    Ok(())
}

/// Takes watch events until one says `want`; returns when it arrived.
fn wait_for(
    rx: &mpsc::Receiver<(String, Instant)>,
    want: &str,
    within: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((value, at)) if value == want => return Ok(at),
            Ok(_) => {}
            Err(_) => bail!("the ConfigMap never said {want:?} within {within:?}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn config_map(ns: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\ndata:\n  greeting: {greeting}\n"
    )
}
