//! How libgit2 talks to a remote: the callbacks (credentials, host key and certificate checks, the
//! deadline), the fetch options (proxy, headers), and a libgit2 error told apart by what they saw.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use git2::{CertificateCheckStatus, Cred, CredentialType, FetchOptions, RemoteCallbacks};
use tether_protocol::url::{Syntax, Url, unbracket, without_userinfo};

use super::{Credentials, GitError, HostKeyError, known_hosts};
use crate::net::ProxyConfig;

/// The host (an IPv6 address without brackets) and port of a remote, for host key, certificate
/// and `NO_PROXY` checks; `None` for a local path.
fn host_and_port(url: &str) -> Option<(&str, Option<u16>)> {
    let parts = Url::split(url);
    match parts.syntax {
        Syntax::Url | Syntax::Scp => parts.host_port().ok().map(|(h, p)| (unbracket(h), p)),
        Syntax::Local | Syntax::HostPath => None,
    }
}

/// Whether the transport of `url` is libgit2's local one, which cannot fetch shallow.
pub(super) fn is_local(url: &str) -> bool {
    let parts = Url::split(url);
    parts.syntax == Syntax::Local || parts.scheme == Some("file")
}

/// What the callbacks saw, to tell a refused credential or host key from a network error.
#[derive(Default)]
pub(super) struct CallbackState {
    tried: Vec<CredentialType>,
    pub(super) auth_failure: Option<String>,
    host_key: Option<HostKeyError>,
    pub(super) certificate: Option<String>,
    pub(super) timed_out: bool,
}

/// The state of one operation, shared with the HTTP transport (see `http`).
pub(super) type SharedState = std::sync::Arc<Mutex<CallbackState>>;

/// Hands what an operation knows to the HTTP transport libgit2 creates for it on this thread.
pub(super) fn http_scope(
    url: &str,
    creds: &Credentials,
    proxy: &ProxyConfig,
    deadline: Instant,
    state: &SharedState,
) -> super::http::Scope {
    super::http::enter(super::http::Operation {
        host: host_and_port(url)
            .map(|(h, _)| h.to_owned())
            .unwrap_or_default(),
        authorization: creds
            .authorization_header()
            .and_then(|h| h.strip_prefix("Authorization: ").map(str::to_owned)),
        source: creds.source.clone(),
        ca: creds.ca_certs.clone(),
        proxy: proxy.clone(),
        deadline,
        state: std::sync::Arc::clone(state),
    })
}

/// Builds the callbacks for one operation: credentials, server checks and the deadline.
fn callbacks<'a>(
    url: &'a str,
    creds: &'a Credentials,
    deadline: Instant,
    state: &'a Mutex<CallbackState>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let (host, port) = host_and_port(url).unwrap_or_default();

    cb.credentials(move |asked_for, username_from_url, allowed| {
        let mut st = state
            .lock()
            .map_err(|_| git2::Error::from_str("state poisoned"))?;
        // Credentials are for spec.url's host alone, whatever a redirect says.
        let asked_host = host_and_port(asked_for).map(|(h, _)| h);
        if asked_host.is_some_and(|h| !h.eq_ignore_ascii_case(host)) {
            st.auth_failure = Some(format!(
                "the server sent the request on to {}, another host than spec.url's; \
                 credentials go to spec.url's host only",
                asked_host.unwrap_or_default()
            ));
            return Err(git2::Error::from_str(
                "credentials asked for by another host",
            ));
        }
        let kind = if allowed.contains(CredentialType::SSH_KEY) {
            CredentialType::SSH_KEY
        } else if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            CredentialType::USER_PASS_PLAINTEXT
        } else if allowed.contains(CredentialType::USERNAME) {
            CredentialType::USERNAME
        } else {
            st.auth_failure = Some("the server asks for an unsupported kind of credential".into());
            return Err(git2::Error::from_str("unsupported credential type"));
        };
        // libgit2 asks again after a refusal: the second time, the answer is final. HTTP
        // credentials went up front in an Authorization header: being asked means refused.
        let sent_up_front =
            kind == CredentialType::USER_PASS_PLAINTEXT && creds.authorization_header().is_some();
        if sent_up_front || st.tried.contains(&kind) {
            st.auth_failure = Some(format!(
                "the server refused the credentials of {}",
                if creds.source.is_empty() {
                    "the GitRepository (no secretRef)".to_owned()
                } else {
                    format!("secret {}", creds.source)
                }
            ));
            return Err(git2::Error::from_str("credentials refused"));
        }
        st.tried.push(kind);
        let user = username_from_url
            .map(str::to_owned)
            .or_else(|| creds.username.clone())
            .unwrap_or_else(|| "git".to_owned());
        if kind == CredentialType::SSH_KEY {
            let Some(identity) = &creds.identity else {
                st.auth_failure =
                    Some("the server asks for an SSH key and the secret has no identity".into());
                return Err(git2::Error::from_str("no SSH key"));
            };
            return Cred::ssh_key_from_memory(&user, None, identity, creds.password.as_deref())
                .inspect_err(|_| {
                    st.auth_failure =
                        Some("the identity in the secret is not a usable private key".into());
                });
        }
        if kind == CredentialType::USERNAME {
            return Cred::username(&user);
        }
        match (&creds.username, &creds.password) {
            (Some(u), Some(p)) => Cred::userpass_plaintext(u, p),
            _ => {
                st.auth_failure = Some(
                    "the server asks for a user name and password and the secret has none".into(),
                );
                Err(git2::Error::from_str("no credentials"))
            }
        }
    });

    cb.certificate_check(move |cert, _hostname| {
        let mut st = state
            .lock()
            .map_err(|_| git2::Error::from_str("state poisoned"))?;
        if let Some(hostkey) = cert.as_hostkey() {
            let name = known_hosts::host_entry_name(host, port);
            let Some(key) = hostkey.hostkey() else {
                st.host_key = Some(HostKeyError::Unknown {
                    host: name,
                    secret: creds.source.clone(),
                });
                return Err(git2::Error::from_str("host key not available"));
            };
            return match creds.check_host_key(&name, key) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    st.host_key = Some(e);
                    Err(git2::Error::from_str("host key refused"))
                }
            };
        }
        if let Some(x509) = cert.as_x509() {
            return match creds.check_tls(host, x509.data()) {
                None => Ok(CertificateCheckStatus::CertificatePassthrough),
                Some(Ok(())) => Ok(CertificateCheckStatus::CertificateOk),
                // Not signed by caFile: libgit2's own verdict (the system's roots) decides,
                // and the reason is kept for the message should that fail too.
                Some(Err(message)) => {
                    st.certificate = Some(message);
                    Ok(CertificateCheckStatus::CertificatePassthrough)
                }
            };
        }
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });

    // Past the deadline, the next callback libgit2 makes while data moves ends the operation:
    // the objects being received, and the server's progress messages before them.
    let in_time = move || {
        if Instant::now() < deadline {
            true
        } else {
            if let Ok(mut st) = state.lock() {
                st.timed_out = true;
            }
            false
        }
    };
    cb.transfer_progress(move |_| in_time());
    cb.sideband_progress(move |_| in_time());
    cb
}

