//! The CI tunnel: a second websocket the operator opens to the hub (`GET /v1/tunnel`, subprotocol
//! `tether.tunnel.v1`), separate from the push channel so that a large transfer never delays a
//! notice. Its binary messages carry one byte stream, and [yamux] multiplexes that stream into many:
//! the hub opens one per CI request and speaks plain HTTP/1.1 on it; the operator accepts them.
//!
//! HTTP/1.1 on a stream of its own per request keeps upgrades (`101 Switching Protocols`, then raw
//! bytes both ways) as they are on the wire, and yamux gives each stream its own flow-control window,
//! so a client that stops reading stalls its own stream and nothing else.
//!
//! The constants are always here; the byte bridge and the multiplexer ends need the `tunnel` feature.

use std::time::Duration;

/// The tunnel's websocket path on the hub.
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// The tunnel's websocket subprotocol.
pub const TUNNEL_SUBPROTOCOL: &str = "tether.tunnel.v1";

/// Where the hub serves CI clients: `https://<hub>/k8s-proxy/<agent>/<API path>`.
pub const K8S_PROXY_PREFIX: &str = "/k8s-proxy";

/// The most streams one tunnel carries at once. Both ends use it: a stream beyond the receiver's
/// limit would end the whole tunnel, so the hub's own per-agent limit stays below it.
pub const MAX_STREAMS: usize = 2048;

/// The largest websocket message either end sends on the tunnel; each carries a slice of the byte
/// stream. The receiving end refuses larger ones.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The largest websocket message accepted on the tunnel (the frames sent are at most
/// [`MAX_FRAME_BYTES`]; the rest is headroom for a peer that frames differently).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How often each end pings the other on the tunnel's websocket.
pub const TUNNEL_PING_INTERVAL: Duration = Duration::from_secs(20);

/// A tunnel on which nothing (data, ping or pong) arrived for this long is dead.
pub const TUNNEL_DEAD_AFTER: Duration = Duration::from_secs(60);

#[cfg(feature = "tunnel")]
mod body;
#[cfg(feature = "tunnel")]
mod ends;
#[cfg(feature = "tunnel")]
mod headers;

#[cfg(feature = "tunnel")]
pub use body::Metered;
#[cfg(feature = "tunnel")]
pub use ends::{
    BridgeEnd, Incoming, Keepalive, OpenError, Opener, Stream, accept, bridge, open,
    websocket_config,
};
#[cfg(feature = "tunnel")]
pub use headers::{end_to_end, wants_upgrade};
