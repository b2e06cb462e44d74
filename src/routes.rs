//! Route installers: the HTTP face of the managers.
//!
//! [`setup_broadcast_routes`] mounts a [`BroadcastManager`] under a prefix:
//!
//! | route | what it does | who may (by default) |
//! | --- | --- | --- |
//! | `GET {prefix}` | the event stream (resumes from `Last-Event-ID`, or from a `lastEventId` query parameter for clients that cannot send the header, or from the `htmx-sse-resume-…` cookie the reconnect runtime sets for this path and query) | anyone: messages to everyone, plus the user's own with credentials |
//! | `POST {prefix}/broadcast` | `{"type", "data", "metadata"?, "exclude"?: [ids]}` → `{"delivered": n, "id": "…"}`; a string `data` is text, sent escaped, unless [`BroadcastRoutes::trust_publisher_html`] | credentials whose `publish` selectors match the type |
//! | `POST {prefix}/send/{connection_id}` | `{"type", "data", "metadata"?}` to one connection → the same answer, or 404 | the same |
//! | `GET {prefix}/status` | connection stats as JSON (`total`, `active`, `by_kind`, `messages`, `last_id`, `backend`, `backend_connected`, `cluster_connections`) | any valid credentials |
//! | `GET {prefix}/htmx-sse.js` | the helper scripts' runtime, cacheable, for `scripts::Helpers::runtime_src` ([`connections::runtime`](crate::connections::runtime)) | anyone |
//! | `GET {prefix}/presence`, `?topic=T`, `?user=U` | who is connected ([`BroadcastManager::presence`](crate::BroadcastManager::presence)): `{"connections", "users": [{"user", "connections", "since"}], "anonymous"}` for everyone, a topic or a user; 503 on a shared backend (not read across instances yet) | any valid credentials; a topic only for credentials whose `subscribe` selectors match it, a user only for that user |
//! | `GET {prefix}/history?limit=N` | recent messages sent to everyone, as the asker's page would have received them ([`BroadcastManager::history_for`]), as JSON: the newest that fit in [`Limits::history_response_bytes`](crate::limits::Limits::history_response_bytes) (1 MiB by default), with `X-History-Truncated: true` when older ones were left out | any valid credentials |
//!
//! # Closed until the application opens them
//!
//! Installed as they come, the publish and read routes answer **401** to
//! everyone: nobody can put HTML into the pages or read what was sent
//! until the application says who may. There are two ways, both one line:
//!
//! - an [`Authorizer`] ([`BroadcastRoutes::authorizer`], for example
//!   [`JwtAuthorizer`](crate::auth) with feature `jwt`): credentials it
//!   accepts may read, and may publish the types their `publish` selectors
//!   match (`*` for every type); others get 401 (none or bad) or 403;
//! - [`Access::Anyone`], written where it is meant:
//!   `.publish(Access::Anyone)` and `.read(Access::Anyone)` open the routes
//!   to whoever reaches them (a server listening on `127.0.0.1`, or routes
//!   behind your own authentication layer).
//!
//! To guard the routes with your own axum middleware instead, take them as
//! two routers, [`BroadcastRoutes::stream_router`] and
//! [`BroadcastRoutes::admin_router`], and layer the admin one before you
//! merge it (a layer on the router you pass to [`BroadcastRoutes::install`]
//! does not cover routes added after it):
//!
//! ```
//! use axum::{Router, extract::Request, http::StatusCode, middleware::{self, Next}, response::Response};
//! use htmx_sse::auth::Access;
//! use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
//!
//! async fn admins_only(req: Request, next: Next) -> Result<Response, StatusCode> {
//!     let is_admin = req.headers().get("x-admin-key").is_some_and(|k| k == "from-your-config");
//!     if is_admin { Ok(next.run(req).await) } else { Err(StatusCode::UNAUTHORIZED) }
//! }
//!
//! // The layer decides, so the routes themselves let through what reaches them.
//! let routes = BroadcastRoutes::new(BroadcastManager::new())
//!     .publish(Access::Anyone)
//!     .read(Access::Anyone);
//! let app: Router = Router::new()
//!     .merge(routes.stream_router())
//!     .merge(routes.admin_router().route_layer(middleware::from_fn(admins_only)));
//! ```
//!
//! # Errors
//!
//! Bad input changes nothing and gets a JSON error, `{"error": "…"}`:
//! 400 for malformed JSON or a bad query or path, 401 without credentials
//! (or with bad ones), 403 with credentials that lack the grant, 413 for a
//! body over the limit (64 KiB by default), 415 when the body is not
//! `Content-Type: application/json` (which also makes browsers ask before a
//! cross-site POST), 422 for JSON of the wrong shape (unknown fields, wrong
//! types, CR, LF or NUL in a type, a reserved type, bad connection ids,
//! more excluded ids than [`Limits::exclude`](crate::limits::Limits::exclude)),
//! 404 for an unknown connection, 503 when the shared backend (Redis)
//! cannot be reached.
//!
//! The stream answers 503 with `Retry-After` when the server has
//! [`Limits::connections`](crate::limits::Limits::connections) open, and
//! 429 with `Retry-After` when the user has
//! [`Limits::connections_per_user`](crate::limits::Limits::connections_per_user):
//! see [`crate::limits`].

