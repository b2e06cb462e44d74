//! End-to-end tests in a real browser: headless Chromium, driven by
//! playwright-core from `tests/browser/driver.mjs`, loads pages that run the
//! real htmx (2.0.11 with htmx-ext-sse 2.2.4, and 4.0.1 with its `hx-sse`
//! extension) against SSE endpoints built only from this crate's public API.
//!
//! Each test starts its own server on 127.0.0.1:0 for one scenario and one
//! htmx flavour, then runs
//! `node tests/browser/driver.mjs <scenario> <flavour> <base-url> <screenshot-dir>`
//! and requires it to exit 0. The driver publishes through `POST /publish`,
//! asserts on the DOM with bounded waits, and saves one screenshot per test
//! in `target/browser-screenshots/`.
//!
//! The browser-side helpers (`htmx_sse::connections::scripts`) are tested
//! the same way in `tests/browser/helpers.rs`, against a `BroadcastManager`,
//! by `tests/browser/helpers.mjs`; application scenarios (toasts, tabs kept
//! in sync, a cut while publishing, a server restart, a closed tab) in
//! `tests/browser/app.rs`, by `tests/browser/app.mjs`; a string with
//! `<img onerror>` and `<script>` published through every public entry
//! point, shown as text and never run, in `tests/browser/xss.rs`, by
//! `tests/browser/xss.mjs`. The four drivers share
//! `tests/browser/harness.mjs`; the four servers share the page shell, the
//! static routes and [`drive`] from here.
//!
//! A run prints the screenshot folder once. A test passes only when its
//! driver exits 0 and the screenshots it reports (`screenshot: <path>`)
//! exist; a swap that misses its target fails the driver's DOM assertions,
//! and the htmx error events (`htmx:oobErrorNoTarget`, `htmx:targetError`,
//! …) are shown in the failure.
//!
//! These tests need Node.js, the npm packages from `package-lock.json`
//! (`npm ci`) and Debian's Chromium (`apt-get install -y chromium`). When one
//! is missing they fail, saying how to install it: they never skip.
#![cfg(feature = "maud")]

