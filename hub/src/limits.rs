//! The bounds on what one client can make the hub hold, each with its default. Each is a config
//! field of the same name (`docs/hub.md`); `docs/security.md` states what each protects.

/// Every bound the hub enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest webhook body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Connections served at once (agents, and separately HTTP connections).
    pub max_connections: usize,
    /// Largest watch set accepted from one agent.
    pub max_watched_repos: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // GitHub's own maximum is 25 MiB, but push payloads are small.
            max_body_bytes: 1024 * 1024,
            max_connections: 20_000,
            max_watched_repos: 10_000,
        }
    }
}
