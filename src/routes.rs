//! Route installers: the HTTP face of the managers.
//!
//! [`setup_broadcast_routes`] mounts a [`BroadcastManager`] under a prefix:
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET {prefix}` | the event stream (resumes from `Last-Event-ID`, or from a `lastEventId` query parameter for clients that cannot send the header) |
//! | `POST {prefix}/broadcast` | `{"type", "data", "metadata"?, "exclude"?: [ids]}` → `{"delivered": n, "id": "…"}` |
//! | `POST {prefix}/send/{connection_id}` | `{"type", "data", "metadata"?}` to one connection → the same answer, or 404 |
//! | `GET {prefix}/status` | connection stats as JSON (`total`, `active`, `by_kind`, `messages`, `last_id`, `backend`, `backend_connected`, `cluster_connections`) |
//! | `GET {prefix}/history?limit=N` | recent messages addressed to everyone, as JSON |
//!
//! Bad input changes nothing and gets a JSON error, `{"error": "…"}`:
//! 400 for malformed JSON or a bad query or path, 413 for a body over the
//! limit (64 KiB by default), 415 when the body is not
//! `Content-Type: application/json` (which also makes browsers ask before a
//! cross-site POST), 422 for JSON of the wrong shape (unknown fields, wrong
//! types, CR or LF in a type, bad connection ids), 404 for an unknown
//! connection, 503 when the shared backend (Redis) cannot be reached.
//!
//! # Protect the publish routes
//!
//! As installed here, anyone who can reach the server can publish to every
//! page. In production, put the `POST` routes behind your authentication
//! (a middleware layer on the router you pass in, or a reverse proxy rule),
//! or mount only the stream and publish from your own handlers.

// Handlers answer early with a finished `Response`; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuthError, Authorizer, Subject, subject_of};
use crate::broadcast::{BroadcastManager, Sent, Subscription};
use crate::connections::ConnectionId;
use crate::error::Error;
use crate::topics::Topic;

/// The default limit on a publish request body.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Mounts `manager` on `router` under `prefix` (for example `"/sse"`) with
/// the default options: see the [module docs](self) for the routes, and
/// [`BroadcastRoutes`] for options.
///
/// ```
/// use axum::Router;
/// use htmx_sse::broadcast::{BroadcastManager, setup_broadcast_routes};
///
/// let manager = BroadcastManager::new();
/// let app: Router = setup_broadcast_routes(Router::new(), manager, "/sse");
/// ```
///
/// # Panics
///
/// When `prefix` does not start with `/`: a programming error.
#[track_caller]
pub fn setup_broadcast_routes<S>(
    router: Router<S>,
    manager: BroadcastManager,
    prefix: &str,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    BroadcastRoutes::new(manager).prefix(prefix).install(router)
}

/// Options for the broadcast routes.
///
/// ```
/// use axum::Router;
/// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
///
/// let app: Router = BroadcastRoutes::new(BroadcastManager::new())
///     .prefix("/live")
///     .max_body(16 * 1024)
///     .install(Router::new());
/// ```
#[derive(Clone)]
#[must_use]
pub struct BroadcastRoutes {
    manager: BroadcastManager,
    prefix: String,
    max_body: usize,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl fmt::Debug for BroadcastRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastRoutes")
            .field("prefix", &self.prefix)
            .field("max_body", &self.max_body)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

impl BroadcastRoutes {
    /// Routes for `manager` under `/sse`, bodies up to 64 KiB.
    pub fn new(manager: BroadcastManager) -> Self {
        BroadcastRoutes {
            manager,
            prefix: "/sse".to_owned(),
            max_body: DEFAULT_MAX_BODY,
            authorizer: None,
        }
    }

