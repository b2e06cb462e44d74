//! The chunked body every stream of the crate writes, [`SseStream`]'s
//! and the broadcast feed's alike: the pieces a source yields ([`Piece`]),
//! the frames ready in one poll gathered into one chunk ([`Batch`],
//! [`drain`], with coalescing), and the SSE response around it.
//!
//! [`SseStream`]: super::SseStream

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::Sleep;

use super::EndReason;

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// What a crate-internal source yields to [`Frames`]: a whole frame, possibly
/// in several shared pieces (written back to back, never split by a
/// heartbeat or a close message), or the end of the stream.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A frame in one buffer.
    One(Bytes),
    /// A frame in three parts: a shared id head (`id: EPOCH-SEQ`), the
    /// receiving connection's tag (`ID.PROOF`, written after a `.` and
    /// ending the line), and a shared body: nothing per receiver but the
    /// tag it already holds.
    Tagged(Bytes, Arc<str>, Bytes),
    /// Frames (this many) the source wrote into the batch it was handed
    /// (see [`drain`]): nothing to copy, nothing shared to count.
    Written(u32),
    /// End the stream for this reason (a close message only if the reason
    /// sends one).
    End(EndReason),
}

/// The SSE response around a body of frames.
pub(crate) fn sse_response<B>(frames: B) -> Response
where
    B: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    // Room for the three headers only: hyper keeps this map for the
    // connection's next response, so its size is part of every open
    // connection (312 bytes here against 624 for a default map).
    response(Body::from_stream(frames), 3)
}

fn response(body: Body, headers: usize) -> Response {
    let mut h = HeaderMap::with_capacity(headers);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::OK;
    *res.headers_mut() = h;
    res
}

/// The SSE response around a body of frames, compressed when `compression`
/// allows an encoding that `accept` (the request's `Accept-Encoding`)
/// accepts; `Vary: Accept-Encoding` either way.
#[cfg(feature = "compression")]
pub(crate) fn sse_response_negotiated<B>(
    frames: B,
    compression: &super::Compression,
    accept: Option<&HeaderValue>,
) -> Response
where
    B: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    use super::compression::Compressed;

    let vary = HeaderValue::from_static("accept-encoding");
    match compression.negotiate(accept) {
        None => {
            let mut res = response(Body::from_stream(frames), 4);
            res.headers_mut().insert(header::VARY, vary);
            res
        }
        Some(encoding) => {
            let body = Compressed::new(frames, compression.encoder(encoding));
            let mut res = response(Body::from_stream(body), 5);
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, encoding.header());
            res.headers_mut().insert(header::VARY, vary);
            res
        }
    }
}

/// How many bytes one body chunk collects at most: messages ready at the same
/// time go out as one chunk up to this size (one buffer of hyper's write
/// queue, which holds 16 buffers before it must flush, instead of one buffer
/// per message or per piece of a message).
pub(super) const BATCH_BYTES: usize = 16 * 1024;

/// The frames ready in one poll, as one chunk: a single frame is passed on
/// as it is (no copy); from the second on, all are copied into one buffer.
pub(crate) struct Batch {
    single: Option<Bytes>,
    buf: BytesMut,
    /// The capacity to start the buffer with: the size of the stream's
    /// previous chunk, so a steady stream grows no buffer twice.
    hint: usize,
}