/// `in_both_flavours! { name: |f| body; … }` declares, for each line, the
/// module `name` with two tests, `htmx2` and `htmx4`, each running `body`
/// with `f` bound to its flavour. Attributes before a line (`cfg`) go on its
/// module.
macro_rules! in_both_flavours {
    ($($(#[$attr:meta])* $name:ident: |$f:ident| $body:expr;)*) => {$(
        $(#[$attr])*
        mod $name {
            use super::*;

            #[tokio::test]
            async fn htmx2() {
                let $f = Flavour::Htmx2;
                $body;
            }

            #[tokio::test]
            async fn htmx4() {
                let $f = Flavour::Htmx4;
                $body;
            }
        }
    )*};
}

#[cfg(feature = "askama")]
#[path = "browser/app.rs"]
mod app;
mod common;
#[cfg(feature = "askama")]
#[path = "browser/helpers.rs"]
mod helpers;
#[cfg(feature = "askama")]
#[path = "browser/lab.rs"]
mod lab;
#[cfg(feature = "askama")]
#[path = "browser/xss.rs"]
mod xss;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::handler::Handler;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use htmx_sse::streaming::{EndReason, OobFlavor, OobStreamBuilder, SseStream, StreamConfig, Swap};
use htmx_sse::{Event, Fragment};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The longest one driver run may take, browser launch included.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The browser, unless `HTMX_SSE_CHROMIUM` names another binary.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Text a user typed, which must reach the page as text.
const HOSTILE: &str = r#"<img src=x onerror="window.__pwned=1">"#;

/// How many fragments the ordering scenario streams.
const IN_ORDER: usize = 20;

// ---------------------------------------------------------------------------
// Scenarios and flavours

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// htmx 2.0.11 with htmx-ext-sse 2.2.4.
    Htmx2,
    /// htmx 4.0.1 with its `hx-sse` extension.
    Htmx4,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Htmx2 => "htmx2",
            Flavour::Htmx4 => "htmx4",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// 20 fragments appended to a list arrive all, once each, in order.
    Fragments,
    /// One `OobStreamBuilder` message (`hx-swap-oob`) updates four regions.
    OobSwapOob,
    /// The same message as `<hx-partial>` elements.
    OobPartial,
    /// The default close event stops the page from reconnecting.
    Close,
    /// 100 ms heartbeats between fragments swap nothing.
    Heartbeat,
    /// maud-escaped user text arrives as text, never as markup.
    Escaping,
    /// A compressed stream (brotli, as Chromium accepts it) swaps every
    /// fragment within 50 ms of its publish, heartbeats included.
    #[cfg(feature = "compression")]
    Compressed,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fragments => "fragments",
            Scenario::OobSwapOob => "oob-swap-oob",
            Scenario::OobPartial => "oob-partial",
            Scenario::Close => "close",
            Scenario::Heartbeat => "heartbeat",
            Scenario::Escaping => "escaping",
            #[cfg(feature = "compression")]
            Scenario::Compressed => "compressed",
        }
    }

    fn config(self) -> StreamConfig {
        match self {
            Scenario::Heartbeat => StreamConfig::new().heartbeat(Duration::from_millis(100)),
            #[cfg(feature = "compression")]
            Scenario::Compressed => StreamConfig::new()
                .heartbeat(Duration::from_millis(100))
                .compression(htmx_sse::streaming::Compression::new()),
            _ => StreamConfig::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// The server

/// One test's server state: the open streams and what happened to them.
struct Hub {
    scenario: Scenario,
    flavour: Flavour,
    /// One sender per open page stream; `POST /publish` writes to them.
    streams: Mutex<Vec<mpsc::Sender<Event>>>,
    /// Page streams opened (heartbeat probes not counted).
    connections: AtomicUsize,
    /// Why each page stream ended, in order.
    ended: Mutex<Vec<EndReason>>,
    /// The `Content-Encoding` of each page stream (`identity` for none).
    encodings: Mutex<Vec<String>>,
}

type Shared = Arc<Hub>;

fn app(hub: Shared) -> Router {
    page_routes(page)
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/stats", get(stats))
        .with_state(hub)
}

/// The routes of every driver's server: `page` at `/`, no favicon, and htmx
/// with its SSE extension under `/assets/`.
fn page_routes<H, T, S>(page: H) -> Router<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/assets/{file}", get(asset))
}

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    let rel = match file.as_str() {
        "htmx2.js" => "node_modules/htmx2/dist/htmx.js",
        "sse2.js" => "node_modules/htmx-ext-sse/dist/sse.js",
        "htmx4.js" => "node_modules/htmx4/dist/htmx.js",
        "sse4.js" => "node_modules/htmx4/dist/ext/hx-sse.js",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match tokio::fs::read(manifest_dir().join(rel)).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{rel}: {e}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// A second connection the driver opens with `fetch` to read the raw
    /// frames: it carries only heartbeats and is not counted.
    #[serde(default)]
    probe: bool,
}

async fn events(
    State(hub): State<Shared>,
    Query(q): Query<EventsQuery>,
    #[cfg_attr(not(feature = "compression"), allow(unused_variables))]
    headers: axum::http::HeaderMap,
) -> Response {
    let config = hub.scenario.config();
    if q.probe {
        let probe = SseStream::new(tokio_stream::pending::<Event>()).config(config);
        #[cfg(feature = "compression")]
        let probe = probe.accept_encoding(&headers);
        return probe.into_response();
    }
    hub.connections.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel(64);
    hub.streams.lock().push(tx);
    let ended = hub.clone();
    let stream = SseStream::new(ReceiverStream::new(rx))
        .config(config)
        .on_end(move |reason| ended.ended.lock().push(reason));
    #[cfg(feature = "compression")]
    let stream = stream.accept_encoding(&headers);
    let res = stream.into_response();
    let encoding = res
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    hub.encodings.lock().push(encoding.to_owned());
    res
}

async fn stats(State(hub): State<Shared>) -> Json<Value> {
    let ended: Vec<String> = hub.ended.lock().iter().map(|r| format!("{r:?}")).collect();
    Json(json!({
        "connections": hub.connections.load(Ordering::SeqCst),
        "open": hub.streams.lock().len(),
        "ended": ended,
        "encodings": *hub.encodings.lock(),
    }))
}

/// Sends this scenario's messages to every open page stream; answers how
/// many streams there were and how many sends failed.
async fn publish(State(hub): State<Shared>) -> Json<Value> {
    let streams: Vec<mpsc::Sender<Event>> = hub.streams.lock().clone();
    let mut failed = 0;
    let mut send = async |ev: Event| failed += send_all(&streams, ev).await;
    match hub.scenario {
        Scenario::Fragments => {
            for n in 0..IN_ORDER {
                send(Event::from(html! { li { (n) } })).await;
            }
        }
        Scenario::OobSwapOob => send(oob_message(OobFlavor::SwapOob)).await,
        Scenario::OobPartial => send(oob_message(OobFlavor::Partial)).await,
        Scenario::Close => {
            for n in 0..3 {
                send(Event::from(html! { li { "item " (n) } })).await;
            }
            // Dropping every sender (the hub's here, this handler's copies
            // when it returns) ends the source: the stream then sends its
            // default close event (`event: close`) and ends.
            hub.streams.lock().clear();
        }
        Scenario::Heartbeat => {
            for n in 0..3 {
                send(Event::from(html! { p.beat { "fragment " (n) } })).await;
                // Three or more 100 ms heartbeats go out in every gap, and
                // after the last fragment.
                tokio::time::sleep(Duration::from_millis(350)).await;
            }
        }
        Scenario::Escaping => {
            send(Event::from(html! { li.msg { (HOSTILE) } })).await;
            let oob = OobStreamBuilder::new()
                .add(
                    "who",
                    Swap::InnerHtml,
                    html! { span title=(HOSTILE) { (HOSTILE) } },
                )
                .build_event()
                .expect("literal ids are valid");
            send(oob).await;
        }
        #[cfg(feature = "compression")]
        Scenario::Compressed => {
            // Each fragment carries the server's clock when it was
            // published (ms since the Unix epoch, as the page's
            // `performance.timeOrigin + performance.now()`), and goes out
            // alone: 50 ms apart, so each is a chunk compressed and
            // flushed by itself.
            for n in 0..IN_ORDER {
                let sent = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs_f64()
                    * 1000.0;
                send(Event::from(
                    html! { li data-sent=(format!("{sent:.3}")) { (n) } },
                ))
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Json(json!({ "streams": streams.len(), "failed": failed }))
}

/// Sends `ev` to every stream in turn; returns how many sends failed.
async fn send_all(streams: &[mpsc::Sender<Event>], ev: Event) -> usize {
    let mut failed = 0;
    for tx in streams {
        if tx.send(ev.clone()).await.is_err() {
            failed += 1;
        }
    }
    failed
}

/// One message for four regions: an `innerHTML` swap, a `beforeend` append,
/// an `outerHTML` replacement by a new element, and a wrapped `outerHTML`
/// (the target becomes the builder's `<div>`, keeping its id).
fn oob_message(flavor: OobFlavor) -> Event {
    OobStreamBuilder::new()
        .flavor(flavor)
        .add("count", Swap::InnerHtml, "42")
        .add("log", Swap::BeforeEnd, html! { li { "second" } })
        .add_unwrapped(
            "status",
            Swap::OuterHtml,
            html! { p #status .online { "online" } },
        )
        .add("badge", Swap::OuterHtml, html! { b { "new" } })
        .build_event()
        .expect("literal ids and single elements are valid")
}

// ---------------------------------------------------------------------------
// The pages

async fn page(State(hub): State<Shared>) -> Markup {
    let (scenario, flavour) = (hub.scenario, hub.flavour);
    page_shell(
        "htmx-sse browser test",
        scenario.name(),
        flavour,
        &[],
        concat!(
            "body{font:16px sans-serif;margin:1.5em}",
            "section{border:1px solid #999;padding:.5em;margin:.5em 0}",
            "h1{font-size:1.2em}",
        ),
        &scenario_body(scenario, flavour),
    )
}

/// A scenario's page (of every driver): htmx and its SSE extension for
/// `flavour`, the `head` scripts and `style`, then `heading` over `body`.
fn page_shell(
    heading: &str,
    scenario: &str,
    flavour: Flavour,
    head: &[Fragment],
    style: &str,
    body: &Markup,
) -> Markup {
    let (htmx, ext) = match flavour {
        Flavour::Htmx2 => ("/assets/htmx2.js", "/assets/sse2.js"),
        Flavour::Htmx4 => ("/assets/htmx4.js", "/assets/sse4.js"),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (scenario) " / " (flavour.name()) }
                script src=(htmx) {}
                script src=(ext) {}
                @for script in head { (PreEscaped(script.as_str())) }
                style { (style) }
            }
            body {
                h1 { (heading) ": " (scenario) " on " (flavour.name()) }
                (body)
            }
        }
    }
}

fn scenario_body(scenario: Scenario, flavour: Flavour) -> Markup {
    use Flavour::{Htmx2, Htmx4};
    match (scenario, flavour) {
        (Scenario::Fragments, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" {
                ul #list sse-swap="message" hx-swap="beforeend" {}
            }
        },
        (Scenario::Fragments, Htmx4) => html! {
            section #conn hx-sse:connect="/events" hx-target="#list" hx-swap="beforeend" {}
            ul #list {}
        },
        (Scenario::OobSwapOob | Scenario::OobPartial, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" {
                // htmx#3263: an OOB-only message empties the sse-swap
                // element, so it gets one that swaps nothing.
                div #bus sse-swap="message" hx-swap="none" { "bus untouched" }
            }
            (oob_regions())
        },
        (Scenario::OobSwapOob | Scenario::OobPartial, Htmx4) => html! {
            // No hx-swap="none": htmx 4 must leave the target alone by
            // itself when a message holds only out-of-band parts.
            section #conn hx-sse:connect="/events" {
                div #bus { "bus untouched" }
            }
            (oob_regions())
        },
        (Scenario::Close, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" sse-close="close" {
                ul #list sse-swap="message" hx-swap="beforeend" {}
            }
        },
        (Scenario::Close, Htmx4) => html! {
            section #conn hx-sse:connect="/events" hx-sse:close="close"
                hx-target="#list" hx-swap="beforeend" {}
            ul #list {}
        },
        (Scenario::Heartbeat, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" {
                div #latest sse-swap="message" hx-swap="innerHTML" { "waiting" }
            }
        },
        (Scenario::Heartbeat, Htmx4) => html! {
            section #conn hx-sse:connect="/events" hx-target="#latest" hx-swap="innerHTML" {}
            div #latest { "waiting" }
        },
        (Scenario::Escaping, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" {
                ul #msgs sse-swap="message" hx-swap="beforeend" {}
            }
            p { "who: " span #who { "nobody" } }
        },
        #[cfg(feature = "compression")]
        (Scenario::Compressed, Htmx2) => html! {
            section #conn hx-ext="sse" sse-connect="/events" {
                ul #list sse-swap="message" hx-swap="beforeend" {}
            }
        },
        #[cfg(feature = "compression")]
        (Scenario::Compressed, Htmx4) => html! {
            section #conn hx-sse:connect="/events" hx-target="#list" hx-swap="beforeend" {}
            ul #list {}
        },
        (Scenario::Escaping, Htmx4) => html! {
            section #conn hx-sse:connect="/events" hx-target="#msgs" hx-swap="beforeend" {}
            ul #msgs {}
            p { "who: " span #who { "nobody" } }
        },
    }
}

