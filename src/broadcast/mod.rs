//! Sends each message to every connected page, to all but some, or to one,
//! and lets a page that reconnects catch up: [`BroadcastManager`].
//!
//! A message is rendered and encoded once. Every connection that receives
//! it shares the same bytes; only the `id:` line ends with the receiving
//! connection's own id, written from the id the connection holds.
//!
//! ```no_run
//! use axum::Router;
//! use htmx_sse::broadcast::{BroadcastManager, setup_broadcast_routes};
//!
//! # async fn run() -> std::io::Result<()> {
//! let manager = BroadcastManager::new();
//! let app = setup_broadcast_routes(Router::new(), manager.clone(), "/sse");
//! // Elsewhere, e.g. in a POST handler:
//! manager.message("chat", "<li>hello</li>").send().await.expect("valid type");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service()).await
//! # }
//! ```
//!
//! # What a page receives
//!
//! 1. `event: connection` whose data is
//!    `<input type="hidden" name="connection_id" value="ID">`: swap it into
//!    a form and every `hx-post` from that form says which connection it
//!    came from, so a broadcast can exclude it. In htmx 2 the slot is
//!    `<span sse-swap="connection" hx-target="this" hx-swap="innerHTML">`:
//!    without `hx-target="this"` it inherits the form's `hx-target` and
//!    the input lands in the form's target, where no request carries it.
//!    `connections::scripts::connection_id_slot` (feature `askama`) writes
//!    the slot for htmx 2 and htmx 4, with a complete form and handler in
//!    its docs.
//! 2. `event: reset` with `data: {"reason": …}`, only when a reconnecting
//!    page cannot be caught up (see *Resume*); the page should reload what
//!    it shows. With `connections::scripts::reset_script` (feature
//!    `askama`) the page gets an `htmx-sse:reset` event on `document` in
//!    both htmx flavours, so regions that fetch their state can use
//!    `hx-trigger="load, htmx-sse:reset from:document"` (in htmx 2 alone,
//!    `hx-trigger="sse:reset"` inside the `sse-connect` element also works).
//! 3. Messages: `event: TYPE`, `id: EPOCH-SEQ.ID.PROOF`, `data: …`. A message of
//!    type `message` goes out without an `event:` line: the same to an
//!    `EventSource`, and the only kind of event htmx 4 swaps.
//! 4. Heartbeat comments while idle; the close event when the server ends
//!    the connection on purpose ([`BroadcastManager::disconnect`]).
//!
//! # Resume
//!
//! Every frame's id is `EPOCH-SEQ.ID.PROOF`: the manager's epoch (random
//! per process, or shared through Redis), the message's place in the
//! sequence, the receiving connection's id, and the proof that this server
//! issued that id to this client (an HMAC over the id and the connection's
//! user under the manager's
//! [resume key](BroadcastBuilder::resume_key)). When the browser
//! reconnects it sends that back as `Last-Event-ID`, and the manager:
//!
//! - gives the connection the same id again, so exclusions and `send_to`
//!   made while it was away still apply to it, when the proof holds for
//!   the user the request now presents (a connection id alone, which the
//!   page's forms carry, is not enough);
//! - sends, in order, every kept message after `SEQ` that was for it
//!   (not excluded, or sent to it alone): nothing missed, nothing twice;
//! - sends the `reset` event instead when that is impossible:
//!   `"history-gap"` (the history no longer reaches back that far),
//!   `"restarted"` (the id is from another process: a restart), or
//!   `"unrecognized"` (not an id this crate made, or its proof does not
//!   hold for this client): with a fresh connection id.
//!
//! Connection ids are issued by the server (random, 122 bits) and never
//! chosen by a client; the proof keeps a page's id its own even where the
//! id itself is seen (a form, a log). Keep whole event ids (with their
//! proof) out of URLs that access logs keep.
//!
//! # Lagging
//!
//! Each connection may have at most
//! [`queue_capacity`](BroadcastBuilder::queue_capacity) messages waiting
//! (messages for others, on topics it does not listen to or excluding it,
//! count only while it has messages of its own to send).
//! A publisher never waits for a connection: a connection that falls
//! further behind is closed without the close message (its state becomes
//! [`Error`](crate::connections::ConnectionState::Error)). The browser
//! reconnects by itself with `Last-Event-ID` and catches up from the
//! history, so a slow client costs itself a reconnect and costs the others
//! nothing. Keep the history at least as long as the queue.
//!
//! A client that stops reading altogether is noticed by the heartbeat: a
//! connection that has written nothing for three heartbeat intervals
//! (woken for a heartbeat in each) is closed the same way, and from then on
//! neither it nor a connection closed for lag counts as active in the
//! registry's stats (`GET {prefix}/status`), even while its socket has not
//! drained. Without heartbeats, only lag notices it.
//!
//! # Closing
//!
//! A connection is unregistered when its response body is dropped: when the
//! client goes away, when it lags, when it is replaced by the same client
//! coming back, or when the server ends it. [`BroadcastManager::shutdown`]
//! ends every connection without the close message so that pages reconnect
//! to the next server process; [`BroadcastManager::disconnect`] ends one
//! with the close message.
//!
//! # Tracing
//!
//! A message can be followed from publish to every socket with `tracing`,
//! by its id (`EPOCH-SEQ`):
//!
//! | span or event | level | fields | where |
//! | --- | --- | --- | --- |
//! | `htmx_sse.publish` | info | `message.type`, `message.id`, `backend`, `delivered` | around [`Message::send`] and the `broadcast`/`send_to` calls; a failed publish is a `debug` event in it with the error |
//! | `htmx_sse.backend` | info | `backend` | the shared backend's reader task (Redis), for the life of the manager |
//! | `htmx_sse.fanout` | debug | `message.id`, `delivered` (this process's connections) | inside the publish in memory; inside `htmx_sse.backend` on every instance with a shared backend |
//! | `htmx_sse.connection` | info | `connection.id`, `user`, `resumed`, `reset`, `end_reason` | one per connection, from connect to the end of its stream; its parent is the span current at connect (the request's, under tower-http's `TraceLayer`) |
//! | `delivered` | trace | `message.id` | an event in the connection's span for each message written to it |
//!
//! With no subscriber interested they cost a check each (the connection
//! span is about 40 bytes). Show them with a filter:
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! // Publishes, connections and their end reasons; `htmx_sse=trace` adds
//! // every delivery.
//! let _ = tracing_subscriber::fmt()
//!     .with_env_filter(EnvFilter::new("info,htmx_sse=debug"))
//!     .try_init();
//! ```
//!
//! To export them to OpenTelemetry, add the layer of `tracing-opentelemetry`
//! to the application's subscriber; the crate needs nothing more (it does
//! not depend on OpenTelemetry). With `opentelemetry_sdk`'s tracer provider
//! and an OTLP exporter (`opentelemetry-otlp`), as their docs show:
//!
//! ```text
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::prelude::*;
//!
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
//!     .with_batch_exporter(opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?)
//!     .build();
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info,htmx_sse=debug"))
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-app")))
//!     .init();
//! ```
//!
//! A message published on one instance and delivered by another is two
//! traces there (the publish, and the reader's fan-out); the `message.id`
//! field joins them.
//!
//! # What a connection costs
//!
//! Messages for everyone (and for topics) wait in one ring that every
//! connection reads at its own position; messages for one connection or one
//! user wait in that connection's own queue. A message wakes only the idle
//! connections it is for: an idle connection on one topic sleeps through any
//! number of messages on others, and moves past them unread when it wakes
//! (they do not count toward its [lag](#lagging)). A message on topics looks
//! only at the connections that listen to those topics, found through an
//! index by exact topic (connections with a pattern among their selectors,
//! `*`, `{id}` or `**`, are checked for every topic message). Heartbeats and
//! the shutdown come from one timer task per manager, not one timer per
//! connection.
//!
//! So an idle connection holds its position, its queue (empty), its
//! registry entry, a slot in the topic index for each exact topic it listens
//! to, and a small response body: about 16.9 KiB of process memory with
//! hyper's buffers, against 16.3 KiB for axum's `Sse` over
//! `tokio::sync::broadcast` (BENCHMARKS.md has the measurement; most of the
//! difference is the `connection` event, written at connect).

