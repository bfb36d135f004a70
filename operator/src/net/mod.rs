//! What every outbound connection shares: the proxy settings, read once at start-up for git and the
//! hub client alike, the `host:port` of an endpoint, and the TLS client's trust.

mod hostport;
pub mod proxy;
pub mod tls;

pub use hostport::HostPort;
pub use proxy::ProxyConfig;
