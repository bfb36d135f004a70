//! The two ends of the tunnel: the bridge from a websocket to a byte stream (with keepalive), and
//! the yamux connection over it, opening streams (the hub) or accepting them (the operator).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use yamux::{Connection, ConnectionError, Mode};

use super::{
    MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MAX_STREAMS, TUNNEL_DEAD_AFTER, TUNNEL_PING_INTERVAL,
};

/// The most one read of a [`Stream`] returns: what a yamux frame carries.
const STREAM_READ: usize = SPLIT_SEND;

/// One multiplexed stream, as tokio I/O.
///
/// A read fills at most [`STREAM_READ`] bytes of the caller's buffer. yamux reads into initialised
/// memory, so each read must zero what it offers first, and hyper offers all of its read buffer's
/// spare room (up to 400 KiB) to every read: unbounded, the zeroing cost more than the bytes read.
pub struct Stream(yamux::Stream);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stream").field(&self.0.id()).finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = buf.initialize_unfilled_to(buf.remaining().min(STREAM_READ));
        let n = futures::ready!(futures::AsyncRead::poll_read(
            Pin::new(&mut self.get_mut().0),
            cx,
            room
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().0), cx)
    }
}

/// Bytes buffered between the websocket and the multiplexer, each way.
const BRIDGE_BUFFER: usize = 256 * 1024;

/// How much the tunnel's websocket reads from its connection at once. tungstenite zero-fills that
/// much of its buffer before every read, and a read through TLS returns about one record (at most
/// 16 KiB): with the library's 128 KiB, the relay wrote several bytes of zeros for each it carried.
const READ_BUFFER: usize = 32 * 1024;

/// The websocket settings of the tunnel, the same at both ends: messages up to
/// [`MAX_MESSAGE_BYTES`], reads of [`READ_BUFFER`].
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER)
}

/// The most data one yamux frame carries: with its header, one read of the bridge's.
const SPLIT_SEND: usize = MAX_FRAME_BYTES / 2;

/// The tunnel's keepalive: how often to ping, and when silence means the peer is gone.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// How often to send a ping.
    pub ping_every: Duration,
    /// A tunnel silent this long (and a send stuck this long) is dead.
    pub dead_after: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_every: TUNNEL_PING_INTERVAL,
            dead_after: TUNNEL_DEAD_AFTER,
        }
    }
}

/// Why a bridge stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeEnd {
    /// The peer closed the websocket (with its close reason, if any).
    Closed(String),
    /// Nothing arrived within the keepalive's `dead_after`, or a send did not complete in it.
    Dead,
    /// The websocket failed.
    Failed(String),
    /// This end's byte stream was dropped (the multiplexer ended).
    Local,
}

impl std::fmt::Display for BridgeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeEnd::Closed(reason) => write!(f, "closed by the peer ({reason})"),
            BridgeEnd::Dead => f.write_str("no sign of life from the peer"),
            BridgeEnd::Failed(e) => write!(f, "websocket failed: {e}"),
            BridgeEnd::Local => f.write_str("closed by this end"),
        }
    }
}