impl Batch {
    pub(crate) fn new(hint: u32) -> Self {
        Batch {
            single: None,
            buf: BytesMut::new(),
            hint: (hint as usize).min(BATCH_BYTES),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.single.as_ref().map_or(self.buf.len(), Bytes::len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.single.is_none() && self.buf.is_empty()
    }

    /// Whether more frames may go into this chunk ([`BATCH_BYTES`]).
    pub(crate) fn has_room(&self) -> bool {
        self.len() < BATCH_BYTES
    }

    /// Makes room for `more` bytes, moving a single frame into the buffer.
    fn reserve(&mut self, more: usize) {
        let first = self.single.take();
        let need = first.as_ref().map_or(0, Bytes::len) + more;
        if self.buf.capacity() == 0 {
            self.buf.reserve(need.max(self.hint));
        } else {
            self.buf.reserve(need);
        }
        if let Some(first) = first {
            self.buf.extend_from_slice(&first);
        }
    }

    pub(crate) fn push(&mut self, bytes: Bytes) {
        if self.is_empty() {
            self.single = Some(bytes);
        } else {
            self.reserve(bytes.len());
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Adds a frame made of a shared id head, the receiving connection's
    /// tag and a shared body (see [`Piece::Tagged`]), copying each part once.
    pub(crate) fn push_tagged(&mut self, head: &[u8], tag: &str, body: &[u8]) {
        let id = tag.as_bytes();
        self.reserve(head.len() + id.len() + 2 + body.len());
        self.buf.extend_from_slice(head);
        self.buf.put_u8(b'.');
        self.buf.extend_from_slice(id);
        self.buf.put_u8(b'\n');
        self.buf.extend_from_slice(body);
    }

    fn push_piece(&mut self, piece: Piece) {
        match piece {
            Piece::One(bytes) => self.push(bytes),
            Piece::Tagged(head, id, body) => self.push_tagged(&head, &id, &body),
            Piece::Written(_) | Piece::End(_) => {}
        }
    }

    pub(crate) fn finish(self) -> Option<Bytes> {
        match self.single {
            Some(bytes) => Some(bytes),
            None if self.buf.is_empty() => None,
            None => Some(self.buf.freeze()),
        }
    }
}

/// With coalescing on, how many frames one poll takes from the source at
/// most. No byte limit then: every waiting frame must be seen to know which
/// are superseded, and what goes out is at most one frame per event name
/// plus the unnamed ones.
const COALESCE_MAX: usize = 1024;

/// The frames ready in one poll, the newest of each event name only.
#[derive(Default)]
struct Coalesced {
    /// Each with its event name, if it has one, in the order they go out.
    pieces: Vec<(Option<Bytes>, Piece)>,
    /// Frames taken from the source, superseded ones included.
    taken: usize,
}

impl Coalesced {
    fn push(&mut self, piece: Piece) {
        self.taken += 1;
        let name = piece.event_name();
        if let Some(name) = &name
            && let Some(i) = self
                .pieces
                .iter()
                .position(|(n, _)| n.as_ref() == Some(name))
        {
            self.pieces.remove(i);
        }
        self.pieces.push((name, piece));
    }
}

impl Piece {
    /// The value of the frame's `event:` field, if it has a non-empty one.
    fn event_name(&self) -> Option<Bytes> {
        match self {
            Piece::One(frame) => event_name(frame),
            // The id head and the connection id make the `id:` line only.
            Piece::Tagged(_, _, body) => event_name(body),
            Piece::Written(_) | Piece::End(_) => None,
        }
    }
}

/// The value of the `event:` field of one encoded frame, if it has a
/// non-empty one. Fields are lines up to the blank line that ends the event;
/// data lines start with `data:`, so a line that starts with `event:` is
/// the field.
pub(super) fn event_name(frame: &Bytes) -> Option<Bytes> {
    let mut at = 0;
    while at < frame.len() {
        let end = memchr::memchr(b'\n', &frame[at..]).map_or(frame.len(), |i| at + i);
        let line = &frame[at..end];
        if line.is_empty() {
            return None;
        }
        if let Some(value) = line.strip_prefix(b"event:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            return (!value.is_empty()).then(|| frame.slice(end - value.len()..end));
        }
        at = end + 1;
    }
    None
}

pub(crate) fn log_frame(stream: &dyn fmt::Display, debug: bool, bytes: &[u8]) {
    if debug {
        tracing::debug!(%stream, frame = %String::from_utf8_lossy(bytes), "sse frame");
    }
}

fn log_piece(stream: &dyn fmt::Display, piece: &Piece) {
    match piece {
        Piece::One(bytes) => log_frame(stream, true, bytes),
        Piece::Tagged(head, id, body) => log_frame(
            stream,
            true,
            &[&head[..], b".", id.as_bytes(), b"\n", body].concat(),
        ),
        // Never handed a batch while logging.
        Piece::Written(_) | Piece::End(_) => {}
    }
}

/// Whether the stream's timeout (if it has one) passed; if not, `cx` is
/// woken when it does.
pub(crate) fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    deadline
        .as_mut()
        .is_some_and(|d| d.as_mut().poll(cx).is_ready())
}

/// Takes into `batch` what `next` has ready: frames until it is pending or
/// the batch holds [`BATCH_BYTES`]; with `coalesce`, every waiting frame (up
/// to [`COALESCE_MAX`]), the newest of each event name only. Returns how
/// many frames went into the batch, and why the source ended if it did.
/// `debug` names the stream in a log line per frame.
///
/// `next` is handed the batch when it may write a frame into it itself
/// (and return [`Piece::Written`]): not while coalescing, which needs the
/// frames apart, nor while logging them.
pub(crate) fn drain(
    cx: &mut Context<'_>,
    batch: &mut Batch,
    coalesce: bool,
    debug: Option<&dyn fmt::Display>,
    mut next: impl FnMut(&mut Context<'_>, Option<&mut Batch>) -> Poll<Option<Piece>>,
) -> (u64, Option<EndReason>) {
    let mut frames = 0;
    let mut reason = None;
    let mut take = |batch: &mut Batch, piece: Piece| {
        frames += match piece {
            Piece::Written(n) => u64::from(n),
            _ => 1,
        };
        if let Some(stream) = debug {
            log_piece(stream, &piece);
        }
        batch.push_piece(piece);
    };
    if coalesce {
        let mut ready = Coalesced::default();
        while ready.taken < COALESCE_MAX {
            match next(cx, None) {
                Poll::Ready(Some(Piece::End(r))) => {
                    reason = Some(r);
                    break;
                }
                Poll::Ready(Some(piece)) => ready.push(piece),
                Poll::Ready(None) => {
                    reason = Some(EndReason::SourceEnded);
                    break;
                }
                Poll::Pending => break,
            }
        }
        for (_, piece) in ready.pieces {
            take(batch, piece);
        }
    } else {
        let direct = debug.is_none();
        while batch.has_room() {
            match next(cx, direct.then_some(&mut *batch)) {
                Poll::Ready(Some(Piece::End(r))) => {
                    reason = Some(r);
                    break;
                }
                Poll::Ready(Some(piece)) => take(batch, piece),
                Poll::Ready(None) => {
                    reason = Some(EndReason::SourceEnded);
                    break;
                }
                Poll::Pending => break,
            }
        }
    }
    (frames, reason)
}
