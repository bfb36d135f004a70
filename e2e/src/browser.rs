//! A real headless browser for the tests of Tether's web pages: Debian's `chromium`, driven through
//! its `chromedriver` with W3C WebDriver commands over plain loopback HTTP/1.1.
//!
//! [`Browser::start`] starts a `chromedriver` of its own (tied to the starting thread, like every
//! process of the harness) and one headless session with a fresh profile. Pages are read and worked
//! through [`Element`]s found by CSS selectors; waits go through [`crate::wait`]. What the page wrote
//! to its console is kept, so that a test can fail on a script error ([`Browser::console_errors`]),
//! and screenshots land as PNG files in the artifacts folder given at the start.
//!
//! Both programs come from `hack/deps.sh`; `TETHER_CHROMEDRIVER` and `TETHER_CHROMIUM` point at
//! others.

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::process::{Lifetime, Process, free_port};
use crate::wait::{fatal, wait_until, wait_until_every};

/// How long chromedriver may take to answer `/status` as ready.
const DRIVER_READY: Duration = Duration::from_secs(20);
/// The socket bound of one WebDriver command: above the session's page-load and script timeouts.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long a page may take to load before `goto` fails.
const PAGE_LOAD_MS: u64 = 30_000;
/// How long an `execute` script may run.
const SCRIPT_MS: u64 = 10_000;
/// The pause between two looks of [`Browser::wait_for`] and [`Browser::wait_until_text`].
const POLL: Duration = Duration::from_millis(50);
/// The largest WebDriver answer read (a screenshot is the largest, a few MiB of base64).
const MAX_ANSWER: usize = 64 << 20;
/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the browser tests of `test` keep their screenshots and the chromedriver log:
/// `TETHER_ARTIFACTS_DIR/<test>`, else `<cargo target folder>/e2e-artifacts/<test>`.
pub fn artifacts_for(test: &str) -> PathBuf {
    let base = match std::env::var_os("TETHER_ARTIFACTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace::root().join("target"))
            .join("e2e-artifacts"),
    };
    base.join(test)
}

/// An error that the WebDriver answered with (`{"value":{"error":..,"message":..}}`), for the command
/// that got it.
#[derive(Debug)]
pub struct WebDriverError {
    /// What was asked, with its selector or URL.
    pub command: String,
    /// The WebDriver error code (`no such element`, `invalid selector`, `stale element reference`…).
    pub error: String,
    /// The driver's message, its first line.
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the browser answered {}: {}",
            self.command, self.error, self.message
        )
    }
}

impl std::error::Error for WebDriverError {}

/// Whether a wait should look again after `e`: the element is not there yet, or was replaced.
fn worth_retrying(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<WebDriverError>() {
        Some(w) => matches!(
            w.error.as_str(),
            "no such element" | "stale element reference"
        ),
        None => true,
    }
}

/// One line of the browser's console, as chromedriver hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConsoleMessage {
    /// `SEVERE` (an error), `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// Where it came from and what it said, e.g. `http://127.0.0.1:8080/app.js 3:9 "boom"`.
    pub message: String,
}

/// A cookie the browser holds for the current page, with the flags a login cookie is checked for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub http_only: bool,
    #[serde(default)]
    pub secure: bool,
    /// `Strict`, `Lax` or `None`, as the browser reports it.
    #[serde(default)]
    pub same_site: Option<String>,
}

/// A headless Chromium session behind a chromedriver of its own; dropping it ends both.
#[derive(Debug)]
pub struct Browser {
    driver: Process,
    port: u16,
    session: String,
    artifacts: PathBuf,
    /// Every console line read so far: chromedriver hands each one out only once.
    console: RefCell<Vec<ConsoleMessage>>,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless session in it; the driver's log and
    /// the screenshots go to `artifacts` (created if missing).
    pub fn start(artifacts: &Path) -> Result<Self> {
        let chromedriver = chromedriver()?;
        let chromium = chromium()?;
        std::fs::create_dir_all(artifacts)
            .with_context(|| format!("creating the artifacts folder {}", artifacts.display()))?;
        let profile = tempfile::Builder::new()
            .prefix("tether-browser-")
            .tempdir()?;
        let port = free_port()?;
        let log = artifacts.join("chromedriver.log");
        let mut driver = Process::spawn(
            "chromedriver",
            &chromedriver,
            &[format!("--port={port}")],
            &log,
            Lifetime::TiedToStarter,
        )?;
        let started = wait_ready(&mut driver, port)
            .and_then(|()| new_session(port, &chromium, profile.path()));
        let session = match started {
            Ok(session) => session,
            Err(e) => {
                driver.stop(Duration::from_secs(5));
                return Err(e.context(format!("starting a browser (log: {})", log.display())));
            }
        };
        Ok(Self {
            driver,
            port,
            session,
            artifacts: artifacts.to_path_buf(),
            console: RefCell::new(Vec::new()),
            _profile: profile,
        })
    }

