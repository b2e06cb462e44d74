//! Turns any `Stream` into a live SSE response: heartbeats, initial and close
//! messages, a timeout, a stop handle, and shutdown that never hangs.
//!
//! [`SseStream`] wraps a source stream whose items convert into an
//! [`Event`](crate::Event) (events, [`Fragment`](crate::Fragment)s, strings, maud markup)
//! and answers with `200 OK`, `Content-Type: text/event-stream`,
//! `Cache-Control: no-cache` and `X-Accel-Buffering: no`, sent at once.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use htmx_sse::streaming::{SseStream, StreamConfig};
//! use tokio_stream::StreamExt as _;
//!
//! async fn clock() -> SseStream<impl tokio_stream::Stream<Item = String> + Send + 'static> {
//!     let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
//!         .map(|_| format!("<span>{}</span>", chrono::Utc::now().format("%H:%M:%S")));
//!     SseStream::new(ticks).config(StreamConfig::new().heartbeat(Duration::from_secs(15)))
//! }
//!
//! # async fn run() {
//! let app: Router = Router::new().route("/clock", get(clock));
//! # }
//! ```
//!
//! # Heartbeats
//!
//! When the source has been quiet for the heartbeat interval (15 s by
//! default), an empty comment (`:\n\n`) goes out; the browser ignores it, and
//! proxies see a live connection. The source is only ever polled, never
//! cancelled, so a heartbeat cannot lose an item (the Python original lost
//! data at the first heartbeat).
//!
//! # Closing
//!
//! A stream ends for one of five reasons ([`EndReason`]):
//!
//! | reason | close message sent | the browser then |
//! | --- | --- | --- |
//! | the source stream ended | yes | stops, if it listens for the close event |
//! | [`StopHandle::stop`] was called | yes | stops, likewise |
//! | the [`StreamConfig::timeout`] passed | yes | stops, likewise |
//! | [`Shutdown::trigger`] (server shutting down) | no | reconnects, to the next server process |
//! | the client went away | (nobody to send it to) | |
//!
//! The close message is a named event (`event: close` by default) so that
//! htmx can match it: `sse-close="close"` (htmx 2) or `hx-sse:close="close"`
//! (htmx 4). Only a named close event stops either htmx flavour from
//! reconnecting; an HTTP 204 does not.
//!
//! When the client goes away, the response body is dropped, and with it the
//! source stream: a producer feeding it through [`SseStream::spawn`] is
//! aborted at once.
//!
//! # Shutdown
//!
//! `axum::serve(..).with_graceful_shutdown(..)` waits for every open
//! response to finish, and an SSE response never finishes by itself. Give
//! every stream the same [`Shutdown`] and trigger it from the shutdown signal:
//!
//! ```no_run
//! use htmx_sse::streaming::{Shutdown, StreamConfig};
//!
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let shutdown = Shutdown::new();
//! let config = StreamConfig::new().shutdown(&shutdown); // use it for every SseStream
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(shutdown.after(async { let _ = tokio::signal::ctrl_c().await; }))
//!     .await
//! # }
//! ```

mod body;
#[cfg(feature = "compression")]
mod compression;
mod config;
pub mod oob;
mod shutdown;
mod stream;

#[cfg(feature = "compression")]
pub(crate) use body::sse_response_negotiated;
pub(crate) use body::{Batch, Piece, drain, expired, log_frame, sse_response};
#[cfg(feature = "compression")]
pub use compression::Compression;
pub(crate) use config::shutdown_retry_frame;
pub use config::{CLOSE_EVENT, RETRY_EVENT, StreamConfig};
pub use oob::{OobFlavor, OobStreamBuilder, Swap};
pub use shutdown::Shutdown;
pub use stream::{EndReason, SseStream, StopHandle, Transform};
