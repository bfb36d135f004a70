use anyhow::Context as _;
use clap::Parser;
use tether_operator::cli::{Args, run};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread starts: libgit2 keeps these in unsynchronised globals.
    tether_operator::git::set_socket_timeouts(args.git_socket_timeout)
        .context("setting libgit2's socket timeouts")?;
    tether_operator::git::register_http_transport(args.git_socket_timeout)
        .context("registering the HTTP transport for git")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}
