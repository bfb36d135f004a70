//! Scenario 3: a commit with bad input fails its revision as a whole, names the file and the
//! problem, leaves the last good objects alone, and the next good commit recovers.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, ready_condition, wait_applied, wait_failed, wait_ready};
use tether_e2e::operator::Operator;

/// One kind of bad input: a file to add and what the Ready message must say about it.
struct Case {
    what: &'static str,
    file: &'static str,
    contents: fn(&str) -> String,
    message_names: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "YAML that does not parse",
        file: "deploy/broken.yaml",
        contents: |_| "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: broken\ndata: [\n".into(),
        message_names: &["deploy/broken.yaml"],
    },
    Case {
        what: "an unknown field",
        file: "deploy/web.yaml",
        contents: |ns| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n\
                 spec:\n  replica: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    \
                 metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        \
                 image: registry.example/web:1.0\n"
            )
        },
        message_names: &["deploy/web.yaml", "replica"],
    },
    Case {
        what: "a kind the server does not know",
        file: "deploy/gadget.yaml",
        contents: |ns| {
            format!(
                "apiVersion: gadgets.example.invalid/v1\nkind: Gadget\nmetadata:\n  name: g\n  namespace: {ns}\n"
            )
        },
        message_names: &["deploy/gadget.yaml", "Gadget"],
    },
    Case {
        what: "a duplicate object",
        file: "deploy/again.yaml",
        contents: |ns| config_map(ns, "settings", "twice"),
        message_names: &["deploy/again.yaml", "deploy/config.yaml", "duplicate"],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_fail_whole_and_the_next_good_commit_recovers() -> Result<()> {
    let ns = TestNamespace::create("bad-input").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("bad")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v0"))?;
    let good = repo.commit("the last good state")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    wait_ready(kubectl, n, "app", "90s", &operator)?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{good}"), &operator)?;

    for (i, case) in CASES.iter().enumerate() {
        let before = format!("v{i}");
        let after = format!("v{}", i + 1);
        let extra = format!("extra-{i}");
        // The bad commit also changes a good object and adds one: neither may reach the cluster.
        repo.write("deploy/config.yaml", &config_map(n, "settings", &after))?;
        repo.write(
            &format!("deploy/{extra}.yaml"),
            &config_map(n, &extra, "new"),
        )?;
        repo.write(case.file, &(case.contents)(n))?;
        let bad = repo.commit(&format!("add {}", case.what))?;
        repo.push()?;

        let (_, reason, message) =
            wait_failed(kubectl, n, "app", &format!("main@sha1:{bad}"), &operator)?;
        ensure!(
            reason == "InvalidManifest",
            "{}: reason {reason:?}, message {message:?}",
            case.what
        );
        for want in case.message_names {
            ensure!(
                message.contains(want),
                "{}: the Ready message does not name {want:?}: {message}",
                case.what
            );
        }
        ensure!(
            !kubectl.names(n, "configmap")?.contains(&extra),
            "{}: {extra} was applied from a bad revision",
            case.what
        );
        ensure!(
            kubectl.names(n, "deployment")?.is_empty(),
            "{}: a Deployment was applied from a bad revision",
            case.what
        );
        let kept = greeting(kubectl, n, "settings")?;
        ensure!(
            kept == before,
            "{}: settings changed to {kept:?} by a bad revision",
            case.what
        );
        ensure!(
            ready_condition(kubectl, n, "app")?.0 == "False",
            "{}: Ready flipped back",
            case.what
        );

        // The fix: drop the bad file; the rest of the commit lands.
        repo.remove(case.file)?;
        let fixed = repo.commit(&format!("drop {}", case.what))?;
        repo.push()?;
        wait_applied(kubectl, n, "app", &format!("main@sha1:{fixed}"), &operator)?;
        wait_ready(kubectl, n, "app", "30s", &operator)?;
        ensure!(greeting(kubectl, n, "settings")? == after, "{}", case.what);
        ensure!(greeting(kubectl, n, &extra)? == "new", "{}", case.what);
    }
    Ok(())
}
