//! The browser-side helpers of `htmx_sse::connections::scripts` in a real
//! browser: `tests/browser/helpers.mjs` drives pages built with
//! `SseElement` and the helper scripts against a `BroadcastManager` mounted
//! with `BroadcastRoutes` opened to anyone (`common::open_routes`) (see `tests/browser/README.md`).
//!
//! Between the manager's routes and the browser sits a thin test layer
//! (`lab`): it records every stream request, can answer the next ones with
//! 500, and can end every open stream without the close event, as a
//! dropped connection or a restarting proxy would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::scripts::{
    self, AttributeName, ReconnectOptions, SharedOptions, SseElement, SseListener,
};
use htmx_sse::streaming::Swap;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::lab::{cuttable, flavor, stream_request};
use super::{Flavour, page_routes, page_shell, serve_and_drive};

/// Config values that try to break out of their `<script>`; each ends up
/// as an element id the page really has, so the test can see it arrived
/// as data.
const PWN_STATUS: &str = "</script><script>window.__pwned=1</script>";
const PWN_MONITOR: &str = "</script><script>window.__pwned=2</script>";
const PWN_CHANNEL: &str = "</script><script>window.__pwned=3</script>";
const PWN_ATTR: &str = "\"><script>window.__pwned=4</script>";

/// How many retries the reconnecting pages allow.
const MAX_RETRIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// The stream is cut and refused twice while messages are published;
    /// the page catches up and its status goes reconnecting → open.
    Reconnect,
    /// The stream is cut and refused for good: `failed` after exactly
    /// `MAX_RETRIES` retries, then silence.
    RetryLimit,
    /// Away and back through the back/forward cache: the connection ends on
    /// `pagehide` and resumes, one connection, nothing lost. The helpers
    /// come from `Helpers` with the runtime served by the routes.
    Unload,
    /// Ten tabs, one stream; the leader tab closes and another takes over.
    Shared,
    /// The same with four tabs in a browser without Web Locks: the tabs
    /// elect a leader over the `BroadcastChannel`.
    SharedFallback,
    /// The monitor shows the server's counts and follows a second tab.
    Monitor,
    /// Pages made with `SseElement` alone swap several named events.
    Element,
    /// An `SseListener` inside a connection's element, and an
    /// `hx-trigger="sse:NAME"`: the same markup call in both flavours.
    Listener,
    /// Every config value carries `</script>`: nothing runs.
    Injection,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Reconnect => "reconnect",
            Scenario::RetryLimit => "retry-limit",
            Scenario::Unload => "unload",
            Scenario::Shared => "shared",
            Scenario::SharedFallback => "shared-fallback",
            Scenario::Monitor => "monitor",
            Scenario::Element => "element",
            Scenario::Listener => "listener",
            Scenario::Injection => "injection",
        }
    }
}

// ---------------------------------------------------------------------------
// The server

/// One stream request as the server saw it.
#[derive(Debug, Clone, serde::Serialize)]
struct StreamRequest {
    /// Path and query.
    uri: String,
    /// The `Last-Event-ID` header, if any.
    header: Option<String>,
    /// The `htmx-sse-resume` cookie (`ENC(path and query)|ENC(id)`), if any.
    cookie: Option<String>,
    /// What the stream was answered with.
    status: u16,
}

struct Lab {
    scenario: Scenario,
    flavour: Flavour,
    manager: BroadcastManager,
    requests: Mutex<Vec<StreamRequest>>,
    status_polls: AtomicUsize,
    /// The next this-many stream requests get a 500.
    refuse: AtomicUsize,
    /// Bumped to end every open stream without the close event.
    cut: watch::Sender<u64>,
}

type Shared = Arc<Lab>;

fn app(lab: Shared) -> Router {
    let router = page_routes(page)
        .route("/other", get(other))
        .route("/lab/state", get(state))
        .route("/lab/cut", post(cut))
        .route("/lab/refuse", post(refuse))
        .with_state(lab.clone());
    crate::common::open_routes(router, lab.manager.clone(), "/sse")
        .layer(middleware::from_fn_with_state(lab, lab_layer))
}

/// Watches the manager's routes: records stream requests, refuses them on
/// demand, and makes open streams endable; counts stats polls.
async fn lab_layer(State(lab): State<Shared>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    match req.uri().path() {
        "/sse/status" => {
            lab.status_polls.fetch_add(1, Ordering::SeqCst);
            next.run(req).await
        }
        "/sse" => {
            let seen = stream_request(&req);
            let refused = lab
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if refused { 500 } else { 200 };
            lab.requests.lock().push(StreamRequest {
                uri: seen.uri,
                header: seen.header,
                cookie: seen.cookie,
                status,
            });
            if refused {
                return (StatusCode::INTERNAL_SERVER_ERROR, "refused by the test").into_response();
            }
            cuttable(&lab.cut, req, next).await
        }
        _ => next.run(req).await,
    }
}

