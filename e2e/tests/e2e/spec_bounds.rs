//! The API server refuses a `GitRepository` whose durations are out of bounds, with a message that
//! names the field and the range: an absurd interval must never reach the operator, where it once
//! overflowed the clock and took down every tenant's reconciles.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::gitrepo::install_crds;

fn with(ns: &str, field: &str, value: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata:\n  name: bounds\n  namespace: {ns}\n\
         spec:\n  url: https://git.example/ops/config.git\n  {field}: \"{value}\"\n"
    )
}

#[tokio::test]
async fn durations_out_of_bounds_are_refused_by_the_api_server_with_the_range() -> Result<()> {
    let ns = TestNamespace::create("spec-bounds").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    for (field, value, range) in [
        ("interval", "5124095576030431h", "from 1s to 720h"),
        ("interval", "0s", "from 1s to 720h"),
        ("interval", "721h", "from 1s to 720h"),
        ("timeout", "2h", "from 1s to 1h"),
        ("timeout", "500ms", "from 1s to 1h"),
    ] {
        let refused = kubectl.apply(&with(n, field, value));
        let message = match refused {
            Ok(out) => anyhow::bail!("{field}: {value} was accepted: {out}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            message.contains(&format!("spec.{field}")) && message.contains(range),
            "{field}: {value}: the refusal does not name the field and its range: {message}"
        );
    }
    for (field, value) in [("interval", "720h"), ("interval", "1s"), ("timeout", "1h")] {
        kubectl.apply(&with(n, field, value))?;
    }
    Ok(())
}
