//! CI access end to end: the operator runs in a network namespace that drops every inbound
//! connection, the hub serves HTTPS outside it, and the real `kubectl` and `helm`, with a kubeconfig
//! whose server is `https://<hub>/k8s-proxy/<agent>` and a bearer token, reach the API server
//! through the tunnel the operator opened, as the identity the operator's access file maps the
//! token to (RBAC written here decides the rest).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::{SinkExt as _, StreamExt as _};
use tether_e2e::ci::{
    CiToken, Streaming, operator_flags, wait_tunnel, write_access_file, write_access_file_limited,
    write_kubeconfig,
};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::gitrepo::install_crds;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{Hub, HubOptions};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::netns::IsolatedNetns;
use tether_e2e::operator::Operator;
use tether_e2e::process::{Lifetime, Process, rss_bytes};
use tether_e2e::tool::Finished;
use tether_e2e::wait::wait_until;
use tether_e2e::workspace::binary;
use tokio_tungstenite::tungstenite::Message;

/// How long the tunnel may take to open once the operator starts.
const TUNNEL_OPENS_WITHIN: Duration = Duration::from_secs(60);

/// How long a streamed change may take to show.
const SHOWS_WITHIN: Duration = Duration::from_secs(30);

/// The user the deployer's token acts as.
const DEPLOYER: &str = "ci-deployer";

/// A namespace with RBAC for [`DEPLOYER`], a TLS hub, the operator (with CI access) in a namespace
/// that lets nothing in, and a kubeconfig for the hub's `/k8s-proxy/e2e`.
struct Scene {
    ns: TestNamespace,
    hub: Hub,
    _netns: IsolatedNetns,
    operator: Operator,
    deployer: CiToken,
    /// Further tokens the access file names, each for [`DEPLOYER`] too.
    others: Vec<CiToken>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// Limits a scene sets below their defaults, and the further tokens it names.
#[derive(Default)]
struct Caps {
    /// The hub's `max_tunnel_streams_per_agent`.
    streams_per_agent: Option<usize>,
    /// The access file's `limits.max_requests_per_identity`.
    requests_per_identity: Option<usize>,
    /// Names of further tokens.
    others: &'static [&'static str],
}

impl Scene {
    fn start(prefix: &str) -> Result<Self> {
        Self::start_with(prefix, Caps::default())
    }

    fn start_with(prefix: &str, caps: Caps) -> Result<Self> {
        let ns = block(TestNamespace::create(prefix))?;
        install_crds(ns.kubectl())?;
        ns.kubectl().apply(&deployer_rbac(ns.name()))?;
        let hub = Hub::start_with(HubOptions {
            tls: true,
            max_tunnel_streams_per_agent: caps.streams_per_agent,
            ..HubOptions::default()
        })?;
        let mut netns = IsolatedNetns::create()?;
        let api_port = tether_e2e::cluster::shared().api_port();
        for port in [api_port, hub.port()] {
            netns.relay_out(port)?;
        }
        let dir = tempfile::Builder::new().prefix("tether-ci-").tempdir()?;
        let deployer = CiToken::new("deployer", DEPLOYER, &["tether:ci"]);
        let others: Vec<CiToken> = caps
            .others
            .iter()
            .map(|name| CiToken::new(name, DEPLOYER, &["tether:ci"]))
            .collect();
        let access = dir.path().join("ci-access.yaml");
        let tokens: Vec<CiToken> = std::iter::once(deployer.clone())
            .chain(others.iter().cloned())
            .collect();
        write_access_file_limited(&access, &tokens, caps.requests_per_identity)?;
        let flags = operator_flags(&hub, &access);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let operator = Operator::start_in(ns.kubeconfig(), ns.name(), &refs, Some(netns.name()))?;
        let kubeconfig = write_kubeconfig(
            &dir.path().join("ci.kubeconfig"),
            &format!("{}/k8s-proxy/e2e", hub.https_url()),
            &hub.ca_file(),
            &deployer.token,
        )?;
        let scene = Self {
            ns,
            hub,
            _netns: netns,
            operator,
            deployer,
            others,
            dir,
            kubeconfig,
        };
        scene.wait_tunnel()?;
        Ok(scene)
    }