    /// Where the screenshots and the chromedriver log go.
    pub fn artifacts(&self) -> &Path {
        &self.artifacts
    }

    /// Opens `url` and returns once the page has loaded (its `load` event), or fails after 30 s.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.command(
            &format!("opening {url}"),
            "POST",
            "url",
            Some(json!({"url": url})),
        )?;
        Ok(())
    }

    /// The URL of the page shown now (after redirects and script navigation).
    pub fn current_url(&self) -> Result<String> {
        string(self.command("reading the current URL", "GET", "url", None)?)
    }

    /// The page's `<title>`.
    pub fn title(&self) -> Result<String> {
        string(self.command("reading the page title", "GET", "title", None)?)
    }

    /// The first element that matches `css` now; fails at once if there is none.
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let found = self.command(
            &format!("finding `{css}`"),
            "POST",
            "element",
            Some(by_css(css)),
        )?;
        self.element(css, &found)
    }

    /// Every element that matches `css` now, in document order (none is no error).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let found = self.command(
            &format!("finding all `{css}`"),
            "POST",
            "elements",
            Some(by_css(css)),
        )?;
        self.elements(css, found)
    }

    /// Waits up to `timeout` for an element matching `css` to appear; fails at once on a bad selector.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element<'_>> {
        wait_until_every(&format!("`{css}` to appear"), timeout, POLL, || {
            self.find(css).map_err(retry_or_give_up)
        })
    }

    /// Waits up to `timeout` until the text of the first element matching `css` satisfies `wanted`;
    /// returns that text. The element is found anew at each look, so a replaced element is fine.
    pub fn wait_until_text(
        &self,
        css: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        wait_until_every(&format!("the text of `{css}`"), timeout, POLL, || {
            let text = self
                .find(css)
                .and_then(|e| e.text())
                .map_err(retry_or_give_up)?;
            if wanted(&text) {
                Ok(text)
            } else {
                bail!("`{css}` shows {text:?}")
            }
        })
    }

    /// Runs `script` as the body of a function in the page, with `args` as its `arguments`
    /// ([`Element::as_arg`] passes an element); returns what it returned.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        let first = script.lines().next().unwrap_or_default();
        self.command(
            &format!("running the script `{first}`"),
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Saves a screenshot of the window as `<artifacts>/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("screenshot name {name:?}: use a plain file name without a folder or extension");
        }
        let encoded = string(self.command(
            &format!("taking the screenshot {name}"),
            "GET",
            "screenshot",
            None,
        )?)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .with_context(|| format!("decoding the screenshot {name} (base64)"))?;
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Every console line the browser has logged since it started, of every level.
    pub fn console_messages(&self) -> Result<Vec<ConsoleMessage>> {
        let fresh = self.command(
            "reading the browser console",
            "POST",
            "se/log",
            Some(json!({"type": "browser"})),
        )?;
        let fresh: Vec<ConsoleMessage> = serde_json::from_value(fresh)
            .context("reading the browser console: the entries are not level/message objects")?;
        let mut all = self.console.borrow_mut();
        all.extend(fresh);
        Ok(all.clone())
    }

    /// The console errors (level `SEVERE`) since the browser started: `console.error` calls, uncaught
    /// exceptions, Content-Security-Policy refusals and failed loads.
    pub fn console_errors(&self) -> Result<Vec<String>> {
        Ok(self
            .console_messages()?
            .into_iter()
            .filter(|m| m.level == "SEVERE")
            .map(|m| m.message)
            .collect())
    }

    /// The cookies the browser holds for the current page.
    pub fn cookies(&self) -> Result<Vec<Cookie>> {
        let all = self.command("reading the cookies", "GET", "cookie", None)?;
        serde_json::from_value(all.clone())
            .with_context(|| format!("reading the cookies: unexpected shape {all}"))
    }

    /// The cookie called `name`, if the browser holds one for the current page.
    pub fn cookie(&self, name: &str) -> Result<Option<Cookie>> {
        Ok(self.cookies()?.into_iter().find(|c| c.name == name))
    }

    /// The chromedriver process (its pid, whether it still runs).
    pub fn driver(&mut self) -> &mut Process {
        &mut self.driver
    }

    fn element(&self, css: &str, found: &Value) -> Result<Element<'_>> {
        let id = found
            .get(ELEMENT_KEY)
            .and_then(Value::as_str)
            .with_context(|| format!("finding `{css}`: no element reference in {found}"))?;
        Ok(Element {
            browser: self,
            id: id.to_string(),
            selector: css.to_string(),
        })
    }

    fn elements(&self, css: &str, found: Value) -> Result<Vec<Element<'_>>> {
        match found {
            Value::Array(all) => all.iter().map(|f| self.element(css, f)).collect(),
            other => bail!("finding all `{css}`: expected a list, got {other}"),
        }
    }

    /// Sends one command of this session (`path` below `/session/{id}/`) and returns its `value`.
    fn command(&self, what: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/session/{}/{path}", self.session);
        exchange(self.port, what, method, &path, body.as_ref(), COMMAND_LIMIT)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; only then is the driver stopped.
        let path = format!("/session/{}", self.session);
        let _ = exchange(
            self.port,
            "ending the browser session",
            "DELETE",
            &path,
            None,
            Duration::from_secs(10),
        );
        self.driver.stop(Duration::from_secs(5));
    }
}

/// An element of the page, as found by a selector. It goes stale when the page replaces it: find it
/// again then.
#[derive(Debug)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
    selector: String,
}

impl Element<'_> {
    /// The selector it was found by.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Clicks it, as a person would (it must be shown and not covered).
    pub fn click(&self) -> Result<()> {
        self.command("clicking", "POST", "click", Some(json!({})))?;
        Ok(())
    }

    /// Types `text` into it, after what it already holds.
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.command(
            &format!("typing {} characters into", text.chars().count()),
            "POST",
            "value",
            Some(json!({"text": text})),
        )?;
        Ok(())
    }

    /// Empties an input or a textarea.
    pub fn clear(&self) -> Result<()> {
        self.command("clearing", "POST", "clear", Some(json!({})))?;
        Ok(())
    }

    /// Its rendered text (what a person sees, not hidden parts).
    pub fn text(&self) -> Result<String> {
        string(self.command("reading the text of", "GET", "text", None)?)
    }

    /// Its attribute `name` (or, as WebDriver does, the property of that name), `None` when unset.
    pub fn attr(&self, name: &str) -> Result<Option<String>> {
        let value = self.command(
            &format!("reading the attribute {name} of"),
            "GET",
            &format!("attribute/{name}"),
            None,
        )?;
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Ok(Some(other.to_string())),
        }
    }

    /// The first element inside this one that matches `css`.
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let inner = format!("{} {css}", self.selector);
        let found = self.command(
            &format!("finding `{css}` in"),
            "POST",
            "element",
            Some(by_css(css)),
        )?;
        self.browser.element(&inner, &found)
    }

    /// The element as an argument of [`Browser::execute`].
    pub fn as_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    fn command(&self, what: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.browser.command(
            &format!("{what} `{}`", self.selector),
            method,
            &format!("element/{}/{path}", self.id),
            body,
        )
    }
}

/// `TETHER_CHROMEDRIVER`, else `chromedriver` on the `PATH`.
fn chromedriver() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TETHER_CHROMEDRIVER") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "TETHER_CHROMEDRIVER is {}, which is no file: point it at a chromedriver, or unset it \
                 and run hack/deps.sh",
                path.display()
            );
        }
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("chromedriver"))
        .find(|p| p.is_file());
    on_path.context(
        "chromedriver is not on the PATH: run hack/deps.sh (it installs Debian's chromium and \
         chromium-driver), or set TETHER_CHROMEDRIVER",
    )
}

/// `TETHER_CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> Result<PathBuf> {
    let (path, from) = match std::env::var_os("TETHER_CHROMIUM") {
        Some(p) => (PathBuf::from(p), "TETHER_CHROMIUM"),
        None => (PathBuf::from("/usr/bin/chromium"), "the default path"),
    };
    if !path.is_file() {
        bail!(
            "Chromium is missing at {} ({from}): run hack/deps.sh (Debian's chromium), or set \
             TETHER_CHROMIUM to a Chromium binary",
            path.display()
        );
    }
    Ok(path)
}

/// Waits until chromedriver's `/status` says ready; fails at once if it exits.
fn wait_ready(driver: &mut Process, port: u16) -> Result<()> {
    wait_until("chromedriver to be ready", DRIVER_READY, || {
        driver.check_running().map_err(fatal)?;
        let status = exchange(
            port,
            "asking chromedriver's /status",
            "GET",
            "/status",
            None,
            Duration::from_secs(5),
        )?;
        match status.get("ready") {
            Some(Value::Bool(true)) => Ok(()),
            _ => bail!("chromedriver is not ready: {status}"),
        }
    })
}

/// Creates the headless session; returns its id.
fn new_session(port: u16, chromium: &Path, profile: &Path) -> Result<String> {
    let args = [
        "--headless=new".to_string(),
        // The tests run as root, where Chromium's sandbox cannot start.
        "--no-sandbox".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--disable-gpu".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1400,1000".to_string(),
    ];
    let capabilities = json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "timeouts": {"implicit": 0, "pageLoad": PAGE_LOAD_MS, "script": SCRIPT_MS},
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": args,
                },
                "goog:loggingPrefs": {"browser": "ALL"},
            }
        }
    });
    let created = exchange(
        port,
        &format!("starting a headless session of {}", chromium.display()),
        "POST",
        "/session",
        Some(&capabilities),
        COMMAND_LIMIT,
    )?;
    created
        .get("sessionId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("the new session has no sessionId: {created}"))
}

