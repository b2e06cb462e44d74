//! The htmx-sse demo: a live htmx page served from one process, nothing to
//! set up.
//!
//! ```text
//! cargo run --example demo                      # http://127.0.0.1:3000
//! cargo run --example demo -- --addr 0.0.0.0:8080
//! cargo run --example demo -- --assets DIR      # serve htmx from DIR instead of a CDN
//! ```
//!
//! `--assets DIR` serves `DIR/htmx.min.js` and `DIR/sse.js` (copy them from
//! the npm packages `htmx.org@2` `dist/htmx.min.js` and `htmx-ext-sse@2`
//! `dist/sse.js`) for machines without internet access.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use htmx_sse::streaming::{OobStreamBuilder, Shutdown, SseStream, StreamConfig, Swap};
use htmx_sse::{Event, Fragment};
use maud::{DOCTYPE, Markup, html};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::IntervalStream;

const HTMX_CDN: &str = "https://unpkg.com/htmx.org@2.0.11/dist/htmx.min.js";
const SSE_CDN: &str = "https://unpkg.com/htmx-ext-sse@2.2.4/dist/sse.js";

#[derive(Clone)]
struct App {
    config: StreamConfig,
    assets: Option<Arc<PathBuf>>,
    jobs: Arc<AtomicU64>,
    started: std::time::Instant,
}