    /// Waits until the hub counts the operator's tunnel as connected.
    fn wait_tunnel(&self) -> Result<()> {
        wait_tunnel(&self.hub, TUNNEL_OPENS_WITHIN).with_context(|| self.logs())
    }

    /// The hub's metrics, over HTTPS.
    fn hub_metrics(&self) -> Result<String> {
        self.hub.metrics()
    }

    /// kubectl as the CI job runs it: through the hub, with the deployer's token.
    fn ci(&self) -> Kubectl {
        Kubectl::new(self.binary("kubectl"), self.kubeconfig.clone())
    }

    /// kubectl through the hub with another kubeconfig (a wrong token, another agent).
    fn ci_with(&self, name: &str, server: &str, token: &str) -> Result<Kubectl> {
        let path = write_kubeconfig(
            &self.dir.path().join(name),
            server,
            &self.hub.ca_file(),
            token,
        )?;
        Ok(Kubectl::new(self.binary("kubectl"), path))
    }

    /// curl through the hub: `url` with `token` as the bearer and `headers` added. The answer's
    /// headers, its body and, on the last line, its status code.
    fn curl(&self, url: &str, token: Option<&str>, headers: &[&str]) -> Result<String> {
        let ca = self.hub.ca_file().display().to_string();
        let mut args: Vec<String> = ["-sS", "-m", "10", "--cacert", &ca, "-D", "-"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let bearer = token.map(|t| format!("Authorization: Bearer {t}"));
        for header in bearer
            .iter()
            .map(String::as_str)
            .chain(headers.iter().copied())
        {
            args.extend(["-H".to_string(), header.to_string()]);
        }
        args.extend([
            "-w".to_string(),
            "\n%{http_code}".to_string(),
            url.to_string(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tether_e2e::tool::run("curl", &refs, None)
    }

    fn binary(&self, name: &str) -> PathBuf {
        tether_e2e::cluster::shared().binaries().path(name)
    }

    fn logs(&self) -> String {
        format!(
            "operator log:\n{}\nhub log:\n{}",
            self.operator.log_tail(),
            self.hub.log_tail()
        )
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A Role in `ns` that lets [`DEPLOYER`] manage ConfigMaps and Secrets (helm keeps its releases in
/// Secrets), and nothing else anywhere.
fn deployer_rbac(ns: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: ci-deployer, namespace: {ns} }}
rules:
  - apiGroups: [""]
    resources: [configmaps, secrets]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ci-deployer, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ci-deployer }}
subjects:
  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {DEPLOYER} }}
"#
    )
}

fn failed_with(done: &Finished, part: &str) -> Result<()> {
    ensure!(!done.status.success(), "succeeded: {}", done.stdout);
    ensure!(
        done.stderr.contains(part),
        "stderr has no {part:?}: {}",
        done.stderr
    );
    Ok(())
}