mod builder;
mod data;
pub(crate) mod engine;
mod fanout;
mod feed;
mod listeners;
pub(crate) mod manager;
mod message;
pub(crate) mod meter;
mod presence;
mod proof;
mod publish;
mod resume;
mod stage;
mod subscriber;
mod subscription;
mod watch;

use std::fmt;

use axum::response::{IntoResponse, Response};

pub use builder::BroadcastBuilder;
pub use data::{Data, IntoData};
pub use manager::BroadcastManager;
pub use message::{BroadcastMessage, Epoch, MessageId};
pub use presence::{Presence, PresenceScope, PresentUser};
pub use publish::{Message, Submitted};
pub use resume::{LastEventId, RESUME_FROM};
pub use stage::{Outgoing, Recipient, Sent};
pub use subscription::Subscription;
pub use watch::{PresenceBadge, PresenceChange, PresenceFeed};

pub use crate::routes::{BroadcastRoutes, setup_broadcast_routes};

use crate::connections::ConnectionId;
use crate::event::EventName;
use crate::streaming::sse_response;

/// The first event of every connection: `data` is a hidden input carrying
/// the connection id.
pub const CONNECTION_EVENT: EventName = EventName::from_static("connection");

/// The event sent when a reconnecting page cannot be caught up.
pub const RESET_EVENT: EventName = EventName::from_static("reset");

