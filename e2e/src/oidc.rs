//! A test OIDC issuer: HTTPS on loopback with a test CA of its own, one or more issuers under
//! paths of it (`https://127.0.0.1:PORT/<name>`), each with its discovery document and a JWKS
//! that the test publishes keys to (and whose fetches it counts), and tokens minted with claims
//! shaped like GitHub Actions' and GitLab CI's, signed with RSA or EC keys, or forged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::tls::TestCa;

/// A key the test signs tokens with, and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    /// The public key as a JWK, as the issuer publishes it.
    pub jwk: Value,
    /// The public key as PEM (what an HMAC forgery would take as its secret).
    pub public_pem: String,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh 2048-bit RSA key (RS256), made by `openssl`.
    pub fn rsa(kid: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key.pem");
        let key_path = key.display().to_string();
        crate::tool::run(
            "openssl",
            &["genrsa", "-traditional", "-out", &key_path, "2048"],
            None,
        )?;
        let modulus = crate::tool::run(
            "openssl",
            &["rsa", "-in", &key_path, "-noout", "-modulus"],
            None,
        )?;
        let hex_modulus = modulus
            .trim()
            .strip_prefix("Modulus=")
            .ok_or_else(|| anyhow!("openssl printed no modulus: {modulus}"))?;
        let n = (0..hex_modulus.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex_modulus[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        let public_pem = crate::tool::run("openssl", &["rsa", "-in", &key_path, "-pubout"], None)?;
        let private = std::fs::read(&key)?;
        Ok(Self {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB",
            }),
            public_pem,
            encoding: EncodingKey::from_rsa_pem(&private)?,
        })
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let raw = pair.public_key_raw();
        anyhow::ensure!(raw.len() == 65, "a P-256 point of {} bytes", raw.len());
        Ok(Self {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
            public_pem: pair.public_key_pem(),
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        })
    }

    /// `claims` signed with this key, the header naming its `kid`.
    pub fn mint(&self, claims: &Value) -> Result<String> {
        self.mint_as(&self.kid, claims)
    }

    /// `claims` signed with this key, the header naming `kid` (another key's, for a forgery).
    pub fn mint_as(&self, kid: &str, claims: &Value) -> Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// `claims` "signed" with HS256, keyed with this key's public PEM, as an attacker who hopes the
    /// verifier takes the public key for an HMAC secret would make it.
    pub fn mint_hmac_forgery(&self, claims: &Value) -> Result<String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let secret = EncodingKey::from_secret(self.public_pem.as_bytes())?;
        Ok(jsonwebtoken::encode(&header, claims, &secret)?)
    }
}

/// `claims` with `alg: none` and no signature, naming `kid`.
pub fn mint_unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}

/// Claims shaped like a GitHub Actions ID token for a push to `git_ref` of `repository`
/// (`owner/name`), valid for five minutes.
pub fn github_claims(issuer: &str, audience: &str, repository: &str, git_ref: &str) -> Value {
    let owner = repository.split('/').next().unwrap_or(repository);
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": format!("repo:{repository}:ref:{git_ref}"),
        "repository": repository,
        "repository_owner": owner,
        "ref": git_ref,
        "ref_type": "branch",
        "event_name": "push",
        "workflow": "deploy",
        "actor": "octocat",
        "run_id": "1234567890",
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 300,
    })
}

/// Claims shaped like a GitLab CI `id_tokens` token for a pipeline of `project_path` on
/// `git_ref` (a branch name), valid for five minutes.
pub fn gitlab_claims(issuer: &str, audience: &str, project_path: &str, git_ref: &str) -> Value {
    let namespace = project_path
        .rsplit_once('/')
        .map_or(project_path, |(ns, _)| ns);
    json!({
        "iss": issuer,
        "aud": audience,
        "sub": format!("project_path:{project_path}:ref_type:branch:ref:{git_ref}"),
        "project_path": project_path,
        "namespace_path": namespace,
        "ref": git_ref,
        "ref_type": "branch",
        "ref_protected": "true",
        "pipeline_source": "push",
        "user_login": "gitlab-user",
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 300,
    })
}

#[derive(Default)]
struct Published {
    keys: Vec<Value>,
    jwks_fetches: usize,
}

type Shared = Arc<Mutex<HashMap<String, Published>>>;

/// The issuer's HTTPS server, stopped when dropped.
pub struct TestIssuer {
    port: u16,
    dir: tempfile::TempDir,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// Serves one issuer per name in `names`, on `127.0.0.1`, from a thread of its own.
    pub fn start(names: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-oidc-").tempdir()?;
        let ca = TestCa::new("tether-test-oidc-ca")?;
        let cert = ca.server("oidc-issuer", &["localhost"], &[[127, 0, 0, 1].into()])?;
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
        let tls = server_tls(&cert.cert_pem, &cert.key_pem)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state: Shared = Arc::new(Mutex::new(
            names
                .iter()
                .map(|n| (n.to_string(), Published::default()))
                .collect(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("oidc-issuer".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(serve(listener, tls, served, port, stopped));
                }
            })?;
        Ok(Self {
            port,
            dir,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The issuer URL of `name`, as its tokens' `iss` gives it.
    pub fn url(&self, name: &str) -> String {
        issuer_url(self.port, name)
    }

    /// The CA that signs the server's certificate, for the access file's `ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Adds `key` to the JWKS of `name`.
    pub fn publish(&self, name: &str, key: &SigningKey) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .entry(name.to_string())
            .or_default()
            .keys
            .push(key.jwk.clone());
    }

    /// How many times the JWKS of `name` was fetched.
    pub fn jwks_fetches(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.get(name).map_or(0, |p| p.jwks_fetches)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn issuer_url(port: u16, name: &str) -> String {
    format!("https://127.0.0.1:{port}/{name}")
}

fn server_tls(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .context("no private key in the PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Shared,
    port: u16,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&state, port, &request);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Discovery and JWKS for each issuer; 404 for anything else.
fn answer<B>(state: &Shared, port: u16, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let found = path.strip_prefix('/').and_then(|rest| {
        let (name, what) = rest.split_once('/')?;
        let published = state.get_mut(name)?;
        let url = issuer_url(port, name);
        match what {
            ".well-known/openid-configuration" => Some(json!({
                "issuer": url,
                "jwks_uri": format!("{url}/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            })),
            "jwks" => {
                published.jwks_fetches += 1;
                Some(json!({ "keys": published.keys }))
            }
            _ => None,
        }
    });
    let (status, body) = match found {
        Some(body) => (StatusCode::OK, body.to_string()),
        None => (StatusCode::NOT_FOUND, "{}".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