/// Turns a websocket into a byte stream: what is written to the returned stream goes out as binary
/// messages of at most [`MAX_FRAME_BYTES`], and binary messages that arrive are read from it. The
/// returned future moves the bytes and keeps the websocket alive (a ping every `ping_every`; dead
/// after `dead_after` of silence); the caller runs it, and it ends when either side does.
/// Backpressure holds both ways: the buffer between the two is bounded, and a message is sent only
/// once the websocket took the previous one.
pub fn bridge<S>(
    ws: WebSocketStream<S>,
    keepalive: Keepalive,
) -> (DuplexStream, impl Future<Output = BridgeEnd> + Send)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(BRIDGE_BUFFER);
    let Keepalive {
        ping_every,
        dead_after,
    } = keepalive;
    let pump = async move {
        let (mut sink, mut messages) = ws.split();
        let (mut from_mux, mut to_mux) = tokio::io::split(theirs);
        let outbound = async {
            // Read straight into the message's buffer; once the websocket has taken a message,
            // its allocation is this buffer's again.
            let mut buf = BytesMut::with_capacity(MAX_FRAME_BYTES);
            let mut ping = interval_at(Instant::now() + ping_every, ping_every);
            loop {
                buf.reserve(MAX_FRAME_BYTES);
                let mut next = (&mut from_mux).take(MAX_FRAME_BYTES as u64);
                let message = tokio::select! {
                    read = next.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let _ = timeout(dead_after, sink.send(Message::Close(None))).await;
                            return BridgeEnd::Local;
                        }
                        Ok(_) => Message::Binary(buf.split().freeze()),
                    },
                    _ = ping.tick() => Message::Ping(Bytes::new()),
                };
                match timeout(dead_after, sink.send(message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return BridgeEnd::Failed(e.to_string()),
                    Err(_) => return BridgeEnd::Dead,
                }
            }
        };
        let inbound = async {
            loop {
                let message = match timeout(dead_after, messages.next()).await {
                    Err(_) => return BridgeEnd::Dead,
                    Ok(None) => return BridgeEnd::Closed("stream ended".into()),
                    Ok(Some(Err(e))) => return BridgeEnd::Failed(e.to_string()),
                    Ok(Some(Ok(message))) => message,
                };
                match message {
                    Message::Binary(data) => {
                        if to_mux.write_all(&data).await.is_err() {
                            return BridgeEnd::Local;
                        }
                    }
                    Message::Close(frame) => {
                        return BridgeEnd::Closed(match frame {
                            Some(f) => format!("code {}: {}", u16::from(f.code), f.reason),
                            None => "no close code".into(),
                        });
                    }
                    // Pings are answered by the websocket layer; they and pongs only prove life.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Text(_) => {
                        return BridgeEnd::Failed("a text frame on the tunnel".into());
                    }
                }
            }
        };
        tokio::select! {
            end = outbound => end,
            end = inbound => end,
        }
    };
    (ours, pump)
}

fn config() -> yamux::Config {
    let mut config = yamux::Config::default();
    // Each stream gets at least yamux's default window (256 KiB); no more than that in total per
    // stream, so a peer cannot make this end buffer more than MAX_STREAMS windows.
    config.set_max_connection_receive_window(Some(MAX_STREAMS * yamux::DEFAULT_CREDIT as usize));
    config.set_max_num_streams(MAX_STREAMS);
    config.set_split_send_size(SPLIT_SEND);
    config
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The tunnel is gone.
    #[error("the tunnel is closed")]
    Closed,
    /// The multiplexer refused (too many streams, or the connection failed).
    #[error("the tunnel refused a new stream: {0}")]
    Refused(String),
}

type OpenReply = oneshot::Sender<Result<Stream, OpenError>>;

/// The hub's handle on a tunnel: opens streams to the operator. Cheap to clone; the tunnel closes
/// once every handle is dropped.
#[derive(Debug, Clone)]
pub struct Opener {
    requests: mpsc::Sender<OpenReply>,
}

impl Opener {
    /// A new stream to the operator.
    pub async fn open(&self) -> Result<Stream, OpenError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .await
            .map_err(|_| OpenError::Closed)?;
        rx.await.map_err(|_| OpenError::Closed)?
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }
}

/// The opening end (the hub) of a tunnel over `io`: a handle that opens streams, and the future that
/// drives the connection (run it; it ends when the tunnel does, or once every [`Opener`] is dropped).
/// Streams the other end opens are refused.
pub fn open<T>(
    io: T,
) -> (
    Opener,
    impl Future<Output = Result<(), ConnectionError>> + Send,
)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let driver = Driver {
        connection: Connection::new(io.compat(), config(), Mode::Client),
        requests: rx,
        waiting: VecDeque::new(),
        closing: false,
    };
    (Opener { requests: tx }, driver)
}

