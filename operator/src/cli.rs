//! The command line: flags (each with a `TETHER_` environment twin) and the process's life, from
//! start-up to graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::wait::{Condition as _, await_condition, conditions};
use tether_protocol::Backoff;
use tracing::{info, warn};

use crate::controller::{self, Context};
use crate::crd::crd_yaml;
use crate::git::{DEFAULT_MAX_CONCURRENT_GIT, MirrorCache};
use crate::leader::{Elector, Guard, Timing};
use crate::metrics::{Metrics, Readiness, bind_admin, serve_admin};
use crate::net::ProxyConfig;
use crate::plan::ContentLimits;
use crate::triggers::Triggers;

/// The name of the CRD the operator serves.
const CRD_NAME: &str = "gitrepositories.tether.dev";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Tether's GitOps operator: syncs GitRepository resources into the cluster"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "TETHER_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Folder for the cache of bare Git mirrors.
    #[arg(long, env = "TETHER_CACHE_DIR", default_value = "/var/cache/tether")]
    pub cache_dir: PathBuf,

    /// How many GitRepository objects reconcile at once (each one at a time).
    #[arg(long, env = "TETHER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Log lines as JSON or plain text; filter with RUST_LOG.
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Watch GitRepository objects in this namespace only (default: every namespace).
    #[arg(long, env = "TETHER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Take a Lease before acting, so that of several replicas only one acts.
    #[arg(long, env = "TETHER_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "TETHER_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// How long a follower waits, after it last saw the Lease change, before taking it over
    /// (whole seconds).
    #[arg(long, env = "TETHER_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: std::time::Duration,

    /// How long the leader acts after the start of its last successful renewal: each renewal is
    /// bounded by the time left, and past it the leader stops writing and exits. Shorter than the
    /// lease duration.
    #[arg(long, env = "TETHER_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: std::time::Duration,

    /// How often the leader renews the Lease and a follower looks at it. Shorter than the renew
    /// deadline.
    #[arg(long, env = "TETHER_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: std::time::Duration,

    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "TETHER_IDENTITY")]
    pub identity: Option<String>,

    /// The hub's websocket URL (`wss://hub.example.com`); without it, only the interval triggers
    /// reconciles.
    #[arg(long, env = "TETHER_HUB_URL")]
    pub hub_url: Option<String>,

    /// File holding the agent token the hub knows this operator by.
    #[arg(long, env = "TETHER_HUB_TOKEN_FILE")]
    pub hub_token_file: Option<PathBuf>,

    /// Extra CA certificate (PEM) to trust for the hub, besides the system roots.
    #[arg(long, env = "TETHER_HUB_CA_FILE")]
    pub hub_ca_file: Option<PathBuf>,

    /// Report each GitRepository's status (revision, Ready, push → applied latency) to the hub for
    /// its fleet view. Off by default: without it the hub learns nothing about this cluster.
    #[arg(long, env = "TETHER_HUB_REPORT_STATUS")]
    pub hub_report_status: bool,

    /// HTTP proxy (CONNECT) for the hub connection. Set as the HTTPS_PROXY environment variable it
    /// also carries git over HTTPS (and, out of cluster, the API server's connection).
    #[arg(long, env = "HTTPS_PROXY", hide_env_values = true)]
    pub https_proxy: Option<String>,

    /// Hosts that bypass the proxy, as the standard variable: host names, domain suffixes, IP
    /// addresses, CIDR blocks, or *.
    #[arg(long, env = "NO_PROXY")]
    pub no_proxy: Option<String>,

    /// Accept `file://` URLs in `spec.url`: for local demos and tests only. In a shared cluster a
    /// tenant could otherwise read any repository on the operator's own disk.
    #[arg(long, env = "TETHER_ALLOW_FILE_URLS", default_value_t = false)]
    pub allow_file_urls: bool,

    /// Send a `secretRef`'s password or token over plain `http://` (in clear); refused otherwise.
    #[arg(long, env = "TETHER_ALLOW_HTTP_CREDENTIALS", default_value_t = false)]
    pub allow_http_credentials: bool,

    /// The largest manifest file a revision may hold, in bytes; a larger one fails the revision.
    #[arg(long, env = "TETHER_MAX_FILE_BYTES", default_value_t = ContentLimits::DEFAULT.max_file_bytes)]
    pub max_file_bytes: u64,

    /// The most bytes of manifests one revision may hold (under spec.path, after spec.ignore).
    #[arg(long, env = "TETHER_MAX_REVISION_BYTES", default_value_t = ContentLimits::DEFAULT.max_revision_bytes)]
    pub max_revision_bytes: u64,

    /// The most manifest files one revision may hold, and the most objects they may define.
    #[arg(long, env = "TETHER_MAX_OBJECTS", default_value_t = ContentLimits::DEFAULT.max_objects)]
    pub max_objects: usize,

    /// How many git operations (ls-remote, fetch, reading a commit) run at once, over all
    /// repositories; the others wait their turn.
    #[arg(long, env = "TETHER_MAX_CONCURRENT_GIT", default_value_t = DEFAULT_MAX_CONCURRENT_GIT)]
    pub max_concurrent_git: usize,

    /// How long libgit2 waits to connect to a remote, and for each read or write on it, before it
    /// fails the operation (`300s`): what ends a git thread stuck on a remote that says nothing.
    #[arg(long, env = "TETHER_GIT_SOCKET_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub git_socket_timeout: Duration,

    /// Serve CI access through the hub (kubectl and helm from CI jobs, over a second outbound
    /// websocket): the file of accepted tokens and the identities they act as (docs/ci-access.md).
    /// Needs --hub-url.
    #[arg(long, env = "TETHER_CI_ACCESS")]
    pub ci_access: Option<PathBuf>,

    /// The kustomize executable that renders kustomizations: a path, or a name looked up on PATH
    /// and then beside the operator's own executable.
    #[arg(long, env = "TETHER_KUSTOMIZE", default_value = "kustomize")]
    pub kustomize: String,

    /// The helm executable that renders charts (`helm template`): a path or a name, as for
    /// --kustomize.
    #[arg(long, env = "TETHER_HELM", default_value = "helm")]
    pub helm: String,

    /// The sops executable that decrypts files for spec.decryption: a path or a name, as for
    /// --kustomize.
    #[arg(long, env = "TETHER_SOPS", default_value = "sops")]
    pub sops: String,

    /// The folder under which each render gets a private folder, removed when it ends (default:
    /// `tether-render` in the system's temporary folder). Emptied at start-up.
    #[arg(long, env = "TETHER_RENDER_DIR")]
    pub render_dir: Option<PathBuf>,

    /// Let kustomize fetch remote bases (`https://...`, `github.com/org/repo//path?ref=...`) with
    /// the operator's PATH and proxy settings; refused otherwise, and every base must be in the
    /// repository.
    #[arg(long, env = "TETHER_ALLOW_REMOTE_BASES", default_value_t = false)]
    pub allow_remote_bases: bool,

    /// How many renders (kustomize or helm, with their checkout) run at once over all
    /// repositories; the others wait their turn. Each tool process holds some 20 MiB.
    #[arg(long, env = "TETHER_MAX_CONCURRENT_RENDERS", default_value_t = crate::render::DEFAULT_MAX_CONCURRENT_RENDERS)]
    pub max_concurrent_renders: usize,

    /// How often to ping the hub (`20s`); for tests that cannot wait a minute.
    #[arg(long, env = "TETHER_HUB_KEEPALIVE", hide = true, value_parser = parse_duration)]
    pub hub_keepalive: Option<std::time::Duration>,

    /// A hub connection silent this long is dead (`60s`); for tests that cannot wait a minute.
    #[arg(long, env = "TETHER_HUB_DEAD_AFTER", hide = true, value_parser = parse_duration)]
    pub hub_dead_after: Option<std::time::Duration>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the GitRepository CustomResourceDefinition as YAML.
    Crd,
    /// Check a CI access file (the one `--ci-access` names) and print every problem in it, or a
    /// summary of the identities it maps to; connects to nothing.
    CheckCiAccess {
        /// The access file.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Json,
    Plain,
}

