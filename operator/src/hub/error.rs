//! Why the hub connection failed, each with a short fixed category for logs.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::net::proxy::ProxyError;

/// What went wrong with the hub connection. Only the configuration errors are ever returned by
/// [`run`](super::run); the others are logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    /// The hub URL cannot be used.
    #[error("hub URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot be sent in a header.
    #[error("hub token: {reason}")]
    InvalidToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// The proxy URL cannot be used for a tunnel.
    #[error(transparent)]
    InvalidProxy(#[from] ProxyError),
    /// The extra CA bundle cannot be used.
    #[error("hub CA bundle: {reason}")]
    InvalidCa {
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup for the hub: {source}")]
    Tls {
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The TCP connection (to the hub or the proxy) failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port` dialled.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy did not open the tunnel.
    #[error("proxy {proxy}: CONNECT {target}: {reason}")]
    Proxy {
        /// The proxy's address.
        proxy: String,
        /// The tunnel's target.
        target: String,
        /// The proxy's status line or the I/O failure.
        reason: String,
    },
    /// The hub refused the token.
    #[error(
        "the hub refused the agent token (HTTP 401): check the token file against the agent's token_sha256 in the hub config"
    )]
    Unauthorized,
    /// The hub answered the upgrade with another HTTP status.
    #[error("the hub answered the websocket upgrade with HTTP {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// The TLS or websocket handshake failed.
    #[error("handshake with the hub: {source}")]
    Handshake {
        /// The websocket (or TLS, as I/O) error.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// A dial did not finish in time.
    #[error("dial did not complete within {after:?}")]
    ConnectTimeout {
        /// The limit.
        after: Duration,
    },
    /// Nothing arrived for too long, or a send did not complete.
    #[error("no sign of life from the hub for {after:?}; the connection is presumed dead")]
    Dead {
        /// The limit.
        after: Duration,
    },
    /// The open connection failed.
    #[error("hub connection failed: {source}")]
    Connection {
        /// The websocket error.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The hub closed the connection.
    #[error("the hub closed the connection ({reason})")]
    Closed {
        /// The close code and reason, if any.
        reason: String,
    },
    /// The hub is shutting down (close code 1001, going away): another replica behind the same
    /// address takes the connection, so it is dialled again at once rather than after backoff.
    #[error("the hub is going away ({reason}); reconnecting at once")]
    GoingAway {
        /// The close reason.
        reason: String,
    },
}

impl HubClientError {
    /// A short fixed name for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            HubClientError::InvalidUrl { .. } => "invalid_url",
            HubClientError::InvalidToken { .. } => "invalid_token",
            HubClientError::InvalidProxy(e) => e.category(),
            HubClientError::InvalidCa { .. } => "invalid_ca",
            HubClientError::Tls { .. } => "tls_setup",
            HubClientError::Connect { .. } => "connect",
            HubClientError::Proxy { .. } => "proxy",
            HubClientError::Unauthorized => "unauthorized",
            HubClientError::HttpStatus { .. } => "http_status",
            HubClientError::Handshake { .. } => "handshake",
            HubClientError::ConnectTimeout { .. } => "connect_timeout",
            HubClientError::Dead { .. } => "dead",
            HubClientError::Connection { .. } => "connection",
            HubClientError::Closed { .. } => "closed",
            HubClientError::GoingAway { .. } => "going_away",
        }
    }
}
