//! CI access with OIDC ID tokens, end to end: a test issuer serves discovery and a JWKS over HTTPS
//! on loopback, the operator (in the network namespace that lets nothing in) fetches its keys
//! outbound, and the real `kubectl` and `curl` reach the API server through the TLS hub with
//! tokens shaped like GitHub Actions' and GitLab CI's. The operator runs as the control plane's
//! audited user, so the API server's audit log shows exactly which CI requests reached it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use tether_e2e::ci::write_kubeconfig;
use tether_e2e::cluster::TestNamespace;
use tether_e2e::controlplane::AUDITED_USER;
use tether_e2e::gitrepo::install_crds;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{Hub, HubOptions};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::netns::IsolatedNetns;
use tether_e2e::oidc::{SigningKey, TestIssuer, github_claims, gitlab_claims, mint_unsigned, now};
use tether_e2e::operator::Operator;
use tether_e2e::proxy::HttpProxy;
use tether_e2e::wait::wait_until;

/// How long the tunnel may take to open once the operator starts.
const TUNNEL_OPENS_WITHIN: Duration = Duration::from_secs(60);

/// The audience the access file expects.
const AUDIENCE: &str = "tether";

/// A namespace whose ConfigMaps the `deployers` group may read, the test issuer (`github` and
/// `gitlab`, an RSA key published for each), a TLS hub, and the operator with an access file for
/// both issuers, running as the audited user in a namespace that lets nothing in (or, with a
/// proxy, on the host with `--https-proxy`).
struct Scene {
    ns: TestNamespace,
    hub: Hub,
    issuer: TestIssuer,
    github: SigningKey,
    gitlab: SigningKey,
    _netns: Option<IsolatedNetns>,
    operator: Operator,
    dir: tempfile::TempDir,
}

impl Scene {
    fn start(prefix: &str) -> Result<Self> {
        Self::start_with(prefix, None)
    }

    fn start_with(prefix: &str, proxy: Option<&HttpProxy>) -> Result<Self> {
        let ns = block(TestNamespace::create(prefix))?;
        install_crds(ns.kubectl())?;
        ns.kubectl().apply(&reader_rbac(ns.name()))?;
        let issuer = TestIssuer::start(&["github", "gitlab"])?;
        let github = SigningKey::rsa("github-rsa")?;
        let gitlab = SigningKey::rsa("gitlab-rsa")?;
        issuer.publish("github", &github);
        issuer.publish("gitlab", &gitlab);
        let hub = Hub::start_with(HubOptions {
            tls: true,
            ..HubOptions::default()
        })?;
        let plane = tether_e2e::cluster::shared();
        let netns = match proxy {
            Some(_) => None,
            None => {
                let mut netns = IsolatedNetns::create()?;
                for port in [plane.api_port(), hub.port(), issuer.port()] {
                    netns.relay_out(port)?;
                }
                Some(netns)
            }
        };
        let dir = tempfile::Builder::new().prefix("tether-oidc-").tempdir()?;
        let access = dir.path().join("ci-access.yaml");
        std::fs::write(&access, access_file(&issuer))?;
        let mut flags = vec![
            format!("--hub-url={}", hub.ws_url()),
            format!("--hub-token-file={}", hub.token_file().display()),
            format!("--hub-ca-file={}", hub.ca_file().display()),
            format!("--ci-access={}", access.display()),
        ];
        // As flags, not the environment, which the API server's client would read too. The hub
        // is reached directly: only the issuer goes through the proxy.
        if let Some(proxy) = proxy {
            flags.push(format!("--https-proxy={}", proxy.url()));
            flags.push(format!("--no-proxy=127.0.0.1:{}", hub.port()));
        }
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let operator = Operator::start_in(
            &plane.audited_kubeconfig(),
            ns.name(),
            &refs,
            netns.as_ref().map(IsolatedNetns::name),
        )?;
        let scene = Self {
            ns,
            hub,
            issuer,
            github,
            gitlab,
            _netns: netns,
            operator,
            dir,
        };
        scene.wait_tunnel()?;
        Ok(scene)
    }

