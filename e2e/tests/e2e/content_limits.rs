//! The operator's caps on repository content: a revision with a file over `--max-file-bytes`, over
//! `--max-revision-bytes`, with more objects than `--max-objects`, or with YAML aliases that would
//! expand past their budget fails as a whole, names the file and the flag, and applies nothing;
//! the next commit within the caps recovers.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, wait_applied, wait_failed, wait_ready};
use tether_e2e::operator::Operator;

/// One commit over a cap: the files to add and what the Ready message must say.
struct Case {
    what: &'static str,
    files: fn(&str) -> Vec<(&'static str, String)>,
    message_names: &'static [&'static str],
}

/// A ConfigMap whose one value is `bytes` long.
fn padded(ns: &str, name: &str, bytes: usize) -> String {
    format!(
        "{}  padding: {}\n",
        config_map(ns, name, "big"),
        "x".repeat(bytes)
    )
}

/// Objects from a commit over a cap, none of which may reach the cluster.
const STRAYS: &[&str] = &["big", "half-a", "half-b", "l0", "bomb"];

const CASES: &[Case] = &[
    Case {
        what: "a file over --max-file-bytes",
        files: |ns| vec![("deploy/big.yaml", padded(ns, "big", 9_000))],
        message_names: &["deploy/big.yaml", "--max-file-bytes", "8192 bytes"],
    },
    Case {
        what: "files over --max-revision-bytes together",
        files: |ns| {
            vec![
                ("deploy/half-a.yaml", padded(ns, "half-a", 7_000)),
                ("deploy/half-b.yaml", padded(ns, "half-b", 7_000)),
            ]
        },
        message_names: &["deploy/half-b.yaml", "--max-revision-bytes", "10000 bytes"],
    },
    Case {
        what: "more objects than --max-objects",
        files: |ns| {
            let list = (0..12)
                .map(|i| config_map(ns, &format!("l{i}"), "one of many"))
                .collect::<Vec<_>>()
                .join("---\n");
            vec![("deploy/list.yaml", list)]
        },
        message_names: &["deploy/list.yaml", "--max-objects", "limit of 10 objects"],
    },
    Case {
        what: "an alias bomb",
        files: |ns| {
            let bomb = format!(
                "{}  a: &a [{}1]\n  b: [{}*a]\n",
                config_map(ns, "bomb", "boom"),
                "1,".repeat(1_000),
                "*a,".repeat(1_000),
            );
            vec![("deploy/bomb.yaml", bomb)]
        },
        message_names: &["deploy/bomb.yaml", "YAML aliases expand this file"],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_over_a_content_cap_fails_whole_naming_the_file_and_the_flag() -> Result<()> {
    let ns = TestNamespace::create("content-limits").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("limits")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v0"))?;
    let good = repo.commit("within every cap")?;
    repo.push()?;

    let operator = Operator::start(
        ns.kubeconfig(),
        n,
        &[
            "--max-file-bytes=8192",
            "--max-revision-bytes=10000",
            "--max-objects=10",
        ],
    )?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    wait_ready(kubectl, n, "app", "90s", &operator)?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{good}"), &operator)?;

    for (i, case) in CASES.iter().enumerate() {
        let after = format!("v{}", i + 1);
        // The commit also changes a good object: it may not reach the cluster either.
        repo.write("deploy/config.yaml", &config_map(n, "settings", &after))?;
        let files = (case.files)(n);
        for (path, contents) in &files {
            repo.write(path, contents)?;
        }
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
        let kept = greeting(kubectl, n, "settings")?;
        ensure!(
            kept == format!("v{i}"),
            "{}: settings changed to {kept:?} by a revision over a cap",
            case.what
        );
        let names = kubectl.names(n, "configmap")?;
        for stray in STRAYS {
            ensure!(
                !names
                    .lines()
                    .any(|line| line == format!("configmap/{stray}")),
                "{}: {stray} was applied from a revision over a cap: {names}",
                case.what
            );
        }

        // The next commit within the caps recovers, and carries the change.
        for (path, _) in &files {
            repo.remove(path)?;
        }
        let fixed = repo.commit(&format!("remove {}", case.what))?;
        repo.push()?;
        wait_applied(kubectl, n, "app", &format!("main@sha1:{fixed}"), &operator)?;
        ensure!(greeting(kubectl, n, "settings")? == after);
    }
    Ok(())
}
