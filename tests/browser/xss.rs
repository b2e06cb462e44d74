//! Strings are text, in a real browser: `tests/browser/xss.mjs` publishes
//! a string holding `<img src=x onerror=…>` and `<script>` through every
//! public entry point, and the page must show each as text and run none
//! (see `tests/browser/README.md`).
//!
//! The server is what an application would mount, with nothing trusted:
//! one `BroadcastManager` under `/sse` (`BroadcastRoutes`, publishing open
//! to anyone, **without** `trust_publisher_html`, and an authorizer that
//! gives the page's connection a user from a cookie the page sets) and at
//! `/hub` (`TopicRoutes`, publishing open to anyone), and a `Notifier` at
//! `/notifications/{channel}`. The page is made with the crate's own
//! `SseElement`, `TopicStream` and `NotificationStream`. A test layer
//! (`/lab/*`) publishes from Rust the way a handler would, with the text
//! it is given.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use htmx_sse::Fragment;
use htmx_sse::auth::{Access, AuthError, AuthFuture, Authorizer, Subject};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::scripts::SseElement;
use htmx_sse::connections::{ConnectionId, UserId};
use htmx_sse::notify::{ALL, Level, NotificationStream, Notifier};
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::streaming::Swap;
use htmx_sse::topics::{Topic, TopicRoutes, TopicSelector, TopicStream};
use maud::{PreEscaped, html};
use serde_json::{Value, json};

use super::lab::flavor;
use super::{Flavour, page_routes, page_shell, serve_and_drive};

/// The event type of the messages on the broadcast stream: named, swapped
/// by `sse-swap` in htmx 2 and by `SseElement`'s helper in htmx 4. A
/// topic stream on the same manager gets them too, and swaps none.
const TYPE: &str = "xss";

/// The topic the page's `TopicStream` subscribes to.
const TOPIC: &str = "xss/room";

/// The notification channel the page's toast container listens to.
const CHANNEL: &str = "alerts";

/// The cookie that names the page's user, for `send_to_user`.
const USER_COOKIE: &str = "xss_user";

/// The page's user.
const USER: &str = "alice";

/// The positive controls: HTML the application vouches for, which must
/// arrive as elements (the newline ends the line in the page's log).
const TRUSTED: &str = "<b id=\"ok\">bold</b>\n";
const TRUSTED_TOPIC: &str = "<b id=\"ok-topic\">bold topic</b>\n";

struct Lab {
    flavour: Flavour,
    manager: BroadcastManager,
    notifier: Notifier,
    user: UserId,
    topic: Topic,
}

type Shared = Arc<Lab>;

/// The user named by the page's cookie; no cookie, no user (the driver
/// publishes over HTTP without one, which `Access::Anyone` lets through).
struct CookieUser;

impl Authorizer for CookieUser {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            let Some(name) = htmx_sse::auth::cookie(parts, USER_COOKIE) else {
                return Ok(None);
            };
            let user = UserId::new(name).map_err(|e| AuthError::Invalid(e.to_string()))?;
            Ok(Some(Subject::user(user)))
        })
    }
}

fn app(lab: Shared) -> Router {
    let router = page_routes(page)
        .route("/lab/state", get(state))
        .route("/lab/publish", post(publish));
    // No `trust_publisher_html` anywhere: string data is text.
    let router = BroadcastRoutes::new(lab.manager.clone())
        .prefix("/sse")
        .authorizer(CookieUser)
        .publish(Access::Anyone)
        .install(router);
    let router = TopicRoutes::new(lab.manager.clone())
        .publish(Access::Anyone)
        .install(router);
    let router = lab.notifier.routes().listen(Access::Anyone).install(router);
    router.with_state(lab)
}

async fn state(State(lab): State<Shared>) -> Json<Value> {
    Json(json!({
        "count": lab.manager.connection_count(),
        "userConnections": lab.manager.user_connection_count(&lab.user),
        "topicSubscribers": lab.manager.subscriber_count(&lab.topic),
        "toastListeners": lab.notifier.client_count(Some(CHANNEL)),
    }))
}

#[derive(serde::Deserialize)]
struct PublishQuery {
    /// The entry point: `broadcast`, `send_to`, `send_to_user`, `message`,
    /// `topics`, `notifier`, `notifier-all`; or a positive control,
    /// `trusted` or `trusted-topic`, which ignores `text`.
    via: String,
    #[serde(default)]
    text: String,
    /// The page's connection id, for `send_to`.
    connection: Option<String>,
}

