//! The proxy settings, `HTTPS_PROXY` and `NO_PROXY`, read once at start-up and handed to git and to
//! the hub client: both tunnel through the proxy with `CONNECT` (git over HTTP(S) by its own
//! transport, `git::http`); SSH is never proxied.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use tether_protocol::url::{Url, split_host_port, unbracket, without_userinfo};

use super::HostPort;

/// The process's proxy settings. The default is no proxy and an empty `NO_PROXY`.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// `HTTPS_PROXY` read as a `CONNECT` proxy; its error concerns only who tunnels through it.
    https_proxy: Option<Result<HttpProxy, ProxyError>>,
    no_proxy: NoProxy,
}

impl ProxyConfig {
    /// From the values of `HTTPS_PROXY` and `NO_PROXY`, as the flags read them. `None` or an empty
    /// value for the proxy means no proxy. The proxy is `http://[user:password@]host[:port]` (port 80
    /// by default) or a bare `host[:port]`; `https://` proxies (TLS to the proxy itself) cannot carry
    /// the hub's tunnel nor git's, which [`ProxyConfig::http_proxy`] reports when either dials.
    pub fn new(https_proxy: Option<String>, no_proxy: Option<String>) -> Self {
        let https_proxy = https_proxy
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .map(|p| HttpProxy::parse(&p));
        Self {
            https_proxy,
            no_proxy: NoProxy::parse(no_proxy.as_deref().unwrap_or("")),
        }
    }

    /// The proxy to open a `CONNECT` tunnel through, if `HTTPS_PROXY` names one; an error when it
    /// cannot be used for that.
    pub fn http_proxy(&self) -> Result<Option<&HttpProxy>, ProxyError> {
        match &self.https_proxy {
            None => Ok(None),
            Some(Ok(proxy)) => Ok(Some(proxy)),
            Some(Err(e)) => Err(e.clone()),
        }
    }

    /// Whether `HTTPS_PROXY` is set (usable or not).
    pub fn is_set(&self) -> bool {
        self.https_proxy.is_some()
    }

    /// Whether `NO_PROXY` lists `host` (a name, an IP address, or a bracketed IPv6 literal) on `port`,
    /// so that a connection to it goes direct.
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        self.no_proxy.matches(host, port)
    }
}

