//! Tether's hub: receives the forges' push webhooks and relays them as notices to operators, which
//! connect out to it over websockets (nothing opens into the cluster).
//!
//! - [`config`]: the YAML config file, its validation and the secrets it resolves.
//! - [`webhook`]: per-provider verification and parsing of webhook deliveries, and deduplication.
//! - [`agents`]: bearer-token authentication and the websocket session of one agent.
//! - [`fanout`]: who watches what, and each agent's coalescing outbox.
//! - [`store`]: the latest push per repository, persisted for catch-up.
//! - [`server`]: the accept loop, routes and webhook handler; [`run`] is the entry point.
//! - [`metrics`]: Prometheus metrics, prefixed `tether_hub_`.

pub mod agents;
pub mod config;
pub mod fanout;
pub mod metrics;
pub mod server;
pub mod store;
pub mod webhook;

pub use config::{Config, ConfigError};
pub use server::{ServerError, run};
