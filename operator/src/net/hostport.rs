//! An endpoint to dial: its host as URLs write it (IPv6 literals in brackets) and its port.

use std::fmt;

use tokio::net::TcpStream;

/// A host and a port. `Display` gives `host:port`, with an IPv6 address in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// `host` may be a name, an IPv4 address, or an IPv6 address with or without brackets.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// The host as given (an IPv6 literal keeps the brackets it was given with).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Opens a TCP connection.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        TcpStream::connect((tether_protocol::url::unbracket(&self.host), self.port)).await
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_bracketed_once() {
        assert_eq!(
            HostPort::new("hub.example", 443).to_string(),
            "hub.example:443"
        );
        assert_eq!(HostPort::new("::1", 8080).to_string(), "[::1]:8080");
        assert_eq!(HostPort::new("[::1]", 8080).to_string(), "[::1]:8080");
    }
}
