//! Where the hub is and how to reach it: the client's configuration.

use std::fmt;
use std::time::Duration;

use tether_protocol::{Backoff, DEAD_AFTER, PING_INTERVAL};

use super::HubClientError;
use super::dial::Dialer;
use crate::net::ProxyConfig;

/// How long a dial may take by default (TCP, proxy tunnel, TLS and websocket upgrade together).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the hub is and how to reach it.
#[derive(Clone)]
pub struct HubClientConfig {
    /// `ws://` or `wss://` URL of the hub; [`CONNECT_PATH`](tether_protocol::CONNECT_PATH) is
    /// appended when the path does not end with it (so `wss://hub.example.com` and
    /// `wss://example.com/tether` both work).
    pub url: String,
    /// The agent's bearer token. Surrounding whitespace (a token file's newline) is ignored. Never logged.
    pub token: String,
    /// Extra PEM certificates to trust for `wss://`, on top of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The outbound proxy settings (see [`ProxyConfig::new`]).
    pub proxy: ProxyConfig,
    /// How often to ping the hub (default [`PING_INTERVAL`]).
    pub keepalive: Duration,
    /// A connection silent for this long is dead (default [`DEAD_AFTER`]).
    pub dead_after: Duration,
    /// Bound on one dial: TCP, proxy tunnel, TLS and websocket upgrade (default [`CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// The reconnect policy (default: 0.5 s doubling to 30 s, full jitter, reset after 60 s connected).
    pub backoff: Backoff,
    /// With `--hub-report-status`: the `GitRepository` records to report for the hub's fleet view
    /// (`None` inside until the first full listing). Without it, nothing is reported.
    pub reports: Option<tokio::sync::watch::Receiver<Option<crate::fleet::Records>>>,
}

impl HubClientConfig {
    /// A config with the protocol's default timings and no proxy or extra CA.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ca_pem: None,
            proxy: ProxyConfig::default(),
            keepalive: PING_INTERVAL,
            dead_after: DEAD_AFTER,
            connect_timeout: CONNECT_TIMEOUT,
            backoff: Backoff::default(),
            reports: None,
        }
    }

    /// Check everything that can be checked without the network: the URL, the token's shape, the CA
    /// bundle, the proxy. [`run`](super::run) does the same; calling this at start-up turns a typo
    /// into an exit with a reason.
    pub fn validate(&self) -> Result<(), HubClientError> {
        Dialer::new(self).map(|_| ())
    }
}

impl fmt::Debug for HubClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("proxy", &self.proxy)
            .field("keepalive", &self.keepalive)
            .field("dead_after", &self.dead_after)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("reports", &self.reports.is_some())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unusable_configs_are_explained() {
        let category = |url: &str, token: &str| {
            HubClientConfig::new(url, token)
                .validate()
                .unwrap_err()
                .category()
        };
        assert_eq!(category("https://hub.example.com", "t"), "invalid_url");
        assert_eq!(category("hub.example.com", "t"), "invalid_url");
        assert_eq!(
            category("wss://user:pw@hub.example.com", "t"),
            "invalid_url"
        );
        assert_eq!(category("wss://hub.example.com", " \n"), "invalid_token");
        assert_eq!(category("wss://hub.example.com", "a\nb"), "invalid_token");

        let mut config = HubClientConfig::new("wss://hub.example.com", "t");
        config.ca_pem = Some(b"not a certificate".to_vec());
        assert_eq!(config.validate().unwrap_err().category(), "invalid_ca");

        let mut config = HubClientConfig::new("wss://hub.example.com", "t");
        config.proxy = ProxyConfig::new(Some("https://proxy:443".into()), None);
        assert_eq!(config.validate().unwrap_err().category(), "invalid_proxy");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let mut config = HubClientConfig::new("wss://hub.example.com", "s3cr3t-token");
        config.proxy = ProxyConfig::new(Some("http://u:pw@proxy:3128".into()), None);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
