//! Test support, compiled with the `test-util` feature: a config builder, a fake environment, a hub
//! on 127.0.0.1:0 with an HTTP client and a websocket agent, webhook fixtures and a test CA. This
//! crate's tests and the operator's use it; nothing in the hub itself does.

mod hub;
mod tls;

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

pub use hub::{Agent, TestHub};
pub use tls::TestTls;

use crate::config::Config;
use crate::secret::Environment;

/// How long a test waits for anything the hub should do promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// An environment holding only the variables a test sets.
#[derive(Debug, Clone, Default)]
pub struct FakeEnv(HashMap<String, String>);

impl FakeEnv {
    /// An environment with these variables.
    pub fn new<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Set one variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }
}

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// The hex SHA-256 of a token, as `agents[].token_sha256` wants it.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bytes of a fixture under `hub/tests/fixtures/webhooks/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A header map from pairs.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    h
}

/// A hub config for tests, written as the YAML a user would write and parsed by [`Config::from_yaml`]:
/// listening on 127.0.0.1:0, with webhook secrets passed through a [`FakeEnv`].
#[derive(Debug, Clone)]
pub struct TestConfig {
    data_dir: PathBuf,
    settings: Vec<(String, String)>,
    agents: Vec<String>,
    webhooks: Vec<String>,
    env: FakeEnv,
}

fn yaml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl TestConfig {
    /// No agents, no webhooks, the store under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            settings: Vec::new(),
            agents: Vec::new(),
            webhooks: Vec::new(),
            env: FakeEnv::default(),
        }
    }

    /// Set a top-level field to a YAML value, e.g. `.set("max_body_bytes", 65536)`.
    pub fn set(mut self, field: &str, value: impl Display) -> Self {
        self.settings.push((field.to_string(), value.to_string()));
        self
    }

    /// An environment variable the config's secret sources may name.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.set(name, value.into());
        self
    }

    /// Serve TLS with this certificate.
    pub fn tls(self, tls: &TestTls) -> Self {
        let value = format!(
            "{{ cert_file: {:?}, key_file: {:?} }}",
            tls.cert_file.display().to_string(),
            tls.key_file.display().to_string()
        );
        self.set("tls", value)
    }

    /// An agent with this bearer token, allowed to hear about `repos` (globs).
    pub fn agent(mut self, name: &str, token: &str, repos: &[&str]) -> Self {
        self.agents.push(format!(
            "  - name: {name:?}\n    token_sha256: {:?}\n    repos: {}\n",
            token_sha256_hex(token),
            yaml_list(repos)
        ));
        self
    }

    /// A webhook secret for `provider` covering `repos` (globs).
    pub fn webhook(mut self, provider: &str, repos: &[&str], secret: &str) -> Self {
        let var = format!("TEST_WEBHOOK_SECRET_{}", self.webhooks.len());
        self.webhooks.push(format!(
            "  - provider: {provider}\n    repos: {}\n    secret: {{ env: {var} }}\n",
            yaml_list(repos)
        ));
        self.env.set(var, secret);
        self
    }

    /// The config file's text.
    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "listen: \"127.0.0.1:0\"\ndata_dir: {:?}\n",
            self.data_dir.display().to_string()
        );
        for (field, value) in &self.settings {
            yaml.push_str(&format!("{field}: {value}\n"));
        }
        for (field, items) in [("agents", &self.agents), ("webhooks", &self.webhooks)] {
            if items.is_empty() {
                yaml.push_str(&format!("{field}: []\n"));
            } else {
                yaml.push_str(&format!("{field}:\n{}", items.concat()));
            }
        }
        yaml
    }

    /// The validated config; panics with every problem if it is not valid.
    pub fn build(&self) -> Config {
        Config::from_yaml(&self.yaml(), Path::new("test-hub.yaml"), &self.env)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.yaml()))
    }
}