/// `kubectl auth whoami`, `apply --server-side`, a forbidden read, `get -w`, `wait` and
/// `helm upgrade --install` all work through the hub, as the mapped user, from a network the
/// operator's namespace never lets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_helm_reach_the_cluster_through_the_hub_as_the_mapped_identity() -> Result<()> {
    let scene = Scene::start("ci-access")?;
    let ns = scene.ns.name();
    let ci = scene.ci();

    let whoami = ci.run(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    ensure!(whoami.trim() == DEPLOYER, "whoami: {whoami}");

    let config_map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: from-ci, namespace: {ns} }}\ndata: {{ greeting: hello }}\n"
    );
    ci.run_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&config_map))?;
    let greeting = scene.ns.kubectl().run(&[
        "get",
        "configmap",
        "from-ci",
        "-n",
        ns,
        "-o",
        "jsonpath={.data.greeting}",
    ])?;
    ensure!(greeting == "hello", "the ConfigMap greets {greeting:?}");
    let manager = scene.ns.kubectl().run(&[
        "get",
        "configmap",
        "from-ci",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.managedFields[0].manager}",
    ])?;
    ensure!(manager == "kubectl", "managed by {manager:?}");

    // The API server itself refuses what RBAC does not grant the impersonated user.
    let forbidden = ci.output(&["get", "configmaps", "-n", "kube-system"])?;
    failed_with(&forbidden, "Forbidden")?;
    failed_with(&forbidden, DEPLOYER)?;

    // A watch streams a change made after it started.
    let mut watch = Command::new(scene.binary("kubectl"));
    watch.env("KUBECONFIG", &scene.kubeconfig).args([
        "get",
        "configmaps",
        "-n",
        ns,
        "-w",
        "--watch-only",
        "-o",
        "name",
    ]);
    let mut watch = Streaming::start(watch, &scene.dir.path().join("watch.err"))?;
    // The watch is open once the hub relays it; a ConfigMap made before that would be missed.
    wait_until("the watch in flight", SHOWS_WITHIN, || {
        let streams = metric_value(&scene.hub_metrics()?, "tether_hub_tunnel_streams");
        ensure!(streams >= Some(1.0), "streams in flight: {streams:?}");
        Ok(())
    })?;
    // `kubectl wait` for an object that does not exist yet returns once it does.
    let mut wait = Command::new(scene.binary("kubectl"));
    wait.env("KUBECONFIG", &scene.kubeconfig).args([
        "wait",
        "--for=create",
        "configmap/made-later",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    let mut wait = Streaming::start(wait, &scene.dir.path().join("wait.err"))?;
    scene.ns.kubectl().apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: made-later, namespace: {ns} }}\n"
    ))?;
    watch.wait_for_line("configmap/made-later", SHOWS_WITHIN)?;
    ensure!(
        wait.wait_exit(SHOWS_WITHIN)?,
        "kubectl wait failed: {}",
        std::fs::read_to_string(scene.dir.path().join("wait.err")).unwrap_or_default()
    );
    drop(watch);

    // helm installs a local chart and lists it, through the same kubeconfig.
    let chart = scene.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: ci-app\nversion: 0.1.0\n",
    )?;
    std::fs::write(
        chart.join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  greeting: from-helm\n",
    )?;
    let helm = |args: &[&str]| {
        let mut cmd = Command::new(scene.binary("helm"));
        cmd.env("KUBECONFIG", &scene.kubeconfig)
            .env("HELM_CACHE_HOME", scene.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", scene.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", scene.dir.path().join("helm-data"))
            .args(args);
        tether_e2e::tool::run_command(&mut cmd, None)
    };
    let chart_dir = chart.display().to_string();
    helm(&[
        "upgrade",
        "--install",
        "ci-app",
        &chart_dir,
        "-n",
        ns,
        "--wait",
        "--timeout",
        "60s",
    ])?;
    let listed = helm(&["list", "-n", ns, "-q"])?;
    ensure!(listed.trim() == "ci-app", "helm list: {listed:?}");
    let from_helm = scene.ns.kubectl().run(&[
        "get",
        "configmap",
        "ci-app-settings",
        "-n",
        ns,
        "-o",
        "jsonpath={.data.greeting}",
    ])?;
    ensure!(from_helm == "from-helm", "{from_helm:?}");

    // One audit line per request, with the identity and never the token.
    let log = scene.operator.log();
    ensure!(
        log.contains("CI request") && log.contains("identity=\"deployer\"")
            || log.contains("identity=deployer"),
        "no audit line:\n{}",
        scene.operator.log_tail()
    );
    ensure!(
        !log.contains(&scene.deployer.token),
        "the token reached the operator's log"
    );
    // A line is written once its response has ended, with the bytes it carried: every GET the
    // API server answered 200 sent a body.
    let gets: Vec<_> = log
        .lines()
        .filter(|l| l.contains("CI request"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.iter().any(|w| *w == "verb=\"get\"" || *w == "verb=get"))
        .filter(|f| f.contains(&"status=200"))
        .collect();
    ensure!(
        !gets.is_empty() && gets.iter().all(|f| !f.contains(&"bytes_out=0")),
        "GETs answered 200 without the bytes they carried in the audit line:\n{}",
        scene.operator.log_tail()
    );
    ensure!(
        !scene.hub.log().contains(&scene.deployer.token),
        "the token reached the hub's log"
    );
    Ok(())
}

