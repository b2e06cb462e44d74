//! `Compression`: gzip and brotli for one stream, negotiated from the
//! request's `Accept-Encoding`, flushed after every chunk.
//!
//! Each compressed connection has its own compressor, which keeps its
//! window from one event to the next: a dashboard that sends the same
//! markup with new numbers every second costs a few bytes per update once
//! the first update is in the window. That is the price too: a frame is no
//! longer encoded once for every connection (the shared `Bytes` of a
//! broadcast are compressed again by each compressed connection), and each
//! one holds its compressor's state while it is open. BENCHMARKS.md,
//! *Compressed streams*, has both figures.
//!
//! Every chunk the body writes (the frames ready together, a heartbeat, the
//! close message) is compressed and flushed at once (a sync flush for gzip,
//! a flush for brotli): nothing waits in the compressor for the next event,
//! and the browser can decode each event as soon as it arrives. The end of
//! the stream finishes the compressed stream (gzip's trailer, brotli's last
//! block).

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::HeaderValue;
use bytes::Bytes;
use futures_core::Stream;
use pin_project_lite::pin_project;

/// Compressed streams, opt in: which encodings a stream may use, and their
/// settings. Give it to [`StreamConfig::compression`](super::StreamConfig::compression).
///
/// The encoding is chosen for each response from the request's
/// `Accept-Encoding`: the one with the highest `q` value (brotli on a tie),
/// `identity` when the client accepts none of the enabled ones (`q=0`
/// refuses one) or sends no `Accept-Encoding`. Browsers send
/// `Accept-Encoding: gzip, deflate, br, zstd` on `EventSource` and `fetch`
/// requests and decompress transparently.
///
/// The settings are chosen for streams of small, repetitive events, from
/// the measurements in BENCHMARKS.md (*Compressed streams*: the demo's
/// dashboard stream, 60 s):
///
/// - gzip at level 6 (zlib's default), with deflate's 32 KiB window:
///   0.16× the bytes of identity, 11 µs per event per connection;
/// - brotli at quality 3 with a 64 KiB window (`lgwin` 16): 0.14× the
///   bytes, 14 µs per event. Higher qualities save little on small events
///   (quality 5: 0.13×) for two to five times the time and memory, and
///   brotli's own default (quality 11, 4 MiB window) takes a millisecond
///   per event; a 64 KiB window holds three minutes of the demo's
///   dashboard, so it is not what limits the ratio.
///
/// Each compressed connection holds its compressor while it is open:
/// about 320 KiB for either encoding at these settings (an idle
/// connection without compression takes about 17 KiB), so a server with
/// 10,000 compressed streams needs about 3 GiB more. Compression suits
/// streams that send much to a few hundred or thousand pages; for many
/// mostly idle connections leave it off, or offer gzip only at level 1
/// (0.18×, 5 µs, 300 KiB).
///
/// # Security
///
/// A compressed stream's size depends on what repeats in it (BREACH):
/// whoever can put text of their choice into a page's stream and watch
/// the sizes of its TLS records can guess, a character at a time, secrets
/// the same stream carries (the `ID.PROOF` tail of broadcast event ids,
/// private data). Compress streams of server-made data; leave it off for
/// streams that mix other users' text with secrets. See SECURITY.md.
///
/// ```
/// use htmx_sse::streaming::{Compression, StreamConfig};
///
/// let config = StreamConfig::new().compression(Compression::new());
/// // Only brotli, a smaller window.
/// let config = StreamConfig::new()
///     .compression(Compression::new().gzip(false).brotli_window_bits(14));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Compression {
    gzip: Option<u32>,
    brotli: Option<(u32, u32)>,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            gzip: Some(6),
            brotli: Some((3, 16)),
        }
    }
}

/// The encoding chosen for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    pub(crate) fn header(self) -> HeaderValue {
        match self {
            Encoding::Gzip => HeaderValue::from_static("gzip"),
            Encoding::Brotli => HeaderValue::from_static("br"),
        }
    }
}