// Handlers answer early with a finished `Response`; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Access, AuthError, Authorizer, Subject, subject_of};
use crate::broadcast::{BroadcastManager, Data, LastEventId, Sent, Subscription};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;
use crate::fragment::Fragment;
use crate::topics::Topic;

/// Mounts `manager` on `router` under `prefix` (for example `"/sse"`) with
/// the default options: the stream open to every page, the publish and
/// read routes closed (401) until the application opens them. See the
/// [module docs](self) for the routes, and [`BroadcastRoutes`] for options.
///
/// ```
/// use axum::Router;
/// use htmx_sse::broadcast::{BroadcastManager, setup_broadcast_routes};
///
/// let manager = BroadcastManager::new();
/// let app: Router = setup_broadcast_routes(Router::new(), manager.clone(), "/sse");
/// // Publish from your own handlers with `manager.message(type, data).send()`, or open
/// // the HTTP publish routes with `BroadcastRoutes`.
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

/// Options for the broadcast routes: prefix, body limit, and who may use
/// them.
///
/// ```
/// use axum::Router;
/// use htmx_sse::auth::Access;
/// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
///
/// let app: Router = BroadcastRoutes::new(BroadcastManager::new())
///     .prefix("/live")
///     .max_body(16 * 1024)
///     // A decision: anyone who reaches the server may read the history.
///     .read(Access::Anyone)
///     .install(Router::new());
/// ```
#[derive(Clone)]
#[must_use]
pub struct BroadcastRoutes {
    manager: BroadcastManager,
    prefix: String,
    max_body: usize,
    authorizer: Option<Arc<dyn Authorizer>>,
    publish: Access,
    read: Access,
    trust_publisher_html: bool,
}

impl fmt::Debug for BroadcastRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastRoutes")
            .field("prefix", &self.prefix)
            .field("max_body", &self.max_body)
            .field("authorizer", &self.authorizer.is_some())
            .field("publish", &self.publish)
            .field("read", &self.read)
            .field("trust_publisher_html", &self.trust_publisher_html)
            .finish_non_exhaustive()
    }
}

impl BroadcastRoutes {
    /// Routes for `manager` under `/sse`, bodies up to the manager's
    /// [`Limits::body`](crate::limits::Limits::body) (64 KiB by default),
    /// publish and read routes closed ([`Access::Granted`] with no
    /// authorizer).
    pub fn new(manager: BroadcastManager) -> Self {
        BroadcastRoutes {
            prefix: "/sse".to_owned(),
            max_body: manager.limits().body,
            manager,
            authorizer: None,
            publish: Access::Granted,
            read: Access::Granted,
            trust_publisher_html: false,
        }
    }

    /// Sends a string `data` from the publish routes as HTML, as it is.
    /// Without it a string is text, sent escaped (other JSON goes out
    /// HTML-safe either way). Say it only when everyone
    /// [`publish`](Self::publish) lets in is trusted to write the pages'
    /// HTML: their markup runs in every page.
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
    ///
    /// // The publishers are the application's own workers, which render
    /// // HTML with a template engine before posting it.
    /// let app: Router = BroadcastRoutes::new(BroadcastManager::new())
    ///     .trust_publisher_html()
    ///     .install(Router::new());
    /// ```
    pub fn trust_publisher_html(mut self) -> Self {
        self.trust_publisher_html = true;
        self
    }