/// A wrong token gets 401, an agent the hub does not know gets 404, and a client's own `--as` (an
/// `Impersonate-User` header) is refused with 403 before anything reaches the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_unknown_agents_and_client_impersonation_are_refused() -> Result<()> {
    let scene = Scene::start("ci-refused")?;
    let ns = scene.ns.name();
    let server = format!("{}/k8s-proxy/e2e", scene.hub.https_url());

    let wrong = scene.ci_with("wrong.kubeconfig", &server, "not-a-ci-token")?;
    // kubectl words a 401 as a request to log in.
    failed_with(
        &wrong.output(&["get", "configmaps", "-n", ns])?,
        "You must be logged in to the server",
    )?;

    let elsewhere = format!("{}/k8s-proxy/no-such-agent", scene.hub.https_url());
    let unknown = scene.ci_with("unknown.kubeconfig", &elsewhere, &scene.deployer.token)?;
    let done = unknown.output(&["get", "configmaps", "-n", ns])?;
    ensure!(!done.status.success(), "succeeded: {}", done.stdout);
    // kubectl words a 404 in discovery its own way; the hub's answer names the agent.
    let answer = scene.curl(&format!("{elsewhere}/api"), None, &[])?;
    ensure!(
        answer.trim_end().ends_with("404")
            && answer.contains(r#"this hub has no agent \"no-such-agent\""#),
        "{answer}"
    );

    let ci = scene.ci();
    // kubectl's discovery words the 403 without its message; the operator's answer has it.
    let as_admin = ci.output(&["get", "configmaps", "-n", ns, "--as=admin"])?;
    failed_with(&as_admin, "Forbidden")?;
    let answer = scene.curl(
        &format!("{server}/api/v1/namespaces/{ns}/configmaps"),
        Some(&scene.deployer.token),
        &["Impersonate-User: admin"],
    )?;
    ensure!(
        answer.trim_end().ends_with("403")
            && answer.contains("the impersonate-user header is refused"),
        "{answer}"
    );
    let as_group = ci.output(&[
        "get",
        "configmaps",
        "-n",
        ns,
        "--as=x",
        "--as-group=system:masters",
    ])?;
    failed_with(&as_group, "Forbidden")?;

    // The same token without `--as` still works: the refusals were about the requests.
    ci.run(&["get", "configmaps", "-n", ns])?;
    Ok(())
}

/// The port the websocket echo server listens on, on its test host.
const ECHO_PORT: u16 = 8080;

/// A Service without selector, its one port named `ws`, pointed at `addr` (a test host standing in
/// for a pod). The API server's service proxy reads the Service's Endpoints and goes only to an
/// address that is a pod's IP, so there is a Pod object (never scheduled: no kubelet runs here)
/// whose status carries `addr`, and the Endpoints name it; the EndpointSlice says the same for
/// readers of slices.
fn echo_service(ns: &str, addr: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{ name: echo, namespace: {ns} }}
spec:
  ports:
    - {{ name: ws, port: {ECHO_PORT}, protocol: TCP }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: echo, namespace: {ns} }}
spec:
  containers:
    - {{ name: echo, image: ws-echo.invalid/none }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: echo, namespace: {ns} }}
subsets:
  - addresses: [{{ ip: "{addr}", targetRef: {{ kind: Pod, name: echo, namespace: {ns} }} }}]
    ports: [{{ name: ws, port: {ECHO_PORT}, protocol: TCP }}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: {ns}
  labels: {{ kubernetes.io/service-name: echo }}
addressType: IPv4
ports:
  - {{ name: ws, port: {ECHO_PORT}, protocol: TCP }}
endpoints:
  - addresses: ["{addr}"]
    conditions: {{ ready: true }}
    targetRef: {{ kind: Pod, name: echo, namespace: {ns} }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: ci-deployer-proxy, namespace: {ns} }}
rules:
  - apiGroups: [""]
    resources: [services/proxy]
    resourceNames: ["echo:ws"]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ci-deployer-proxy, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ci-deployer-proxy }}
