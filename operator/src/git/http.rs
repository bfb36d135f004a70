//! Smart HTTP for libgit2, on hyper and rustls, registered for `http://` and `https://`.
//!
//! libgit2's own HTTP client writes a request's head and its body in two writes on a socket without
//! `TCP_NODELAY`: the body waits for the server to acknowledge the head, and a server acknowledges
//! late on purpose (about 40 ms on Linux). Every `git-upload-pack` POST paid that, most of a fetch on
//! a near server. Here each request leaves at once, on one connection per operation kept alive
//! from the advertisement to the last POST. Reads and connects also end at the operation's deadline
//! (`spec.timeout`), not only at `--git-socket-timeout`.
//!
//! What the operation needs (credentials, the CA, the proxy, the deadline) reaches the transport
//! through [`enter`], a scope on the calling thread: libgit2 creates a transport inside the call
//! that connects, on that thread. Refusals are written to the operation's [`CallbackState`], so
//! that `remote::classify` tells them apart as it does for libgit2's own callbacks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{ErrorClass, ErrorCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::CertificateDer;
use tether_protocol::url::unbracket;
use tokio::io::{AsyncRead, AsyncWrite};

use super::remote::CallbackState;
use crate::net::{HostPort, ProxyConfig};

/// Redirects followed for the advertisement, as git does for its first request.
const MAX_REDIRECTS: usize = 5;
/// What is read of an answer's body left unread, to keep its connection for the next request.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const RESULT: &str = "application/x-git-upload-pack-result";
const USER_AGENT: &str = concat!("git/2.0 (tether-operator/", env!("CARGO_PKG_VERSION"), ")");

static SOCKET_TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// TLS client configs by the caFile certificates added to the system's roots (none: the system's
/// alone); emptied when it reaches [`MAX_TLS_CONFIGS`] (distinct caFiles, which are few).
static TLS_CONFIGS: LazyLock<Mutex<TlsConfigs>> = LazyLock::new(Mutex::default);
type TlsConfigs = HashMap<Vec<Vec<u8>>, Arc<rustls::ClientConfig>>;
const MAX_TLS_CONFIGS: usize = 64;

thread_local! {
    static OPERATION: RefCell<Option<Arc<Operation>>> = const { RefCell::new(None) };
}

/// Registers this transport for `http://` and `https://` with libgit2; `socket_timeout` bounds
/// each connect and read as `--git-socket-timeout` does for libgit2's own.
///
/// Call it from `main`, before any thread starts, as for [`super::set_socket_timeouts`].
#[allow(unsafe_code)]
pub fn register(socket_timeout: Duration) -> Result<(), git2::Error> {
    let _ = SOCKET_TIMEOUT.set(socket_timeout);
    for scheme in ["http", "https"] {
        // SAFETY: libgit2's table of transports is not synchronised; this is its only writer,
        // called from `main` before any thread exists or any remote is opened, and the factory it
        // stores is `Send + Sync` and lives for the rest of the process.
        unsafe { git2::transport::register(scheme, factory)? };
    }
    Ok(())
}

/// What one git operation gives the transport.
pub(super) struct Operation {
    /// spec.url's host, the only one credentials go to.
    pub host: String,
    /// The `Authorization` header's value, sent up front.
    pub authorization: Option<String>,
    /// `namespace/name` of the Secret, for messages (empty without one).
    pub source: String,
    /// caFile's certificates, trusted besides the system's roots.
    pub ca: Vec<CertificateDer<'static>>,
    pub proxy: ProxyConfig,
    pub deadline: Instant,
    pub state: Arc<Mutex<CallbackState>>,
}

/// While it lives, transports libgit2 creates on this thread serve its operation; at its end the
/// one before it (if an operation calls another) is back.
pub(super) struct Scope(Option<Arc<Operation>>);

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0.take();
        OPERATION.with(|o| *o.borrow_mut() = previous);
    }
}

