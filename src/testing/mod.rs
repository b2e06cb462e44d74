//! A real SSE client for tests: opens an HTTP connection and yields events
//! exactly as a browser's `EventSource` would parse them (feature `testing`),
//! and [`check_page`], which tells, without a browser, whether a rendered
//! page has the targets and listeners a stream's names need.
//!
//! ```no_run
//! use std::time::Duration;
//! use htmx_sse::testing::TestClient;
//!
//! # async fn run() -> Result<(), htmx_sse::testing::ClientError> {
//! let mut sse = TestClient::get("http://127.0.0.1:3000/events").connect().await?;
//! let ev = sse.next_event_within(Duration::from_secs(2)).await?;
//! assert_eq!(ev.event, "message");
//! # Ok(()) }
//! ```

mod page;
pub mod parser;

#[cfg(feature = "testing")]
mod client;

#[cfg(feature = "testing")]
pub use client::{ClientError, TestClient, TestClientBuilder};
pub use page::{MissingNames, check_page};
pub use parser::{Parser, ReceivedEvent, SseItem};