/// An HTTP proxy reached with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    address: HostPort,
    /// `Basic ...` from the proxy URL's user info; never logged.
    authorization: Option<String>,
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxy")
            .field("address", &self.address.to_string())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl HttpProxy {
    fn parse(raw: &str) -> Result<Self, ProxyError> {
        // A bare `host:port` is an http:// proxy, as curl reads it.
        let url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let invalid = |reason: &str| ProxyError {
            url: without_userinfo(&url),
            reason: reason.to_string(),
        };
        let parts = Url::split(&url);
        let scheme = parts.scheme.unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}: use an http:// proxy (the tunnel carries TLS)"
            )));
        }
        let (host, port) = parts
            .host_port()
            .map_err(|_| invalid("expected host[:port]"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let authorization = parts.userinfo.map(|u| {
            let decoded = percent_decode(u);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        Ok(Self {
            address: HostPort::new(host, port.unwrap_or(80)),
            authorization,
        })
    }

    /// The proxy's `host:port`.
    pub fn address(&self) -> &HostPort {
        &self.address
    }

    /// The `Proxy-Authorization` value, from the user info of the proxy URL.
    pub(crate) fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

/// `HTTPS_PROXY` cannot be used as a `CONNECT` proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy URL {url:?}: {reason}")]
pub struct ProxyError {
    /// The URL, user info removed.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ProxyError {
    /// A short fixed name for logs and metrics.
    pub fn category(&self) -> &'static str {
        "invalid_proxy"
    }
}

/// A parsed `NO_PROXY` list: comma- (or space-) separated entries, each `*` (everything), a domain
/// (`example.com` or `.example.com`: that domain and its subdomains), an exact host or IP address,
/// a CIDR block (`10.0.0.0/8`), optionally with `:port` to match one port only. Case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NoProxy {
    everything: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    Domain { name: String, port: Option<u16> },
    Ip { ip: IpAddr, port: Option<u16> },
    Cidr { net: IpAddr, prefix: u8 },
}

impl NoProxy {
    /// Parse a `NO_PROXY` value. Entries that cannot be read are ignored (as curl and Go do).
    fn parse(value: &str) -> Self {
        let mut list = NoProxy::default();
        for entry in value.split([',', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                list.everything = true;
                continue;
            }
            let entry = entry.to_ascii_lowercase();
            if let Some((net, prefix)) = entry.split_once('/') {
                if let (Ok(net), Ok(prefix)) = (net.parse::<IpAddr>(), prefix.parse::<u8>()) {
                    let max = if net.is_ipv4() { 32 } else { 128 };
                    if prefix <= max {
                        list.entries.push(NoProxyEntry::Cidr { net, prefix });
                    }
                }
                continue;
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                list.entries.push(NoProxyEntry::Ip { ip, port: None });
                continue;
            }
            let Ok((host, port)) = split_host_port(&entry) else {
                continue;
            };
            if let Ok(ip) = unbracket(host).parse::<IpAddr>() {
                list.entries.push(NoProxyEntry::Ip { ip, port });
                continue;
            }
            let name = host.trim_start_matches("*.").trim_start_matches('.');
            let name = name.trim_end_matches('.');
            if !name.is_empty() {
                list.entries.push(NoProxyEntry::Domain {
                    name: name.to_string(),
                    port,
                });
            }
        }
        list
    }

    /// Whether `host` (a name, an IP address, or a bracketed IPv6 literal) on `port` bypasses the proxy.
    fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = unbracket(host).trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| match entry {
            NoProxyEntry::Domain { name, port: p } => {
                p.is_none_or(|p| p == port)
                    && (host == *name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|prefix| prefix.ends_with('.')))
            }
            NoProxyEntry::Ip { ip: want, port: p } => {
                p.is_none_or(|p| p == port) && ip == Some(*want)
            }
            NoProxyEntry::Cidr { net, prefix } => ip.is_some_and(|ip| in_cidr(ip, *net, *prefix)),
        })
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Decode `%XX` escapes in URL user info (a password may hold `@` or `:` escaped).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_proxy(list: &str) -> NoProxy {
        NoProxy::parse(list)
    }

    #[test]
    fn no_proxy_matches_domains_with_or_without_a_leading_dot() {
        let list = no_proxy("example.com, .internal.corp ,svc");
        assert!(list.matches("example.com", 443));
        assert!(list.matches("hub.example.com", 443));
        assert!(list.matches("HUB.Example.COM", 443));
        assert!(list.matches("a.b.internal.corp", 443));
        assert!(list.matches("internal.corp", 443));
        assert!(list.matches("hub.ns.svc", 443));
        assert!(!list.matches("notexample.com", 443));
        assert!(!list.matches("example.com.evil.org", 443));
        assert!(!list.matches("github.com", 443));
    }

    #[test]
    fn no_proxy_star_matches_everything_and_empty_matches_nothing() {
        assert!(no_proxy("*").matches("anything.example", 1));
        assert!(no_proxy("foo, *").matches("10.1.2.3", 1));
        assert!(!no_proxy("").matches("example.com", 443));
        assert!(!no_proxy(" , ,").matches("example.com", 443));
    }

    #[test]
    fn no_proxy_matches_exact_ips_cidrs_and_ports() {
        let list =
            no_proxy("127.0.0.1,10.0.0.0/8,::1,[fd00::5]:8443,hub.example:9443,192.168.1.0/33");
        assert!(list.matches("127.0.0.1", 8443));
        assert!(!list.matches("127.0.0.2", 8443));
        assert!(list.matches("10.200.3.4", 443));
        assert!(!list.matches("11.0.0.1", 443));
        assert!(list.matches("[::1]", 443));
        assert!(list.matches("::1", 443));
        assert!(list.matches("[fd00::5]", 8443));
        assert!(!list.matches("[fd00::5]", 443));
        assert!(list.matches("hub.example", 9443));
        assert!(!list.matches("hub.example", 443));
        // The invalid CIDR was ignored rather than matching everything.
        assert!(!list.matches("192.168.1.1", 443));
        // A name is never matched by an IP rule.
        assert!(!list.matches("localhost", 443));
    }

    #[test]
    fn proxy_from_env_vars() {
        let proxy = |https_proxy: Option<&str>, no_proxy: Option<&str>| {
            ProxyConfig::new(https_proxy.map(Into::into), no_proxy.map(Into::into))
        };
        assert!(proxy(None, Some("x")).http_proxy().unwrap().is_none());
        assert!(proxy(Some(" "), None).http_proxy().unwrap().is_none());
        assert!(!proxy(Some(" "), None).is_set());

        let config = proxy(Some("http://proxy.corp:3128/"), None);
        let p = config.http_proxy().unwrap().unwrap();
        assert_eq!(p.address().to_string(), "proxy.corp:3128");
        assert!(!config.bypasses("hub.example.com", 443));
        assert!(p.authorization().is_none());

        let config = proxy(Some("proxy.corp"), Some("hub.example.com"));
        let p = config.http_proxy().unwrap().unwrap();
        assert_eq!(p.address().to_string(), "proxy.corp:80");
        assert!(config.bypasses("hub.example.com", 443));

        let config = proxy(Some("http://user:p%40ss@[::1]:8080"), None);
        let p = config.http_proxy().unwrap().unwrap();
        assert_eq!(p.address().to_string(), "[::1]:8080");
        // base64("user:p@ss")
        assert_eq!(p.authorization(), Some("Basic dXNlcjpwQHNz"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("dXNlcjpwQHNz"), "{debug}");

        let config = proxy(Some("https://user:secret@proxy:443"), None);
        assert!(config.is_set());
        let err = config.http_proxy().unwrap_err();
        assert_eq!(err.category(), "invalid_proxy");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{config:?}").contains("secret"));
        let err = proxy(Some("user:secret@proxy:notaport"), None)
            .http_proxy()
            .unwrap_err();
        assert_eq!(err.category(), "invalid_proxy");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
