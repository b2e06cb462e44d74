//! `StreamConfig`: how one SSE response behaves over its life.

use std::time::Duration;

use crate::event::{Event, EventName};

use super::Shutdown;

/// The name of the default close event: match it with `sse-close="close"`
/// (htmx 2) or `hx-sse:close="close"` (htmx 4).
pub const CLOSE_EVENT: EventName = EventName::from_static("close");

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
    pub(crate) debug: bool,
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
            debug: false,
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

    /// Logs every frame at `debug` level through `tracing` (the stream's
    /// start and end are logged at `debug` level either way).
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
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
    }

    #[test]
    #[should_panic(expected = "heartbeat interval must not be zero")]
    fn zero_heartbeat_panics() {
        let _ = StreamConfig::new().heartbeat(Duration::ZERO);
    }
}