struct Args {
    addr: SocketAddr,
    assets: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        assets: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => {
                let v = it.next().ok_or("--addr needs HOST:PORT")?;
                args.addr = v.parse().map_err(|e| {
                    format!("--addr {v:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:3000)")
                })?;
            }
            "--assets" => {
                let dir = PathBuf::from(it.next().ok_or("--assets needs a directory")?);
                for file in ["htmx.min.js", "sse.js"] {
                    if !dir.join(file).is_file() {
                        return Err(format!("--assets: {} is missing", dir.join(file).display()));
                    }
                }
                args.assets = Some(dir);
            }
            "-h" | "--help" => {
                return Err("usage: demo [--addr HOST:PORT] [--assets DIR]".to_owned());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,htmx_sse=debug".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };

    let shutdown = Shutdown::new();
    let state = App {
        config: StreamConfig::new().shutdown(&shutdown),
        assets: args.assets.map(Arc::new),
        jobs: Arc::default(),
        started: std::time::Instant::now(),
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/clock", get(clock))
        .route("/dashboard", get(dashboard))
        .route("/jobs", post(start_job))
        .route("/jobs/{id}/progress", get(job_progress))
        .route("/assets/{file}", get(asset))
        .with_state(state);

    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.addr);
            std::process::exit(1);
        }
    };
    println!("htmx-sse demo on http://{}  (Ctrl-C to stop)", args.addr);
    let signal = shutdown.after(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
    {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
    println!("stopped");
}

async fn page(State(app): State<App>) -> Markup {
    let (htmx, sse) = match app.assets {
        Some(_) => ("/assets/htmx.min.js", "/assets/sse.js"),
        None => (HTMX_CDN, SSE_CDN),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "htmx-sse demo" }
                script src=(htmx) {}
                script src=(sse) {}
                style { (STYLE) }
            }
            body {
                h1 { "htmx-sse demo" }
                p.muted { "Every box below is updated by the server over Server-Sent Events. Nothing polls." }

                section {
                    h2 { "A live fragment stream" }
                    p.muted { "One " code { "SseStream" } " of maud fragments, one per second." }
                    div #clock hx-ext="sse" sse-connect="/clock" sse-swap="message" {
                        span.value { "connecting…" }
                    }
                }

                section {
                    h2 { "Several regions from one message" }
                    p.muted {
                        "Each message is one " code { "OobStreamBuilder" } " fragment that updates three regions out of band; the "
                        code { "sse-swap" } " element itself swaps nothing (" code { "hx-swap=\"none\"" } ")."
                    }
                    div hx-ext="sse" sse-connect="/dashboard" {
                        div sse-swap="message" hx-swap="none" {}
                        div.grid {
                            div.card { div.label { "CPU" } div #cpu .value { "–" } }
                            div.card { div.label { "Requests/s" } div #rps .value { "–" } }
                            div.card { div.label { "Uptime" } div #uptime .value { "–" } }
                        }
                        h3 { "Recent events" }
                        ul #log {}
                    }
                }

                section {
                    h2 { "A job that ends" }
                    p.muted {
                        "Each job streams its progress, then the server sends the named " code { "close" }
                        " event and the page stops listening (" code { "sse-close=\"close\"" } ")."
                    }
                    button hx-post="/jobs" hx-target="#jobs" hx-swap="afterbegin" { "Start a job" }
                    div #jobs {}
                }
            }
        }
    }
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #1f2937; }
section { border: 1px solid #e5e7eb; border-radius: .5rem; padding: 1rem; margin: 1rem 0; }
.muted { color: #6b7280; }
.grid { display: grid; grid-template-columns: repeat(3, 1fr); gap: .75rem; }
.card { background: #f9fafb; border-radius: .5rem; padding: .75rem; }
.label { font-size: .8rem; color: #6b7280; }
.value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
#log { font-family: ui-monospace, monospace; font-size: .85rem; max-height: 8rem; overflow: hidden; }
.job { margin: .5rem 0; }
progress { width: 100%; }
";

async fn clock(State(app): State<App>) -> impl IntoResponse {
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).map(|_| {
        html! { span.value { (Utc::now().format("%H:%M:%S")) " UTC" } }
    });
    SseStream::new(ticks).config(app.config)
}

async fn dashboard(State(app): State<App>) -> impl IntoResponse {
    let started = app.started;
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_millis(1000)));
    let mut n = 0u64;
    let frames = ticks.map(move |_| {
        n += 1;
        let t = started.elapsed().as_secs_f64();
        let cpu = 45.0 + 30.0 * (t / 7.0).sin() + 8.0 * (t * 1.3).sin();
        let rps = 1200.0 + 400.0 * (t / 11.0).cos();
        let up = started.elapsed().as_secs();
        let mut oob = OobStreamBuilder::new()
            .add("cpu", Swap::InnerHtml, html! { (format!("{cpu:.0}")) "%" })
            .add("rps", Swap::InnerHtml, html! { (format!("{rps:.0}")) })
            .add(
                "uptime",
                Swap::InnerHtml,
                html! { (format!("{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60)) },
            );
        if n.is_multiple_of(3) {
            let line = format!(
                "{} cpu={cpu:.1}% rps={rps:.0}",
                Utc::now().format("%H:%M:%S")
            );
            oob = oob.add("log", Swap::AfterBegin, html! { li { (line) } });
        }
        // Every id above is a literal that passes validation.
        oob.build()
            .unwrap_or_else(|e| Fragment::new(format!("<!-- {e} -->")))
    });
    SseStream::new(frames).config(app.config)
}

async fn start_job(State(app): State<App>) -> Markup {
    let id = app.jobs.fetch_add(1, Ordering::Relaxed) + 1;
    html! {
        div.job hx-ext="sse" sse-connect=(format!("/jobs/{id}/progress")) sse-swap="message" sse-close="close" {
            "Job " (id) " starting…"
        }
    }
}

async fn job_progress(State(app): State<App>, Path(id): Path<u64>) -> impl IntoResponse {
    SseStream::spawn(4, move |tx| async move {
        for pct in (0..=100).step_by(5) {
            let html = html! {
                "Job " (id) ": " (pct) "% "
                progress value=(pct) max="100" {}
            };
            if tx.send(Event::from(html)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let done = html! { "Job " (id) ": done ✔" };
        let _ = tx.send(Event::from(done)).await;
    })
    .config(app.config)
}

async fn asset(State(app): State<App>, Path(file): Path<String>) -> Response {
    let Some(dir) = app.assets else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Only the two known files: no path from the URL reaches the file system.
    let name = match file.as_str() {
        "htmx.min.js" => "htmx.min.js",
        "sse.js" => "sse.js",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match tokio::fs::read(dir.join(name)).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/javascript")], body).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
