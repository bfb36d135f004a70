//! Bodies relayed through a tunnel: counted as they stream, holding what the request holds (its
//! stream slot, its idle exemption) until the last byte or until the body is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A body that counts its data bytes into `bytes` and keeps `held` alive as long as itself.
pub(super) struct Counted<B> {
    inner: B,
    bytes: prometheus::IntCounter,
    _held: Vec<Box<dyn Send>>,
}

impl<B> Counted<B> {
    pub(super) fn new(inner: B, bytes: prometheus::IntCounter, held: Vec<Box<dyn Send>>) -> Self {
        Self {
            inner,
            bytes,
            _held: held,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