    /// Checks every request with `authorizer`: a stream connection carries
    /// its subject's user (for [`BroadcastManager::send_to_user`]); the
    /// publish routes need credentials whose `publish` selectors match the
    /// message type as a topic (`*` allows every type), else 401/403. Bad
    /// credentials are refused on every route. See [`crate::auth`].
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// The prefix the routes go under.
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
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The largest publish request body accepted, in bytes.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Adds the routes to `router`.
    pub fn install<S>(self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let p = &self.prefix;
        let stream_path = if p.is_empty() { "/" } else { p.as_str() };
        let ctx = Arc::new(Ctx {
            manager: self.manager,
            max_body: self.max_body,
            authorizer: self.authorizer,
        });
        router
            .route(stream_path, {
                let ctx = Arc::clone(&ctx);
                get(move |req: Request| async move { stream(&ctx, req).await })
            })
            .route(&format!("{p}/broadcast"), {
                let ctx = Arc::clone(&ctx);
                post(move |req: Request| async move { publish_all(&ctx, req).await })
            })
            .route(&format!("{p}/send/{{connection_id}}"), {
                let ctx = Arc::clone(&ctx);
                post(move |Path(id): Path<String>, req: Request| async move {
                    publish_one(&ctx, &id, req).await
                })
            })
            .route(&format!("{p}/status"), {
                let ctx = Arc::clone(&ctx);
                get(move || async move { status(&ctx.manager).await })
            })
            .route(&format!("{p}/history"), {
                get(move |query: Query<HashMap<String, String>>| async move {
                    history(&ctx.manager, &query)
                })
            })
    }
}

struct Ctx {
    manager: BroadcastManager,
    max_body: usize,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl Ctx {
    async fn subject(&self, parts: &Parts) -> Result<Option<Subject>, Response> {
        subject_of(self.authorizer.as_deref(), parts)
            .await
            .map_err(IntoResponse::into_response)
    }

    /// For publish routes: with an authorizer, credentials are required
    /// and must allow `message_type` as a topic.
    fn may_publish(&self, subject: Option<&Subject>, message_type: &str) -> Result<(), Response> {
        if self.authorizer.is_none() {
            return Ok(());
        }
        let Some(subject) = subject else {
            return Err(AuthError::Missing.into_response());
        };
        let allowed = Topic::new(message_type)
            .map(|t| subject.can_publish(&[t]))
            .unwrap_or(false);
        if allowed {
            Ok(())
        } else {
            Err(
                AuthError::Forbidden(format!("may not publish type {message_type:?}"))
                    .into_response(),
            )
        }
    }
}

/// The `Last-Event-ID` of a stream request: the header, else the
/// `lastEventId` query parameter (for clients that cannot send headers).
pub(crate) fn last_event_id(parts: &Parts) -> Option<String> {
    match parts.headers.get("last-event-id") {
        // A header that is not text cannot be one of ours: resume says so.
        Some(v) => Some(v.to_str().unwrap_or("\u{fffd}").to_owned()),
        None => query_pairs(parts)
            .into_iter()
            .find(|(k, _)| k == "lastEventId")
            .map(|(_, v)| v),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986): safe
/// in a path segment and in a query component.
#[cfg(feature = "askama")]
pub(crate) fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The query's pairs, percent-decoded, repeated keys kept.
pub(crate) fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|Query(v)| v)
        .unwrap_or_default()
}

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn stream(ctx: &Ctx, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let subject = match ctx.subject(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut sub = Subscription::new();
    if let Some(user) = subject.and_then(|s| s.user) {
        sub = sub.user(user);
    }
    let last = last_event_id(&parts);
    ctx.manager
        .subscribe(sub, last.as_deref(), serde_json::Value::Null)
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishAll {
    #[serde(rename = "type")]
    message_type: String,
    data: serde_json::Value,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishOne {
    #[serde(rename = "type")]
    message_type: String,
    data: serde_json::Value,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// Reads a JSON body: content type, size limit, syntax, shape.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request,
    max: usize,
) -> Result<T, Response> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(Body::new(req.into_body()), max)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid body: {e}"),
            )
        } else {
            error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))
        }
    })
}

pub(crate) fn sent(s: Sent) -> Response {
    Json(json!({ "delivered": s.delivered, "id": s.id })).into_response()
}

pub(crate) fn publish_error(e: &Error) -> Response {
    match e {
        Error::UnknownConnection { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        Error::Render(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Error::Backend(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Authorizes a publish request, then reads its body.
async fn authorized_body<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    req: Request,
) -> Result<(Option<Subject>, T), Response> {
    let (parts, body) = req.into_parts();
    let subject = ctx.subject(&parts).await?;
    if ctx.authorizer.is_some() && subject.is_none() {
        return Err(AuthError::Missing.into_response());
    }
    let body = json_body(Request::from_parts(parts, body), ctx.max_body).await?;
    Ok((subject, body))
}

async fn publish_all(ctx: &Ctx, req: Request) -> Response {
    let m = &ctx.manager;
    let (subject, body): (_, PublishAll) = match authorized_body(ctx, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = ctx.may_publish(subject.as_ref(), &body.message_type) {
        return r;
    }
    let exclude = match body
        .exclude
        .iter()
        .map(|id| ConnectionId::new(id))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(ids) => ids,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    match m
        .broadcast(body.message_type, body.data, body.metadata, &exclude)
        .await
    {
        Ok(s) => sent(s),
        Err(e) => publish_error(&e),
    }
}

async fn publish_one(ctx: &Ctx, id: &str, req: Request) -> Response {
    let m = &ctx.manager;
    let id = match ConnectionId::new(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (subject, body): (_, PublishOne) = match authorized_body(ctx, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = ctx.may_publish(subject.as_ref(), &body.message_type) {
        return r;
    }
    match m
        .send_to(&id, body.message_type, body.data, body.metadata)
        .await
    {
        Ok(s) => sent(s),
        Err(e) => publish_error(&e),
    }
}

async fn status(m: &BroadcastManager) -> Response {
    let stats = m.stats();
    // Every instance's connections (the same as `total` in memory); null
    // while the shared backend cannot be reached.
    let cluster = m.cluster_connection_count().await.ok();
    Json(json!({
        "total": stats.total,
        "active": stats.active,
        "by_kind": stats.by_kind,
        "messages": stats.messages,
        "last_id": m.last_id(),
        "backend": if m.is_distributed() { "redis" } else { "memory" },
        "backend_connected": m.backend_connected(),
        "cluster_connections": cluster,
    }))
    .into_response()
}

fn history(m: &BroadcastManager, query: &HashMap<String, String>) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a non-negative integer",
            );
        }
    };
    Json(m.history(limit)).into_response()
}