/// Publishes `text` through one entry point, as an application's handler
/// would publish what a user typed (as `&str`, `String`, `&String` and
/// `Cow<str>`, every string type the publish calls take); answers how many
/// connections it reached.
async fn publish(State(lab): State<Shared>, Query(q): Query<PublishQuery>) -> Response {
    let m = &lab.manager;
    let text = q.text;
    let topic = lab.topic.clone();
    let delivered = match q.via.as_str() {
        "broadcast" => m.broadcast(TYPE, text.as_str(), None, &[]).await,
        "send_to" => {
            let Some(id) = q
                .connection
                .as_deref()
                .and_then(|c| ConnectionId::new(c).ok())
            else {
                return (StatusCode::BAD_REQUEST, "send_to needs ?connection=ID").into_response();
            };
            m.send_to(&id, TYPE, text, None).await
        }
        "send_to_user" => m.send_to_user(&lab.user, TYPE, &text, None).await,
        "message" => m.message(TYPE, Cow::Borrowed(text.as_str())).send().await,
        "topics" => m.message("message", text).topics([topic]).send().await,
        "trusted" => {
            m.broadcast(TYPE, Fragment::trusted(TRUSTED), None, &[])
                .await
        }
        "trusted-topic" => {
            m.message("message", Fragment::trusted(TRUSTED_TOPIC))
                .topics([topic])
                .send()
                .await
        }
        "notifier" | "notifier-all" => {
            let channel = if q.via == "notifier" { CHANNEL } else { ALL };
            return match lab.notifier.send(channel, &text, Level::Warning).await {
                Ok(reached) => Json(json!({ "delivered": reached })).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            };
        }
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown entry point {other:?}"),
            )
                .into_response();
        }
    };
    match delivered {
        Ok(sent) => Json(json!({ "delivered": sent.delivered })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------
// The page

/// htmx 4 fires the named `connection` event as a DOM event on the element
/// that connected: this shows the broadcast stream's connection id (not
/// the topic stream's, nor the toasts') in `#cid`, as `sse-swap` does in
/// htmx 2.
const HTMX4_CONNECTION_ID: &str = "<script>document.addEventListener('connection', (e) => {
  const slot = document.getElementById('cid');
  if (slot && e.target && e.target.id === 'feed' && e.detail && typeof e.detail.data === 'string') {
    htmx.swap({ sourceElement: slot, target: slot, swap: 'innerHTML', text: e.detail.data });
  }
}, true);</script>";

async fn page(State(lab): State<Shared>) -> Response {
    let f = lab.flavour;
    let feed = SseElement::new("/sse", flavor(f))
        .id("feed")
        .swap_event(TYPE)
        .hx_target("#feed-log")
        .hx_swap(Swap::BeforeEnd)
        .children(html! {
            "connection "
            @if f == Flavour::Htmx2 {
                span #cid sse-swap="connection" hx-target="this" hx-swap="innerHTML" {}
            } @else {
                span #cid {}
            }
        })
        .render()
        .expect("a valid element");
    let topic = TopicStream::new([TopicSelector::exact(&lab.topic)])
        .flavor(flavor(f))
        .id("topic-log")
        .and_then(|t| t.attr("class", "log"))
        .and_then(|t| t.render())
        .expect("a valid topic stream");
    // Toasts stay (0: no dismissal) for the assertions and the screenshot.
    let toasts = NotificationStream::new(CHANNEL)
        .flavor(flavor(f))
        .dismiss_ms(0)
        .render()
        .expect("a valid channel");
    let body = html! {
        section {
            h2 { "Broadcast stream " code { "/sse" } ", type " code { (TYPE) } }
            (PreEscaped(feed.as_str()))
            @if f == Flavour::Htmx4 { (PreEscaped(HTMX4_CONNECTION_ID)) }
            div #feed-log .log {}
        }
        section {
            h2 { "Topic " code { (TOPIC) } " on " code { "/hub" } }
            (PreEscaped(topic.as_str()))
        }
        section {
            h2 { "Toasts on channel " code { (CHANNEL) } }
            (PreEscaped(toasts.as_str()))
        }
    };
    let markup = page_shell(
        "htmx-sse strings are text",
        "entry-points",
        f,
        &[],
        concat!(
            "body{font:14px sans-serif;margin:1em}",
            "h1{font-size:1.1em;margin:.2em 0}h2{font-size:1em;margin:.2em 0}",
            "section{margin:.4em 0}#feed{font-size:12px;color:#555}",
            ".log{white-space:pre-line;font:12px monospace;border:1px solid #999;",
            "padding:.3em .5em;min-height:1em;overflow-wrap:anywhere}",
            ".toast{display:flex;flex-direction:column;gap:.3em}",
            ".alert{font:12px monospace;padding:.3em .6em;border-radius:.3em;background:#fef3c7;",
            "overflow-wrap:anywhere}",
        ),
        &body,
    );
    let cookie = format!("{USER_COOKIE}={USER}; Path=/; HttpOnly; SameSite=Strict");
    (
        [
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
        markup,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// The test

async fn entry_points(f: Flavour) {
    let manager = BroadcastManager::new();
    let lab = Arc::new(Lab {
        flavour: f,
        manager,
        notifier: Notifier::new(),
        user: UserId::new(USER).expect("a valid user id"),
        topic: Topic::new(TOPIC).expect("a valid topic"),
    });
    serve_and_drive(app(lab), "xss.mjs", "entry-points", f).await;
}

in_both_flavours! {
    strings_from_every_entry_point_are_text: |f| entry_points(f).await;
}