/// Makes `operation` the one transports created on this thread serve, until the scope ends.
pub(super) fn enter(operation: Operation) -> Scope {
    Scope(OPERATION.with(|o| o.borrow_mut().replace(Arc::new(operation))))
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, git2::Error> {
    let operation = OPERATION.with(|o| o.borrow().clone()).unwrap_or_else(|| {
        // libgit2 used outside an operation (tests, tools): anonymous and direct.
        Arc::new(Operation {
            host: String::new(),
            authorization: None,
            source: String::new(),
            ca: Vec::new(),
            proxy: ProxyConfig::default(),
            deadline: Instant::now() + socket_timeout(),
            state: Arc::default(),
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| net_error(format!("starting the HTTP client: {e}")))?;
    let shared = Arc::new(Shared {
        operation,
        inner: Mutex::new(Inner {
            runtime,
            connection: None,
            base: None,
            unfinished: false,
        }),
    });
    Transport::smart(remote, true, Http(shared))
}

fn socket_timeout() -> Duration {
    SOCKET_TIMEOUT
        .get()
        .copied()
        .unwrap_or(super::DEFAULT_SOCKET_TIMEOUT)
}

fn net_error(message: impl AsRef<str>) -> git2::Error {
    git2::Error::new(ErrorCode::GenericError, ErrorClass::Net, message.as_ref())
}

struct Http(Arc<Shared>);

struct Shared {
    operation: Arc<Operation>,
    inner: Mutex<Inner>,
}

struct Inner {
    runtime: tokio::runtime::Runtime,
    connection: Option<Connection>,
    /// The repository's URL after the advertisement's redirects, for the POSTs that follow.
    base: Option<String>,
    /// A body of the last answer is still being read: its connection is busy.
    unfinished: bool,
}

struct Connection {
    origin: Origin,
    sender: SendRequest<Full<Bytes>>,
}

/// Scheme, host and port: what a connection is to.
#[derive(Clone, PartialEq, Eq)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

/// A URL cut into what a request needs.
struct Target {
    origin: Origin,
    /// `host[:port]` as the URL writes it, without user info.
    authority: String,
    /// The repository's path, without a trailing `/`.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, git2::Error> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| net_error(format!("{url} is not a URL git can reach over HTTP: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(net_error(format!("{url}: not http:// or https://"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| net_error(format!("{url}: no host")))?;
        let host = unbracket(authority.host()).to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, a)| a)
            .to_owned();
        Ok(Self {
            origin: Origin { tls, host, port },
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, suffix: &str) -> String {
        let scheme = if self.origin.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{suffix}", self.authority, self.path)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> MutexGuard<'_, CallbackState> {
        self.operation
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the next wait may take: to the deadline, at most the socket timeout. Past the
    /// deadline, the operation is marked timed out.
    fn budget(&self) -> Result<(Duration, bool), io::Error> {
        let left = self
            .operation
            .deadline
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.state().timed_out = true;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the operation's timeout passed",
            ));
        }
        let socket = socket_timeout();
        Ok((left.min(socket), left <= socket))
    }

    /// Runs `work` on the transport's runtime within the budget.
    fn run<T>(
        &self,
        inner: &Inner,
        what: &str,
        work: impl Future<Output = Result<T, io::Error>>,
    ) -> Result<T, io::Error> {
        let (budget, deadline_first) = self.budget()?;
        match inner
            .runtime
            .block_on(async { tokio::time::timeout(budget, work).await })
        {
            Ok(result) => result,
            Err(_) => {
                if deadline_first {
                    self.state().timed_out = true;
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no answer within {:.1} s", budget.as_secs_f64()),
                ))
            }
        }
    }

    /// A connection to `origin` ready for a request: the last one if it is to the same origin
    /// and idle, else a new one.
    fn ready(&self, inner: &mut Inner, origin: &Origin) -> Result<(), git2::Error> {
        let reusable = !inner.unfinished
            && inner
                .connection
                .as_ref()
                .is_some_and(|c| &c.origin == origin && !c.sender.is_closed());
        if reusable {
            let mut connection = inner.connection.take();
            let ok = connection.as_mut().is_some_and(|c| {
                self.run(inner, "waiting for the connection", async {
                    c.sender.ready().await.map_err(io::Error::other)
                })
                .is_ok()
            });
            if ok {
                inner.connection = connection;
                return Ok(());
            }
        }
        inner.connection = None;
        inner.unfinished = false;
        let sender = self.connect(inner, origin)?;
        inner.connection = Some(Connection {
            origin: origin.clone(),
            sender,
        });
        Ok(())
    }

    fn connect(
        &self,
        inner: &Inner,
        origin: &Origin,
    ) -> Result<SendRequest<Full<Bytes>>, git2::Error> {
        let target = HostPort::new(origin.host.clone(), origin.port);
        let proxy = &self.operation.proxy;
        let through = match proxy.http_proxy() {
            Ok(Some(p)) if !proxy.bypasses(&origin.host, origin.port) => Some(p.clone()),
            Ok(_) => None,
            Err(e) => return Err(net_error(format!("HTTPS_PROXY: {e}"))),
        };
        let tcp = self
            .run(inner, &format!("connecting to {target}"), async {
                let tcp = match &through {
                    Some(p) => crate::hub::connect_through(p, &target)
                        .await
                        .map_err(io::Error::other)?,
                    None => target.connect().await?,
                };
                tcp.set_nodelay(true)?;
                Ok(tcp)
            })
            .map_err(|e| match e.kind() {
                // The timeout's message already says what waited.
                io::ErrorKind::TimedOut => net_error(e.to_string()),
                _ => net_error(format!("connecting to {target}: {e}")),
            })?;
        if !origin.tls {
            return self.handshake(inner, tcp);
        }
        let config = self.tls_config()?;
        let name = rustls_pki_types::ServerName::try_from(origin.host.clone())
            .map_err(|e| net_error(format!("{}: not a TLS server name: {e}", origin.host)))?;
        let tls = self.run(inner, &format!("TLS with {target}"), async {
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        });
        match tls {
            Ok(stream) => self.handshake(inner, stream),
            Err(e) => {
                let certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                let message = format!("TLS with {target}: {e}");
                if certificate {
                    let mut message = message;
                    if !self.operation.ca.is_empty() {
                        message.push_str(" (neither the system's roots nor caFile trust it)");
                    }
                    self.state().certificate = Some(message.clone());
                    return Err(git2::Error::new(
                        ErrorCode::Certificate,
                        ErrorClass::Ssl,
                        message,
                    ));
                }
                Err(net_error(message))
            }
        }
    }

    fn handshake<S>(
        &self,
        inner: &Inner,
        stream: S,
    ) -> Result<SendRequest<Full<Bytes>>, git2::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = self
            .run(inner, "the HTTP handshake", async {
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(io::Error::other)
            })
            .map_err(|e| net_error(e.to_string()))?;
        // Driven whenever the transport waits on its runtime.
        inner.runtime.spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// The system's roots (read once) and caFile's certificates. One config per set of extra
    /// certificates, kept: it holds the TLS sessions, so that the next operation on the same server
    /// resumes one instead of a full handshake (a session is only ever resumed under the trust it
    /// was verified with, and carries no credentials: those go in each request).
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, git2::Error> {
        let key: Vec<Vec<u8>> = self.operation.ca.iter().map(|c| c.to_vec()).collect();
        let mut configs = TLS_CONFIGS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(&key) {
            return Ok(Arc::clone(config));
        }
        let mut roots = crate::net::tls::system_roots().clone();
        for cert in &self.operation.ca {
            roots
                .add(cert.clone())
                .map_err(|e| net_error(format!("caFile: not a usable trust anchor: {e}")))?;
        }
        let config =
            crate::net::tls::http1_client(roots).map_err(|e| net_error(format!("TLS: {e}")))?;
        if configs.len() >= MAX_TLS_CONFIGS {
            configs.clear();
        }
        configs.insert(key, Arc::clone(&config));
        Ok(config)
    }

    /// Sends one request and waits for its answer's head; the body is left to read.
    fn send(
        &self,
        inner: &mut Inner,
        target: &Target,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, io::Error> {
        self.ready(inner, &target.origin)
            .map_err(|e| io::Error::other(e.message().to_owned()))?;
        let mut connection = inner.connection.take();
        let response = match connection.as_mut() {
            Some(c) => self.run(
                inner,
                &format!("{} {}", request.method(), target.url("")),
                async {
                    c.sender
                        .send_request(request)
                        .await
                        .map_err(io::Error::other)
                },
            ),
            None => Err(io::Error::other("no connection")),
        };
        inner.connection = connection;
        if response.is_err() {
            inner.connection = None;
        } else {
            inner.unfinished = true;
        }
        response
    }

    fn request(
        &self,
        method: hyper::Method,
        target: &Target,
        suffix: &str,
    ) -> hyper::http::request::Builder {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{suffix}", target.path))
            .header(hyper::header::HOST, &target.authority)
            .header(hyper::header::USER_AGENT, USER_AGENT);
        // Credentials go to spec.url's host alone.
        if let Some(auth) = &self.operation.authorization
            && target
                .origin
                .host
                .eq_ignore_ascii_case(&self.operation.host)
        {
            builder = builder.header(hyper::header::AUTHORIZATION, auth);
        }
        builder
    }

    /// A refusal of the credentials (or of their absence), written where `classify` reads it.
    fn refused(&self, status: hyper::StatusCode) -> String {
        let message = if self.operation.authorization.is_some() {
            format!(
                "the server refused the credentials of {} ({status})",
                self.who()
            )
        } else {
            format!(
                "the server asks for credentials ({status}) and {} has none",
                self.who()
            )
        };
        self.state().auth_failure = Some(message.clone());
        message
    }

    fn who(&self) -> String {
        if self.operation.source.is_empty() {
            "the GitRepository (no secretRef)".to_owned()
        } else {
            format!("secret {}", self.operation.source)
        }
    }

    /// GET of the advertisement, following redirects; the answer's body.
    fn advertisement(&self, url: &str) -> Result<Incoming, git2::Error> {
        let mut inner = self.lock();
        let mut target = Target::parse(url)?;
        for _ in 0..=MAX_REDIRECTS {
            let request = self
                .request(
                    hyper::Method::GET,
                    &target,
                    "/info/refs?service=git-upload-pack",
                )
                .header(hyper::header::ACCEPT, "*/*")
                .header(hyper::header::PRAGMA, "no-cache")
                .body(Full::new(Bytes::new()))
                .map_err(|e| net_error(format!("the request: {e}")))?;
            let response = self
                .send(&mut inner, &target, request)
                .map_err(|e| net_error(format!("{}: {e}", target.url(""))))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.finish(&mut inner, response.into_body());
                target = self.redirected(&target, &location)?;
                continue;
            }
            self.check(&target, &response, ADVERTISEMENT)?;
            inner.base = Some(target.url(""));
            return Ok(response.into_body());
        }
        Err(net_error(format!(
            "{url}: more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// Where a redirect of the advertisement leads: the repository's URL on that side.
    fn redirected(&self, from: &Target, location: &str) -> Result<Target, git2::Error> {
        let absolute = if location.starts_with('/') {
            let scheme = if from.origin.tls { "https" } else { "http" };
            format!("{scheme}://{}{location}", from.authority)
        } else {
            location.to_owned()
        };
        let repo = absolute
            .split_once("/info/refs")
            .map_or(absolute.as_str(), |(base, _)| base);
        let to = Target::parse(repo)?;
        if from.origin.tls && !to.origin.tls {
            return Err(net_error(format!(
                "{}: the server redirects from https:// to {repo}; refused",
                from.url("")
            )));
        }
        if self.operation.authorization.is_some()
            && !to.origin.host.eq_ignore_ascii_case(&self.operation.host)
        {
            let message = format!(
                "the server sent the request on to {}, another host than spec.url's; \
                 credentials go to spec.url's host only",
                to.origin.host
            );
            self.state().auth_failure = Some(message.clone());
            return Err(git2::Error::new(ErrorCode::Auth, ErrorClass::Http, message));
        }
        Ok(to)
    }

    /// Refuses an answer that is not a success of the expected kind.
    fn check(
        &self,
        target: &Target,
        response: &hyper::Response<Incoming>,
        content_type: &str,
    ) -> Result<(), git2::Error> {
        let status = response.status();
        if status == hyper::StatusCode::UNAUTHORIZED
            || (status == hyper::StatusCode::FORBIDDEN && self.operation.authorization.is_some())
        {
            let message = self.refused(status);
            return Err(git2::Error::new(ErrorCode::Auth, ErrorClass::Http, message));
        }
        if !status.is_success() {
            return Err(git2::Error::new(
                ErrorCode::GenericError,
                ErrorClass::Http,
                format!("{}: the server answered {status}", target.url("")),
            ));
        }
        let got = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !got.eq_ignore_ascii_case(content_type) {
            return Err(net_error(format!(
                "{}: the server answered with {got:?}, not {content_type}: not a smart git \
                 HTTP server (dumb HTTP is not supported)",
                target.url("")
            )));
        }
        Ok(())
    }

    /// Reads what is left of a body so that its connection serves the next request; a body
    /// longer than that closes the connection instead.
    fn finish(&self, inner: &mut Inner, mut body: Incoming) {
        let drained = self.run(inner, "reading the rest of an answer", async {
            let mut read = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(io::Error::other)?;
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > MAX_DRAIN_BYTES {
                    return Err(io::Error::other("too long"));
                }
            }
            Ok(())
        });
        inner.unfinished = false;
        if drained.is_err() {
            inner.connection = None;
        }
    }
}

impl SmartSubtransport for Http {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        match action {
            Service::UploadPackLs => {
                let body = self.0.advertisement(url)?;
                Ok(Box::new(Stream {
                    shared: Arc::clone(&self.0),
                    request: None,
                    body: Some(body),
                    buffered: Bytes::new(),
                }))
            }
            Service::UploadPack => Ok(Box::new(Stream {
                shared: Arc::clone(&self.0),
                request: Some(Vec::new()),
                body: None,
                buffered: Bytes::new(),
            })),
            Service::ReceivePackLs | Service::ReceivePack => {
                Err(net_error("pushing is not something the operator does"))
            }
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        let mut inner = self.0.lock();
        inner.connection = None;
        inner.unfinished = false;
        Ok(())
    }
}

/// One request's stream: the advertisement's body, or a POST written, then its answer read.
struct Stream {
    shared: Arc<Shared>,
    /// The POST's body as libgit2 writes it; sent at the first read.
    request: Option<Vec<u8>>,
    body: Option<Incoming>,
    buffered: Bytes,
}

impl Stream {
    fn post(&mut self, payload: Vec<u8>) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut inner = shared.lock();
        let base = inner
            .base
            .clone()
            .ok_or_else(|| io::Error::other("a POST before the advertisement"))?;
        let target = Target::parse(&base).map_err(|e| io::Error::other(e.message().to_owned()))?;
        let request = shared
            .request(hyper::Method::POST, &target, "/git-upload-pack")
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-git-upload-pack-request",
            )
            .header(hyper::header::ACCEPT, RESULT)
            .body(Full::new(Bytes::from(payload)))
            .map_err(io::Error::other)?;
        let response = shared.send(&mut inner, &target, request)?;
        shared
            .check(&target, &response, RESULT)
            .map_err(|e| io::Error::other(e.message().to_owned()))?;
        self.body = Some(response.into_body());
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(payload) = self.request.take() {
            self.post(payload)?;
        }
        loop {
            if !self.buffered.is_empty() {
                let n = buf.len().min(self.buffered.len());
                buf[..n].copy_from_slice(&self.buffered.split_to(n));
                return Ok(n);
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            let shared = Arc::clone(&self.shared);
            let mut inner = shared.lock();
            let frame = shared.run(&inner, "reading the answer", async {
                body.frame().await.transpose().map_err(io::Error::other)
            });
            match frame {
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffered = data;
                    }
                }
                Ok(None) => {
                    self.body = None;
                    inner.unfinished = false;
                    return Ok(0);
                }
                Err(e) => {
                    self.body = None;
                    inner.connection = None;
                    inner.unfinished = false;
                    return Err(e);
                }
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // libgit2 writes a flush to an advertisement's stream on closing; nothing to send.
        if let Some(request) = self.request.as_mut() {
            request.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            let shared = Arc::clone(&self.shared);
            let mut inner = shared.lock();
            shared.finish(&mut inner, body);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_target_keeps_host_port_and_path_but_no_user_info() {
        let t = Target::parse("https://user:pw@git.example.com:8443/org/repo.git/").unwrap();
        assert!(t.origin.tls);
        assert_eq!(t.origin.host, "git.example.com");
        assert_eq!(t.origin.port, 8443);
        assert_eq!(t.authority, "git.example.com:8443");
        assert_eq!(t.path, "/org/repo.git");
        assert_eq!(
            t.url("/info/refs"),
            "https://git.example.com:8443/org/repo.git/info/refs"
        );
        let t = Target::parse("http://[::1]/r.git").unwrap();
        assert_eq!(
            (t.origin.host.as_str(), t.origin.port, t.origin.tls),
            ("::1", 80, false)
        );
        assert!(Target::parse("ssh://h/r.git").is_err());
    }

    fn operation(host: &str) -> Operation {
        Operation {
            host: host.to_owned(),
            authorization: None,
            source: String::new(),
            ca: Vec::new(),
            proxy: ProxyConfig::default(),
            deadline: Instant::now(),
            state: Arc::default(),
        }
    }

    fn current_host() -> Option<String> {
        OPERATION.with(|o| o.borrow().as_ref().map(|op| op.host.clone()))
    }

    #[test]
    fn a_scope_ends_with_the_one_before_it_back() {
        let outer = enter(operation("outer"));
        {
            let _inner = enter(operation("inner"));
            assert_eq!(current_host().as_deref(), Some("inner"));
        }
        assert_eq!(current_host().as_deref(), Some("outer"));
        drop(outer);
        assert_eq!(current_host(), None);
    }
}
