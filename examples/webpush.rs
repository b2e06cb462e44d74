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
//! a request error, which the page shows).
//!
//! Routes: `GET /` the page, `GET /sw.js` the service worker,
//! `GET /vapid-public-key`, `POST /subscribe` (the JSON of
//! `PushSubscription.toJSON()`), `POST /unsubscribe` (`{"endpoint": …}`),
//! `POST /notify` (form: `title`, `body`, `delay`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use htmx_sse::webpush::{Dispatcher, Payload, Subscription, VapidKey, VapidSubject};
use serde::Deserialize;

const PAGE: &str = include_str!("../templates/webpush/index.html");
const SERVICE_WORKER: &str = include_str!("../templates/webpush/sw.js");

#[derive(Clone)]
struct App {
    push: Dispatcher,
    /// Subscriptions by endpoint. A real application stores
    /// `Subscription::to_json()` (or its three fields) in its database.
    subscriptions: Arc<Mutex<HashMap<String, Subscription>>>,
}

fn usage() -> ! {
    eprintln!("usage: webpush [keygen | --addr HOST:PORT]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
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

    let state = App {
        push: Dispatcher::new(key, subject, Duration::from_secs(60 * 60)),
        subscriptions: Arc::default(),
    };
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/sw.js", get(service_worker))
        .route("/vapid-public-key", get(public_key))
        .route("/subscribe", post(subscribe))
        .route("/unsubscribe", post(unsubscribe))
        .route("/notify", post(notify))
        .with_state(state);

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

/// Axum's `Json` refuses a malformed subscription with 422 and the reason.
async fn subscribe(State(app): State<App>, Json(sub): Json<Subscription>) -> StatusCode {
    let mut subs = app.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    let new = subs.insert(sub.endpoint().to_owned(), sub).is_none();
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
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

async fn notify(State(app): State<App>, Form(form): Form<Notify>) -> String {
    let mut payload = Payload::new(form.title).data(serde_json::json!({ "url": "/" }));
    if !form.body.is_empty() {
        payload = payload.body(form.body);
    }
    let delay = Duration::from_secs(form.delay.min(300));
    if delay.is_zero() {
        return send(&app, &payload).await;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        eprintln!("{}", send(&app, &payload).await);
    });
    format!(
        "Sending in {} s: close the tab, the notification will still arrive.",
        delay.as_secs()
    )
}

/// Sends to every subscriber, forgets the gone ones, describes the outcome.
async fn send(app: &App, payload: &Payload) -> String {
    let subs: Vec<Subscription> = app
        .subscriptions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    if subs.is_empty() {
        return "No subscribers yet: press \"Subscribe\" first.".to_owned();
    }
    let report = match app.push.send_many(&subs, payload).await {
        Ok(report) => report,
        Err(e) => return format!("Not sent: {e}"),
    };
    {
        let mut stored = app.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        for endpoint in &report.gone {
            stored.remove(endpoint);
        }
    }
    let mut text = format!(
        "{} of {} delivered to the push service.",
        report.delivered,
        subs.len()
    );
    for endpoint in &report.gone {
        let _ = write!(text, "\nGone (removed): {endpoint}");
    }
    for (endpoint, error) in &report.failed {
        let _ = write!(text, "\nFailed: {endpoint}: {error}");
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
    }
    text
}