    fn wait_tunnel(&self) -> Result<()> {
        let url = format!("{}/metrics", self.hub.https_url());
        let ca = self.hub.ca_file().display().to_string();
        wait_until("the CI tunnel open at the hub", TUNNEL_OPENS_WITHIN, || {
            let metrics =
                tether_e2e::tool::run("curl", &["-sS", "-m", "5", "--cacert", &ca, &url], None)?;
            let connected = metric_value(&metrics, "tether_hub_tunnels_connected");
            ensure!(connected == Some(1.0), "tunnels connected: {connected:?}");
            Ok(())
        })
        .with_context(|| self.logs())
    }

    fn server(&self) -> String {
        format!("{}/k8s-proxy/e2e", self.hub.https_url())
    }

    /// kubectl through the hub with `token`.
    fn kubectl(&self, name: &str, token: &str) -> Result<Kubectl> {
        let path = write_kubeconfig(
            &self.dir.path().join(name),
            &self.server(),
            &self.hub.ca_file(),
            token,
        )?;
        Ok(Kubectl::new(self.binary("kubectl"), path))
    }

    /// `GET <path>` through the hub with `token`: the status and the body.
    fn get(&self, path: &str, token: &str) -> Result<(u16, String)> {
        let ca = self.hub.ca_file().display().to_string();
        let bearer = format!("Authorization: Bearer {token}");
        let url = format!("{}{path}", self.server());
        let out = tether_e2e::tool::run(
            "curl",
            &[
                "-sS",
                "-m",
                "20",
                "--cacert",
                &ca,
                "-H",
                &bearer,
                "-w",
                "\n%{http_code}",
                &url,
            ],
            None,
        )?;
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
        Ok((code.trim().parse()?, body.to_string()))
    }

    fn binary(&self, name: &str) -> PathBuf {
        tether_e2e::cluster::shared().binaries().path(name)
    }

    fn github_token(&self, repository: &str, git_ref: &str) -> Result<String> {
        let claims = github_claims(&self.issuer.url("github"), AUDIENCE, repository, git_ref);
        self.github.mint(&claims)
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

/// The access file: GitHub's `main` of `acme/app`, and GitLab's `main` of any `acme/` project.
fn access_file(issuer: &TestIssuer) -> String {
    let ca = issuer.ca_file().display().to_string();
    format!(
        r#"oidc:
  - issuer: {github}
    name: github
    audience: {AUDIENCE}
    ca_file: {ca}
    rules:
      - claims: {{ repository: "acme/app", ref: "refs/heads/main" }}
        user: "github:{{repository}}"
        groups: ["deployers", "github-owner:{{repository_owner}}"]
  - issuer: {gitlab}
    name: gitlab
    audience: {AUDIENCE}
    ca_file: {ca}
    rules:
      - claims: {{ project_path: "acme/*", namespace_path: acme, ref: main }}
        user: "gitlab:{{project_path}}"
        groups: ["deployers"]
"#,
        github = issuer.url("github"),
        gitlab = issuer.url("gitlab"),
    )
}

/// A Role in `ns` that lets the `deployers` group read ConfigMaps there, and nothing else.
fn reader_rbac(ns: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: ci-readers, namespace: {ns} }}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: ci-readers, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: ci-readers }}
subjects:
  - {{ apiGroup: rbac.authorization.k8s.io, kind: Group, name: deployers }}
"#
    )
}

/// `kubectl auth whoami`: the user and groups the API server saw.
fn whoami(kubectl: &Kubectl) -> Result<(String, Vec<String>)> {
    let out = kubectl.run(&["auth", "whoami", "-o", "json"])?;
    let review: Value = serde_json::from_str(&out)?;
    let info = &review["status"]["userInfo"];
    let user = info["username"].as_str().unwrap_or_default().to_string();
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((user, groups))
}