fn oob_regions() -> Markup {
    html! {
        section #regions {
            p { "count: " span #count { "0" } }
            ul #log { li { "first" } }
            p #status { "offline" }
            span #badge { "old" }
        }
    }
}

// ---------------------------------------------------------------------------
// Running the driver

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("HTMX_SSE_CHROMIUM")
        .map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from)
}

/// Fails, with the commands that fix it, when a tool the suite needs is
/// missing.
fn check_prerequisites() {
    let root = manifest_dir();
    let mut missing = Vec::new();
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("`node` is not on PATH: install Node.js 20 or newer".to_owned());
    }
    let packages: Vec<&str> = [
        "node_modules/playwright-core/package.json",
        "node_modules/htmx2/dist/htmx.js",
        "node_modules/htmx-ext-sse/dist/sse.js",
        "node_modules/htmx4/dist/htmx.js",
        "node_modules/htmx4/dist/ext/hx-sse.js",
    ]
    .into_iter()
    .filter(|rel| !root.join(rel).is_file())
    .collect();
    if !packages.is_empty() {
        missing.push(format!(
            "{} missing: run `npm ci` in {}",
            packages.join(", "),
            root.display()
        ));
    }
    let chromium = chromium();
    if !chromium.is_file() {
        missing.push(format!(
            "{} is missing: run `apt-get update && apt-get install -y chromium` \
             (or set HTMX_SSE_CHROMIUM to a Chromium binary)",
            chromium.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the browser tests cannot run:\n  - {}",
        missing.join("\n  - ")
    );
}

fn screenshot_dir() -> PathBuf {
    manifest_dir().join("target").join("browser-screenshots")
}

/// Says once per run, past the test harness's output capture, where the
/// screenshots go.
fn announce_screenshots(dir: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Straight to the process's stderr: `eprintln!` in a test is
        // captured and shown only when that test fails.
        let _ = writeln!(
            std::io::stderr(),
            "browser tests: one screenshot per scenario and flavour in {}",
            dir.display()
        );
    });
}

