//! HTTP/2 in a real browser (issue 19): over HTTP/1.1 a browser opens at
//! most six connections to one host, so the seventh tab's stream hangs;
//! over HTTP/2 every tab's stream is a stream of one connection.
//!
//! The server is the demo's set-up (`common::tls::serve`: rustls with `h2`
//! and `http/1.1` by ALPN, hyper-util's auto builder) with a certificate
//! made by openssl for this run, a `BroadcastManager` mounted with
//! `BroadcastRoutes` opened to anyone (`common::open_routes`), and a page
//! whose element (`SseElement`) opens its own stream: no shared-connection
//! helper. `tests/browser/h2.mjs` opens ten tabs at once and checks the
//! protocol in the pages, the streams and connections on the server, and
//! that every tab shows every broadcast exactly once; and, for contrast,
//! that the same page over cleartext HTTP/1.1 leaves a seventh tab unable
//! to load until one of six is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::scripts::SseElement;
use htmx_sse::streaming::Swap;
use maud::{PreEscaped, html};
use serde_json::{Value, json};

use super::lab::flavor;
use super::{Flavour, drive, page_routes, page_shell};
use crate::common::tls::{TestCert, serve};

/// How many broadcasts the driver asks for (`BROADCASTS` in h2.mjs).
const BROADCASTS: usize = 5;

struct H2 {
    flavour: Flavour,
    manager: BroadcastManager,
    /// TCP connections the server accepted.
    accepted: Arc<AtomicUsize>,
}

type Shared = Arc<H2>;

fn app(h2: &Shared) -> Router {
    let router = page_routes(page)
        .route("/h2/stats", get(stats))
        .route("/h2/publish", post(publish))
        .with_state(h2.clone());
    crate::common::open_routes(router, h2.manager.clone(), "/sse")
}

async fn page(State(h2): State<Shared>) -> Response {
    let element = SseElement::new("/sse", flavor(h2.flavour))
        .id("feed")
        .swap_event("chat")
        .hx_target("#log")
        .hx_swap(Swap::BeforeEnd)
        .children(htmx_sse::Fragment::trusted(r#"<ul id="log"></ul>"#))
        .render()
        .expect("the test's element is valid");
    let markup = page_shell(
        "htmx-sse over HTTP/2",
        "ten-tabs",
        h2.flavour,
        &[],
        "body{font:16px sans-serif;margin:1.5em}#feed{border:1px solid #999;padding:.5em}",
        &html! { (PreEscaped(element.as_str())) },
    );
    ([(header::CACHE_CONTROL, "no-cache")], markup).into_response()
}

async fn stats(State(h2): State<Shared>) -> Json<Value> {
    Json(json!({
        "streams": h2.manager.connection_count(),
        "accepted": h2.accepted.load(Ordering::SeqCst),
    }))
}

/// Broadcasts `BROADCASTS` messages; answers how many connections each was
/// queued for.
async fn publish(State(h2): State<Shared>) -> Json<Value> {
    let mut delivered = Vec::new();
    for n in 0..BROADCASTS {
        let sent = h2
            .manager
            .broadcast("chat", html! { li { "message " (n) } }, None, &[])
            .await
            .expect("a valid broadcast");
        delivered.push(sent.delivered);
    }
    Json(json!({ "delivered": delivered }))
}

/// Ten tabs, ten streams over HTTP/2 on at most two TCP connections, every
/// broadcast in every tab once.
async fn ten_tabs(flavour: Flavour) {
    let cert = TestCert::make(&format!("browser-h2-{}", flavour.name()));
    let h2 = Arc::new(H2 {
        flavour,
        manager: BroadcastManager::new(),
        accepted: Arc::new(AtomicUsize::new(0)),
    });
    let (base, server) = serve(app(&h2), &cert, h2.accepted.clone()).await;
    drive("h2.mjs", "ten-tabs", flavour, &base).await;
    server.abort();
    let accepted = h2.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&accepted),
        "ten tabs' streams came over {accepted} TCP connections"
    );
}

/// The same page over cleartext HTTP/1.1: the seventh tab waits for one of
/// the six connections.
async fn seventh_tab(flavour: Flavour) {
    let h2 = Arc::new(H2 {
        flavour,
        manager: BroadcastManager::new(),
        accepted: Arc::new(AtomicUsize::new(0)),
    });
    let (base, server) = crate::common::serve(app(&h2)).await;
    drive("h2.mjs", "seventh-tab", flavour, &base).await;
    server.abort();
}

in_both_flavours! {
    ten_tabs_keep_their_own_streams_over_http2: |f| ten_tabs(f).await;
    over_http1_a_seventh_tab_waits: |f| seventh_tab(f).await;
}
