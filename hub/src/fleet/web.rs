//! The fleet's routes: `GET /v1/fleet` (JSON), `GET /v1/fleet/events` (server-sent events, one
//! `fleet` event per change, coalesced), the page at `/fleet` (server-rendered; `?part=main` is
//! its changing part alone, which the page's script fetches on each event), the login form, and
//! the page's own assets. Every response carries a strict Content-Security-Policy: scripts and
//! styles only from the hub itself, none inline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use tracing::{info, warn};

use super::auth::{self, who};
use super::view::{Filter, FleetView, State as DeployState};
use crate::state::Shared;

/// Events closer together than this are sent as one.
const COALESCE: Duration = Duration::from_millis(250);
/// How often an idle event stream sends a comment, so that proxies and the hub's own idle
/// watchdog keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Rows of the deployments table at most; narrower filters show the rest.
const MAX_ROWS: usize = 1000;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The fleet's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/fleet", get(json))
        .route("/v1/fleet/events", get(events))
        .route("/fleet", get(page))
        .route("/fleet/login", get(login_form).post(login))
        .route("/fleet/logout", post(logout))
        .route("/fleet/assets/{name}", get(asset))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(shared)
}

async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn unauthorized_json() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({
            "error": "a viewer token is needed: send `Authorization: Bearer <token>` or log in at /fleet/login"
        })),
    )
        .into_response()
}

fn viewer(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    who(&shared.config.viewers, &shared.sessions, headers)
}

/// `GET /v1/fleet`: the view as JSON, filtered by `cluster`, `repo`, `namespace` and `state`.
async fn json(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if viewer(&shared, &headers).is_none() {
        return unauthorized_json();
    }
    let filter = match Filter::from_query(&query) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": e })),
            )
                .into_response();
        }
    };
    let fleet = Arc::clone(&shared.fleet);
    match tokio::task::spawn_blocking(move || fleet.view(&filter, super::Rows::All)).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /v1/fleet/events`: a `fleet` event carrying the view's version now, and again after each
/// change: at once after a quiet spell, and at most one per [`COALESCE`] while changes keep coming
/// (those in between as one), until the hub shuts down.
async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if viewer(&shared, &headers).is_none() {
        return unauthorized_json();
    }
    let version = shared.fleet.subscribe();
    let shutdown = shared.shutdown.clone();
    let stream = futures::stream::unfold(
        (version, shutdown, None::<tokio::time::Instant>),
        |(mut version, shutdown, last)| async move {
            if let Some(last) = last {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    changed = version.changed() => changed.ok()?,
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep_until(last + COALESCE) => {}
                }
            }
            let now = *version.borrow_and_update();
            let event = Event::default().event("fleet").data(now.to_string());
            let sent = Some(tokio::time::Instant::now());
            Some((Ok::<_, Infallible>(event), (version, shutdown, sent)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEPALIVE))
        .into_response()
}

/// `GET /fleet`: the page, or `?part=main` its changing part; to the login form without a session.
async fn page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(viewer) = viewer(&shared, &headers) else {
        if query.contains_key("part") {
            return (StatusCode::UNAUTHORIZED, "log in at /fleet/login\n").into_response();
        }
        return Redirect::to("/fleet/login").into_response();
    };
    let filter = match Filter::from_query(&query) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let part = query.get("part").is_some_and(|p| p == "main");
    let fleet = Arc::clone(&shared.fleet);
    let rendered = tokio::task::spawn_blocking(move || {
        let version = *fleet.subscribe().borrow();
        let rows = super::Rows::AtMost {
            max: MAX_ROWS,
            attention: filter.is_empty(),
        };
        let view = fleet.view(&filter, rows);
        let main = Main::new(&view, &filter, version);
        if part {
            MainPart { m: main }.render()
        } else {
            let form = FilterForm::new(&filter, fleet.cluster_names());
            FleetPage {
                m: main,
                form,
                viewer,
            }
            .render()
        }
    })
    .await;
    match rendered {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) => {
            warn!(error = %e, "the fleet page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered\n",
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<&'static str>,
}

fn login_page(status: StatusCode, error: Option<&'static str>) -> Response {
    match (LoginPage { error }).render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /fleet/login`.
