//! Topics: publish a fragment on one or several topics; a connection
//! subscribes to several at once through [`TopicSelector`]s; private
//! topics reach only authorized subscribers.
//!
//! ```no_run
//! use axum::Router;
//! use htmx_sse::broadcast::BroadcastManager;
//! use htmx_sse::topics::{Topic, TopicSelector, TopicStream, setup_topic_routes};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = BroadcastManager::new();
//! let app: Router = setup_topic_routes(Router::new(), hub.clone(), "/hub");
//! // The page: <div hx-ext="sse" sse-connect="/hub?topic=todos%2F%7Bid%7D" …>
//! let element = TopicStream::new([TopicSelector::new("todos/{id}")?]).render()?;
//! // The server: only subscribers of a matching selector receive it.
//! hub.message("message", "<li>milk</li>").topics([Topic::new("todos/7")?]).send().await?;
//! # Ok(()) }
//! ```
//!
//! # Pattern syntax
//!
//! See [`TopicSelector`]: exact topics, `{name}` or `*` for one segment,
//! `**` at the end for any depth, `*` alone for every topic.

mod model;
mod routes;
mod selector;
#[cfg(feature = "askama")]
mod stream;

pub use model::ModelTopic;
pub use routes::{TopicRoutes, setup_topic_routes};
pub(crate) use selector::any_match;
pub use selector::{InvalidTopic, MAX_TOPIC_LEN, Topic, TopicSelector};
#[cfg(feature = "askama")]
pub use stream::TopicStream;