/// A GitHub-shaped RS256 token and a GitLab-shaped one act as the users and groups their rules'
/// templates make; a key the issuer adds later (ES256) is fetched when a token names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_act_as_the_identity_their_rule_templates() -> Result<()> {
    let scene = Scene::start("ci-oidc")?;
    let ns = scene.ns.name();

    let github = scene.kubectl(
        "github",
        &scene.github_token("acme/app", "refs/heads/main")?,
    )?;
    let (user, groups) = whoami(&github).with_context(|| scene.logs())?;
    ensure!(user == "github:acme/app", "whoami: {user}");
    for group in ["deployers", "github-owner:acme"] {
        ensure!(
            groups.iter().any(|g| g == group),
            "groups {groups:?} lack {group}"
        );
    }
    github.run(&["get", "configmaps", "-n", ns])?;

    let gitlab_claims = gitlab_claims(&scene.issuer.url("gitlab"), AUDIENCE, "acme/web", "main");
    let gitlab = scene.kubectl("gitlab", &scene.gitlab.mint(&gitlab_claims)?)?;
    let (user, groups) = whoami(&gitlab)?;
    ensure!(user == "gitlab:acme/web", "whoami: {user}");
    ensure!(
        groups.iter().any(|g| g == "deployers"),
        "groups: {groups:?}"
    );
    ensure!(scene.issuer.jwks_fetches("gitlab") == 1, "one fetch so far");

    // The issuer adds an EC key; a token naming it makes the operator fetch the keys again.
    let rotated = SigningKey::ec("gitlab-ec")?;
    scene.issuer.publish("gitlab", &rotated);
    let ec = scene.kubectl("gitlab-ec", &rotated.mint(&gitlab_claims)?)?;
    let (user, _) = whoami(&ec).with_context(|| scene.logs())?;
    ensure!(user == "gitlab:acme/web", "whoami with the EC key: {user}");
    let fetches = scene.issuer.jwks_fetches("gitlab");
    ensure!(fetches == 2, "the gitlab JWKS was fetched {fetches} times");

    let log = scene.operator.log();
    ensure!(
        log.contains("identity=\"oidc:github:0\"") || log.contains("identity=oidc:github:0"),
        "no audit line for the GitHub rule:\n{}",
        scene.operator.log_tail()
    );
    Ok(())
}