/// The message types the crate gives a meaning to, which `broadcast`,
/// `send_to`, `message(…).send()` and the HTTP publish routes refuse with
/// [`Error::ReservedEventName`](crate::Error::ReservedEventName):
/// [`CONNECTION_EVENT`], [`RESET_EVENT`],
/// [`CLOSE_EVENT`](crate::streaming::CLOSE_EVENT) and
/// [`RETRY_EVENT`](crate::streaming::RETRY_EVENT). The manager's own close
/// event, when its [`StreamConfig`](crate::streaming::StreamConfig) names
/// another one, is refused too. Send one on purpose with
/// [`Message::allow_reserved_type`].
pub const RESERVED_EVENTS: [EventName; 4] = [
    CONNECTION_EVENT,
    RESET_EVENT,
    crate::streaming::CLOSE_EVENT,
    crate::streaming::RETRY_EVENT,
];

/// Why a reconnecting page gets the reset event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetReason {
    /// The history no longer reaches back to the page's last event.
    HistoryGap,
    /// The last event came from another server process (a restart).
    Restarted,
    /// The `Last-Event-ID` is not one this crate made.
    Unrecognized,
}

impl ResetReason {
    /// As sent in the reset event's data: `history-gap`, `restarted`,
    /// `unrecognized`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetReason::HistoryGap => "history-gap",
            ResetReason::Restarted => "restarted",
            ResetReason::Unrecognized => "unrecognized",
        }
    }
}

/// One client's connection to a [`BroadcastManager`]; return it from a
/// handler (it is `IntoResponse`).
#[must_use]
pub struct Connection {
    id: ConnectionId,
    body: feed::FeedBody,
    /// The manager's `StreamConfig::compression`, and the request's
    /// `Accept-Encoding`.
    #[cfg(feature = "compression")]
    compression: Option<crate::streaming::Compression>,
    #[cfg(feature = "compression")]
    accept: Option<axum::http::HeaderValue>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Its id (the same one the page receives in the `connection` event).
    #[must_use]
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    /// Reads the request's `Accept-Encoding` from `headers`, to choose the
    /// encoding when the manager's stream config compresses
    /// ([`StreamConfig::compression`](crate::streaming::StreamConfig::compression),
    /// feature `compression`); without it the stream goes out
    /// uncompressed. The crate's routes call it.
    ///
    /// ```
    /// use axum::{http::HeaderMap, response::IntoResponse};
    /// use htmx_sse::BroadcastManager;
    ///
    /// async fn events(manager: BroadcastManager, headers: HeaderMap) -> impl IntoResponse {
    ///     manager
    ///         .connect(None, serde_json::Value::Null)
    ///         .map(|c| c.accept_encoding(&headers))
    /// }
    /// # let _ = events;
    /// ```
    #[cfg(feature = "compression")]
    pub fn accept_encoding(mut self, headers: &axum::http::HeaderMap) -> Self {
        self.accept = headers.get(axum::http::header::ACCEPT_ENCODING).cloned();
        self
    }
}

