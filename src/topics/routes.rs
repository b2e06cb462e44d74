//! `TopicRoutes`: a Mercure-like hub over HTTP.

// Handlers answer early with a finished `Response`; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Topic, TopicSelector};
use crate::auth::{Access, AuthError, Authorizer, Subject, subject_of};
use crate::broadcast::{BroadcastManager, Data, LastEventId, Subscription};
use crate::fragment::Fragment;
use crate::routes::{error, json_body, publish_error, query_pairs, sent};

/// Mounts a topic hub for `manager` under `prefix` with the default
/// options; see [`TopicRoutes`].
///
/// ```
/// use axum::Router;
/// use htmx_sse::{broadcast::BroadcastManager, topics::setup_topic_routes};
///
/// let app: Router = setup_topic_routes(Router::new(), BroadcastManager::new(), "/hub");
/// ```
///
/// # Panics
///
/// When `prefix` does not start with `/`.
#[track_caller]
pub fn setup_topic_routes<S>(
    router: Router<S>,
    manager: BroadcastManager,
    prefix: &str,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    TopicRoutes::new(manager).prefix(prefix).install(router)
}

/// A hub in the spirit of Mercure's:
///
/// - `GET {prefix}?topic=SELECTOR&topic=…` opens one stream subscribed to
///   every selector given (at least one, at most the manager's
///   [`Limits::topics_per_connection`](crate::limits::Limits::topics_per_connection),
///   32 by default), resuming
///   from `Last-Event-ID` (or `lastEventId`). Add `private=1` to require
///   credentials (401 without): the stream then also receives private
///   messages on the topics the credentials allow.
/// - `POST {prefix}` with `Content-Type: application/json` publishes
///   `{"topics": [...], "data": …}` (a string is text, sent escaped; other
///   JSON goes out HTML-safe) or, with
///   [`trust_publisher_html`](Self::trust_publisher_html),
///   `{"topics": [...], "html": "…"}` (HTML sent as it is),
///   with optional `"private": true`, `"type": "…"` (the event name;
///   `message`, the default, is sent unnamed) and `"topic_as_type": true`.
///   It answers `{"id": "…", "delivered": n}`.
///
/// Bad input gets a JSON error and changes nothing: 400 for bad selectors
/// (or too many) or malformed JSON, 413, 415, 422 for the wrong shape (both
/// or neither of `html` and `data`, invalid topics, more topics than
/// [`Limits::topics_per_publish`](crate::limits::Limits::topics_per_publish),
/// unknown fields, a reserved type). A stream beyond the manager's
/// connection limits gets 503 or 429 with `Retry-After` (see
/// [`crate::limits`]).
///
/// Publishing is closed until the application opens it: by default
/// ([`Access::Granted`]) it needs credentials from the [`Authorizer`] whose
/// `publish` selectors match every topic (401 without, 403 otherwise), and
/// without an authorizer every publish gets 401.
/// `.publish(Access::Anyone)` lets anyone who reaches the route publish.
/// Without an authorizer private messages reach nobody.
///
/// ```
/// use axum::Router;
/// use htmx_sse::{auth::Access, broadcast::BroadcastManager, topics::TopicRoutes};
///
/// // A decision: on this server anyone may publish public topic messages.
/// let app: Router = TopicRoutes::new(BroadcastManager::new())
///     .publish(Access::Anyone)
///     .install(Router::new());
/// ```
#[derive(Clone)]
#[must_use]
pub struct TopicRoutes {
    manager: BroadcastManager,
    prefix: String,
    max_body: usize,
    max_topics: usize,
    authorizer: Option<Arc<dyn Authorizer>>,
    publish: Access,
    trust_publisher_html: bool,
}

impl fmt::Debug for TopicRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicRoutes")
            .field("prefix", &self.prefix)
            .field("max_body", &self.max_body)
            .field("max_topics", &self.max_topics)
            .field("authorizer", &self.authorizer.is_some())
            .field("publish", &self.publish)
            .field("trust_publisher_html", &self.trust_publisher_html)
            .finish_non_exhaustive()
    }
}

impl TopicRoutes {
    /// A hub for `manager` at `/hub`, publishing closed
    /// ([`Access::Granted`] with no authorizer).
    pub fn new(manager: BroadcastManager) -> Self {
        TopicRoutes {
            prefix: "/hub".to_owned(),
            max_body: manager.limits().body,
            max_topics: manager.limits().topics_per_connection,
            manager,
            authorizer: None,
            publish: Access::Granted,
            trust_publisher_html: false,
        }
    }

    /// Lets publishers send HTML in the `"html"` field, to go out as it
    /// is. Without it such a publish gets 422, and `"data"` carries text
    /// (escaped) or JSON. Say it only when everyone [`publish`](Self::publish)
    /// lets in is trusted to write the pages' HTML: their markup runs in
    /// every subscriber's page.
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::{broadcast::BroadcastManager, topics::TopicRoutes};
    ///
    /// // Publishers are the application's own services, holding tokens
    /// // the authorizer checks; they render HTML themselves.
    /// let app: Router = TopicRoutes::new(BroadcastManager::new())
    ///     .trust_publisher_html()
    ///     .install(Router::new());
    /// ```
    pub fn trust_publisher_html(mut self) -> Self {
        self.trust_publisher_html = true;
        self
    }