    /// Checks every request with `authorizer`: a stream connection carries
    /// its subject's user (for [`BroadcastManager::send_to_user`]); with
    /// [`Access::Granted`] the publish routes need credentials whose
    /// `publish` selectors match the message type as a topic (`*` allows
    /// every type), and the read routes any valid credentials, else
    /// 401/403. Bad credentials are refused on every route. See
    /// [`crate::auth`].
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::auth::{AuthFuture, Authorizer, Subject};
    /// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes, topics::TopicSelector};
    ///
    /// /// Requests with the right key may publish any type.
    /// struct ApiKey(String);
    ///
    /// impl Authorizer for ApiKey {
    ///     fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
    ///         Box::pin(async move {
    ///             let sent = htmx_sse::auth::bearer(parts)?;
    ///             Ok((sent == Some(self.0.as_str())).then(|| {
    ///                 Subject::default().with_publish(vec![TopicSelector::any()])
    ///             }))
    ///         })
    ///     }
    /// }
    ///
    /// let app: Router = BroadcastRoutes::new(BroadcastManager::new())
    ///     .authorizer(ApiKey("from-your-config".into()))
    ///     .install(Router::new());
    /// ```
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Who may use `POST {prefix}/broadcast` and `POST {prefix}/send/{id}`
    /// (default [`Access::Granted`]: credentials from the authorizer whose
    /// `publish` selectors match the type; nobody without an authorizer).
    /// `.publish(Access::Anyone)` lets anyone who reaches the server put
    /// messages into every page.
    pub fn publish(mut self, access: Access) -> Self {
        self.publish = access;
        self
    }

    /// Who may use `GET {prefix}/status` and `GET {prefix}/history`
    /// (default [`Access::Granted`]: any credentials the authorizer
    /// accepts; nobody without an authorizer).
    pub fn read(mut self, access: Access) -> Self {
        self.read = access;
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

    /// The largest publish request body accepted, in bytes, for these
    /// routes (default: the manager's
    /// [`Limits::body`](crate::limits::Limits::body), 64 KiB unless set).
    /// A larger body gets 413 before it is read in full.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    fn ctx(&self) -> Arc<Ctx> {
        Arc::new(Ctx {
            manager: self.manager.clone(),
            max_body: self.max_body,
            authorizer: self.authorizer.clone(),
            publish: self.publish,
            read: self.read,
            trust_publisher_html: self.trust_publisher_html,
        })
    }

    /// The stream route, `GET {prefix}`, and the helper scripts' runtime,
    /// `GET {prefix}/htmx-sse.js` (see [`crate::connections::runtime`]),
    /// to merge into your router.
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
    ///
    /// let app: Router = Router::new().merge(BroadcastRoutes::new(BroadcastManager::new()).stream_router());
    /// ```
    pub fn stream_router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let path = if self.prefix.is_empty() {
            "/"
        } else {
            self.prefix.as_str()
        };
        Router::new()
            .route(path, get(stream))
            .route(
                &format!(
                    "{}{}",
                    self.prefix,
                    crate::connections::runtime::RUNTIME_FILE
                ),
                get(crate::connections::runtime::serve),
            )
            .with_state(self.ctx())
    }

    /// The publish and read routes alone (`POST {prefix}/broadcast`,
    /// `POST {prefix}/send/{id}`, `GET {prefix}/status`, `GET
    /// {prefix}/history`), with this value's access rules, to layer with
    /// your own authentication before merging: see the
    /// [module docs](self#closed-until-the-application-opens-them).
    pub fn admin_router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let p = &self.prefix;
        Router::new()
            .route(&format!("{p}/broadcast"), post(publish_all))
            .route(&format!("{p}/send/{{connection_id}}"), post(publish_one))
            .route(&format!("{p}/status"), get(status))
            .route(&format!("{p}/history"), get(history))
            .route(&format!("{p}/presence"), get(presence))
            .with_state(self.ctx())
    }

    /// The stream and the publish and read routes as one router, to
    /// `merge` or `nest`.
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::{auth::Access, broadcast::BroadcastManager, routes::BroadcastRoutes};
    ///
    /// let live = BroadcastRoutes::new(BroadcastManager::new())
    ///     .prefix("/events")
    ///     // A decision: only 127.0.0.1 reaches this server.
    ///     .publish(Access::Anyone)
    ///     .router();
    /// let app: Router = Router::new().nest("/api", live);
    /// ```
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.stream_router().merge(self.admin_router())
    }

    /// Adds the stream and the publish and read routes to `router`.
    pub fn install<S>(self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.merge(self.router())
    }
}

