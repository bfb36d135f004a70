//! The HTTP `CONNECT` tunnel through a proxy, over which TLS and the websocket run.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HubClientError;
use crate::net::HostPort;
use crate::net::proxy::HttpProxy;

/// The largest proxy response head read before giving up on it.
const MAX_PROXY_RESPONSE: usize = 16 * 1024;

/// Opens a TCP connection to the proxy and asks it for a tunnel to `target`.
pub(crate) async fn connect(
    proxy: &HttpProxy,
    target: &HostPort,
) -> Result<TcpStream, HubClientError> {
    let fail = |reason: String| HubClientError::Proxy {
        proxy: proxy.address().to_string(),
        target: target.to_string(),
        reason,
    };
    let mut stream = proxy
        .address()
        .connect()
        .await
        .map_err(|source| HubClientError::Connect {
            addr: proxy.address().to_string(),
            source,
        })?;
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = proxy.authorization() {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| fail(format!("sending the request: {e}")))?;

    // Read byte by byte up to the end of the head: anything after it belongs to the tunnel.
    let mut response = Vec::with_capacity(256);
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() >= MAX_PROXY_RESPONSE {
            return Err(fail("response head too large".to_string()));
        }
        let byte = stream.read_u8().await.map_err(|e| {
            fail(format!(
                "reading the response: {e}{}",
                if response.is_empty() {
                    ""
                } else {
                    " (after a partial response)"
                }
            ))
        })?;
        response.push(byte);
    }
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200) => Ok(stream),
        Some(407) => Err(fail(format!(
            "{status_line} (check the user and password in HTTPS_PROXY)"
        ))),
        _ => Err(fail(format!("refused with {status_line:?}"))),
    }
}
