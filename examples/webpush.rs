//! Web Push demo: a page with a service worker and a subscribe button, and
//! the key-pair maker.
//!
//! ```text
//! cargo run --example webpush --features webpush -- keygen
//! VAPID_PRIVATE_KEY=... cargo run --example webpush --features webpush-rustls
//! cargo run --example webpush --features webpush-rustls -- --addr 127.0.0.1:8080
//! ```
//!
//! `keygen` prints a new VAPID key pair. The server reads the private key
//! from `VAPID_PRIVATE_KEY` (base64url, or a PEM file's text) and the contact
//! from `VAPID_SUBJECT` (default `mailto:webpush-demo@example.com`); without
//! a key it makes one for this run only, and subscriptions made with it stop
//! working when the server restarts.
//!
//! Open <http://localhost:3000> (push needs a secure context: `localhost` or
//! `https:`), press "Subscribe", send a notification with a delay and close
//! the tab: the notification still arrives. Real push services are `https:`,
//! so build with `webpush-rustls` (with plain `webpush` every push fails with
//! a request error, which the server logs).
//!
//! Routes: `GET /` the page, `GET /sw.js` the service worker,
//! `GET /vapid-public-key`, `POST /subscribe` (the JSON of
//! `PushSubscription.toJSON()`), `POST /unsubscribe` (`{"endpoint": …}`),
//! `POST /notify` (form: `title`, `body`, `delay`; answers JSON counts).
//!
//! # Endpoints
//!
//! A subscription's endpoint is a URL the browser (or anyone posting to
//! `/subscribe`) chose, and the server will `POST` to it. The demo accepts
//! only the browsers' push services (`PUSH_SERVICES`), and the dispatcher
//! checks that again before each request. What goes wrong at a push service
//! is logged (with `tracing`; `RUST_LOG` picks what is shown), and the page
//! gets only counts and a generic error: an endpoint's answer is text chosen
//! by whoever made the subscription, and is never shown to a browser.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use htmx_sse::webpush::{
    Dispatcher, EndpointPolicy, Error, Payload, Subscription, VapidKey, VapidSubject,
};
use serde::Deserialize;
use serde_json::{Value, json};

const PAGE: &str = include_str!("../templates/webpush/index.html");
const SERVICE_WORKER: &str = include_str!("../templates/webpush/sw.js");

/// The push services of the browsers: Chrome and the other Chromium
/// browsers (FCM), Firefox (Mozilla autopush), Safari (Apple), Edge (WNS).
pub(crate) const PUSH_SERVICES: [&str; 5] = [
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.push.services.mozilla.com",
    "web.push.apple.com",
    "*.notify.windows.com",
];

#[derive(Clone)]
struct App {
    push: Dispatcher,
    /// The policy `/subscribe` parses with; the dispatcher has the same.
    policy: Arc<EndpointPolicy>,
    /// Subscriptions by endpoint. A real application stores
    /// `Subscription::to_json()` (or its three fields) in its database.
    subscriptions: Arc<Mutex<HashMap<String, Subscription>>>,
}

/// The demo's routes, sending with `push` and accepting the subscriptions
/// `policy` accepts (`main` passes the browsers' push services, the tests a
/// policy for their push service on 127.0.0.1).
pub(crate) fn router(push: Dispatcher, policy: EndpointPolicy) -> Router {
    let state = App {
        push: push.endpoint_policy(policy.clone()),
        policy: Arc::new(policy),
        subscriptions: Arc::default(),
    };
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/sw.js", get(service_worker))
        .route("/vapid-public-key", get(public_key))
        .route("/subscribe", post(subscribe))
        .route("/unsubscribe", post(unsubscribe))
        .route("/notify", post(notify))
        .with_state(state)
}

fn usage() -> ! {
    eprintln!("usage: webpush [keygen | --addr HOST:PORT]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,htmx_sse=debug".into()),
        )
        .init();
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "keygen" => return keygen(),
            "--addr" => {
                let Some(value) = args.next() else { usage() };
                addr = value.parse().unwrap_or_else(|e| {
                    eprintln!("--addr {value:?}: {e}");
                    std::process::exit(2)
                });
            }
            _ => usage(),
        }
    }

    let key = match std::env::var("VAPID_PRIVATE_KEY") {
        Ok(text) if text.contains("-----BEGIN") => VapidKey::from_pem(&text),
        Ok(text) => VapidKey::from_base64(&text),
        Err(_) => {
            let key = VapidKey::generate();
            if let Ok(key) = &key {
                eprintln!(
                    "No VAPID_PRIVATE_KEY: using a new key for this run only.\n\
                     To keep subscriptions across restarts, run with\n  \
                     VAPID_PRIVATE_KEY={}",
                    key.private_key_base64()
                );
            }
            key
        }
    };
    let key = key.unwrap_or_else(|e| {
        eprintln!("VAPID_PRIVATE_KEY: {e}");
        std::process::exit(2)
    });
    let subject = std::env::var("VAPID_SUBJECT")
        .unwrap_or_else(|_| "mailto:webpush-demo@example.com".to_owned());
    let subject = VapidSubject::new(subject).unwrap_or_else(|e| {
        eprintln!("VAPID_SUBJECT: {e}");
        std::process::exit(2)
    });
    if !cfg!(feature = "webpush-rustls") {
        eprintln!(
            "Built without TLS: pushes to the https: push services will fail.\n\
             Run with --features webpush-rustls to send real notifications."
        );
    }

    let app = router(
        Dispatcher::new(key, subject, Duration::from_secs(60 * 60)),
        EndpointPolicy::new().allow_hosts(PUSH_SERVICES),
    );

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1)
        });
    let shown = if addr.ip().is_loopback() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    eprintln!("Web Push demo on {shown}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("server error: {e}");
    }
}

