//! `StreamConfig`: how one SSE response behaves over its life.

use std::time::Duration;

use crate::event::{Event, EventName};

use super::Shutdown;

/// The name of the default close event: match it with `sse-close="close"`
/// (htmx 2) or `hx-sse:close="close"` (htmx 4).
pub const CLOSE_EVENT: EventName = EventName::from_static("close");

/// The name of the last event of a stream ended by a shutdown, when
/// [`StreamConfig::retry_on_shutdown`] is set: it carries the `retry:`
/// delay and empty data (htmx 4 reads `retry:` only from an event with
/// data; no page listens to this name, so nothing is swapped).
pub const RETRY_EVENT: EventName = EventName::from_static("htmx-sse-retry");

/// The frame that tells a page to wait a delay drawn in `0..=window`
/// before reconnecting.
pub(crate) fn shutdown_retry_frame(window: Duration) -> bytes::Bytes {
    let span = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let draw = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let delay = if span == u64::MAX {
        draw
    } else {
        draw % (span + 1)
    };
    bytes::Bytes::from(format!(
        "event: {}\nretry: {delay}\ndata:\n\n",
        RETRY_EVENT.as_str()
    ))
}

/// How an [`SseStream`](super::SseStream) behaves: heartbeat, timeout,
/// initial and close messages, shutdown, logging.
///
/// ```
/// use std::time::Duration;
/// use htmx_sse::{Event, streaming::StreamConfig};
///
/// let config = StreamConfig::new()
///     .heartbeat(Duration::from_secs(10))
///     .timeout(Duration::from_secs(300))
///     .initial_message(None)
///     .close_message(Event::builder().event("done").data("bye").build()?)
///     .debug(true);
/// assert_eq!(config.heartbeat_interval(), Some(Duration::from_secs(10)));
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct StreamConfig {
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) initial: Option<Event>,
    pub(crate) close: Option<Event>,
    pub(crate) shutdown: Option<Shutdown>,
    pub(crate) shutdown_retry: Option<Duration>,
    pub(crate) debug: bool,
    pub(crate) coalesce: bool,
    #[cfg(feature = "compression")]
    pub(crate) compression: Option<super::Compression>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            heartbeat: Some(Duration::from_secs(15)),
            timeout: None,
            initial: Some(Event::from_static(b": connected\n\n")),
            close: Some(Event::from_static(
                b"event: close\ndata: connection closed\n\n",
            )),
            shutdown: None,
            shutdown_retry: None,
            debug: false,
            coalesce: false,
            #[cfg(feature = "compression")]
            compression: None,
        }
    }
}

