//! End-to-end tests against the local control plane (one per test binary; a namespace per test).

mod charts;
mod fixtures;
mod harness;
mod sync;