/// Prints a new VAPID key pair.
fn keygen() {
    match VapidKey::generate() {
        Ok(key) => {
            println!("# Keep the private key secret; the page needs the public key.");
            println!("VAPID_PRIVATE_KEY={}", key.private_key_base64());
            println!("VAPID_PUBLIC_KEY={}", key.public_key_base64());
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

async fn service_worker() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SERVICE_WORKER,
    )
}

async fn public_key(State(app): State<App>) -> String {
    app.push.public_key().to_owned()
}

/// Stores the subscription if it is well formed and its endpoint is one of
/// the push services the policy accepts; 422 otherwise.
async fn subscribe(State(app): State<App>, body: String) -> (StatusCode, Json<Value>) {
    let sub = match Subscription::from_json_with_policy(&body, &app.policy) {
        Ok(sub) => sub,
        Err(error) => {
            tracing::info!(%error, "refused a push subscription");
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": "not a push subscription this server accepts" })),
            );
        }
    };
    let mut subs = app.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    let new = subs.insert(sub.endpoint().to_owned(), sub).is_none();
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(json!({ "subscribed": true })))
}

#[derive(Deserialize)]
struct Unsubscribe {
    endpoint: String,
}

async fn unsubscribe(State(app): State<App>, Json(body): Json<Unsubscribe>) -> StatusCode {
    let mut subs = app.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    match subs.remove(&body.endpoint) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct Notify {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    delay: u64,
}

async fn notify(State(app): State<App>, Form(form): Form<Notify>) -> (StatusCode, Json<Value>) {
    let mut payload = Payload::new(form.title).data(json!({ "url": "/" }));
    if !form.body.is_empty() {
        payload = payload.body(form.body);
    }
    let delay = Duration::from_secs(form.delay.min(300));
    if delay.is_zero() {
        return send(&app, &payload).await;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let (status, Json(outcome)) = send(&app, &payload).await;
        tracing::info!(%status, %outcome, "delayed push sent");
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "scheduled_in_seconds": delay.as_secs(),
            "message": "close the tab: the notification will still arrive",
        })),
    )
}

/// Sends to every subscriber, forgets the gone ones, and answers with counts
/// only. Why a push failed is logged, never answered: the endpoint and its
/// push service's answer belong to whoever made that subscription.
async fn send(app: &App, payload: &Payload) -> (StatusCode, Json<Value>) {
    let subs: Vec<Subscription> = app
        .subscriptions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    if subs.is_empty() {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "no subscribers yet: press \"Subscribe\" first" })),
        );
    }
    let report = match app.push.send_many(&subs, payload).await {
        Ok(report) => report,
        Err(error) => {
            tracing::warn!(%error, "push message not sent");
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "the message could not be sent" })),
            );
        }
    };
    {
        let mut stored = app.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        for endpoint in &report.gone {
            stored.remove(endpoint);
        }
        for (endpoint, error) in &report.failed {
            log_failure(endpoint, error);
            // A refused endpoint will never be accepted: forget it too.
            if matches!(error, Error::EndpointRefused { .. }) {
                stored.remove(endpoint);
            }
        }
    }
    let (delivered, gone, failed) = (report.delivered, report.gone.len(), report.failed.len());
    if failed == 0 {
        (
            StatusCode::OK,
            Json(json!({ "delivered": delivered, "gone": gone, "failed": 0 })),
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": "some push messages could not be sent; see the server log",
                "delivered": delivered,
                "gone": gone,
                "failed": failed,
            })),
        )
    }
}

/// Logs one failed push: the endpoint's host (the rest of the URL is the
/// subscription's secret), the error and its causes, and a rejecting push
/// service's answer in `Debug` form (escaped: it is the endpoint's text).
fn log_failure(endpoint: &str, error: &Error) {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    match error {
        Error::Rejected { body, .. } => {
            tracing::warn!(host, %error, ?causes, ?body, "push failed");
        }
        _ => tracing::warn!(host, %error, ?causes, "push failed"),
    }
}