struct Ctx {
    manager: BroadcastManager,
    max_body: usize,
    authorizer: Option<Arc<dyn Authorizer>>,
    publish: Access,
    read: Access,
    trust_publisher_html: bool,
}

impl Ctx {
    /// A publish body's `data` as the manager takes it: a string is text,
    /// or HTML where the application trusts its publishers.
    fn data(&self, data: serde_json::Value) -> Data {
        match data {
            serde_json::Value::String(html) if self.trust_publisher_html => {
                Data::Html(Fragment::trusted(html))
            }
            serde_json::Value::String(text) => Data::Text(text),
            other => Data::Json(other),
        }
    }

    async fn subject(&self, parts: &Parts) -> Result<Option<Subject>, Response> {
        subject_of(self.authorizer.as_deref(), parts)
            .await
            .map_err(IntoResponse::into_response)
    }

    /// For publish routes: whether `subject` may publish `message_type`.
    fn may_publish(&self, subject: Option<&Subject>, message_type: &str) -> Result<(), Response> {
        self.publish
            .check(subject, |s| {
                let allowed = Topic::new(message_type)
                    .map(|t| s.can_publish(&[t]))
                    .unwrap_or(false);
                if allowed {
                    Ok(())
                } else {
                    Err(AuthError::Forbidden(format!(
                        "may not publish type {message_type:?}"
                    )))
                }
            })
            .map_err(IntoResponse::into_response)
    }

