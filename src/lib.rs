//! Push server-rendered HTML fragments from an axum server to htmx pages over
//! Server-Sent Events.
//!
//! Render HTML with maud or askama as for any htmx response; this crate turns
//! it into correct SSE frames ([`Event`]), serves any `Stream` of them as a
//! healthy long-lived response ([`streaming::SseStream`]: heartbeats, close
//! events, shutdown that does not hang, producers stopped when the client
//! goes), and builds out-of-band updates that change several page regions
//! with one message ([`streaming::OobStreamBuilder`]).
//!
//! # Quick start
//!
//! `Cargo.toml`: `htmx-sse`, `axum = "0.8"`, `maud = "0.27"`,
//! `tokio = { version = "1", features = ["full"] }`, `tokio-stream = "0.1"`.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use htmx_sse::streaming::{OobStreamBuilder, SseStream, Swap};
//! use tokio_stream::{wrappers::IntervalStream, StreamExt as _};
//!
//! async fn dashboard() -> impl axum::response::IntoResponse {
//!     let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)));
//!     let mut n = 0;
//!     SseStream::new(ticks.map(move |_| {
//!         n += 1;
//!         OobStreamBuilder::new()
//!             .add("count", Swap::InnerHtml, maud::html! { (n) })
//!             .add("log", Swap::BeforeEnd, maud::html! { li { "tick " (n) } })
//!             .build()
//!             .expect("literal ids are valid")
//!     }))
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/dashboard", get(dashboard));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! On the page (htmx 2 with htmx-ext-sse):
//!
//! ```html
//! <div hx-ext="sse" sse-connect="/dashboard">
//!   <div sse-swap="message" hx-swap="none"></div>
//!   <span id="count"></span> <ul id="log"></ul>
//! </div>
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `maud` | yes | `maud::Markup` as fragments and events |
//! | `askama` | yes | askama templates as fragments (`Fragment::render`, `fragment::Askama`) |
//! | `jwt` | no | `auth::JwtAuthorizer`: HS256, RS256, ES256 tokens with Mercure-style claims |
//! | `testing` | no | `testing`: a real SSE client over HTTP for integration tests, and a WHATWG-conformant parser |
//! | `redis` | no | the Redis backend (`backend::RedisConfig`): many server processes act as one |
//! | `nats` | no | the NATS JetStream backend (`backend::NatsConfig`): the same on a `nats-server -js` |
//! | `metrics` | no | `metrics`: a manager's metrics in the Prometheus text format (`prometheus-client`) |
//! | `webpush` | no | `webpush`: Web Push (VAPID, RFC 8291 encryption) to browsers whose page is closed; `webpush-rustls` adds TLS |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

pub mod auth;
pub mod backend;
pub mod broadcast;
pub mod connections;
mod error;
pub mod event;
pub mod flavor;
pub mod fragment;
pub mod limits;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod names;
#[cfg(feature = "askama")]
pub mod notify;
pub mod routes;
pub mod streaming;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topics;
#[cfg(feature = "webpush")]
pub mod webpush;

pub use broadcast::{BroadcastManager, setup_broadcast_routes};

/// The broadcast routes of `manager` under `/sse` as a [`Router`](axum::Router)
/// to [`merge`](axum::Router::merge) into an application, or to
/// [`nest`](axum::Router::nest) under a path of its own: the stream
/// (`GET /sse`, open to every page) and the publish and read routes
/// (`POST /sse/broadcast`, `POST /sse/send/{id}`, `GET /sse/status`,
/// `GET /sse/history`), which answer 401 until the application opens them.
/// The same as [`setup_broadcast_routes`]`(router, manager, "/sse")`; for
/// another prefix, an authorizer or access rules, use
/// [`routes::BroadcastRoutes`] and its [`router`](routes::BroadcastRoutes::router).
///
/// ```
/// use axum::{Router, routing::get};
/// use htmx_sse::BroadcastManager;
///
/// let manager = BroadcastManager::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "the page" }))
///     .merge(htmx_sse::routes(manager.clone()));
/// // Or under a path of the application's: GET /live/sse.
/// let nested: Router = Router::new().nest("/live", htmx_sse::routes(manager));
/// ```
pub fn routes<S>(manager: BroadcastManager) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes::BroadcastRoutes::new(manager).router()
}
pub use error::{Error, Field};
pub use event::Event;
pub use flavor::Flavor;
pub use fragment::{Fragment, IntoFragment};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
