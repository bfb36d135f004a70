//! End-to-end tests against the local control plane (one per test binary; a namespace per test).

mod bad_input;
mod charts;
mod ci_access;
mod ci_oidc;
mod content_limits;
mod credentials;
mod demo;
mod depends_on;
mod docs;
mod fleet;
mod git_faults;
mod harness;
mod leader;
mod lifecycle;
mod ownership;
mod push;
mod refs;
mod render;
mod replicas;
mod repo_case;
mod spec_bounds;
mod sync;
mod tenancy;