/// Wrong audience, expiry, an unknown issuer, a bad signature, an unknown key id (after one
/// refetch, and no more), `alg: none`, HS256 keyed with the public key and a token no rule
/// matches all get 401, and none of those requests reaches the API server: its audit log holds
/// the good request made after them, and not one of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misdirected_oidc_tokens_never_reach_the_api_server() -> Result<()> {
    let scene = Scene::start("ci-oidc-refused")?;
    let ns = scene.ns.name();
    let github_url = scene.issuer.url("github");
    let claims = |change: &dyn Fn(&mut Value)| {
        let mut c = github_claims(&github_url, AUDIENCE, "acme/app", "refs/heads/main");
        change(&mut c);
        c
    };
    let good = scene.github_token("acme/app", "refs/heads/main")?;
    let (code, body) = scene.get(&format!("/api/v1/namespaces/{ns}/configmaps"), &good)?;
    ensure!(code == 200, "{code}: {body}\n{}", scene.logs());
    let fetched = scene.issuer.jwks_fetches("github");
    ensure!(fetched == 1, "the github JWKS was fetched {fetched} times");

    let expired = claims(&|c| {
        c["iat"] = (now() - 900).into();
        c["nbf"] = (now() - 900).into();
        c["exp"] = (now() - 600).into();
    });
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "audience",
            scene
                .github
                .mint(&claims(&|c| c["aud"] = "someone-else".into()))?,
            "audience (aud)",
        ),
        ("expired", scene.github.mint(&expired)?, "has expired"),
        (
            "issuer",
            scene.github.mint(&claims(&|c| {
                c["iss"] = scene.issuer.url("elsewhere").into()
            }))?,
            "issuer (iss)",
        ),
        (
            "signature",
            scene.gitlab.mint_as("github-rsa", &claims(&|_| {}))?,
            "signature does not verify",
        ),
        (
            "alg-none",
            mint_unsigned("github-rsa", &claims(&|_| {})),
            "algorithm is not allowed",
        ),
        (
            "hmac",
            scene.github.mint_hmac_forgery(&claims(&|_| {}))?,
            "algorithm is not allowed",
        ),
        (
            "no-rule",
            scene.github_token("acme/app", "refs/heads/feature")?,
            "no rule",
        ),
    ];
    for (case, token, message) in &cases {
        let path = format!("/api/v1/namespaces/{ns}/configmaps/refused-{case}");
        let (code, body) = scene.get(&path, token)?;
        ensure!(
            code == 401 && body.contains(message),
            "{case}: {code} {body}"
        );
    }
    ensure!(
        scene.issuer.jwks_fetches("github") == 1,
        "no refetch for those"
    );

    // An unknown key id: the keys are fetched once more, then no more however many follow.
    let unknown = scene.github.mint_as("github-retired", &claims(&|_| {}))?;
    for n in 0..10 {
        let path = format!("/api/v1/namespaces/{ns}/configmaps/refused-unknown-kid-{n}");
        let (code, body) = scene.get(&path, &unknown)?;
        ensure!(
            code == 401 && body.contains("key id (kid)"),
            "unknown kid: {code} {body}"
        );
    }
    let fetched = scene.issuer.jwks_fetches("github");
    ensure!(
        fetched == 2,
        "the github JWKS was fetched {fetched} times, not 2"
    );

    // A good request after them all reaches the API server (the ConfigMap does not exist).
    let marker = format!("/api/v1/namespaces/{ns}/configmaps/allowed-after-refusals");
    let (code, body) = scene.get(&marker, &good)?;
    ensure!(code == 404 && body.contains("NotFound"), "{code}: {body}");
    let audit_log = tether_e2e::cluster::shared().audit_log();
    let audited = wait_until(
        "the good request in the audit log",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&audit_log)?;
            ensure!(text.contains(&marker), "not yet in {}", audit_log.display());
            Ok(text)
        },
    )?;
    let event: Value = audited
        .lines()
        .filter(|l| l.contains(&marker))
        .find_map(|l| serde_json::from_str(l).ok())
        .context("no audit event parses")?;
    ensure!(
        event["user"]["username"] == AUDITED_USER
            && event["impersonatedUser"]["username"] == "github:acme/app",
        "audit event: {event}"
    );
    let refused: Vec<&str> = audited
        .lines()
        .filter(|l| l.contains(&format!("/namespaces/{ns}/configmaps/refused-")))
        .collect();
    ensure!(
        refused.is_empty(),
        "refused requests reached the API server: {refused:?}"
    );

    // The operator's audit lines give each reason; no token reaches its log.
    let log = scene.operator.log();
    for reason in [
        "audience",
        "expired",
        "issuer",
        "signature",
        "algorithm",
        "no_rule",
        "unknown_kid",
    ] {
        ensure!(
            log.contains(&format!("refused=\"{reason}\""))
                || log.contains(&format!("refused={reason}")),
            "no audit line refused for {reason}:\n{}",
            scene.operator.log_tail()
        );
    }
    for (case, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap_or_default();
        ensure!(
            !log.contains(token.as_str()) && (signature.is_empty() || !log.contains(signature)),
            "the {case} token reached the operator's log"
        );
    }
    ensure!(
        !log.contains(&good),
        "the good token reached the operator's log"
    );
    Ok(())
}

/// With `--https-proxy`, the operator fetches the issuer's discovery document and keys through
/// the proxy (a `CONNECT` to the issuer in its log), and the token it verifies with them maps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_keys_are_fetched_through_the_operators_proxy() -> Result<()> {
    let proxy = HttpProxy::start()?;
    let scene = Scene::start_with("ci-oidc-proxy", Some(&proxy))?;
    let target = format!("127.0.0.1:{}", scene.issuer.port());
    ensure!(proxy.tunnels_to(&target) == 0, "a tunnel before any token");
    let github = scene.kubectl(
        "github",
        &scene.github_token("acme/app", "refs/heads/main")?,
    )?;
    let (user, _) = whoami(&github).with_context(|| scene.logs())?;
    ensure!(user == "github:acme/app", "whoami: {user}");
    ensure!(
        proxy.tunnels_to(&target) >= 1,
        "no CONNECT to the issuer {target}:\n{}",
        proxy.log_tail()
    );
    ensure!(scene.issuer.jwks_fetches("github") == 1);
    Ok(())
}