subjects:
  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {DEPLOYER} }}
"#
    )
}

type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a websocket to `url` (`wss://`), trusting only `ca_file`, with `token` as the bearer token.
async fn websocket(url: &str, ca_file: &Path, token: &str) -> Result<ClientSocket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let pem = std::fs::read(ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config));
    let (socket, response) = match tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(connector),
    )
    .await
    {
        Ok(opened) => opened,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy);
            anyhow::bail!("{url} answered {}: {body:?}", response.status());
        }
        Err(e) => return Err(e).with_context(|| format!("opening a websocket to {url}")),
    };
    ensure!(
        response.status() == http::StatusCode::SWITCHING_PROTOCOLS,
        "{url} answered {}",
        response.status()
    );
    Ok(socket)
}

/// The next data message within [`SHOWS_WITHIN`].
async fn next_message(socket: &mut ClientSocket) -> Result<Message> {
    loop {
        let next = tokio::time::timeout(SHOWS_WITHIN, socket.next())
            .await
            .context("no message came back in time")?
            .context("the websocket ended")??;
        if next.is_text() || next.is_binary() {
            return Ok(next);
        }
    }
}

/// An upgraded connection, hub → tunnel → API server → a websocket server, carries bytes both
/// ways. The API server's service proxy reaches the echo server on a test host in a network
/// namespace, through a Service without selector and its EndpointSlice. (No kubelet runs here, so
/// `exec`, `attach` and `port-forward` to a pod, which upgrade the same way, cannot be run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_the_api_servers_service_proxy_carries_bytes_both_ways() -> Result<()> {
    let scene = Scene::start("ci-upgrade")?;
    let ns = scene.ns.name();
    let host = IsolatedNetns::open()?;
    let listen = format!("{}:{ECHO_PORT}", host.inner_addr());
    let _echo = Process::spawn(
        "ws-echo",
        Path::new("ip"),
        &[
            "netns".into(),
            "exec".into(),
            host.name().into(),
            binary("ws-echo")?.display().to_string(),
            "--listen".into(),
            listen.clone(),
        ],
        &scene.dir.path().join("ws-echo.log"),
        Lifetime::TiedToStarter,
    )?;
    let addr: std::net::SocketAddr = listen.parse()?;
    wait_until("the echo server listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        Ok(())
    })?;
    let admin = scene.ns.kubectl();
    admin.apply(&echo_service(ns, host.inner_addr()))?;
    let ip = host.inner_addr();
    admin.run(&[
        "patch",
        "pod",
        "echo",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#),
    ])?;

    let url = format!(
        "wss://127.0.0.1:{}/k8s-proxy/e2e/api/v1/namespaces/{ns}/services/echo:ws/proxy/echo",
        scene.hub.port()
    );
    let mut socket = websocket(&url, &scene.hub.ca_file(), &scene.deployer.token)
        .await
        .with_context(|| scene.logs())?;
    socket
        .send(Message::text("hello through the tunnel"))
        .await?;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(big.clone())).await?;
    let first = next_message(&mut socket).await?;
    ensure!(
        first.to_text()? == "hello through the tunnel",
        "the echo sent back {first:?}"
    );
    let second = next_message(&mut socket).await?;
    ensure!(
        second.into_data().as_ref() == big.as_slice(),
        "256 KiB came back altered"
    );
    socket.close(None).await?;
    Ok(())
}