/// Starts logging in the chosen format, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        command,
        admin_addr,
        cache_dir,
        concurrency,
        namespace,
        log_format,
        leader_election,
        leader_election_namespace,
        leader_election_lease_duration,
        leader_election_renew_deadline,
        leader_election_retry_period,
        identity,
        hub_url,
        hub_token_file,
        hub_ca_file,
        hub_report_status,
        https_proxy,
        no_proxy,
        allow_file_urls,
        allow_http_credentials,
        max_file_bytes,
        max_revision_bytes,
        max_objects,
        max_concurrent_git,
        git_socket_timeout: _,
        ci_access,
        kustomize,
        helm,
        sops,
        render_dir,
        allow_remote_bases,
        max_concurrent_renders,
        hub_keepalive,
        hub_dead_after,
    } = args;
    match command {
        Some(Command::Crd) => {
            print!("{}", crd_yaml());
            return Ok(());
        }
        Some(Command::CheckCiAccess { file }) => {
            let config = crate::ci::AccessConfig::load(&file)?;
            let (users, groups) = config.subjects();
            println!(
                "{}: ok ({} token(s), {} OIDC issuer(s); impersonates users {users:?} and groups {groups:?})",
                file.display(),
                config.tokens.len(),
                config.oidc.len(),
            );
            return Ok(());
        }
        None => {}
    }
    init_tracing(log_format);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "tether-operator starting"
    );

    let config = kube::Config::infer()
        .await
        .context("finding the cluster: set KUBECONFIG, or run in a pod")?;
    let timing = Timing::new(
        leader_election_lease_duration,
        leader_election_renew_deadline,
        leader_election_retry_period,
    )
    .map_err(anyhow::Error::msg)?;
    // With leader election, every write the controller makes passes the guard the Lease keeps.
    let guard = leader_election.then(Guard::default);
    let client = crate::leader::client(config.clone(), guard.as_ref())?;
    let metrics = Metrics::new()?;
    // Read before anything waits, so that a bad access file stops the operator at once.
    let proxy = ProxyConfig::new(https_proxy, no_proxy);
    proxy
        .http_proxy()
        .context("git over HTTP(S) and the hub connection go through HTTPS_PROXY with CONNECT")?;
    let tunnel = ci_access
        .map(|file| crate::ci::start(&file, &config, &proxy, &metrics.registry))
        .transpose()?;
    let readiness = Readiness::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin = bind_admin(admin_addr).await?;
    info!(addr = %admin.local_addr()?, "admin server listening");
    tokio::spawn(serve_admin(
        admin,
        metrics.registry.clone(),
        readiness.clone(),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    // Until the controller runs, a stop request ends the wait for the API server, the CRD or the
    // lease at once.
    let identity = identity.unwrap_or_else(hostname);
    let start = async {
        wait_for_crd(&client).await;
        if !leader_election {
            return anyhow::Ok(None);
        }
        let namespace = leader_election_namespace
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .unwrap_or_else(|| "default".into());
        // The Lease is written unguarded: renewing is how the guard is kept.
        let elector = Elector::new(
            kube::Client::try_from(config.clone())?,
            namespace.trim(),
            "tether-operator",
            &identity,
            timing,
            guard.clone().unwrap_or_default(),
        );
        Ok(Some(elector.acquire().await?))
    };
    let leadership = tokio::select! {
        started = start => started?,
        () = stopped(stop_rx.clone()) => {
            info!("stopped before the controller started");
            return Ok(());
        }
    };
    readiness.set_ready();

    let reporter = Reporter {
        controller: "tether-operator".into(),
        instance: Some(identity),
    };
    let tools = crate::render::Tools {
        kustomize: crate::render::Tools::locate(&kustomize),
        helm: crate::render::Tools::locate(&helm),
        sops: crate::render::Tools::locate(&sops),
        render_dir: render_dir.unwrap_or_else(|| std::env::temp_dir().join("tether-render")),
        allow_remote_bases,
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent_renders.max(1))),
    };
    tools
        .prepare()
        .with_context(|| format!("preparing the render folder {}", tools.render_dir.display()))?;
    info!(
        kustomize = %tools.kustomize.display(),
        helm = %tools.helm.display(),
        sops = %tools.sops.display(),
        "rendering tools"
    );
    let (triggers, notices) = Triggers::new();
    let (ctx, wakes) = Context::new(
        controller::ApiAccess {
            client,
            config,
            guard,
            namespace: namespace.clone(),
        },
        MirrorCache::new(cache_dir, proxy.clone())
            .with_limits(ContentLimits {
                max_file_bytes,
                max_revision_bytes,
                max_objects,
            })
            .with_max_concurrent(max_concurrent_git),
        metrics.clone(),
        reporter,
        triggers.clone(),
        controller::Policy {
            allow_file_urls,
            allow_http_credentials,
        },
        tools,
    );
    let reports = hub_report_status.then(|| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(crate::fleet::watch_records(
            ctx.client(),
            namespace.clone(),
            ctx.latencies(),
            tx,
            stopped(stop_rx.clone()),
        ));
        rx
    });
    crate::hub::start(
        crate::hub::HubSettings {
            url: hub_url,
            token_file: hub_token_file,
            ca_file: hub_ca_file,
            proxy,
            keepalive: hub_keepalive,
            dead_after: hub_dead_after,
            tunnel,
            reports,
        },
        &metrics,
        triggers.watch_set(),
        triggers.notice_sender(),
        stopped(stop_rx.clone()),
    )?;

    tokio::spawn(controller::sweep_mirrors(
        ctx.clone(),
        namespace.clone(),
        controller::MIRROR_SWEEP_INTERVAL,
        stopped(stop_rx.clone()),
    ));

    let shutdown = stopped(stop_rx);
    match leadership {
        Some(leadership) => {
            tokio::select! {
                () = controller::run(ctx, namespace, concurrency, notices, wakes, shutdown) => {}
                () = leadership.lost() => anyhow::bail!("leader election: lost the lease; exiting so that another replica leads"),
            }
        }
        None => controller::run(ctx, namespace, concurrency, notices, wakes, shutdown).await,
    }
    info!("stopped");
    Ok(())
}

/// Waits until the GitRepository CRD is established, rather than exiting when it is missing or the
/// API server cannot be reached yet: each failure is logged and retried, about 1 s doubling to 30 s.
async fn wait_for_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::MAX,
    );
    let mut announced = false;
    loop {
        let failure = match crds.get_opt(CRD_NAME).await {
            Ok(crd) if conditions::is_crd_established().matches_object(crd.as_ref()) => {
                if announced {
                    info!(crd = CRD_NAME, "CRD established");
                }
                return;
            }
            Ok(_) => {
                if !announced {
                    info!(
                        crd = CRD_NAME,
                        "waiting for the CRD to be installed and established (kubectl apply -f crds/)"
                    );
                    announced = true;
                }
                match await_condition(crds.clone(), CRD_NAME, conditions::is_crd_established())
                    .await
                {
                    Ok(_) => continue,
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_delay_near(rand::random());
        warn!(
            error = %failure,
            retry_in = ?delay,
            "cannot read the GitRepository CRD from the API server; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tether-operator".into())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
