//! Bodies carried through the tunnel, metered as they stream, at either end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A body that passes `inner`'s frames on as they come, tells `meter` the size of each data frame,
/// and keeps `held` (a stream slot, a gauge, an audit record written when it drops) alive for as
/// long as the body itself: until its last byte is sent, or the peer goes away.
pub struct Metered<B, M, H> {
    inner: B,
    meter: M,
    _held: H,
}

impl<B, M, H> std::fmt::Debug for Metered<B, M, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered").finish_non_exhaustive()
    }
}

impl<B, M, H> Metered<B, M, H> {
    pub fn new(inner: B, meter: M, held: H) -> Self {
        Self {
            inner,
            meter,
            _held: held,
        }
    }
}

impl<B, M, H> Body for Metered<B, M, H>
where
    B: Body<Data = Bytes> + Unpin,
    M: FnMut(usize) + Unpin,
    H: Unpin,
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
            (this.meter)(data.len());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    struct Dropped(Arc<AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn every_data_byte_is_metered_and_what_is_held_lives_as_long_as_the_body() {
        let frames = ["abc", "", "defgh"]
            .map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s))));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-end", http::HeaderValue::from_static("1"));
        let stream =
            futures::stream::iter(frames.into_iter().chain([Ok(Frame::trailers(trailers))]));
        let (metered, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counted = Arc::clone(&metered);
        let mut body = Metered::new(
            StreamBody::new(stream),
            move |n| {
                counted.fetch_add(n, Ordering::SeqCst);
            },
            Dropped(Arc::clone(&drops)),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        assert_eq!(metered.load(Ordering::SeqCst), 3);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        let rest = body.collect().await.unwrap();
        assert!(rest.trailers().is_some());
        assert_eq!(metered.load(Ordering::SeqCst), 8);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}
