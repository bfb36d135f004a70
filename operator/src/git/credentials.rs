//! Credentials for a remote, read from the Secret that `spec.secretRef` names, and the checks
//! of the server's identity (TLS certificate against `caFile`, SSH host key against
//! `known_hosts`).

use std::collections::BTreeMap;
use std::fmt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::known_hosts::{self, KnownHost};

/// Secret key: user name for HTTPS basic auth.
pub const KEY_USERNAME: &str = "username";
/// Secret key: password for HTTPS basic auth (or the passphrase of `identity`).
pub const KEY_PASSWORD: &str = "password";
/// Secret key: token sent as `Authorization: Bearer <token>` over HTTPS.
pub const KEY_BEARER_TOKEN: &str = "bearerToken";
/// Secret key: PEM certificate(s) of a private certificate authority for HTTPS.
pub const KEY_CA_FILE: &str = "caFile";
/// Secret key: SSH private key (PEM or OpenSSH format).
pub const KEY_IDENTITY: &str = "identity";
/// Secret key: `known_hosts` lines for the SSH server.
pub const KEY_KNOWN_HOSTS: &str = "known_hosts";

/// The credentials for one remote. `Debug` shows which ones are present, never their values.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `namespace/name` of the Secret, for messages.
    pub(crate) source: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) bearer_token: Option<String>,
    pub(crate) ca_certs: Vec<CertificateDer<'static>>,
    pub(crate) identity: Option<String>,
    pub(crate) known_hosts: Option<Vec<KnownHost>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| if present { "<redacted>" } else { "<none>" };
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .field("username", &redacted(self.username.is_some()))
            .field("password", &redacted(self.password.is_some()))
            .field("bearer_token", &redacted(self.bearer_token.is_some()))
            .field("ca_certs", &self.ca_certs.len())
            .field("identity", &redacted(self.identity.is_some()))
            .field(
                "known_hosts",
                &self
                    .known_hosts
                    .as_ref()
                    .map(|k| format!("{} entries", k.len())),
            )
            .finish()
    }
}

/// A Secret that cannot be used as credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("secret {secret}: {problem}")]
pub struct CredentialsError {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// What is wrong (never a value from the Secret).
    pub problem: String,
}

impl CredentialsError {
    /// A short fixed name for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        "invalid_credentials"
    }
}

impl Credentials {
    /// No credentials: anonymous HTTPS, and SSH refused (there is no `known_hosts` to check the
    /// server against).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether these hold something an HTTP server would be sent (a password or a token), which
    /// plain `http://` would carry in clear.
    pub fn has_http_secret(&self) -> bool {
        self.password.is_some() || self.bearer_token.is_some()
    }

    /// Reads credentials from a Secret's `data`; `secret` (`namespace/name`) names it in
    /// messages.
    pub fn from_secret_data(
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, CredentialsError> {
        let err = |problem: String| CredentialsError {
            secret: secret.to_owned(),
            problem,
        };
        let text = |key: &str| -> Result<Option<String>, CredentialsError> {
            match data.get(key) {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes.clone())
                    .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                    .map_err(|_| err(format!("key {key} is not UTF-8 text"))),
            }
        };
        let username = text(KEY_USERNAME)?;
        let password = text(KEY_PASSWORD)?;
        let bearer_token = text(KEY_BEARER_TOKEN)?;
        // Keys keep their trailing newline: some parsers want it.
        let identity = data
            .get(KEY_IDENTITY)
            .map(|b| String::from_utf8(b.clone()))
            .transpose()
            .map_err(|_| err(format!("key {KEY_IDENTITY} is not UTF-8 text")))?;
        let known_hosts = text(KEY_KNOWN_HOSTS)?.map(|t| known_hosts::parse(&t));
        if matches!(&known_hosts, Some(k) if k.is_empty()) {
            return Err(err(format!(
                "key {KEY_KNOWN_HOSTS} has no usable entry (plain `host keytype key` lines; \
                 hashed entries are not supported)"
            )));
        }
        let ca_certs = match data.get(KEY_CA_FILE) {
            None => Vec::new(),
            Some(pem) => {
                let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
                match certs {
                    Ok(c) if !c.is_empty() => c,
                    _ => {
                        return Err(err(format!("key {KEY_CA_FILE} holds no PEM certificate")));
                    }
                }
            }
        };
        if username.is_some() != password.is_some() && identity.is_none() {
            return Err(err(format!(
                "keys {KEY_USERNAME} and {KEY_PASSWORD} go together; only one is set"
            )));
        }
        Ok(Self {
            source: secret.to_owned(),
            username,
            password,
            bearer_token,
            ca_certs,
            identity,
            known_hosts,
        })
    }