async fn state(State(lab): State<Shared>) -> Json<Value> {
    Json(json!({
        "count": lab.manager.connection_count(),
        "requests": *lab.requests.lock(),
        "statusPolls": lab.status_polls.load(Ordering::SeqCst),
    }))
}

async fn cut(State(lab): State<Shared>) -> StatusCode {
    lab.cut.send_modify(|n| *n += 1);
    StatusCode::NO_CONTENT
}

#[derive(serde::Deserialize)]
struct RefuseQuery {
    n: usize,
}

async fn refuse(State(lab): State<Shared>, Query(q): Query<RefuseQuery>) -> StatusCode {
    lab.refuse.store(q.n, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn other() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { "elsewhere" } } body { p #elsewhere { "another page" } } }
    }
}

// ---------------------------------------------------------------------------
// The pages

/// Reconnects fast and predictably: 200 ms, 400 ms, 800 ms, then gives up.
fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions::new()
        .base_delay(Duration::from_millis(200))
        .max_delay(Duration::from_secs(1))
        .max_retries(MAX_RETRIES)
        .jitter(0.0)
        .status_element("status")
}

/// The element every page connects with: chat messages appended to #log.
fn feed(f: Flavour) -> SseElement {
    SseElement::new("/sse", flavor(f))
        .id("feed")
        .swap_event("chat")
        .hx_target("#log")
        .hx_swap(Swap::BeforeEnd)
        .children(htmx_sse::Fragment::trusted(r#"<ul id="log"></ul>"#))
}

async fn page(State(lab): State<Shared>) -> Response {
    let (scenario, f) = (lab.scenario, lab.flavour);
    let mut head: Vec<htmx_sse::Fragment> = Vec::new();
    let mut body: Vec<Markup> = Vec::new();
    let status = html! { p { "status: " span #status { "(none)" } } };
    let element = match scenario {
        Scenario::Reconnect | Scenario::RetryLimit => {
            head.push(scripts::reconnect_script(fast_reconnect()));
            body.push(status);
            feed(f)
        }
        Scenario::Unload => {
            if f == Flavour::Htmx4 {
                // The default (pauseOnBackground) already ends the stream of
                // a hidden page; turned off, the helper must do it.
                head.push(htmx_sse::Fragment::trusted(
                    "<script>htmx.config.sse = {pauseOnBackground: false};</script>",
                ));
            }
            // Both helpers in one script, the runtime served once from the
            // broadcast routes with its integrity hash: the browser runs it
            // only if it is exactly the crate's file.
            head.push(
                scripts::Helpers::new()
                    .reconnect(fast_reconnect())
                    .cleanup_on_unload()
                    .runtime_src("/sse/htmx-sse.js")
                    .render(),
            );
            body.push(status);
            feed(f)
        }
        Scenario::Shared | Scenario::SharedFallback => {
            head.push(scripts::reconnect_script(fast_reconnect()));
            head.push(scripts::shared_connection_script(SharedOptions::new()));
            body.push(status);
            feed(f)
        }
        Scenario::Monitor => {
            head.push(scripts::connection_monitor_script(
                "/sse/status",
                Duration::from_millis(150),
                "stats",
            ));
            body.push(html! { p { "stats: " span #stats { "(none)" } } });
            feed(f)
        }
        Scenario::Element => feed(f).swap_event("news").swap_event("message"),
        Scenario::Listener => {
            // The connection's element swaps nothing itself: in htmx 4 it
            // adds the named-swap script for the listener inside it.
            let listener = SseListener::new(flavor(f))
                .event("chat")
                .hx_target("#log")
                .hx_swap(Swap::BeforeEnd)
                .render()
                .expect("a valid listener");
            let inside = html! {
                (listener)
                ul #log {}
                // `sse:ping` fires a request in both flavours: htmx-ext-sse
                // in htmx 2, the crate's script in htmx 4.
                div #pings hx-trigger="sse:ping" hx-get="/other" hx-select="#elsewhere" hx-swap="innerHTML" {}
            };
            SseElement::new("/sse", flavor(f))
                .id("feed")
                .children(inside)
        }
        Scenario::Injection => {
            head.push(scripts::reconnect_script(
                ReconnectOptions::new().status_element(PWN_STATUS),
            ));
            head.push(scripts::cleanup_on_unload());
            head.push(scripts::shared_connection_script(
                SharedOptions::new().channel(PWN_CHANNEL),
            ));
            head.push(scripts::connection_monitor_script(
                PWN_MONITOR,
                Duration::from_millis(150),
                PWN_MONITOR,
            ));
            body.push(html! {
                p { "status: " span id=(PWN_STATUS) { "(none)" } }
                p { "monitor: " span id=(PWN_MONITOR) { "(none)" } }
            });
            feed(f).attr(AttributeName::from_static("data-x"), PWN_ATTR)
        }
    };
    let element = element.render().expect("the test's element is valid");
    let body = html! {
        @for part in &body { (part) }
        (PreEscaped(element.as_str()))
    };
    let markup = page_shell(
        "htmx-sse helpers",
        scenario.name(),
        f,
        &head,
        concat!(
            "body{font:16px sans-serif;margin:1.5em}",
            "#feed{border:1px solid #999;padding:.5em;margin:.5em 0}",
            "[data-state=open]{color:green}[data-state=failed]{color:red}",
        ),
        &body,
    );
    ([(header::CACHE_CONTROL, "no-cache")], markup).into_response()
}

// ---------------------------------------------------------------------------
// Running

async fn run(scenario: Scenario, f: Flavour) -> Shared {
    let lab = Arc::new(Lab {
        scenario,
        flavour: f,
        manager: BroadcastManager::new(),
        requests: Mutex::new(Vec::new()),
        status_polls: AtomicUsize::new(0),
        refuse: AtomicUsize::new(0),
        cut: watch::channel(0).0,
    });
    serve_and_drive(app(lab.clone()), "helpers.mjs", scenario.name(), f).await;
    lab
}

fn statuses(lab: &Lab) -> Vec<u16> {
    lab.requests.lock().iter().map(|r| r.status).collect()
}

async fn reconnect(f: Flavour) {
    let lab = run(Scenario::Reconnect, f).await;
    // The first stream, two refused, one resumed.
    assert_eq!(statuses(&lab), [200, 500, 500, 200]);
    let resumed = lab.requests.lock()[3].clone();
    match f {
        // The runtime carries the id in its cookie (EventSource cannot set
        // the header on a new source), never in the URL.
        Flavour::Htmx2 => assert!(
            resumed.header.is_none()
                && resumed.cookie.is_some()
                && !resumed.uri.contains("lastEventId"),
            "{resumed:?}"
        ),
        // hx-sse sends the header itself.
        Flavour::Htmx4 => assert!(resumed.header.is_some(), "{resumed:?}"),
    }
}

async fn retry_limit(f: Flavour) {
    let lab = run(Scenario::RetryLimit, f).await;
    let mut want = vec![200];
    want.extend([500; MAX_RETRIES as usize]);
    assert_eq!(statuses(&lab), want);
}

/// Away and back through the back/forward cache: two streams, the second
/// resumed (the runtime in htmx 2 through its cookie, hx-sse by the header).
async fn unload(f: Flavour) {
    let lab = run(Scenario::Unload, f).await;
    assert_eq!(statuses(&lab), [200, 200]);
    let back = lab.requests.lock()[1].clone();
    match f {
        Flavour::Htmx2 => assert!(
            back.cookie.is_some() && !back.uri.contains("lastEventId"),
            "{back:?}"
        ),
        Flavour::Htmx4 => assert!(back.header.is_some(), "{back:?}"),
    }
}

in_both_flavours! {
    reconnect_resumes_after_a_cut_and_refusals: |f| reconnect(f).await;
    reconnect_stops_at_the_retry_limit: |f| retry_limit(f).await;
    unload_closes_on_pagehide_and_resumes_from_the_cache: |f| unload(f).await;
    monitor_shows_the_counts: |f| run(Scenario::Monitor, f).await;
    element_swaps_broadcasts: |f| run(Scenario::Element, f).await;
    listener_swaps_and_triggers_in_both_flavours: |f| run(Scenario::Listener, f).await;
    config_values_cannot_break_out_of_the_scripts: |f| run(Scenario::Injection, f).await;
}

#[tokio::test]
async fn htmx2_ten_tabs_share_one_connection() {
    let lab = run(Scenario::Shared, Flavour::Htmx2).await;
    // The first leader's stream and its successor's, nothing else.
    assert_eq!(statuses(&lab), [200, 200]);
}

#[tokio::test]
async fn htmx2_tabs_without_web_locks_share_one_connection() {
    let lab = run(Scenario::SharedFallback, Flavour::Htmx2).await;
    let statuses = statuses(&lab);
    // Two tabs may claim at the same moment; one steps down at once.
    assert!(
        (2..=3).contains(&statuses.len()) && statuses.iter().all(|s| *s == 200),
        "{statuses:?}"
    );
}