impl Compression {
    /// gzip (level 6) and brotli (quality 3, window 2^16): the settings
    /// above.
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// assert_eq!(Compression::new(), Compression::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers gzip (on by default).
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// let brotli_only = Compression::new().gzip(false);
    /// # let _ = brotli_only;
    /// ```
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on.then(|| self.gzip.unwrap_or(6));
        self
    }

    /// Offers brotli (`br`, on by default).
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// let gzip_only = Compression::new().brotli(false);
    /// # let _ = gzip_only;
    /// ```
    pub fn brotli(mut self, on: bool) -> Self {
        self.brotli = on.then(|| self.brotli.unwrap_or((3, 16)));
        self
    }

    /// gzip's level, 1 (fastest) to 9 (smallest), 6 by default; clamped to
    /// that range. Turns gzip on.
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// let fast = Compression::new().gzip_level(1);
    /// # let _ = fast;
    /// ```
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.gzip = Some(level.clamp(1, 9));
        self
    }

    /// brotli's quality, 0 to 11, 3 by default; clamped to that range.
    /// Turns brotli on. Qualities 0 and 1 do not keep the window across
    /// flushes (0.64× on the benchmark); above 3 the time per event and
    /// the memory grow fast for little gain on small events, and
    /// qualities 5 to 8 with a window of 2^16 or less take 5 MiB per
    /// connection (the pure-Rust encoder has no small-window match finder
    /// for them and falls back to a large one): give those a window of
    /// 2^17 or more (about 1.1 MiB).
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// let cheaper = Compression::new().brotli_quality(4);
    /// # let _ = cheaper;
    /// ```
    pub fn brotli_quality(mut self, quality: u32) -> Self {
        let (_, window) = self.brotli.unwrap_or((3, 16));
        self.brotli = Some((quality.min(11), window));
        self
    }

    /// brotli's window, as a power of two: 10 (1 KiB) to 24 (16 MiB), 16
    /// (64 KiB) by default; clamped to that range. Turns brotli on. The
    /// window is what an event can refer back to, and part of every
    /// compressed connection's memory (see
    /// [`brotli_quality`](Self::brotli_quality) for qualities 5 to 8).
    ///
    /// ```
    /// use htmx_sse::streaming::Compression;
    ///
    /// let small = Compression::new().brotli_window_bits(12);
    /// # let _ = small;
    /// ```
    pub fn brotli_window_bits(mut self, bits: u32) -> Self {
        let (quality, _) = self.brotli.unwrap_or((3, 16));
        self.brotli = Some((quality, bits.clamp(10, 24)));
        self
    }

    /// The encoding for a request whose `Accept-Encoding` is `accept`, or
    /// `None` for identity.
    pub(crate) fn negotiate(&self, accept: Option<&HeaderValue>) -> Option<Encoding> {
        let accept = accept.and_then(|v| v.to_str().ok())?;
        let mut brotli = None;
        let mut gzip = None;
        let mut any = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(value.trim());
                }
            }
            // A malformed q value: the item is ignored.
            let Some(q) = q else { continue };
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut brotli
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding == "*" {
                &mut any
            } else {
                continue;
            };
            // Listed twice: the highest counts.
            *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
        }
        let brotli = self.brotli.and(brotli.or(any)).unwrap_or(0);
        let gzip = self.gzip.and(gzip.or(any)).unwrap_or(0);
        if brotli == 0 && gzip == 0 {
            None
        } else if brotli >= gzip {
            Some(Encoding::Brotli)
        } else {
            Some(Encoding::Gzip)
        }
    }

    /// A fresh compressor for `encoding`.
    pub(crate) fn encoder(&self, encoding: Encoding) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(self.gzip.unwrap_or(6)),
            )),
            Encoding::Brotli => {
                let (quality, window) = self.brotli.unwrap_or((3, 16));
                Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    BROTLI_BUFFER,
                    quality,
                    window,
                )))
            }
        }
    }
}

/// The brotli writer's output buffer: a flush that makes more loops.
const BROTLI_BUFFER: usize = 1024;

/// A q value (`0`, `0.5`, `1.000`) in thousandths, or `None` when it is
/// not one.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// One connection's compressor.
pub(crate) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    // Boxed: the writer's state is large and the body is moved around.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    /// Compresses `chunk` and flushes: the bytes to send now.
    fn compress(&mut self, chunk: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(w) => {
                w.write_all(chunk)?;
                w.flush()?;
                w.get_mut()
            }
            Encoder::Brotli(w) => {
                w.write_all(chunk)?;
                w.flush()?;
                w.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the compressed stream: its last bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(w) => w.finish().map(Bytes::from),
            Encoder::Brotli(w) => Ok(Bytes::from(w.into_inner())),
        }
    }
}

pin_project! {
    /// A body of SSE chunks, compressed chunk by chunk.
    pub(crate) struct Compressed<B> {
        #[pin]
        inner: B,
        encoder: Option<Encoder>,
    }
}

impl<B> Compressed<B> {
    pub(crate) fn new(inner: B, encoder: Encoder) -> Self {
        Compressed {
            inner,
            encoder: Some(encoder),
        }
    }
}