    /// Who may publish (default [`Access::Granted`]: credentials whose
    /// `publish` selectors match every topic of the message).
    pub fn publish(mut self, access: Access) -> Self {
        self.publish = access;
        self
    }

    /// The path of the hub.
    ///
    /// # Panics
    ///
    /// When `prefix` does not start with `/`.
    #[track_caller]
    pub fn prefix(mut self, prefix: &str) -> Self {
        assert!(
            prefix.starts_with('/'),
            "route prefix must start with '/', got {prefix:?}"
        );
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The largest publish body accepted, in bytes (default: the manager's
    /// [`Limits::body`](crate::limits::Limits::body), 64 KiB unless set).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most topics one connection of this hub may subscribe to
    /// (default, and at most: the manager's
    /// [`Limits::topics_per_connection`](crate::limits::Limits::topics_per_connection),
    /// 32 unless set).
    pub fn max_topics(mut self, n: usize) -> Self {
        self.max_topics = n;
        self
    }

    /// Checks requests with `authorizer`; see the type's docs.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Adds the hub's routes to `router`.
    pub fn install<S>(self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let path = self.prefix.clone();
        router.merge(
            Router::new()
                .route(&path, get(subscribe).post(publish))
                .with_state(Arc::new(self)),
        )
    }

    async fn subject(&self, parts: &Parts) -> Result<Option<Subject>, Response> {
        subject_of(self.authorizer.as_deref(), parts)
            .await
            .map_err(IntoResponse::into_response)
    }
}

async fn subscribe(State(hub): State<Arc<TopicRoutes>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let subject = match hub.subject(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pairs = query_pairs(&parts);
    let wants_private = pairs
        .iter()
        .any(|(k, v)| k == "private" && (v == "1" || v == "true"));
    if wants_private && subject.is_none() {
        return AuthError::Missing.into_response();
    }
    let mut selectors = Vec::new();
    for (k, v) in &pairs {
        if k != "topic" {
            continue;
        }
        match TopicSelector::new(v) {
            Ok(s) => selectors.push(s),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    if selectors.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "at least one topic parameter is required: ?topic=SELECTOR",
        );
    }
    if selectors.len() > hub.max_topics {
        return publish_error(&crate::Error::LimitExceeded {
            limit: crate::limits::Limit::TopicsPerConnection,
            max: hub.max_topics,
            retry_after: None,
        });
    }
    let mut sub = Subscription::new().topics(selectors);
    if let Some(subject) = subject {
        sub = sub.private(subject.subscribe);
        if let Some(user) = subject.user {
            sub = sub.user(user);
        }
    }
    let last = LastEventId::from_parts(&parts);
    let connection = hub.manager.subscribe(
        sub,
        last.as_ref().map(LastEventId::as_str),
        serde_json::Value::Null,
    );
    // The encoding, when the manager's stream config compresses.
    #[cfg(feature = "compression")]
    let connection = connection.map(|c| c.accept_encoding(&parts.headers));
    connection.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topics: Vec<Topic>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    private: bool,
    #[serde(default, rename = "type")]
    message_type: Option<String>,
    #[serde(default)]
    topic_as_type: bool,
}

async fn publish(State(hub): State<Arc<TopicRoutes>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let subject = match hub.subject(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if hub.publish == Access::Granted && subject.is_none() {
        return AuthError::Missing.into_response();
    }
    let body: PublishBody = match json_body(Request::from_parts(parts, body), hub.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.topics.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "topics must not be empty");
    }
    let max_topics = hub.manager.limits().topics_per_publish;
    if body.topics.len() > max_topics {
        // Before the grant check, whose work grows with the topics.
        return publish_error(&crate::Error::LimitExceeded {
            limit: crate::limits::Limit::TopicsPerPublish,
            max: max_topics,
            retry_after: None,
        });
    }
    let granted = hub.publish.check(subject.as_ref(), |s| {
        if s.can_publish(&body.topics) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(
                "may not publish to every one of these topics".into(),
            ))
        }
    });
    if let Err(e) = granted {
        return e.into_response();
    }
    let data = match (body.html, body.data) {
        (Some(_), None) if !hub.trust_publisher_html => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "\"html\" is not accepted here: send text in \"data\" (it is escaped), \
                 or let trusted publishers send HTML with TopicRoutes::trust_publisher_html()",
            );
        }
        (Some(html), None) => Data::Html(Fragment::trusted(html)),
        (None, Some(data)) => Data::json(&data).unwrap_or(Data::Json(data)),
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of \"html\" and \"data\"",
            );
        }
    };
    let message_type = body.message_type.as_deref().unwrap_or("message");
    match hub
        .manager
        .message(message_type, data)
        .topics(body.topics)
        .private(body.private)
        .topic_as_type(body.topic_as_type)
        .send()
        .await
    {
        Ok(s) => sent(s),
        Err(e) => publish_error(&e),
    }
}