/// A wait's view of a failed look: try again while the element may still come, else stop.
fn retry_or_give_up(e: anyhow::Error) -> anyhow::Error {
    if worth_retrying(&e) { e } else { fatal(e) }
}

fn by_css(css: &str) -> Value {
    json!({"using": "css selector", "value": css})
}

fn string(value: Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s),
        other => bail!("expected a string from the browser, got {other}"),
    }
}

/// One WebDriver request to `127.0.0.1:port`: the JSON `body` sent with a Content-Length, the answer's
/// `value` returned, a WebDriver error turned into a [`WebDriverError`] for `what`.
fn exchange(
    port: u16,
    what: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    limit: Duration,
) -> Result<Value> {
    let (status, answer) = send(port, method, path, body, limit)
        .with_context(|| format!("{what}: {method} {path} to chromedriver on 127.0.0.1:{port}"))?;
    let parsed: Value = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "{what}: chromedriver answered {status} with no JSON: {}",
            String::from_utf8_lossy(&answer)
        )
    })?;
    let value = parsed.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(WebDriverError {
            command: what.to_string(),
            error: error.to_string(),
            message: message.lines().next().unwrap_or_default().to_string(),
        }
        .into());
    }
    if status != 200 {
        bail!("{what}: chromedriver answered {status}: {parsed}");
    }
    Ok(value)
}

