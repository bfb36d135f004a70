//! TLS clients: the system's root certificates, read once, plus whatever a caller trusts besides
//! (the hub's CA bundle, a `GitRepository`'s `caFile`).

use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};

static SYSTEM_ROOTS: OnceLock<RootCertStore> = OnceLock::new();

/// The system's root certificates, loaded on first use; those it cannot read are logged once and
/// skipped.
pub fn system_roots() -> &'static RootCertStore {
    SYSTEM_ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "could not load some system root certificates");
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(native.certs);
        roots
    })
}

/// A client config for HTTP/1.1 over TLS that trusts `roots`, with ring as the provider.
pub fn http1_client(roots: RootCertStore) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
