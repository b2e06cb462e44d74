//! The README's quick start (kept identical to it by `tests/readme.rs`):
//! a page, the shared stream, and a server task that publishes to it.
//!
//! ```text
//! cargo run --example quickstart     # then open http://127.0.0.1:3000
//! ```
use std::time::Duration;

use axum::{Router, routing::get};
use htmx_sse::{BroadcastManager, setup_broadcast_routes};
use maud::{Markup, html};

/// The application: the page at `/`, the stream at `/sse`.
pub(crate) fn app(manager: BroadcastManager) -> Router {
    let page = Router::new().route("/", get(page));
    // GET /sse is the stream every page listens to. The routes it also adds
    // for publishing (POST /sse/broadcast, POST /sse/send/{id}) and reading
    // (GET /sse/status, GET /sse/history) answer 401 until you open them:
    // give `BroadcastRoutes::new(manager).authorizer(…)` your own check, or
    // write `.publish(Access::Anyone)` where anyone may publish on purpose.
    setup_broadcast_routes(page, manager, "/sse")
}

async fn page() -> Markup {
    html! {
        script src="https://unpkg.com/htmx.org@2.0.11/dist/htmx.min.js" {}
        script src="https://unpkg.com/htmx-ext-sse@2.2.4/dist/sse.js" {}
        p hx-ext="sse" sse-connect="/sse" sse-swap="tick" { "waiting for the server…" }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let manager = BroadcastManager::new();
    // The server publishes: every open page shows the count.
    let ticker = manager.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            every.tick().await;
            // maud escapes what it inserts: its `Markup` goes out as HTML.
            let fragment = html! { "Ticks since start: " strong { (n) } };
            let _ = ticker.message("tick", fragment).send().await;
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    // Ctrl-C or SIGTERM ends the streams cleanly (browsers reconnect to the
    // next server process and resume) and then the server, within 5 s even
    // if a client stopped reading.
    let shutdown = manager.shutdown_signal().clone();
    let server = axum::serve(listener, app(manager).into_make_service())
        .with_graceful_shutdown(shutdown.clone().after_signal());
    shutdown.drain_within(server, Duration::from_secs(5)).await
}