impl StreamConfig {
    /// The defaults: a heartbeat every 15 s, no timeout, the comment
    /// `: connected` first (browsers ignore it; it opens the stream at once),
    /// and `event: close` / `data: connection closed` last.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends a heartbeat comment after `every` without other traffic.
    ///
    /// # Panics
    ///
    /// When `every` is zero: that is a programming error, not data.
    #[track_caller]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        assert!(!every.is_zero(), "heartbeat interval must not be zero");
        self.heartbeat = Some(every);
        self
    }

    /// Sends no heartbeats.
    pub fn no_heartbeat(mut self) -> Self {
        self.heartbeat = None;
        self
    }

    /// Ends the stream (with the close message) once it has been open for
    /// `after`.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// The first frame, or `None` for no initial message.
    pub fn initial_message(mut self, event: impl Into<Option<Event>>) -> Self {
        self.initial = event.into();
        self
    }

    /// The last frame when the stream ends on purpose, or `None` for none.
    /// Make it a named event so that htmx can match it to stop reconnecting.
    pub fn close_message(mut self, event: impl Into<Option<Event>>) -> Self {
        self.close = event.into();
        self
    }

    /// Ends the stream (without the close message, so browsers reconnect to
    /// the next server process) when `shutdown` is triggered.
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// On shutdown, tells each stream when to come back before it ends: a
    /// last event, [`RETRY_EVENT`](crate::streaming::RETRY_EVENT), whose
    /// `retry:` field is a delay drawn for each stream between 0 and
    /// `window`, so that the pages of a server that is being replaced
    /// reconnect spread over the window instead of all at once. Browsers'
    /// `EventSource` (htmx 2) and hx-sse (htmx 4) both wait that long before
    /// reconnecting (the crate's own reconnect runtime keeps its backoff).
    /// Off by default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::streaming::{Shutdown, StreamConfig};
    ///
    /// let shutdown = Shutdown::new();
    /// let config = StreamConfig::new()
    ///     .shutdown(&shutdown)
    ///     .retry_on_shutdown(Duration::from_secs(10));
    /// ```
    pub fn retry_on_shutdown(mut self, window: Duration) -> Self {
        self.shutdown_retry = Some(window);
        self
    }

    /// Logs every frame at `debug` level through `tracing` (the stream's
    /// start and end are logged at `debug` level either way).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// Latest wins: of the frames waiting to be sent together, only the
    /// newest of each event name goes out; off by default.
    ///
    /// For dashboards that only need the newest value of each element. In
    /// htmx an element swaps the events of one name (`sse-swap="cpu"`), so
    /// the event name stands for the target element: when the client reads
    /// slower than updates come, it gets the current value of every element
    /// instead of falling behind by every value in between. Frames are
    /// merged only when several are waiting at once (queued in the source
    /// while the connection was busy), never held back to wait for more;
    /// a merged frame goes out in the place of the newest one. Frames
    /// without an event name (`data:` only, comments, heartbeats) are never
    /// merged, so nothing else is lost or reordered.
    ///
    /// On a [`BroadcastManager`](crate::broadcast::BroadcastManager)
    /// connection (through its builder's `stream`), a page that reconnects
    /// resumes after the newest id it received, and the registry's message
    /// counts include the frames that were superseded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// use htmx_sse::{Event, streaming::{SseStream, StreamConfig}};
    ///
    /// // <div sse-swap="cpu"></div> shows the newest value, however slow the
    /// // client is.
    /// async fn cpu() -> impl axum::response::IntoResponse {
    ///     SseStream::spawn(16, |tx| async move {
    ///         for load in (0..100).cycle() {
    ///             let ev = Event::builder().event("cpu").data(format!("<b>{load}%</b>")).build();
    ///             if tx.send(ev.expect("a valid name")).await.is_err() {
    ///                 return; // the client went away
    ///             }
    ///             tokio::time::sleep(Duration::from_millis(10)).await;
    ///         }
    ///     })
    ///     .config(StreamConfig::new().coalesce_by_event(true))
    /// }
    ///
    /// let app: Router = Router::new().route("/cpu", get(cpu));
    /// ```
    pub fn coalesce_by_event(mut self, on: bool) -> Self {
        self.coalesce = on;
        self
    }

    /// Compresses the stream (feature `compression`; off by default) with
    /// an encoding the client accepts, chosen from the request's
    /// `Accept-Encoding`: see [`Compression`](super::Compression). Each
    /// chunk is flushed as it is written (nothing waits in the compressor,
    /// heartbeats included) and the compressor's window is kept across
    /// events, so a stream that repeats itself shrinks to a fraction.
    ///
    /// The response needs the request's headers to choose:
    /// [`SseStream::accept_encoding`](super::SseStream::accept_encoding)
    /// and [`Connection::accept_encoding`](crate::broadcast::Connection::accept_encoding);
    /// the crate's own routes pass them. Without them the stream goes out
    /// uncompressed. Responses of a compressing config carry
    /// `Vary: Accept-Encoding`, compressed or not.
    ///
    /// Leave tower-http's `CompressionLayer` away from `text/event-stream`
    /// responses: it buffers them.
    ///
    /// ```
    /// use axum::{http::HeaderMap, routing::get, Router};
    /// use htmx_sse::{BroadcastManager, streaming::{Compression, StreamConfig}};
    ///
    /// let manager = BroadcastManager::builder()
    ///     .stream(StreamConfig::new().compression(Compression::new()))
    ///     .build();
    /// // The crate's routes negotiate for you; in a handler of your own:
    /// let app: Router = Router::new().route(
    ///     "/events",
    ///     get(move |headers: HeaderMap| async move {
    ///         manager
    ///             .connect(None, serde_json::Value::Null)
    ///             .map(|c| c.accept_encoding(&headers))
    ///     }),
    /// );
    /// ```
    #[cfg(feature = "compression")]
    pub fn compression(mut self, compression: super::Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Whether [`coalesce_by_event`](Self::coalesce_by_event) is on.
    ///
    /// ```
    /// use htmx_sse::streaming::StreamConfig;
    ///
    /// assert!(!StreamConfig::new().coalesces_by_event());
    /// assert!(StreamConfig::new().coalesce_by_event(true).coalesces_by_event());
    /// ```
    #[must_use]
    pub fn coalesces_by_event(&self) -> bool {
        self.coalesce
    }

    /// The heartbeat interval, if heartbeats are on.
    #[must_use]
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// The timeout, if any.
    #[must_use]
    pub fn timeout_after(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = StreamConfig::new();
        assert_eq!(c.heartbeat, Some(Duration::from_secs(15)));
        assert_eq!(&**c.initial.unwrap().as_bytes(), b": connected\n\n");
        assert_eq!(
            &**c.close.unwrap().as_bytes(),
            b"event: close\ndata: connection closed\n\n"
        );
        assert_eq!(CLOSE_EVENT.as_str(), "close");
        assert!(!StreamConfig::new().coalesces_by_event());
    }

    #[test]
    #[should_panic(expected = "heartbeat interval must not be zero")]
    fn zero_heartbeat_panics() {
        let _ = StreamConfig::new().heartbeat(Duration::ZERO);
    }
}
