//! Dialling the hub: the URL, token and TLS settings checked once, then TCP (or the proxy's tunnel),
//! TLS and the websocket upgrade.

use std::sync::Arc;

use tether_protocol::tunnel::{TUNNEL_PATH, TUNNEL_SUBPROTOCOL};
use tether_protocol::{CONNECT_PATH, SUBPROTOCOL};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request, Uri};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config};
use tracing::warn;

use super::{HubClientConfig, HubClientError, tls, tunnel};
use crate::net::HostPort;
use crate::net::proxy::HttpProxy;

/// Which of the hub's two websockets to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    /// `/v1/connect`, `tether.v1`: the watch set out, push notices in.
    Push,
    /// `/v1/tunnel`, `tether.tunnel.v1`: CI requests in, multiplexed.
    Tunnel,
}

impl Channel {
    fn path(self) -> &'static str {
        match self {
            Channel::Push => CONNECT_PATH,
            Channel::Tunnel => TUNNEL_PATH,
        }
    }

    fn subprotocol(self) -> &'static str {
        match self {
            Channel::Push => SUBPROTOCOL,
            Channel::Tunnel => TUNNEL_SUBPROTOCOL,
        }
    }
}

/// Everything derived from the config once, before the first dial.
pub(super) struct Dialer {
    pub(super) url: String,
    channel: Channel,
    uri: Uri,
    /// Host as in the URL (brackets kept for IPv6), and the port, defaulted by scheme.
    target: HostPort,
    authorization: HeaderValue,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The proxy to tunnel through, unless `NO_PROXY` lists the hub.
    proxy: Option<HttpProxy>,
}

impl Dialer {
    /// The push channel's dialer.
    pub(super) fn new(config: &HubClientConfig) -> Result<Self, HubClientError> {
        Self::for_channel(config, Channel::Push)
    }