async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// `POST /fleet/login` with `token`: a session cookie and the way to the page.
async fn login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if !auth::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site login refused\n").into_response();
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let Some(v) = auth::viewer_for(&shared.config.viewers, token) else {
        warn!("fleet login refused: unknown viewer token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not one of this hub's viewer tokens."),
        );
    };
    info!(viewer = %v.name, "fleet login");
    let cookie = shared.sessions.start(&v.name);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::set_cookie(&cookie)),
            (header::LOCATION, "/fleet".to_string()),
        ],
    )
        .into_response()
}

/// `POST /fleet/logout`.
async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !auth::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site logout refused\n").into_response();
    }
    if let Some(cookie) = auth::session_cookie(&headers) {
        shared.sessions.end(cookie);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::clear_cookie()),
            (header::LOCATION, "/fleet/login".to_string()),
        ],
    )
        .into_response()
}

/// `GET /fleet/assets/{name}`: the page's script, style and icon, built into the hub.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match name.as_str() {
        "fleet.js" => (
            include_str!("../../assets/fleet.js"),
            "text/javascript; charset=utf-8",
        ),
        "fleet.css" => (
            include_str!("../../assets/fleet.css"),
            "text/css; charset=utf-8",
        ),
        "icon.svg" => (include_str!("../../assets/icon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---- what the templates show -------------------------------------------------------------

/// A time as the page shows it: relative, with the exact time on hover.
struct When {
    ms: u64,
    exact: String,
    relative: String,
}

impl When {
    fn new(ms: u64, now: u64) -> When {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        When {
            ms,
            exact: humantime::format_rfc3339_seconds(at).to_string(),
            relative: ago(now.saturating_sub(ms)),
        }
    }
}

/// How long ago, in words.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn short(sha: Option<&str>) -> String {
    match sha {
        Some(s) => s.chars().take(8).collect(),
        None => "—".into(),
    }
}

fn latency(ms: Option<u64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// A query string from pairs.
fn link(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    format!("/fleet?{}", q.finish())
}

/// An HTML id made of safe characters.
fn anchor(parts: &[&str]) -> String {
    let joined = parts.join("--");
    let safe: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("d-{safe}")
}

struct ClusterRow {
    name: String,
    link: String,
    connected: bool,
    word: &'static str,
    since: Option<When>,
    version: String,
    total: usize,
    failing: usize,
    behind: usize,
    ready: usize,
}

struct RepoRow {
    repo: String,
    git_ref: String,
    link: String,
    latest: Option<(String, When)>,
    total: usize,
    current: usize,
    behind: usize,
    failing: usize,
    other: usize,
}

struct DeployRow {
    id: String,
    link: String,
    cluster: String,
    cluster_link: String,
    repo: String,
    repo_link: String,
    namespace: String,
    name: String,
    state: &'static str,
    behind: bool,
    applied: String,
    attempted: String,
    reason: String,
    message: String,
    changed: Option<When>,
    latency: String,
}

/// The page's changing part.
struct Main {
    version: u64,
    generated: When,
    clusters: Vec<ClusterRow>,
    repos: Vec<RepoRow>,
    rows: Vec<DeployRow>,
    rows_title: &'static str,
    hidden: usize,
    connected: usize,
    totals: super::Counts,
}

impl Main {
    fn new(view: &FleetView, filter: &Filter, version: u64) -> Main {
        let now = view.generated_at;
        let clusters = view
            .clusters
            .iter()
            .map(|c| ClusterRow {
                name: c.name.clone(),
                link: link(&[("cluster", &c.name)]),
                connected: c.connected,
                word: match (c.connected, c.since) {
                    (true, _) => "connected",
                    (false, Some(_)) => "disconnected",
                    (false, None) => "never connected",
                },
                since: c.since.map(|t| When::new(t, now)),
                version: c.operator_version.clone().unwrap_or_else(|| "—".into()),
                total: c.repos.total,
                failing: c.repos.failing,
                behind: c.repos.behind,
                ready: c.repos.current + c.repos.behind,
            })
            .collect();
        let mut totals = super::Counts::default();
        let repos = view
            .repos
            .iter()
            .map(|r| {
                totals.add(&r.clusters);
                RepoRow {
                    repo: r.repo.clone(),
                    git_ref: r.git_ref.clone(),
                    link: link(&[("repo", &r.repo)]),
                    latest: r
                        .latest_push
                        .as_ref()
                        .map(|p| (short(Some(&p.sha)), When::new(p.received_at, now))),
                    total: r.clusters.total,
                    current: r.clusters.current,
                    behind: r.clusters.behind,
                    failing: r.clusters.failing,
                    other: r.clusters.progressing + r.clusters.suspended,
                }
            })
            .collect();
        // Unfiltered, the table lists what needs attention; filtered, everything that matches.
        let attention = filter.is_empty();
        // The view lists only what the page shows (see `page`); it counted the rest.
        let mut rows = Vec::new();
        let hidden = view.hidden;
        for r in &view.repos {
            for d in &r.deployments {
                let id = anchor(&[&d.cluster, &d.namespace, &d.name]);
                rows.push(DeployRow {
                    link: format!(
                        "{}#{id}",
                        link(&[
                            ("cluster", &d.cluster),
                            ("namespace", &d.namespace),
                            ("repo", &r.repo)
                        ])
                    ),
                    id,
                    cluster: d.cluster.clone(),
                    cluster_link: link(&[("cluster", &d.cluster)]),
                    repo: r.repo.clone(),
                    repo_link: link(&[("repo", &r.repo)]),
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    state: d.state.as_str(),
                    behind: d.behind,
                    applied: short(d.applied.as_deref()),
                    attempted: short(d.attempted.as_deref()),
                    reason: d.reason.clone(),
                    message: d.message.clone(),
                    changed: d.changed_at.map(|t| When::new(t, now)),
                    latency: latency(d.push_latency_ms),
                });
            }
        }
        Main {
            version,
            generated: When::new(now, now),
            connected: view.clusters.iter().filter(|c| c.connected).count(),
            clusters,
            repos,
            rows,
            rows_title: if attention {
                "Needs attention"
            } else {
                "Deployments"
            },
            hidden,
            totals,
        }
    }
}

struct Choice {
    value: String,
    selected: bool,
}

/// The filter form's current values and choices.
struct FilterForm {
    clusters: Vec<Choice>,
    states: Vec<Choice>,
    repo: String,
    namespace: String,
    filtered: bool,
}

impl FilterForm {
    fn new(filter: &Filter, clusters: Vec<String>) -> FilterForm {
        FilterForm {
            clusters: clusters
                .into_iter()
                .map(|name| Choice {
                    selected: filter.cluster.as_deref() == Some(name.as_str()),
                    value: name,
                })
                .collect(),
            states: DeployState::ALL
                .iter()
                .map(|s| Choice {
                    value: s.as_str().into(),
                    selected: filter.state == Some(*s),
                })
                .collect(),
            repo: filter.repo.clone().unwrap_or_default(),
            namespace: filter.namespace.clone().unwrap_or_default(),
            filtered: !filter.is_empty(),
        }
    }
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    m: Main,
    form: FilterForm,
    viewer: String,
}

#[derive(Template)]
#[template(path = "fleet_main.html")]
struct MainPart {
    m: Main,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_words_and_ids_stay_safe() {
        assert_eq!(ago(1_000), "just now");
        assert_eq!(ago(42_000), "42 s ago");
        assert_eq!(ago(3 * 60_000 + 5), "3 min ago");
        assert_eq!(ago(5 * 3_600_000), "5 h ago");
        assert_eq!(ago(3 * 86_400_000), "3 d ago");
        assert_eq!(When::new(0, 0).exact, "1970-01-01T00:00:00Z");
        assert_eq!(anchor(&["east 1", "apps", "web"]), "d-east_1--apps--web");
        assert_eq!(
            link(&[("repo", "git.example/a b"), ("state", "behind")]),
            "/fleet?repo=git.example%2Fa+b&state=behind"
        );
        assert_eq!(latency(Some(842)), "842 ms");
        assert_eq!(latency(Some(12_340)), "12.3 s");
    }
}