/// The screenshots a driver says it saved (`screenshot: <path>` lines):
/// fails unless there is at least one and each exists.
fn check_screenshots(stdout: &str, scenario: &str, flavour: Flavour, since: std::time::SystemTime) {
    let shots: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("screenshot: "))
        .collect();
    assert!(
        !shots.is_empty(),
        "{scenario} on {}: the driver saved no screenshot\n--- driver stdout ---\n{stdout}",
        flavour.name()
    );
    for shot in shots {
        let fresh = std::fs::metadata(shot)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        assert!(
            fresh,
            "{scenario} on {}: screenshot {shot} is missing or older than this run",
            flavour.name()
        );
    }
}

/// Serves `scenario` for `flavour`, runs the driver against it, and returns
/// the server state for the test's own checks after the driver passed.
async fn run(scenario: Scenario, flavour: Flavour) -> Shared {
    let hub = Arc::new(Hub {
        scenario,
        flavour,
        streams: Mutex::new(Vec::new()),
        connections: AtomicUsize::new(0),
        ended: Mutex::new(Vec::new()),
        encodings: Mutex::new(Vec::new()),
    });
    serve_and_drive(app(hub.clone()), "driver.mjs", scenario.name(), flavour).await;
    hub
}

/// Serves `app` on 127.0.0.1:0 while [`drive`] runs the driver against it.
async fn serve_and_drive(app: Router, driver: &str, scenario: &str, flavour: Flavour) {
    let (base, server) = common::serve(app).await;
    drive(driver, scenario, flavour, &base).await;
    server.abort();
}