    /// The `Authorization` header to send with every HTTP(S) request: the bearer token, or the
    /// username and password as Basic credentials. Sent up front, so that no request first goes
    /// without and comes back `401` (a round trip, and a second ref advertisement, per operation).
    pub(crate) fn authorization_header(&self) -> Option<String> {
        use base64::Engine as _;
        if let Some(token) = &self.bearer_token {
            return Some(format!("Authorization: Bearer {token}"));
        }
        let (user, password) = (self.username.as_ref()?, self.password.as_ref()?);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Some(format!("Authorization: Basic {basic}"))
    }

    /// Checks an X.509 server certificate (DER) for `host` against `caFile`. `None` when there
    /// is no `caFile`, so that the system's roots decide.
    pub(crate) fn check_tls(&self, host: &str, der: &[u8]) -> Option<Result<(), String>> {
        if self.ca_certs.is_empty() {
            return None;
        }
        Some(verify_against_ca(&self.ca_certs, host, der))
    }

    /// Checks an SSH host key presented by the server `entry_name` (`host` or `[host]:port`).
    pub(crate) fn check_host_key(&self, entry_name: &str, key: &[u8]) -> Result<(), HostKeyError> {
        let Some(entries) = &self.known_hosts else {
            return Err(HostKeyError::NoKnownHosts {
                host: entry_name.to_owned(),
                secret: self.source.clone(),
            });
        };
        match known_hosts::check(entries, entry_name, key) {
            known_hosts::HostKeyCheck::Match => Ok(()),
            known_hosts::HostKeyCheck::Mismatch => Err(HostKeyError::Mismatch {
                host: entry_name.to_owned(),
                secret: self.source.clone(),
            }),
            known_hosts::HostKeyCheck::Unknown => Err(HostKeyError::Unknown {
                host: entry_name.to_owned(),
                secret: self.source.clone(),
            }),
        }
    }
}

/// Why an SSH server's host key was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyError {
    /// No `known_hosts` to check against.
    #[error(
        "host key for {host} cannot be checked: {} has no known_hosts; add the server's key \
         (`ssh-keyscan`) under the key known_hosts",
        secret_name(secret)
    )]
    NoKnownHosts {
        /// The server.
        host: String,
        /// The Secret.
        secret: String,
    },
    /// The host is not listed.
    #[error("host key for {host} is not in known_hosts of {}", secret_name(secret))]
    Unknown {
        /// The server.
        host: String,
        /// The Secret.
        secret: String,
    },
    /// The host is listed with other keys.
    #[error(
        "host key for {host} does not match known_hosts of {}: the server's key changed, or \
         someone is in the middle",
        secret_name(secret)
    )]
    Mismatch {
        /// The server.
        host: String,
        /// The Secret.
        secret: String,
    },
}

fn secret_name(secret: &str) -> String {
    if secret.is_empty() {
        "the GitRepository (no secretRef)".to_owned()
    } else {
        format!("secret {secret}")
    }
}

