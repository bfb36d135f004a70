//! A websocket echo server for the CI-access upgrade test: every message it receives on any path
//! comes back unchanged. Runs inside a network namespace standing in for a pod, so that the API
//! server's service proxy reaches it at a routable address.

use anyhow::{Context, Result};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "Echoes websocket messages")]
struct Args {
    /// Where to listen, e.g. 10.200.1.2:8080.
    #[arg(long)]
    listen: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let Args { listen } = Args::parse();
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!("ws-echo listening on {listen}");
    loop {
        let (socket, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let mut ws = match tokio_tungstenite::accept_async(socket).await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("{peer}: not a websocket: {e}");
                    return;
                }
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
}
