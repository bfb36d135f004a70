//! This suite's fixtures over `tether_hub::test_util`: its secrets and token, the config its tests
//! share, and signed GitHub fixtures.

#![allow(dead_code)]

use std::path::Path;

use tether_hub::config::Config;
pub use tether_hub::test_util::{TestConfig, TestHub, fixture};

pub const GITHUB_SECRET: &str = "github-secret";
pub const GITLAB_TOKEN: &str = "gitlab-token";
pub const AGENT_TOKEN: &str = "agent-token";
pub const MAX_BODY: usize = 64 * 1024;

/// The suite's config, to extend: one agent allowed `agent_globs`, a GitHub secret for github.com and
/// a GitLab token for everything.
pub fn test_config(data_dir: &Path, agent_globs: &[&str]) -> TestConfig {
    TestConfig::new(data_dir)
        .set("max_body_bytes", MAX_BODY)
        .agent("test-agent", AGENT_TOKEN, agent_globs)
        .webhook("github", &["github.com/**"], GITHUB_SECRET)
        .webhook("gitlab", &["**"], GITLAB_TOKEN)
}

/// [`test_config`], built.
pub fn config(data_dir: &Path, agent_globs: &[&str]) -> Config {
    test_config(data_dir, agent_globs).build()
}

/// Headers for a GitHub push delivery of `body` signed with `secret`.
pub fn github_headers(secret: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    let sig = format!(
        "sha256={}",
        tether_hub::webhook::hmac_sha256_hex(secret.as_bytes(), body)
    );
    vec![
        ("x-github-event", "push".to_string()),
        ("x-github-delivery", delivery.to_string()),
        ("x-hub-signature-256", sig),
        ("content-type", "application/json".to_string()),
    ]
}

/// Signed GitHub fixtures.
pub trait PostGithub {
    /// Post a GitHub fixture signed with [`GITHUB_SECRET`].
    async fn post_github(&self, fixture_name: &str, delivery: &str) -> (u16, String);
}

impl PostGithub for TestHub {
    async fn post_github(&self, fixture_name: &str, delivery: &str) -> (u16, String) {
        let body = fixture(fixture_name);
        let headers = github_headers(GITHUB_SECRET, &body, delivery);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.post("/v1/webhooks/github", &headers, body).await
    }
}
