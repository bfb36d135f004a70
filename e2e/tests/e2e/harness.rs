//! The harness itself, proved against the real API server: what kubectl writes, kube-rs reads back;
//! CRDs become established; the versions are the pinned ones. And the headless browser, proved
//! against a page served here: scripts run under a strict CSP, clicks land, console errors are caught.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tether_e2e::browser::{Browser, artifacts_for};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{config_map, namespace, widget_crd};
use tether_e2e::kubectl::Kubectl;

#[tokio::test]
async fn kubectl_writes_and_kube_rs_reads_back() -> Result<()> {
    let ns = TestNamespace::create("harness-cm").await?;
    let other = format!("{}-extra", ns.name());
    ns.kubectl().apply(&format!(
        "{}---\n{}",
        namespace(&other),
        config_map(ns.name(), "settings", "hello")
    ))?;
    let client = ns.client().await?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .get("settings")
        .await?;
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );
    let created = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .get(&other)
        .await?;
    assert_eq!(created.metadata.name.as_deref(), Some(other.as_str()));
    ns.kubectl()
        .run(&["delete", "namespace", &other, "--wait=false"])?;
    Ok(())
}

#[tokio::test]
async fn applied_crd_becomes_established_and_serves_objects() -> Result<()> {
    let ns = TestNamespace::create("harness-crd").await?;
    // A group unique to this run, so reruns against a kept cluster do not collide.
    let group = format!("h{}.e2e.tether.dev", std::process::id());
    let crd = widget_crd(&group);
    ns.kubectl().apply(&crd)?;
    ns.kubectl().run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        &format!("crd/widgets.{group}"),
    ])?;

    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let api = Api::<DynamicObject>::namespaced_with(ns.client().await?, ns.name(), &resource);
    let mut widget = DynamicObject::new("small", &resource);
    widget.data = serde_json::json!({"spec": {"size": 3}});
    api.create(&PostParams::default(), &widget).await?;
    // By its full name: other tests install Widget kinds of their own groups at the same time, and
    // a bare `widgets` means whichever group discovery ranks first.
    let listed = ns.kubectl().run(&[
        "get",
        &format!("widgets.{group}"),
        "-n",
        ns.name(),
        "-o",
        "name",
    ])?;
    assert_eq!(listed.trim(), format!("widget.{group}/small"));
    ns.kubectl()
        .run(&["delete", "crd", &format!("widgets.{group}"), "--wait=false"])?;
    Ok(())
}

#[test]
fn kubectl_version_reports_the_pinned_release_for_client_and_server() -> Result<()> {
    let kubectl = Kubectl::for_plane(shared());
    let out = kubectl.run(&["version", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    for side in ["clientVersion", "serverVersion"] {
        let git = v[side]["gitVersion"].as_str().unwrap_or_default();
        assert!(
            git.starts_with("v1.36."),
            "{side} is {git:?}, want v1.36.x; kubectl version said: {out}"
        );
        assert_eq!(v[side]["minor"].as_str(), Some("36"), "{side}: {out}");
    }
    Ok(())
}

#[test]
fn control_plane_processes_are_running() {
    let plane = shared();
    let names: Vec<String> = plane.pids().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    for (name, pid) in plane.pids() {
        assert!(
            tether_e2e::process::alive(pid),
            "{name} ({pid}) is not running"
        );
    }
}

/// The page the browser self-test loads: an external script (the only kind the CSP allows), an inline
/// one the CSP must refuse, and a small form.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Harness page</title>
<script src="/app.js" defer></script>
<script>document.title = "the inline script ran";</script>
</head><body>
<h1 id="status">waiting for the script</h1>
<form id="login"><label>Name <input id="name" name="name" value="typed before"></label>
<button id="go" type="button">Go</button></form>
</body></html>
"#;

const SCRIPT: &str = r#"document.getElementById("status").textContent = "script ran";
document.getElementById("go").addEventListener("click", () => {
  document.getElementById("status").textContent = "clicked by " + document.getElementById("name").value;
  console.error("boom");
});
"#;

/// A tiny HTTP server for the browser self-test: `/` (the page, under a strict CSP and with a login
/// style cookie) and `/app.js`; everything else is 404. Stops when dropped.
struct PageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve(conn);
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // One more connection wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, kind, extra, body) = match path {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            "Content-Security-Policy: default-src 'none'; script-src 'self'\r\n\
             Set-Cookie: harness_session=s3cr3t; Path=/; HttpOnly; SameSite=Strict\r\n",
            PAGE,
        ),
        "/app.js" => ("200 OK", "text/javascript; charset=utf-8", "", SCRIPT),
        _ => ("404 Not Found", "text/plain", "", "not here\n"),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

#[test]
fn browser_runs_the_page_script_and_catches_its_console_error() -> Result<()> {
    let server = PageServer::start()?;
    let browser = Browser::start(&artifacts_for("harness-browser"))?;
    let page = server.url("/");
    browser.goto(&page)?;
    assert_eq!(browser.current_url()?, page);

    let status =
        browser.wait_until_text("#status", Duration::from_secs(5), |t| t == "script ran")?;
    assert_eq!(status, "script ran");
    assert_eq!(
        browser.title()?,
        "Harness page",
        "the CSP should have refused the inline script"
    );
    let refused = browser.console_errors()?;
    assert!(
        refused
            .iter()
            .any(|e| e.contains("Content Security Policy")),
        "no CSP refusal in the console errors: {refused:?}"
    );
    assert!(
        !refused.iter().any(|e| e.contains("boom")),
        "boom before the click: {refused:?}"
    );

    let form = browser.wait_for("#login", Duration::from_secs(5))?;
    let name = form.find("#name")?;
    assert_eq!(name.attr("name")?.as_deref(), Some("name"));
    assert_eq!(name.attr("data-missing")?, None);
    name.clear()?;
    name.send_keys("ada")?;
    assert_eq!(browser.find_all("form button")?.len(), 1);
    browser.find("#go")?.click()?;
    browser.wait_until_text("#status", Duration::from_secs(5), |t| t == "clicked by ada")?;

    let errors = browser.console_errors()?;
    assert!(
        errors.iter().any(|e| e.contains("\"boom\"")),
        "console.error(\"boom\") was not caught: {errors:?}"
    );
    let counted = browser.execute(
        "return document.querySelectorAll(arguments[0]).length + arguments[1];",
        &[serde_json::json!("input"), serde_json::json!(10)],
    )?;
    assert_eq!(counted, serde_json::json!(11));
    let by_element = browser.execute("return arguments[0].id;", &[name.as_arg()])?;
    assert_eq!(by_element, serde_json::json!("name"));

    let cookie = browser
        .cookie("harness_session")?
        .context("the page's cookie is not in the browser")?;
    assert!(cookie.http_only, "{cookie:?}");
    assert!(!cookie.secure, "{cookie:?}");
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"), "{cookie:?}");

    let missing = browser
        .find("#nowhere")
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        missing.contains("`#nowhere`") && missing.contains("no such element"),
        "{missing}"
    );
    let bad = browser
        .wait_for("#[", Duration::from_secs(30))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        bad.contains("invalid selector") && bad.contains("given up"),
        "{bad}"
    );

    let shot = browser.screenshot("harness-page")?;
    let png = std::fs::read(&shot).with_context(|| format!("reading {}", shot.display()))?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        shot.display()
    );
    Ok(())
}