/// Verifies that `leaf` is valid for `host` and signed directly by one of `cas`.
///
/// libgit2 hands over only the server's own certificate, not the intermediates it sent, so a
/// chain through an intermediate CA cannot be rebuilt here: put the issuing CA in `caFile`.
fn verify_against_ca(
    cas: &[CertificateDer<'static>],
    host: &str,
    leaf: &[u8],
) -> Result<(), String> {
    let anchors = cas
        .iter()
        .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("caFile is not a usable CA certificate: {e}"))?;
    let leaf = CertificateDer::from(leaf);
    let cert = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| format!("the server's certificate does not parse: {e}"))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("the server's certificate is not signed by caFile: {e}"))?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("invalid server name {host}: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the server's certificate is not valid for {host}: {e}"))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let creds = Credentials::from_secret_data(
            "ns/git",
            &data(&[
                ("username", "alice"),
                ("password", "hunter2-very-secret"),
                ("bearerToken", "tok-123-secret"),
                (
                    "identity",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretkeymaterial\n",
                ),
            ]),
        )
        .unwrap();
        let debug = format!("{creds:?}");
        for secret in ["alice", "hunter2", "tok-123", "secretkeymaterial"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("<redacted>"));
        assert!(debug.contains("ns/git"));
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_values() {
        let err =
            Credentials::from_secret_data("ns/git", &data(&[("password", "p4ss")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret ns/git: keys username and password go together; only one is set"
        );
        let err =
            Credentials::from_secret_data("ns/git", &data(&[("caFile", "not a pem")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret ns/git: key caFile holds no PEM certificate"
        );
        let err = Credentials::from_secret_data("ns/git", &data(&[("known_hosts", "# nothing\n")]))
            .unwrap_err();
        assert!(err.to_string().contains("no usable entry"), "{err}");
        assert_eq!(err.category(), "invalid_credentials");
    }

    #[test]
    fn username_and_password_go_up_front_as_basic_credentials() {
        let creds = Credentials::from_secret_data(
            "ns/git",
            &data(&[("username", "ci"), ("password", "s3cret")]),
        )
        .unwrap();
        // base64("ci:s3cret")
        assert_eq!(
            creds.authorization_header().unwrap(),
            "Authorization: Basic Y2k6czNjcmV0"
        );
        assert_eq!(Credentials::none().authorization_header(), None);
    }

    #[test]
    fn bearer_token_becomes_an_authorization_header() {
        let creds =
            Credentials::from_secret_data("ns/git", &data(&[("bearerToken", "abc\n")])).unwrap();
        assert_eq!(
            creds.authorization_header().unwrap(),
            "Authorization: Bearer abc"
        );
    }

    #[test]
    fn unknown_host_key_names_host_and_secret() {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
        let creds = Credentials::from_secret_data(
            "ns/git",
            &data(&[("known_hosts", &format!("github.com ssh-ed25519 {key}\n"))]),
        )
        .unwrap();
        let err = creds
            .check_host_key("[127.0.0.1]:2222", b"whatever")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host key for [127.0.0.1]:2222 is not in known_hosts of secret ns/git"
        );
        let err = Credentials::none()
            .check_host_key("github.com", b"k")
            .unwrap_err();
        assert!(err.to_string().contains("no secretRef"), "{err}");
    }

    /// libgit2 hands over the server's certificate alone: a caFile holding the intermediate that
    /// signed it verifies it; the root alone cannot, and says so.
    #[test]
    fn an_intermediate_in_ca_file_vouches_for_the_certificate_it_signed() {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca("test root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let mid_key = KeyPair::generate().unwrap();
        let mid_params = ca("test intermediate");
        let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
        let mid_issuer = Issuer::new(mid_params, mid_key);
        let mut leaf = CertificateParams::new(vec!["git.example.com".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &mid_issuer)
            .unwrap();

        let with = |pem: String| {
            Credentials::from_secret_data("ns/git", &data(&[("caFile", &pem)])).unwrap()
        };
        let both = with(format!("{}{}", root.pem(), mid.pem()));
        assert_eq!(both.check_tls("git.example.com", leaf.der()), Some(Ok(())));
        let intermediate = with(mid.pem());
        assert_eq!(
            intermediate.check_tls("git.example.com", leaf.der()),
            Some(Ok(()))
        );
        let root_only = with(root.pem());
        let refused = root_only.check_tls("git.example.com", leaf.der());
        assert!(
            matches!(&refused, Some(Err(m)) if m.contains("not signed by caFile")),
            "{refused:?}"
        );
        assert!(matches!(
            intermediate.check_tls("other.example.com", leaf.der()),
            Some(Err(m)) if m.contains("not valid for other.example.com")
        ));
    }
}