impl<B> Stream for Compressed<B>
where
    B: Stream<Item = Result<Bytes, Infallible>>,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => match encoder.compress(&chunk) {
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => return Poll::Ready(Some(Ok(out))),
                    Err(e) => {
                        // Writing into a `Vec` does not fail; if the encoder
                        // did, nothing decodable can follow.
                        tracing::warn!(error = %e, "sse compression failed, ending the stream");
                        *this.encoder = None;
                        return Poll::Ready(None);
                    }
                },
                Some(Err(never)) => match never {},
                None => {
                    let last = this.encoder.take().map(Encoder::finish);
                    return Poll::Ready(match last {
                        Some(Ok(out)) if !out.is_empty() => Some(Ok(out)),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "sse compression failed at the end");
                            None
                        }
                        _ => None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn pick(accept: &str) -> Option<Encoding> {
        Compression::new().negotiate(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn negotiation_honours_q_values() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Encoding::Brotli));
        assert_eq!(pick("gzip"), Some(Encoding::Gzip));
        assert_eq!(pick("x-gzip"), Some(Encoding::Gzip));
        assert_eq!(pick("GZIP;Q=0.5, br;q=0.4"), Some(Encoding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0.1"), Some(Encoding::Gzip));
        assert_eq!(pick("br;q=0, gzip;q=0"), None);
        assert_eq!(pick("br;q=0.000, gzip ; q=0.0"), None);
        assert_eq!(pick("deflate, zstd, identity"), None);
        assert_eq!(pick(""), None);
        assert_eq!(pick("*"), Some(Encoding::Brotli));
        assert_eq!(pick("*;q=0.5, br;q=0"), Some(Encoding::Gzip));
        assert_eq!(pick("gzip, *;q=0"), Some(Encoding::Gzip));
        // Malformed q values: that item is ignored.
        assert_eq!(pick("br;q=2, gzip;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(pick("br;q=0.5555, gzip;q=abc"), None);
        assert_eq!(Compression::new().negotiate(None), None);
        let gzip_only = Compression::new().brotli(false);
        assert_eq!(
            gzip_only.negotiate(Some(&HeaderValue::from_static("br, gzip;q=0.1"))),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            gzip_only.negotiate(Some(&HeaderValue::from_static("br"))),
            None
        );
    }

    #[test]
    fn q_values_in_thousandths() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0.001"), Some(1));
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue("0.1234"), None);
        assert_eq!(qvalue(".5"), None);
        assert_eq!(qvalue("x"), None);
    }

    #[test]
    fn settings_are_clamped() {
        let c = Compression::new()
            .gzip_level(42)
            .brotli_quality(99)
            .brotli_window_bits(3);
        assert_eq!(c.gzip, Some(9));
        assert_eq!(c.brotli, Some((11, 10)));
        let off = Compression::new().gzip(false).brotli(false);
        assert_eq!(
            off.negotiate(Some(&HeaderValue::from_static("gzip, br"))),
            None
        );
    }

    /// Each chunk decodes on its own, as soon as it is written: the output
    /// so far holds every chunk compressed so far, without the end.
    #[test]
    fn every_chunk_is_flushed_and_the_end_finishes_the_stream() {
        for encoding in [Encoding::Gzip, Encoding::Brotli] {
            let mut enc = Compression::new().encoder(encoding);
            let mut wire = Vec::new();
            let frames = ["data: <b>1</b>\n\n", ":\n\n", "data: <b>2</b>\n\n"];
            let mut expected = String::new();
            for frame in frames {
                wire.extend_from_slice(&enc.compress(frame.as_bytes()).unwrap());
                expected.push_str(frame);
                assert_eq!(decode_prefix(encoding, &wire), expected, "{encoding:?}");
            }
            wire.extend_from_slice(&enc.finish().unwrap());
            let mut whole = String::new();
            match encoding {
                Encoding::Gzip => {
                    flate2::read::GzDecoder::new(&wire[..])
                        .read_to_string(&mut whole)
                        .unwrap();
                }
                Encoding::Brotli => {
                    brotli::Decompressor::new(&wire[..], 4096)
                        .read_to_string(&mut whole)
                        .unwrap();
                }
            }
            assert_eq!(whole, expected);
        }
    }

    /// What a streaming decoder yields from a stream that has not ended.
    fn decode_prefix(encoding: Encoding, wire: &[u8]) -> String {
        let out = match encoding {
            Encoding::Gzip => {
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(wire).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Encoding::Brotli => {
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                d.write_all(wire).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
        };
        String::from_utf8(out).unwrap()
    }
}