struct Driver<T> {
    connection: Connection<Compat<T>>,
    requests: mpsc::Receiver<OpenReply>,
    waiting: VecDeque<OpenReply>,
    closing: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if this.closing {
                return this.connection.poll_close(cx);
            }
            while let Poll::Ready(request) = this.requests.poll_recv(cx) {
                match request {
                    Some(reply) => this.waiting.push_back(reply),
                    None => {
                        this.closing = true;
                        break;
                    }
                }
            }
            if this.closing {
                continue;
            }
            // Drop requests whose asker gave up.
            this.waiting.retain(|reply| !reply.is_closed());
            if !this.waiting.is_empty() {
                match this.connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(reply) = this.waiting.pop_front() {
                            let _ = reply.send(Ok(Stream(stream)));
                        }
                        continue;
                    }
                    Poll::Ready(Err(ConnectionError::TooManyStreams)) => {
                        if let Some(reply) = this.waiting.pop_front() {
                            let _ = reply.send(Err(OpenError::Refused(
                                "too many streams on this tunnel".into(),
                            )));
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        for reply in this.waiting.drain(..) {
                            let _ = reply.send(Err(OpenError::Refused(e.to_string())));
                        }
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {}
                }
            }
            return match this.connection.poll_next_inbound(cx) {
                // The operator never opens streams; one that does gets it reset.
                Poll::Ready(Some(Ok(stream))) => {
                    drop(stream);
                    continue;
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(None) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// The accepting end (the operator) of a tunnel over `io`: the streams the hub opens, in order.
/// Polling it drives the whole connection, so keep polling it while streams are served.
pub struct Incoming<T> {
    connection: Connection<Compat<T>>,
}

impl<T> std::fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// The accepting end of a tunnel over `io`.
pub fn accept<T>(io: T) -> Incoming<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Incoming {
        connection: Connection::new(io.compat(), config(), Mode::Server),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> futures::Stream for Incoming<T> {
    type Item = Result<Stream, ConnectionError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .connection
            .poll_next_inbound(cx)
            .map(|next| next.map(|r| r.map(Stream)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An opening end (its driver running) and an accepting end, over an in-memory pipe.
    fn ends() -> (Opener, Incoming<DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (opener, driver) = open(a);
        tokio::spawn(driver);
        (opener, accept(b))
    }

    /// Two ends over an in-memory pipe: every stream the opener opens arrives, and bytes cross
    /// both ways on each independently.
    #[tokio::test]
    async fn streams_opened_arrive_and_carry_bytes_both_ways() {
        let (opener, mut incoming) = ends();
        let server = tokio::spawn(async move {
            while let Some(Ok(mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    stream.read_to_end(&mut buf).await.unwrap();
                    buf.reverse();
                    stream.write_all(&buf).await.unwrap();
                    stream.shutdown().await.unwrap();
                });
            }
        });
        let mut asks = Vec::new();
        for i in 0..20u8 {
            let opener = opener.clone();
            asks.push(tokio::spawn(async move {
                let mut s = opener.open().await.unwrap();
                let sent = vec![i; 100_000 + usize::from(i)];
                s.write_all(&sent).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert_eq!(back.len(), sent.len());
                assert!(back.iter().all(|b| *b == i));
            }));
        }
        for ask in asks {
            ask.await.unwrap();
        }
        drop(opener);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    /// A stream whose reader stops leaves the writer waiting once the window is full: the bytes
    /// in flight stay bounded instead of piling up in memory.
    #[tokio::test]
    async fn a_reader_that_stops_holds_back_the_writer() {
        let (opener, mut incoming) = ends();
        let (written_tx, written_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut stream = incoming.next().await.unwrap().unwrap();
            let chunk = vec![7u8; 16 * 1024];
            let mut written = 0usize;
            let stalled = async {
                loop {
                    stream.write_all(&chunk).await.unwrap();
                    written += chunk.len();
                }
            };
            let _ = timeout(Duration::from_millis(500), stalled).await;
            let _ = written_tx.send(written);
            // Keep driving the connection.
            while incoming.next().await.is_some() {}
        });
        let mut stream = opener.open().await.unwrap();
        // A stream reaches the other end with its first bytes; after them nothing is read.
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        let written = written_rx.await.unwrap();
        assert!(
            written <= 2 * 1024 * 1024,
            "{written} bytes went out to a reader that read none"
        );
    }

    /// However much room a read is offered, it fills at most [`STREAM_READ`] bytes (the rest of
    /// the room is not zeroed), and the bytes still arrive whole and in order.
    #[tokio::test]
    async fn a_read_offered_a_large_buffer_takes_at_most_one_frame() {
        let (opener, mut incoming) = ends();
        let sent: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let (written_tx, written_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut stream = incoming.next().await.unwrap().unwrap();
            stream.write_all(&sent).await.unwrap();
            stream.shutdown().await.unwrap();
            let _ = written_tx.send(());
            while incoming.next().await.is_some() {}
        });
        let mut stream = opener.open().await.unwrap();
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        written_rx.await.unwrap();
        // Everything is buffered on this side by now (within one window); each read still takes
        // one frame's worth at most.
        let mut room = vec![0u8; 512 * 1024];
        let mut got = Vec::new();
        loop {
            let n = stream.read(&mut room).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= STREAM_READ, "one read filled {n} bytes");
            got.extend_from_slice(&room[..n]);
        }
        assert_eq!(got, expected);
    }
}
