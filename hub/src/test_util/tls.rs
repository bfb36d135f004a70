//! A test CA and a server certificate it signed, for a hub serving TLS on localhost.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA (its PEM, for clients to trust) and a certificate for `localhost` and 127.0.0.1 with its
/// key, written to files for the hub's `tls` settings.
#[derive(Debug, Clone)]
pub struct TestTls {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub cert_file: PathBuf,
    /// The server key, PEM.
    pub key_file: PathBuf,
}

impl TestTls {
    /// Generate a CA and a localhost certificate, writing `hub.crt` and `hub.key` under `dir`.
    pub fn localhost(dir: &Path) -> TestTls {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("a CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("a server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server parameters");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server
            .signed_by(&key, &issuer)
            .expect("a server certificate");
        let tls = TestTls {
            ca_pem: ca_cert.pem(),
            cert_file: dir.join("hub.crt"),
            key_file: dir.join("hub.key"),
        };
        std::fs::write(&tls.cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&tls.key_file, key.serialize_pem()).expect("write the key");
        tls
    }
}
