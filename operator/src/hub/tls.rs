//! TLS for `wss://`: the system roots plus an optional extra CA bundle.

use std::sync::Arc;

use tracing::{debug, warn};

use super::HubClientError;

/// The rustls client config: the system roots plus the extra CA bundle, ring as the provider.
pub(super) fn client_config(
    ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, HubClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        debug!(error = %e, "could not load some system root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
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
    } else if added == 0 {
        warn!("no system root certificates found and no hub CA bundle given: wss:// will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| HubClientError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The websocket upgrade is HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