/// Turns a libgit2 error into a [`GitError`], using what the callbacks saw.
pub(super) fn classify(
    url: &str,
    timeout: Duration,
    state: &Mutex<CallbackState>,
    e: git2::Error,
) -> GitError {
    let url = without_userinfo(url);
    let mut st = match state.lock() {
        Ok(st) => st,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(h) = st.host_key.take() {
        return GitError::HostKey(h);
    }
    if e.code() == git2::ErrorCode::Certificate {
        let message = st
            .certificate
            .take()
            .unwrap_or_else(|| e.message().to_owned());
        return GitError::Certificate { url, message };
    }
    if let Some(message) = st.auth_failure.take() {
        return GitError::AuthFailed { url, message };
    }
    if st.timed_out {
        return GitError::Timeout { url, timeout };
    }
    match e.code() {
        git2::ErrorCode::Auth => GitError::AuthFailed {
            url,
            message: e.message().to_owned(),
        },
        _ if e.class() == git2::ErrorClass::Http && e.message().contains("401") => {
            GitError::AuthFailed {
                url,
                message: e.message().to_owned(),
            }
        }
        _ => GitError::Unreachable { url, source: e },
    }
}

/// The fetch options for one operation: callbacks, bearer header, proxy, no automatic tags.
pub(super) fn fetch_options<'a>(
    url: &'a str,
    creds: &'a Credentials,
    proxy: &ProxyConfig,
    deadline: Instant,
    state: &'a Mutex<CallbackState>,
    headers: &'a [String],
) -> FetchOptions<'a> {
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks(url, creds, deadline, state));
    opts.proxy_options(proxy_options(url, proxy));
    opts.download_tags(git2::AutotagOption::None);
    opts.update_fetchhead(false);
    // libgit2 sends the custom headers (the bearer token among them) and the credentials it was
    // given with every request, a redirected one too: with a password or token, a redirect to
    // another host is refused rather than followed.
    if creds.has_http_secret() {
        opts.follow_redirects(git2::RemoteRedirect::None);
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    opts.custom_headers(&header_refs);
    opts
}

/// HTTP(S) through the proxy libgit2 finds (`HTTPS_PROXY` for https, `HTTP_PROXY` for http, or
/// git's `http.proxy`); SSH is never proxied. A host that `NO_PROXY` lists goes direct, read as
/// the hub connection reads it: libgit2's own reading of `NO_PROXY` knows no CIDR blocks.
fn proxy_options(url: &str, proxy: &ProxyConfig) -> git2::ProxyOptions<'static> {
    let mut options = git2::ProxyOptions::new();
    let bypass = host_and_port(url).is_some_and(|(host, port)| {
        let port = port.unwrap_or(if url.starts_with("http://") { 80 } else { 443 });
        proxy.bypasses(host, port)
    });
    if !bypass {
        options.auto();
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_for_each_url_form() {
        assert_eq!(
            host_and_port("ssh://git@127.0.0.1:2222/srv/r.git"),
            Some(("127.0.0.1", Some(2222)))
        );
        assert_eq!(
            host_and_port("git@github.com:o/r.git"),
            Some(("github.com", None))
        );
        assert_eq!(host_and_port("https://h.io/o/r"), Some(("h.io", None)));
        assert_eq!(host_and_port("ssh://[::1]:22/r"), Some(("::1", Some(22))));
        assert_eq!(host_and_port("git@[::1]:o/r.git"), Some(("::1", None)));
        assert_eq!(host_and_port("/srv/git/r.git"), None);
    }

    #[test]
    fn only_local_transports_are_local() {
        assert!(is_local("file:///srv/r.git"));
        assert!(is_local("/srv/r.git"));
        assert!(!is_local("https://h.io/r.git"));
        assert!(!is_local("git@h.io:/srv/r.git"));
    }
}