/// The hub restarts while `kubectl get -w` streams through it: the watch ends (kubectl exits rather
/// than hanging on a dead stream), and once the operator's tunnel is back the next request works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restart_ends_a_watch_and_the_next_request_works_once_the_tunnel_is_back()
-> Result<()> {
    let mut scene = Scene::start("ci-restart")?;
    let ns = scene.ns.name().to_string();
    let mut watch = Command::new(scene.binary("kubectl"));
    watch.env("KUBECONFIG", &scene.kubeconfig).args([
        "get",
        "configmaps",
        "-n",
        &ns,
        "-w",
        "-o",
        "name",
    ]);
    let mut watch = Streaming::start(watch, &scene.dir.path().join("watch.err"))?;
    wait_until("the watch in flight", SHOWS_WITHIN, || {
        let streams = metric_value(&scene.hub_metrics()?, "tether_hub_tunnel_streams");
        ensure!(streams >= Some(1.0), "streams in flight: {streams:?}");
        Ok(())
    })?;

    scene.hub.stop();
    watch
        .wait_exit(SHOWS_WITHIN)
        .context("kubectl get -w kept running after the hub went away")?;
    scene.hub.start_again()?;
    scene.wait_tunnel()?;
    let names = scene
        .ci()
        .run(&["get", "configmaps", "-n", &ns, "-o", "name"])
        .with_context(|| scene.logs())?;
    ensure!(names.contains("configmap/kube-root-ca.crt"), "{names}");
    Ok(())
}

/// 200 requests at once through one agent's tunnel all get the API server's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_through_one_tunnel_all_succeed() -> Result<()> {
    let scene = Scene::start("ci-many")?;
    let ns = scene.ns.name();
    let ca = scene.hub.ca_file().display().to_string();
    let bearer = format!("Authorization: Bearer {}", scene.deployer.token);
    let url = format!(
        "{}/k8s-proxy/e2e/api/v1/namespaces/{ns}/configmaps",
        scene.hub.https_url()
    );
    let mut args: Vec<String> = [
        "-sS",
        "-m",
        "60",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "200",
        "--cacert",
        &ca,
        "-H",
        &bearer,
        "-w",
        "%{http_code}\\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..200 {
        args.extend(["-o".to_string(), "/dev/null".to_string(), url.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let codes = tether_e2e::tool::run("curl", &refs, None).with_context(|| scene.logs())?;
    let codes: Vec<&str> = codes.lines().collect();
    ensure!(codes.len() == 200, "{} answers: {codes:?}", codes.len());
    let failed: Vec<&&str> = codes.iter().filter(|c| **c != "200").collect();
    ensure!(failed.is_empty(), "not 200: {failed:?}");
    Ok(())
}

/// Past a cap a CI request gets 429 with `Retry-After` and a message naming the cap: the operator
/// counts each identity's requests apart from another's, the hub counts every stream through the
/// agent's tunnel and refuses before the operator sees the request, and a slot comes back when its
/// request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_per_identity_and_per_agent_caps_get_429_naming_the_cap() -> Result<()> {
    let scene = Scene::start_with(
        "ci-caps",
        Caps {
            streams_per_agent: Some(2),
            requests_per_identity: Some(1),
            others: &["second-job"],
        },
    )?;
    let ns = scene.ns.name();
    let ca = scene.hub.ca_file().display().to_string();
    let url = format!(
        "{}/k8s-proxy/e2e/api/v1/namespaces/{ns}/configmaps",
        scene.hub.https_url()
    );
    let get = |token: &str| scene.curl(&url, Some(token), &[]);
    // A watch from no resourceVersion begins with an ADDED event per object there: once one shows,
    // the request holds its slots.
    scene.ns.kubectl().apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: present, namespace: {ns} }}\n"
    ))?;
    let watch = |token: &str, name: &str| -> Result<Streaming> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-N", "--cacert", &ca, "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{url}?watch=true"));
        let mut streaming = Streaming::start(cmd, &scene.dir.path().join(format!("{name}.err")))?;
        streaming
            .wait_for_line("\"ADDED\"", SHOWS_WITHIN)
            .with_context(|| scene.logs())?;
        Ok(streaming)
    };
    let refused = |answer: &str, cap: &str| -> Result<()> {
        ensure!(
            answer.trim_end().ends_with("429")
                && answer.to_ascii_lowercase().contains("retry-after: 1")
                && answer.contains("TooManyRequests")
                && answer.contains(cap),
            "expected a 429 with Retry-After naming {cap}: {answer}"
        );
        Ok(())
    };
    let streams = || -> Result<Option<f64>> {
        Ok(metric_value(
            &scene.hub_metrics()?,
            "tether_hub_tunnel_streams",
        ))
    };
    let deployer = &scene.deployer.token;
    let second = &scene.others[0].token;

    let first = watch(deployer, "first")?;
    refused(&get(deployer)?, "max_requests_per_identity")?;
    // The refused request passed the hub, which gives its stream back once the answer is sent.
    wait_until("one stream in flight", SHOWS_WITHIN, || {
        let now = streams()?;
        ensure!(now == Some(1.0), "streams in flight: {now:?}");
        Ok(())
    })?;
    // Another identity has slots of its own while the deployer is at its cap.
    let _second = watch(second, "second")?;
    // Two streams through the agent: the hub refuses a third for any identity.
    refused(&get(deployer)?, "max_tunnel_streams_per_agent")?;
    refused(&get(second)?, "max_tunnel_streams_per_agent")?;
    ensure!(
        streams()? == Some(2.0),
        "streams in flight: {:?}",
        streams()?
    );

    drop(first);
    wait_until("the deployer served again", SHOWS_WITHIN, || {
        let answer = get(deployer)?;
        ensure!(answer.trim_end().ends_with("200"), "{answer}");
        Ok(())
    })?;
    Ok(())
}