/// Sends one HTTP/1.1 request and reads the status and the body (by its Content-Length).
fn send(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    limit: Duration,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if body.is_some() {
        request.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    if body.is_some() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", payload.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.push_str(&payload);
    stream.write_all(request.as_bytes())?;

    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let (head_end, length) = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                bail!("the answer is chunked, which this client does not read: {head}");
            }
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            break (end + 4, length);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!(
                "the connection closed before the answer's headers ended: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_ANSWER {
            bail!("the answer's headers run past {MAX_ANSWER} bytes");
        }
    };
    let status = String::from_utf8_lossy(&raw[..head_end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "no HTTP status in {:?}",
                String::from_utf8_lossy(&raw[..head_end])
            )
        })?;
    let wanted = length.map(|n| head_end + n);
    if wanted.is_some_and(|w| w > head_end + MAX_ANSWER) {
        bail!("the answer is larger than {MAX_ANSWER} bytes");
    }
    while wanted.is_none_or(|w| raw.len() < w) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > head_end + MAX_ANSWER {
            bail!("the answer runs past {MAX_ANSWER} bytes");
        }
    }
    if let Some(w) = wanted {
        if raw.len() < w {
            bail!(
                "the connection closed after {} of {} body bytes",
                raw.len() - head_end,
                w - head_end
            );
        }
        raw.truncate(w);
    }
    Ok((status, raw.split_off(head_end)))
}
