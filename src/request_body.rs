//! Request bodies as the clients send them: read in full, or streamed to a node while a copy
//! is kept for a retry.
//!
//! A body whose length is known and small is read in full before the first attempt
//! (`read_body`). Any other body (chunked, HTTP/2 without `content-length`, or larger) is
//! streamed, never held back: a gRPC or other streaming client may wait for an answer before
//! it sends more. While it streams, [`Recorded`] copies its data up to [`RETRY_BUFFER`]; once
//! the body has ended within that size (and without trailers), the copy can be resent like a
//! body read in full, however the app framed it.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Request bodies up to this size, in bytes, are kept so a retry can resend them; larger ones
/// stream through once and are not retried once sent.
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// A request body for hyper's client: streamed from the app (left), or known in full (right).
pub type RequestBody = Either<Recorded, Full<Bytes>>;

/// The copy of a streamed body, set once the body has ended within [`RETRY_BUFFER`] bytes.
pub(crate) type Recording = Arc<OnceLock<Bytes>>;

/// A streamed request body that keeps a copy of what it forwards, while the copy is small.
pub struct Recorded {
    inner: Incoming,
    /// What passed so far; `None` once over the limit, after trailers or an error.
    copy: Option<BytesMut>,
    recording: Recording,
}

impl Recorded {
    /// Streams `inner`, copying it into `recording` unless it says it is larger than
    /// [`RETRY_BUFFER`].
    pub(crate) fn new(inner: Incoming, recording: Recording) -> Self {
        let fits = inner.size_hint().lower() <= RETRY_BUFFER;
        Recorded {
            inner,
            copy: fits.then(BytesMut::new),
            recording,
        }
    }

    fn finish(&mut self) {
        if let Some(copy) = self.copy.take() {
            let _ = self.recording.set(copy.freeze());
        }
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                match (frame.data_ref(), &mut self.copy) {
                    (Some(data), Some(copy))
                        if copy.len() + data.len() <= RETRY_BUFFER as usize =>
                    {
                        copy.extend_from_slice(data)
                    }
                    // Over the limit, or trailers (a resend would lose them).
                    _ => self.copy = None,
                }
                // A sender stops polling once the body says it has ended.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Some(Err(_)) => self.copy = None,
            None => self.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