/// How many ConfigMaps the large LIST holds, and the size of each one's data.
const LARGE_LIST_OBJECTS: usize = 96;
const LARGE_OBJECT_BYTES: usize = 900 * 1024;

/// How much a stalled response may grow the hub's or the operator's memory. The response is
/// ~84 MiB; what the kernel's socket buffers along the way hold is not in either RSS.
const STALLED_GROWTH_LIMIT: u64 = 24 * 1024 * 1024;

/// A client that stops reading a large LIST (~84 MiB) stalls it: the hub's and the operator's RSS
/// stay within a bound far below the response's size while it waits, and the whole response still
/// arrives for a client that reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_list_leaves_hub_and_operator_memory_bounded()
-> Result<()> {
    let scene = Scene::start("ci-stall")?;
    let ns = scene.ns.name();
    let filler = "x".repeat(LARGE_OBJECT_BYTES);
    let mut many = String::new();
    for i in 0..LARGE_LIST_OBJECTS {
        many.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: big-{i}, namespace: {ns} }}\ndata:\n  filler: {filler}\n"
        ));
    }
    scene
        .ns
        .kubectl()
        .run_with_stdin(&["create", "-f", "-", "-o", "name"], Some(&many))?;
    drop(many);

    let hub_pid = scene.hub.pid().context("the hub is not running")?;
    let operator_pid = scene.operator.pid();
    let (hub_before, operator_before) = (rss_bytes(hub_pid)?, rss_bytes(operator_pid)?);
    let ca = scene.hub.ca_file().display().to_string();
    let bearer = format!("Authorization: Bearer {}", scene.deployer.token);
    let url = format!(
        "{}/k8s-proxy/e2e/api/v1/namespaces/{ns}/configmaps",
        scene.hub.https_url()
    );
    // A reader of 1 KiB/s: to the relay, a client that has stopped.
    let mut slow = Command::new("curl");
    slow.args([
        "-sS",
        "--limit-rate",
        "1k",
        "--cacert",
        &ca,
        "-H",
        &bearer,
        "-o",
        "/dev/null",
        &url,
    ]);
    let _slow = Streaming::start(slow, &scene.dir.path().join("slow.err"))?;
    let from_cluster = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("tether_hub_tunnel_bytes_total{direction=\"from_cluster\"}"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    };
    // Stalled: the bytes the hub relayed stop growing (less than 256 KiB in a second), well short
    // of the response.
    let mut last = -1.0;
    wait_until(
        "the large response stalled",
        Duration::from_secs(60),
        || {
            let now = from_cluster(&scene.hub_metrics()?);
            let grew = now - last;
            last = now;
            ensure!(
                now > 0.0 && grew < 256.0 * 1024.0,
                "relayed {now} bytes, {grew} since the last look"
            );
            Ok(())
        },
    )?;
    let response = (LARGE_LIST_OBJECTS * LARGE_OBJECT_BYTES) as f64;
    ensure!(
        last < response / 2.0,
        "the hub relayed {last} of ~{response} bytes to a client that reads nothing"
    );
    let (hub_during, operator_during) = (rss_bytes(hub_pid)?, rss_bytes(operator_pid)?);
    eprintln!(
        "stalled after {last} bytes relayed; RSS hub {hub_before} -> {hub_during}, operator {operator_before} -> {operator_during}"
    );
    ensure!(
        hub_during.saturating_sub(hub_before) < STALLED_GROWTH_LIMIT,
        "the hub grew by {} bytes holding a stalled response",
        hub_during - hub_before
    );
    ensure!(
        operator_during.saturating_sub(operator_before) < STALLED_GROWTH_LIMIT,
        "the operator grew by {} bytes holding a stalled response",
        operator_during - operator_before
    );

    // A client that reads gets all of it.
    let size = tether_e2e::tool::run(
        "curl",
        &[
            "-sS",
            "--cacert",
            &ca,
            "-H",
            &bearer,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url,
        ],
        None,
    )?;
    let size: f64 = size.trim().parse()?;
    ensure!(
        size > response,
        "a full read got {size} bytes, less than the ~{response} the objects hold"
    );
    Ok(())
}