/// Runs `node tests/browser/<driver> <scenario> <flavour> <base> <shots>`
/// and fails the test, with everything the driver printed, unless it exits
/// 0 within [`DRIVER_TIMEOUT`].
async fn drive(driver: &str, scenario: &str, flavour: Flavour, base: &str) {
    check_prerequisites();
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).expect("create the screenshot folder");
    announce_screenshots(&shots);

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(manifest_dir().join("tests/browser").join(driver))
        .arg(scenario)
        .arg(flavour.name())
        .arg(base)
        .arg(&shots)
        .env("HTMX_SSE_CHROMIUM", chromium())
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a hung run is ended with its browser.
        .process_group(0);
    let started = Instant::now();
    // Whole seconds: some file systems keep no finer modification times.
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let child = cmd.spawn().expect("start node");
    let pid = child.id();
    let out = match tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for the driver"),
        Err(_) => {
            if let Some(pid) = pid {
                // Ends the driver and the Chromium it started, nothing else.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            panic!(
                "{scenario} on {}: the driver did not finish within {DRIVER_TIMEOUT:?}; killed it",
                flavour.name()
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{scenario} on {} failed in the browser ({}) after {:.1} s\n--- driver stdout ---\n{stdout}\n--- driver stderr ---\n{stderr}\n--- screenshots: {} ---",
        flavour.name(),
        out.status,
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    check_screenshots(&stdout, scenario, flavour, since);
    println!(
        "{scenario} on {}: passed in {:.1} s; screenshot in {}\n{stdout}",
        flavour.name(),
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

// ---------------------------------------------------------------------------
// The tests: one per scenario and flavour.

fn assert_closed_once(hub: &Shared) {
    assert_eq!(
        hub.connections.load(Ordering::SeqCst),
        1,
        "the page reconnected after the close event"
    );
    assert_eq!(*hub.ended.lock(), [EndReason::SourceEnded]);
}

in_both_flavours! {
    fragments_in_order: |f| run(Scenario::Fragments, f).await;
    oob_swap_oob_updates_every_region: |f| run(Scenario::OobSwapOob, f).await;
    oob_partial_updates_every_region: |f| run(Scenario::OobPartial, f).await;
    close_event_stops_reconnecting: |f| assert_closed_once(&run(Scenario::Close, f).await);
    heartbeats_swap_nothing: |f| run(Scenario::Heartbeat, f).await;
    escaped_text_stays_text: |f| run(Scenario::Escaping, f).await;
    #[cfg(feature = "compression")]
    compressed_stream_swaps_within_50ms: |f| {
        let hub = run(Scenario::Compressed, f).await;
        // The page's stream was compressed: Chromium accepts br (its
        // `EventSource` and `fetch` alike) and the server prefers it.
        assert_eq!(*hub.encodings.lock(), ["br"]);
    };
}