impl IntoResponse for Connection {
    fn into_response(self) -> Response {
        #[cfg(feature = "compression")]
        if let Some(compression) = &self.compression {
            let mut body = self.body;
            if compression.negotiate(self.accept.as_ref()).is_some() {
                // Compressed, the id repeated in every event must not
                // repeat its proof (BREACH): each event gets a fresh mask.
                body.mask_proofs();
            }
            return crate::streaming::sse_response_negotiated(
                body,
                compression,
                self.accept.as_ref(),
            );
        }
        sse_response(self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_is_send_sync_clone() {
        fn assert<T: Send + Sync + Clone + 'static>() {}
        assert::<BroadcastManager>();
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Connection>();
    }

    #[tokio::test]
    async fn the_registry_shows_the_managers_connections_from_one_list() {
        use crate::connections::{ConnectionId, ConnectionState};
        let m = BroadcastManager::new();
        let a = m.connect(None, serde_json::Value::Null).unwrap();
        let x = ConnectionId::new("x").unwrap();
        let first = m
            .connect_as(Some(x.clone()), serde_json::json!({"tab": 1}))
            .unwrap();
        let second = m
            .connect_as(Some(x.clone()), serde_json::Value::Null)
            .unwrap();
        // The same id replaced: counted once, by both.
        assert_eq!((m.connection_count(), m.registry().len()), (2, 2));
        assert!(m.registry().contains(a.id()));
        assert_eq!(
            m.registry().get(&x).unwrap().metadata,
            serde_json::Value::Null
        );
        // An application's own entries sit beside the manager's.
        let own = m.registry().add(None, "job", serde_json::Value::Null);
        own.set_state(ConnectionState::Connected);
        let stats = m.stats();
        assert_eq!((stats.total, stats.active), (3, 1));
        assert_eq!(stats.by_kind["broadcast"], 2);
        assert_eq!(stats.by_kind["job"], 1);
        assert_eq!(m.registry().connections(Some("broadcast")).len(), 2);
        // Gone from the manager, gone from the registry: no second list to
        // forget it in.
        drop(a);
        drop(first);
        assert_eq!((m.connection_count(), m.registry().len()), (1, 2));
        drop(second);
        drop(own);
        assert!(m.registry().is_empty());
    }

    #[tokio::test]
    async fn disconnect_ends_the_stream_with_the_close_message() {
        use std::time::Duration;
        use tokio_stream::StreamExt as _;

        const CLOSE: &[u8] = b"event: close\ndata: connection closed\n\n";
        let manager = BroadcastManager::new();
        // Before the first poll: the close message alone (the manager sends
        // no initial comment, and the stop comes before the `connection`
        // event).
        let c = manager.connect(None, serde_json::Value::Null).unwrap();
        assert!(manager.disconnect(c.id()));
        let body = axum::body::to_bytes(c.into_response().into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], CLOSE);
        assert_eq!(manager.connection_count(), 0);

        // While waiting: the stream wakes and ends with the close message.
        let c = manager.connect(None, serde_json::Value::Null).unwrap();
        let id = c.id().clone();
        let mut body = c.into_response().into_body().into_data_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"event: connection\n"));
        let m = manager.clone();
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            m.disconnect(&id)
        });
        let wait = Duration::from_secs(5);
        let next = tokio::time::timeout(wait, body.next()).await.unwrap();
        assert_eq!(&next.unwrap().unwrap()[..], CLOSE);
        let end = tokio::time::timeout(wait, body.next()).await.unwrap();
        assert!(end.is_none());
        assert!(stop.await.unwrap());
        assert_eq!(manager.connection_count(), 0);
    }
}