/// A hub that tampers with requests gets nothing the token does not allow: added `Impersonate-*`
/// headers get 403, an altered or missing token 401, all from the operator, before the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_adds_impersonation_or_alters_the_token_is_refused_by_the_operator() -> Result<()>
{
    let ns = TestNamespace::create("ci-tamper").await?;
    install_crds(ns.kubectl())?;
    ns.kubectl().apply(&deployer_rbac(ns.name()))?;
    let hub = tether_e2e::tampering_hub::TamperingHub::start().await?;
    let dir = tempfile::Builder::new().prefix("tether-ci-").tempdir()?;
    let deployer = CiToken::new("deployer", DEPLOYER, &["tether:ci"]);
    let access = dir.path().join("ci-access.yaml");
    write_access_file(&access, std::slice::from_ref(&deployer))?;
    let token_file = dir.path().join("agent.token");
    std::fs::write(&token_file, "any-agent-token")?;
    let flags = [
        format!("--hub-url={}", hub.ws_url()),
        format!("--hub-token-file={}", token_file.display()),
        format!("--ci-access={}", access.display()),
    ];
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &refs)?;
    tokio::task::block_in_place(|| hub.wait_tunnel(TUNNEL_OPENS_WITHIN))
        .with_context(|| operator.log_tail())?;

    let path = format!("/api/v1/namespaces/{}/configmaps", ns.name());
    let good = format!("Bearer {}", deployer.token);
    let altered = format!("Bearer {}x", deployer.token);
    // Untampered, the same request is allowed: the refusals below are the tampering's.
    let (status, body) = hub.get(&path, &[("authorization", &good)]).await?;
    ensure!(status == 200, "untampered: {status} {body}");
    for (what, headers, want) in [
        (
            "an added Impersonate-User",
            vec![
                ("authorization", good.as_str()),
                ("impersonate-user", "admin"),
            ],
            403,
        ),
        (
            "an added Impersonate-Group",
            vec![
                ("authorization", good.as_str()),
                ("impersonate-group", "system:masters"),
            ],
            403,
        ),
        (
            "an added Impersonate-Uid",
            vec![("authorization", good.as_str()), ("impersonate-uid", "0")],
            403,
        ),
        (
            "an altered token",
            vec![("authorization", altered.as_str())],
            401,
        ),
        ("no token", vec![], 401),
    ] {
        let (status, body) = hub.get(&path, &headers).await?;
        ensure!(status == want, "{what}: {status} {body}, not {want}");
        ensure!(
            !body.contains(&deployer.token),
            "{what}: the answer repeats the token"
        );
    }
    // Each refusal is the operator's own, in its audit log; none names the token.
    let log = operator.log();
    ensure!(
        log.matches("status=403").count() >= 3 && log.matches("status=401").count() >= 2,
        "{log}"
    );
    ensure!(
        !log.contains(&deployer.token),
        "the operator logged the token"
    );
    Ok(())
}