    /// For read routes: the asker's subject, when it may read.
    async fn reader(&self, parts: &Parts) -> Result<Option<Subject>, Response> {
        let subject = self.subject(parts).await?;
        self.read
            .check(subject.as_ref(), |_| Ok(()))
            .map_err(IntoResponse::into_response)?;
        Ok(subject)
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

async fn stream(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let subject = match ctx.subject(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut sub = Subscription::new();
    if let Some(user) = subject.and_then(|s| s.user) {
        sub = sub.user(user);
    }
    let last = LastEventId::from_parts(&parts);
    let connection = ctx.manager.subscribe(
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
    error(e.status(), e.to_string())
}

/// Authorizes a publish request (credentials first, so that a refused
/// request is not read), then reads its body.
async fn authorized_body<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    req: Request,
) -> Result<(Option<Subject>, T), Response> {
    let (parts, body) = req.into_parts();
    let subject = ctx.subject(&parts).await?;
    if ctx.publish == Access::Granted && subject.is_none() {
        return Err(AuthError::Missing.into_response());
    }
    let body = json_body(Request::from_parts(parts, body), ctx.max_body).await?;
    Ok((subject, body))
}

async fn publish_all(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let m = &ctx.manager;
    let (subject, body): (_, PublishAll) = match authorized_body(&ctx, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = ctx.may_publish(subject.as_ref(), &body.message_type) {
        return r;
    }
    let max_exclude = m.limits().exclude;
    if body.exclude.len() > max_exclude {
        let e = Error::LimitExceeded {
            limit: crate::limits::Limit::Exclude,
            max: max_exclude,
            retry_after: None,
        };
        return publish_error(&e);
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
        .broadcast(
            body.message_type,
            ctx.data(body.data),
            body.metadata,
            &exclude,
        )
        .await
    {
        Ok(s) => sent(s),
        Err(e) => publish_error(&e),
    }
}

async fn publish_one(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let m = &ctx.manager;
    let id = match ConnectionId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (subject, body): (_, PublishOne) = match authorized_body(&ctx, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = ctx.may_publish(subject.as_ref(), &body.message_type) {
        return r;
    }
    match m
        .send_to(&id, body.message_type, ctx.data(body.data), body.metadata)
        .await
    {
        Ok(s) => sent(s),
        Err(e) => publish_error(&e),
    }
}

async fn status(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    if let Err(r) = ctx.reader(&req.into_parts().0).await {
        return r;
    }
    let m = &ctx.manager;
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
        "backend": m.backend_name(),
        "backend_connected": m.backend_connected(),
        "cluster_connections": cluster,
    }))
    .into_response()
}

async fn history(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let parts = req.into_parts().0;
    let subject = match ctx.reader(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let query: HashMap<String, String> = match Query::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
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
    let user = subject.as_ref().and_then(|s| s.user.as_ref());
    let listed = ctx.manager.history_for(limit, user);
    history_answer(&listed, ctx.manager.limits().history_response_bytes)
}

/// `GET {prefix}/presence[?topic=T | ?user=U]`: who is connected, for
/// everyone, a topic or a user. Read access, and with credentials: a topic
/// only for those whose `subscribe` selectors match it, a user only for
/// that user.
async fn presence(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    use crate::broadcast::PresenceScope;

    let parts = req.into_parts().0;
    let subject = match ctx.subject(&parts).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pairs = query_pairs(&parts);
    let get = |key: &str| {
        let mut values = pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(error(
                StatusCode::BAD_REQUEST,
                format!("{key} is given twice"),
            )),
            (v, _) => Ok(v.cloned()),
        }
    };
    let (topic, user) = match (get("topic"), get("user")) {
        (Ok(t), Ok(u)) => (t, u),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let scope = match (topic, user) {
        (Some(_), Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "give topic or user, not both");
        }
        (Some(t), None) => match Topic::new(&t) {
            Ok(t) => PresenceScope::Topic(t),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        (None, Some(u)) => match UserId::new(&u) {
            Ok(u) => PresenceScope::User(u),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        (None, None) => PresenceScope::Everyone,
    };
    let allowed = ctx.read.check(subject.as_ref(), |s| match &scope {
        PresenceScope::Topic(t) if !s.subscribe.iter().any(|sel| sel.matches(t)) => Err(
            AuthError::Forbidden(format!("not allowed to see who listens to {t}")),
        ),
        PresenceScope::User(u) if s.user.as_ref() != Some(u) => Err(AuthError::Forbidden(
            "only a user may see their own presence".to_owned(),
        )),
        _ => Ok(()),
    });
    if let Err(e) = allowed {
        return e.into_response();
    }
    match ctx.manager.presence(&scope) {
        Ok(p) => Json(p).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `messages` as a JSON array of at most `max` bytes: the newest that fit,
/// oldest first, with `X-History-Truncated: true` when some were left out.
fn history_answer(messages: &[crate::broadcast::BroadcastMessage], max: usize) -> Response {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    // `[` and `]`, and a comma between two.
    let mut size = 2;
    for m in messages.iter().rev() {
        let Ok(json) = serde_json::to_vec(m) else {
            continue;
        };
        let more = json.len() + usize::from(!kept.is_empty());
        if size + more > max {
            break;
        }
        size += more;
        kept.push(json);
    }
    let truncated = kept.len() < messages.len();
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, json) in kept.iter().rev().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json);
    }
    body.push(b']');
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response();
    if truncated {
        response.headers_mut().insert(
            "x-history-truncated",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Publish bodies of any bytes: parsed, or refused with 400, 413,
        /// 415 or 422; never a panic.
        #[test]
        fn publish_bodies_from_anywhere(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            json_like in "\\{\"type\": ?\"[a-z\\n\\x00]{0,8}\", ?\"data\": ?[\\[\\]{}0-9a-z\",:]{0,40}\\}",
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for bytes in [body, json_like.into_bytes()] {
                let req = Request::builder()
                    .uri("/sse/broadcast")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(bytes))
                    .unwrap();
                let out = runtime.block_on(json_body::<PublishAll>(req, 256));
                if let Err(res) = out {
                    let status = res.status().as_u16();
                    proptest::prop_assert!([400, 413, 415, 422].contains(&status), "{}", status);
                }
            }
        }
    }
}
