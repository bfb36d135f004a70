//! Tether's hub: receives the forges' push webhooks and relays them as notices to operators, which
//! connect out to it over websockets (nothing opens into the cluster).
//!
//! A request comes in through [`server`] (accept loop, routes) and [`conn`] (TLS, HTTP/1.1,
//! timeouts). A webhook goes to [`ingest`], which verifies and parses it with [`webhook`], records it
//! in [`store`] and hands it to [`fanout`]; an agent's websocket goes to [`agents`], which subscribes
//! it in [`fanout`] and writes its notices. What every connection shares is in [`state`]. Imports
//! run one way: `server` → `conn`, `ingest`, `agents`, `tunnel`, `fleet` → `state` → the rest, and no two modules
//! import each other.
//!
//! - [`config`]: the YAML config file and its validation; [`globs`]: the repository globs it grants.
//! - [`limits`]: every bound on what one client can make the hub hold, with its default.
//! - [`secret`]: secret values (never printed) and where each is read from (file or environment).
//! - [`webhook`]: per-provider verification and parsing of deliveries ([`webhook::sign`] for the
//!   HMAC and token checks, [`webhook::dedup`] for redeliveries). Pure.
//! - [`ingest`]: the webhook intake, `POST /v1/webhooks/{provider}`.
//! - [`agents`]: bearer-token authentication and the websocket session of one agent.
//! - `tunnel`: CI access: the tunnels operators open (`/v1/tunnel`) and the relay of CI requests
//!   through them (`/k8s-proxy/<agent>/...`); the hub routes, the operator decides.
//! - [`fanout`]: who watches what, and each agent's coalescing outbox.
//! - [`store`]: the latest push per repository (and per ref), and the fleet records, persisted.
//! - [`fleet`]: the fleet view: what each agent's cluster runs, from the status its operator
//!   reports (`GET /v1/fleet`, the page at `/fleet`, viewer tokens and login).
//! - `replicas`: several replicas sharing a Redis: the latest pushes, delivery dedup, accepted
//!   pushes published to every replica, and what a replica does while Redis is away.
//! - [`state`]: the state shared by every connection.
//! - [`server`]: the accept loop, TLS settings and routes; [`run`] is the entry point.
//! - [`conn`]: one connection: TLS handshake, HTTP/1.1 with its timeouts, idle watchdog, drain.
//! - [`metrics`]: Prometheus metrics, prefixed `tether_hub_`.
//! - `test_util` (feature `test-util`): a hub on 127.0.0.1:0, a config builder, a fake environment,
//!   a websocket agent and a test CA, for this crate's tests and the operator's.

pub mod agents;
pub mod config;
mod conn;
pub mod fanout;
pub mod fleet;
pub mod globs;
mod ingest;
pub mod limits;
pub mod metrics;
mod replicas;
pub mod secret;
pub mod server;
mod state;
pub mod store;
mod tunnel;
pub mod webhook;

#[cfg(feature = "test-util")]
pub mod test_util;

pub use config::{Config, ConfigError};
pub use server::{ServerError, run};