    /// The dialer of `channel` on the hub `config` names. A URL that ends with the push channel's
    /// path names the hub all the same.
    pub(super) fn for_channel(
        config: &HubClientConfig,
        channel: Channel,
    ) -> Result<Self, HubClientError> {
        let http_proxy = config.proxy.http_proxy()?;
        let invalid = |reason: &str| HubClientError::InvalidUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let given: Uri = config
            .url
            .trim()
            .parse()
            .map_err(|e| invalid(&format!("{e}")))?;
        let secure = match given.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("wss") => true,
            Some("ws") => false,
            Some(other) => {
                return Err(invalid(&format!(
                    "unsupported scheme {other:?}: use wss:// (or ws:// for local testing)"
                )));
            }
            None => return Err(invalid("no scheme: use wss://host[:port]")),
        };
        let authority = given.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "user info in the URL is not used: put the token in the token file",
            ));
        }
        let host = authority.host().to_string();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let base = given.path().trim_end_matches('/');
        let base = base.strip_suffix(CONNECT_PATH).unwrap_or(base);
        let path = format!("{base}{}", channel.path());
        let path_and_query = match given.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = Uri::builder()
            .scheme(if secure { "wss" } else { "ws" })
            .authority(authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| invalid(&e.to_string()))?;

        let token = config.token.trim();
        if token.is_empty() {
            return Err(HubClientError::InvalidToken { reason: "empty" });
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HubClientError::InvalidToken {
                    reason: "contains characters that cannot go in an HTTP header",
                }
            })?;
        authorization.set_sensitive(true);

        let tls = if secure {
            Some(tls::client_config(config.ca_pem.as_deref())?)
        } else {
            if config.ca_pem.is_some() {
                warn!(hub = %uri, "a hub CA bundle is configured but the hub URL is ws://; it is not used");
            }
            None
        };
        let proxy = http_proxy
            .filter(|_| !config.proxy.bypasses(&host, port))
            .cloned();
        Ok(Self {
            url: uri.to_string(),
            channel,
            uri,
            target: HostPort::new(host, port),
            authorization,
            tls,
            proxy,
        })
    }

    /// How the hub is reached, for logs.
    pub(super) fn route(&self) -> String {
        match &self.proxy {
            Some(p) => format!("proxy {}", p.address()),
            None => "direct".to_string(),
        }
    }

    fn request(&self) -> Result<Request<()>, HubClientError> {
        let mut request =
            self.uri
                .clone()
                .into_client_request()
                .map_err(|e| HubClientError::InvalidUrl {
                    url: self.url.clone(),
                    reason: e.to_string(),
                })?;
        let headers = request.headers_mut();
        headers.insert("authorization", self.authorization.clone());
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(self.channel.subprotocol()),
        );
        headers.insert(
            "user-agent",
            HeaderValue::from_static(concat!("tether-operator/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(request)
    }

    /// TCP (through the proxy's tunnel, if any), TLS for `wss://`, and the websocket upgrade.
    pub(super) async fn dial(
        &self,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, HubClientError> {
        let stream = match &self.proxy {
            Some(proxy) => tunnel::connect(proxy, &self.target).await?,
            None => self
                .target
                .connect()
                .await
                .map_err(|source| HubClientError::Connect {
                    addr: self.target.to_string(),
                    source,
                })?,
        };
        let _ = stream.set_nodelay(true);
        let connector = match &self.tls {
            Some(config) => Connector::Rustls(Arc::clone(config)),
            None => Connector::Plain,
        };
        // The tunnel's frames are bounded by the protocol; the push channel keeps the defaults.
        let ws_config =
            (self.channel == Channel::Tunnel).then(tether_protocol::tunnel::websocket_config);
        let (ws, response) =
            client_async_tls_with_config(self.request()?, stream, ws_config, Some(connector))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(response) if response.status().as_u16() == 401 => {
                        HubClientError::Unauthorized
                    }
                    tungstenite::Error::Http(response) => HubClientError::HttpStatus {
                        status: response.status().as_u16(),
                    },
                    other => HubClientError::Handshake {
                        source: Box::new(other),
                    },
                })?;
        // tungstenite already refuses a response without a subprotocol; make sure it is ours.
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if chosen != Some(self.channel.subprotocol()) {
            return Err(HubClientError::Handshake {
                source: Box::new(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                        tungstenite::error::SubProtocolError::InvalidSubProtocol,
                    ),
                )),
            });
        }
        Ok(ws)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_path_is_appended_when_missing() {
        for (given, want) in [
            ("wss://hub.example.com", "wss://hub.example.com/v1/connect"),
            ("wss://hub.example.com/", "wss://hub.example.com/v1/connect"),
            (
                "ws://127.0.0.1:8080/v1/connect",
                "ws://127.0.0.1:8080/v1/connect",
            ),
            (
                "wss://example.com/tether/",
                "wss://example.com/tether/v1/connect",
            ),
        ] {
            let p = Dialer::new(&HubClientConfig::new(given, "t")).unwrap();
            assert_eq!(p.url, want, "{given}");
        }
        for (given, want) in [
            ("wss://hub.example.com", "wss://hub.example.com/v1/tunnel"),
            (
                "ws://127.0.0.1:8080/v1/connect",
                "ws://127.0.0.1:8080/v1/tunnel",
            ),
            (
                "wss://example.com/tether/",
                "wss://example.com/tether/v1/tunnel",
            ),
        ] {
            let config = HubClientConfig::new(given, "t");
            let p = Dialer::for_channel(&config, Channel::Tunnel).unwrap();
            assert_eq!(p.url, want, "{given}");
        }
        let p = Dialer::new(&HubClientConfig::new("wss://hub.example.com", "t")).unwrap();
        assert_eq!((p.target.host(), p.target.port()), ("hub.example.com", 443));
        let p = Dialer::new(&HubClientConfig::new("ws://[::1]:9000", "t")).unwrap();
        assert_eq!((p.target.host(), p.target.port()), ("[::1]", 9000));
    }
}
