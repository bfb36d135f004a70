//! What every outbound connection shares: the proxy settings, read once at start-up for git and the
//! hub client alike, and the `host:port` of an endpoint.

mod hostport;
pub mod proxy;

pub use hostport::HostPort;
pub use proxy::ProxyConfig;
