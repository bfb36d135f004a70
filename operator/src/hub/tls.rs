//! TLS for `wss://`: the system roots plus an optional extra CA bundle.

use std::sync::Arc;

use tracing::warn;

use super::HubClientError;

/// The rustls client config: the system roots plus the extra CA bundle, ring as the provider.
pub(super) fn client_config(
    ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, HubClientError> {
    let mut roots = crate::net::tls::system_roots().clone();
    if let Some(pem) = ca_pem {
        let mut extra = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| HubClientError::InvalidCa {
                reason: format!("cannot read PEM: {e}"),
            })?;
            roots.add(cert).map_err(|e| HubClientError::InvalidCa {
                reason: format!("certificate not usable as a trust anchor: {e}"),
            })?;
            extra += 1;
        }
        if extra == 0 {
            return Err(HubClientError::InvalidCa {
                reason: "no CERTIFICATE blocks found".to_string(),
            });
        }
    } else if roots.is_empty() {
        warn!("no system root certificates found and no hub CA bundle given: wss:// will fail");
    }
    crate::net::tls::http1_client(roots).map_err(|source| HubClientError::Tls { source })
}
