//! The htmx-sse demo: a live htmx page served from one process, nothing to
//! set up.
//!
//! Each tab holds one connection, `GET /sse` from a `BroadcastManager`
//! (browsers allow six connections per host across all tabs). On it:
//! notes kept in sync across tabs by a broadcast that excludes the tab that
//! wrote the note, and a dashboard whose four regions one out-of-band
//! message updates every second. Each job started from the page is its own
//! `SseStream`, ending with the close event.
//!
//! ```text
//! cargo run --example demo                      # http://127.0.0.1:3000
//! cargo run --example demo -- --addr 0.0.0.0:8080
//! cargo run --example demo -- --assets DIR      # serve htmx from DIR instead of a CDN
//! cargo run --example demo -- --open-publish    # anyone may POST /sse/broadcast (closed otherwise)
//! cargo run --features compression --example demo -- --compress   # the shared stream in br/gzip
//! cargo run --example demo -- --tls-cert cert.pem --tls-key key.pem   # https://, HTTP/2
//! ```
//!
//! Over HTTP/1.1 a browser opens at most six connections to one host, so a
//! seventh tab hangs; with `--tls-cert` and `--tls-key` (PEM files) the demo
//! serves HTTPS, and browsers speak HTTP/2 to it: every tab's stream is a
//! stream of one shared connection. A certificate for trying it locally:
//! `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
//! -keyout key.pem -out cert.pem -days 30 -subj /CN=localhost -addext
//! subjectAltName=DNS:localhost,IP:127.0.0.1` (the browser warns once, as it
//! does not know who signed it).
//!
//! Two processes acting as one, through Redis (notes, toasts and the
//! dashboard cross between them; each process keeps its own note list for
//! pages loaded later):
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example demo -- --addr 127.0.0.1:3000
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example demo -- --addr 127.0.0.1:3001
//! ```
//!
//! or through NATS JetStream: `NATS_URL=nats://127.0.0.1:4222 cargo run
//! --features nats --example demo` (a `nats-server -js` there).
//!
//! The page runs on htmx 2 (with htmx-ext-sse); `/?htmx=4` serves the same
//! page on htmx 4 (with its `hx-sse` extension). The code is the same: the
//! page's builders take the flavour as one value, and both kinds of page
//! share one stream.
//!
//! Built with `--features metrics`, `GET /metrics` answers the broadcast
//! manager's metrics in the Prometheus text format.
//!
//! `--assets DIR` serves `DIR/htmx.min.js` and `DIR/sse.js` (copy them from
//! the npm packages `htmx.org@2` `dist/htmx.min.js` and `htmx-ext-sse@2`
//! `dist/sse.js`), `DIR/htmx4.min.js` and `DIR/hx-sse.js` (from
//! `htmx.org@4` `dist/htmx.min.js` and `dist/ext/hx-sse.js`) for machines
//! without internet access.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Form;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use htmx_sse::Event;
use htmx_sse::Flavor;
use htmx_sse::auth::{Access, AuthError, AuthFuture, Authorizer, Subject};
use htmx_sse::broadcast::{BroadcastManager, BroadcastRoutes, Presence, PresenceBadge};
use htmx_sse::connections::ConnectionId;
use htmx_sse::connections::UserId;
use htmx_sse::connections::scripts::{
    AttributeName, Helpers, ReconnectOptions, SseElement, SseListener, connection_id_slot,
};
use htmx_sse::notify::{Level, toast};
use htmx_sse::streaming::{OobStreamBuilder, Shutdown, SseStream, StreamConfig, Swap};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

const HTMX_CDN: &str = "https://unpkg.com/htmx.org@2.0.11/dist/htmx.min.js";
const SSE_CDN: &str = "https://unpkg.com/htmx-ext-sse@2.2.4/dist/sse.js";
const HTMX4_CDN: &str = "https://unpkg.com/htmx.org@4.0.1/dist/htmx.min.js";
const HX_SSE_CDN: &str = "https://unpkg.com/htmx.org@4.0.1/dist/ext/hx-sse.js";

htmx_sse::names! {
    /// The names the page and its streams share: a region renamed in one
    /// place and not the other is a build error, and the page check in this
    /// file's tests finds every one of them on the page.
    mod live {
        events {
            TOAST = "toast",
            NOTE = "note",
            DASHBOARD = "dashboard",
            CONNECTION = "connection",
            RESET = "reset",
            VIEWERS = "viewers",
        }
        targets {
            TOASTS = "toasts",
            NOTES = "notes",
            CLOCK = "clock",
            CPU = "cpu",
            RPS = "rps",
            UPTIME = "uptime",
            LOG = "log",
            ONLINE = "online",
        }
    }
}

#[derive(Clone)]
struct App {
    config: StreamConfig,
    manager: BroadcastManager,
    /// The notes, and the order of their broadcasts: a note is broadcast
    /// and added under this lock, and a page reads the list and its resume
    /// point under it, so the two agree (an async lock: held across the
    /// broadcast).
    notes: Arc<tokio::sync::Mutex<VecDeque<String>>>,
    assets: Option<Arc<PathBuf>>,
    jobs: Arc<AtomicU64>,
    /// Who is here: tabs open and users signed in, sent to every page as
    /// it changes (in memory only: `None` on Redis or NATS, where presence
    /// is not counted across instances yet).
    online: Option<Arc<PresenceBadge>>,
}

struct Args {
    addr: SocketAddr,
    assets: Option<PathBuf>,
    /// `--open-publish`: anyone who reaches the demo may use `POST
    /// /sse/broadcast` and `POST /sse/send/{id}`.
    open_publish: bool,
    /// `--compress`: the shared stream compressed (feature `compression`).
    compress: bool,
    /// `--tls-cert PATH --tls-key PATH`: serve HTTPS (HTTP/2 or HTTP/1.1).
    tls: Option<TlsFiles>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        assets: None,
        open_publish: false,
        compress: false,
        tls: None,
    };
    let (mut tls_cert, mut tls_key) = (None, None);
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
                for file in ASSETS {
                    if !dir.join(file).is_file() {
                        return Err(format!("--assets: {} is missing", dir.join(file).display()));
                    }
                }
                args.assets = Some(dir);
            }
            "--open-publish" => args.open_publish = true,
            "--compress" if cfg!(feature = "compression") => args.compress = true,
            "--compress" => {
                return Err(
                    "--compress needs the demo built with `--features compression`".to_owned(),
                );
            }
            "--tls-cert" => {
                tls_cert = Some(PathBuf::from(
                    it.next().ok_or("--tls-cert needs a PEM file")?,
                ));
            }
            "--tls-key" => {
                tls_key = Some(PathBuf::from(
                    it.next().ok_or("--tls-key needs a PEM file")?,
                ));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: demo [--addr HOST:PORT] [--assets DIR] [--open-publish] [--compress] [--tls-cert PEM --tls-key PEM]\n  \
                     --open-publish  let anyone who reaches the demo POST /sse/broadcast and /sse/send/{id}\n  \
                     --compress      compress the shared stream (built with --features compression)\n  \
                     --tls-cert, --tls-key  serve HTTPS with HTTP/2 (certificate chain and private key, PEM)"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    args.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            return Err("--tls-cert needs --tls-key too (both or neither)".to_owned());
        }
        (None, Some(_)) => {
            return Err("--tls-key needs --tls-cert too (both or neither)".to_owned());
        }
    };
    Ok(args)
}

/// The manager `built` on a shared engine (`what` for the messages, `var`
/// the environment variable that asked for it), or exit 1 saying why.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn shared(
    what: &str,
    var: &str,
    url: &str,
    built: impl std::future::Future<Output = Result<BroadcastManager, htmx_sse::Error>>,
) -> BroadcastManager {
    match built.await {
        Ok(m) => {
            println!("sharing messages through {what} at {url}");
            m
        }
        Err(e) => {
            eprintln!("{var}={url}: {e}");
            std::process::exit(1);
        }
    }
}

/// Exits 2: `var` is set, but the demo was built without `feature`.
#[cfg(not(all(feature = "redis", feature = "nats")))]
fn not_built(var: &str, feature: &str) -> ! {
    eprintln!("{var} is set, but the demo was built without it: add `--features {feature}`");
    std::process::exit(2);
}

/// With `REDIS_URL`, every demo process on that Redis acts as one: run two
/// on two ports and a note added in a tab of one appears in the tabs of
/// the other.
#[cfg(feature = "redis")]
async fn on_redis(builder: htmx_sse::broadcast::BroadcastBuilder, url: &str) -> BroadcastManager {
    let config = htmx_sse::backend::RedisConfig::new(url).prefix("htmx-sse-demo");
    shared("Redis", "REDIS_URL", url, builder.build_redis(config)).await
}

#[cfg(not(feature = "redis"))]
async fn on_redis(_: htmx_sse::broadcast::BroadcastBuilder, _: &str) -> BroadcastManager {
    not_built("REDIS_URL", "redis")
}

/// With `NATS_URL`, the same through a `nats-server -js` (JetStream).
#[cfg(feature = "nats")]
async fn on_nats(builder: htmx_sse::broadcast::BroadcastBuilder, url: &str) -> BroadcastManager {
    let config = htmx_sse::backend::NatsConfig::new(url).prefix("htmx-sse-demo");
    shared("NATS", "NATS_URL", url, builder.build_nats(config)).await
}

#[cfg(not(feature = "nats"))]
async fn on_nats(_: htmx_sse::broadcast::BroadcastBuilder, _: &str) -> BroadcastManager {
    not_built("NATS_URL", "nats")
}

/// `GET /metrics` (built with `--features metrics`): the manager's
/// metrics in the Prometheus text format. A real application serves them
/// on an address only its monitoring reaches.
#[cfg(feature = "metrics")]
fn with_metrics(app: Router, manager: &BroadcastManager) -> Router {
    let mut registry = prometheus_client::registry::Registry::default();
    htmx_sse::metrics::register(&mut registry, manager);
    let registry = Arc::new(registry);
    app.route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { htmx_sse::metrics::text(&registry) }
        }),
    )
}

#[cfg(not(feature = "metrics"))]
fn with_metrics(app: Router, _: &BroadcastManager) -> Router {
    app
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
    // On shutdown each page is told to come back after a delay of its own
    // within 5 s, so that a restart is not a reconnect storm.
    let config = StreamConfig::new()
        .shutdown(&shutdown)
        .retry_on_shutdown(Duration::from_secs(5));
    // The broadcast manager shares the shutdown signal through its config.
    let builder = BroadcastManager::builder().stream(config.clone());
    // `--compress` (built with `--features compression`): the shared
    // stream in br or gzip, as the browser accepts. Off by default: this
    // stream mixes text anyone can post (notes) with what must stay secret
    // (the proofs in the event ids, private toasts), and a compressed
    // stream leaks such secrets through its size (BREACH; SECURITY.md).
    #[cfg(feature = "compression")]
    let builder = if args.compress {
        println!("--compress: the shared stream is compressed (see SECURITY.md, BREACH)");
        builder.stream(
            config
                .clone()
                .compression(htmx_sse::streaming::Compression::new()),
        )
    } else {
        builder
    };
    let manager = match (std::env::var("REDIS_URL"), std::env::var("NATS_URL")) {
        (Ok(url), _) => on_redis(builder, &url).await,
        (Err(_), Ok(url)) => on_nats(builder, &url).await,
        (Err(_), Err(_)) => builder.build(),
    };
    // The "who is here" badge: rendered once per change of the presence
    // (debounced: a reload is no leave), sent to every page, anonymous
    // ones too: public, so it renders counts only.
    let online = if manager.is_distributed() {
        None
    } else {
        match manager.public_presence_badge(live::VIEWERS, online_badge) {
            Ok(badge) => Some(Arc::new(badge)),
            Err(e) => {
                eprintln!("presence badge: {e}");
                std::process::exit(1);
            }
        }
    };
    let state = App {
        config,
        manager: manager.clone(),
        notes: Arc::default(),
        assets: args.assets.map(Arc::new),
        jobs: Arc::default(),
        online,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/jobs", post(start_job))
        .route("/jobs/{id}/progress", get(job_progress))
        .route("/assets/{file}", get(asset))
        .route("/notes", get(notes_list).post(add_note))
        .route("/stats", get(stats))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/toast", post(send_toast))
        // The forms take the same body limit as the crate's publish routes
        // (64 KiB by default): a larger body gets 413 before it is read.
        .layer(DefaultBodyLimit::max(manager.limits().body))
        .with_state(state);
    // GET /sse is the shared stream. It knows the signed-in demo user from
    // the cookie, so `send_to_user` reaches every tab of that user and
    // nobody else. The routes it also adds (POST /sse/broadcast, POST
    // /sse/send/{id}, GET /sse/status, GET /sse/history) are closed as they
    // come: DemoUser grants no publishing, so POST /sse/broadcast answers
    // 401 (403 when signed in); the demo publishes from its own handlers.
    // `--open-publish` opens them, in one line a reviewer can see:
    let mut routes = BroadcastRoutes::new(manager.clone()).authorizer(DemoUser);
    if args.open_publish {
        println!(
            "--open-publish: anyone who reaches {} may publish to every page",
            args.addr
        );
        routes = routes.publish(Access::Anyone);
    }
    let app = routes.install(app);
    let app = with_metrics(app, &manager);
    tokio::spawn(dashboard(manager, std::time::Instant::now()));

    // The certificate and key are read and checked before anything listens.
    let tls = match args.tls.as_ref().map(TlsFiles::server_config).transpose() {
        Ok(tls) => tls,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.addr);
            std::process::exit(1);
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "htmx-sse demo on {scheme}://{}  (Ctrl-C or SIGTERM to stop)",
        args.addr
    );
    // Ctrl-C, or SIGTERM from a container or systemd: streams end cleanly.
    // Within 5 s, even with a client that stopped reading (its full socket
    // would otherwise hold the graceful shutdown forever).
    let signal = shutdown.clone().after_signal();
    let grace = Duration::from_secs(5);
    let served = match tls {
        None => {
            let server =
                axum::serve(listener, app.into_make_service()).with_graceful_shutdown(signal);
            shutdown.drain_within(server, grace).await
        }
        Some(tls) => {
            shutdown
                .drain_within(serve_tls(listener, app, tls, signal), grace)
                .await
        }
    };
    if let Err(e) = served {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
    println!("stopped");
}

/// The presence badge: tabs open and users signed in.
fn online_badge(p: &Presence) -> Markup {
    let plural = |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
    html! {
        strong { (p.connections) } " " (plural(p.connections, "tab", "tabs")) " open, "
        strong { (p.users.len()) } " " (plural(p.users.len(), "user", "users")) " signed in"
    }
}

/// `?htmx=4` renders the page for htmx 4, `?htmx=2` (or nothing) for htmx 2.
#[derive(Deserialize, Default)]
struct FlavorQuery {
    htmx: Option<String>,
}

impl FlavorQuery {
    /// The page's flavour, or a 400 that says what `htmx` may be.
    fn flavor(&self) -> Result<Flavor, (StatusCode, String)> {
        match self.htmx.as_deref() {
            None => Ok(Flavor::Htmx2),
            Some(v) => v.parse().map_err(|e: htmx_sse::flavor::UnknownFlavor| {
                (StatusCode::BAD_REQUEST, e.to_string())
            }),
        }
    }
}

async fn page(
    State(app): State<App>,
    Query(query): Query<FlavorQuery>,
    headers: HeaderMap,
) -> Response {
    let flavor = match query.flavor() {
        Ok(f) => f,
        Err(bad) => return bad.into_response(),
    };
    match render_page(&app, demo_user(&headers), flavor).await {
        Ok(page) => page.into_response(),
        Err(e) => {
            tracing::error!("rendering the page: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The page for htmx 2 or htmx 4: the same code, the flavour is one value.
async fn render_page(
    app: &App,
    user: Option<String>,
    flavor: Flavor,
) -> Result<Markup, htmx_sse::Error> {
    // The notes as they are now, and the point the stream goes on from:
    // what is published between this render and the stream's connect is
    // replayed to the page once, nothing is shown twice.
    let (notes, point) = {
        let notes = app.notes.lock().await;
        (notes.clone(), app.manager.resume_point())
    };
    let runtime = Helpers::new()
        .reconnect(ReconnectOptions::new().unlimited_retries())
        .runtime_src("/sse/htmx-sse.js")
        .render();
    let (htmx, sse) = match (flavor, app.assets.is_some()) {
        (Flavor::Htmx4, true) => ("/assets/htmx4.min.js", "/assets/hx-sse.js"),
        (Flavor::Htmx4, false) => (HTMX4_CDN, HX_SSE_CDN),
        (_, true) => ("/assets/htmx.min.js", "/assets/sse.js"),
        (_, false) => (HTMX_CDN, SSE_CDN),
    };
    let other = match flavor {
        Flavor::Htmx4 => ("/", "htmx 2"),
        _ => ("/?htmx=4", "htmx 4"),
    };
    // The regions the stream updates: each listens for its event, in the
    // markup of the page's htmx (`sse-swap` or `data-sse-swap`).
    let toasts = SseListener::new(flavor)
        .id(live::TOASTS.as_str())
        .event(live::TOAST)
        .hx_swap(Swap::BeforeEnd)
        .attr(AttributeName::from_static("class"), "toast")
        .attr(AttributeName::from_static("aria-live"), "polite")
        .render()?;
    let notes_from_others = SseListener::new(flavor)
        .event(live::NOTE)
        .hx_target(live::NOTES.selector())
        .hx_swap(Swap::BeforeEnd)
        .render()?;
    // Who is here, as it is now; the stream swaps in each change.
    let online = SseListener::new(flavor)
        .id(live::ONLINE.as_str())
        .event(live::VIEWERS)
        .attr(AttributeName::from_static("class"), "muted")
        .children(match &app.online {
            Some(badge) => badge.render(),
            None => htmx_sse::Fragment::text("presence is counted in memory only"),
        })
        .render()?;
    let dashboard_bus = SseListener::new(flavor)
        .event(live::DASHBOARD)
        .hx_swap(Swap::None)
        .render()?;
    let content = html! {
        h1 { "htmx-sse demo" }
        p.muted {
            "Everything below is pushed by the server over Server-Sent Events, one connection per tab. "
            "This page runs on " strong #flavor { (if flavor == Flavor::Htmx4 { "htmx 4" } else { "htmx 2" }) } "; "
            a href=(other.0) { "switch to " (other.1) } "."
        }
        // Who is here, kept live by the stream.
        (online)
        // Toasts arrive as `toast` events and stack here.
        (toasts)
        script { (PreEscaped(DISMISS_TOASTS)) }

        section {
            h2 { "Private notifications and toasts" }
            @match &user {
                None => {
                    p.muted { "Sign in as a demo user (no password: it only sets a cookie). Try alice in one tab and bob in another." }
                    form #login hx-post="/login" hx-target="body" {
                        input name="user" list="demo-users" required placeholder="alice" maxlength="32" autocomplete="off";
                        datalist #demo-users { option value="alice" {} option value="bob" {} }
                        button { "Sign in" }
                    }
                }
                Some(name) => {
                    p #whoami { "Signed in as " strong { (name) } ". Private toasts reach every tab of a user, and only that user. " }
                    form #private hx-post="/toast" hx-swap="none" {
                        input type="hidden" name="scope" value="user";
                        input name="to" list="demo-users" required placeholder="bob" maxlength="32" autocomplete="off";
                        datalist #demo-users { option value="alice" {} option value="bob" {} }
                        input name="text" required placeholder="a private message" maxlength="200" autocomplete="off";
                        button { "Send privately" }
                    }
                    form hx-post="/logout" hx-target="body" { button { "Sign out" } }
                }
            }
            p {
                button hx-post="/toast" hx-vals=r#"{"scope": "everyone", "text": "Hello, everyone!", "level": "success"}"# hx-swap="none" { "Toast every tab" }
                " "
                button hx-post="/toast" hx-vals=r#"{"scope": "everyone", "text": "Something needs attention", "level": "warning"}"# hx-swap="none" { "Warn every tab" }
            }
        }

        section {
            h2 { "Every tab in sync" }
            p.muted {
                "Open this page in a second tab and add a note. The tab you type in gets its note from the "
                code { "hx-post" } " answer; every other tab gets it from a broadcast that excludes the "
                "tab it came from (its connection id travels in the form)."
            }
            div {
                // The form empties itself after a successful post: the
                // first handler is htmx 2's event, the second htmx 4's.
                form #note-form hx-post="/notes" hx-target=(live::NOTES.selector()) hx-swap="beforeend"
                    "hx-on::after-request"="if(event.detail.successful) this.reset()"
                    "hx-on::after:request"="if(event.detail.ctx.response.status < 400) this.reset()" {
                    // The `connection` event swaps a hidden input with this tab's id in here.
                    (connection_id_slot(flavor))
                    input name="text" maxlength="200" required placeholder="Write a note" autocomplete="off";
                    button { "Add" }
                }
                // Notes from other tabs are appended here.
                (notes_from_others)
                // After a server restart the page reloads the list
                // (`sse:reset` fires in both flavours).
                ul id=(live::NOTES) hx-get="/notes" hx-trigger=(format!("sse:{}", live::RESET)) hx-swap="innerHTML" {
                    @for n in &notes { (note_item(n)) }
                }
            }
            p.muted #stats hx-get="/stats" hx-trigger="load, every 2s" { "…" }
        }

        section {
            h2 { "Several regions from one message" }
            p.muted {
                "Once a second the server broadcasts one " code { "OobStreamBuilder" }
                " fragment on the same stream; it updates four regions out of band. The "
                "element listening for it swaps nothing itself (" code { "hx-swap=\"none\"" } ")."
            }
            (dashboard_bus)
            div.grid {
                div.card { div.label { "Server time" } div id=(live::CLOCK) .value { "–" } }
                div.card { div.label { "CPU" } div id=(live::CPU) .value { "–" } }
                div.card { div.label { "Requests/s" } div id=(live::RPS) .value { "–" } }
                div.card { div.label { "Uptime" } div id=(live::UPTIME) .value { "–" } }
            }
            h3 { "Recent events" }
            ul id=(live::LOG) {}
        }

        section {
            h2 { "A job that ends" }
            p.muted {
                "Each job is its own " code { "SseStream" } " of fragments: it streams its progress, then the server sends the named "
                code { "close" } " event and the page stops listening."
            }
            button hx-post=(format!("/jobs?htmx={}", flavor.as_str())) hx-target="#jobs" hx-swap="afterbegin" { "Start a job" }
            div #jobs {}
        }
    };
    // One connection per tab carries everything live on the page: browsers
    // allow only six per host across all tabs. In htmx 4 this element also
    // brings the script that swaps the named events its listeners name.
    let live = SseElement::new("/sse", flavor)
        .id("live")
        .resume_from(point)
        .no_close_event()
        .children(content)
        .render()?;
    Ok(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "htmx-sse demo" }
                script src=(htmx) {}
                script src=(sse) {}
                // The reconnect runtime, served once by the broadcast
                // routes: after an error answer (a restart behind a proxy)
                // the page comes back with its own last id, not from the
                // point it was rendered at.
                (runtime)
                style { (STYLE) }
            }
            body { (live) }
        }
    })
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #1f2937; }
section { border: 1px solid #e5e7eb; border-radius: .5rem; padding: 1rem; margin: 1rem 0; }
.muted { color: #6b7280; }
.grid { display: grid; grid-template-columns: repeat(4, 1fr); gap: .75rem; }
.card { background: #f9fafb; border-radius: .5rem; padding: .75rem; }
.label { font-size: .8rem; color: #6b7280; }
.value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
#log { font-family: ui-monospace, monospace; font-size: .85rem; max-height: 8rem; overflow: hidden; }
form { display: flex; gap: .5rem; margin: .5rem 0; } form input[name=text] { flex: 1; }
.toast { position: fixed; top: 1rem; right: 1rem; display: flex; flex-direction: column; gap: .5rem; z-index: 10; }
.alert { padding: .6rem .9rem; border-radius: .5rem; background: #eff6ff; border: 1px solid #bfdbfe; box-shadow: 0 2px 6px rgba(0,0,0,.08); }
.alert-success { background: #f0fdf4; border-color: #bbf7d0; } .alert-warning { background: #fefce8; border-color: #fde68a; } .alert-error { background: #fef2f2; border-color: #fecaca; }
.job { margin: .5rem 0; }
progress { width: 100%; }
";

/// Broadcasts one out-of-band update of four regions every second while
/// anyone is connected.
async fn dashboard(manager: BroadcastManager, started: std::time::Instant) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        ticks.tick().await;
        if manager.connection_count() == 0 {
            continue;
        }
        n += 1;
        let t = started.elapsed().as_secs_f64();
        let cpu = 45.0 + 30.0 * (t / 7.0).sin() + 8.0 * (t * 1.3).sin();
        let rps = 1200.0 + 400.0 * (t / 11.0).cos();
        let up = started.elapsed().as_secs();
        let mut oob = OobStreamBuilder::new()
            .add(
                live::CLOCK,
                Swap::InnerHtml,
                html! { (Utc::now().format("%H:%M:%S")) },
            )
            .add(
                live::CPU,
                Swap::InnerHtml,
                html! { (format!("{cpu:.0}")) "%" },
            )
            .add(live::RPS, Swap::InnerHtml, html! { (format!("{rps:.0}")) })
            .add(
                live::UPTIME,
                Swap::InnerHtml,
                html! { (format!("{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60)) },
            );
        if n.is_multiple_of(5) {
            let line = format!(
                "{} cpu={cpu:.1}% rps={rps:.0}",
                Utc::now().format("%H:%M:%S")
            );
            oob = oob.add(live::LOG, Swap::AfterBegin, html! { li { (line) } });
        }
        let sent = match oob.build() {
            Ok(fragment) => manager.message(live::DASHBOARD, fragment).send().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!("dashboard update failed: {e}");
        }
    }
}

const MAX_NOTES: usize = 50;

/// What `--assets DIR` serves: htmx 2 and its SSE extension, htmx 4 and
/// its `hx-sse` extension.
const ASSETS: [&str; 4] = ["htmx.min.js", "sse.js", "htmx4.min.js", "hx-sse.js"];

#[derive(Deserialize)]
struct NoteForm {
    text: String,
    connection_id: Option<String>,
}

fn note_item(text: &str) -> Markup {
    html! { li { (text) } }
}

async fn notes_list(State(app): State<App>) -> Markup {
    let notes = app.notes.lock().await.clone();
    html! { @for n in &notes { (note_item(n)) } }
}

async fn add_note(State(app): State<App>, Form(form): Form<NoteForm>) -> Response {
    let text = form.text.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a note has 1 to 200 characters",
        )
            .into_response();
    }
    // The tab that posted is excluded: it shows the note from this answer.
    let exclude: Vec<ConnectionId> = form
        .connection_id
        .as_deref()
        .and_then(|id| ConnectionId::new(id).ok())
        .into_iter()
        .collect();
    // maud's `Markup` is HTML whose text is escaped: sent as it is.
    let item = note_item(text);
    // Broadcast and kept in one step, as pages read them (see `page`).
    let mut notes = app.notes.lock().await;
    if let Err(e) = app
        .manager
        .message(live::NOTE, item.clone())
        .exclude(&exclude)
        .send()
        .await
    {
        // Not kept, not shown as added: the other tabs never got it. 503
        // with a JSON error while Redis is down, as the crate's routes.
        tracing::warn!("broadcast failed: {e}");
        return e.into_response();
    }
    if notes.len() == MAX_NOTES {
        notes.pop_front();
    }
    notes.push_back(text.to_owned());
    drop(notes);
    Html(item.into_string()).into_response()
}

async fn stats(State(app): State<App>) -> Markup {
    let s = app.manager.stats();
    html! {
        (s.active) " tab(s) connected to the shared stream · "
        (s.messages) " message(s) delivered"
    }
}

/// The demo's "authentication": the `demo_user` cookie names the user. It
/// proves nothing; a real application checks a session or a token (see
/// `htmx_sse::auth::JwtAuthorizer`).
struct DemoUser;

impl Authorizer for DemoUser {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            match htmx_sse::auth::cookie(parts, "demo_user") {
                None => Ok(None),
                Some(name) => UserId::new(name)
                    .map(|u| Some(Subject::user(u)))
                    .map_err(|e| AuthError::Invalid(e.to_string())),
            }
        })
    }
}

fn demo_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().strip_prefix("demo_user="))
        .find_map(|v| UserId::new(v).ok().map(|u| u.as_str().to_owned()))
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
}

/// Sets the cookie and reloads the page (the stream reconnects as the user).
async fn login(Form(form): Form<LoginForm>) -> Response {
    let name = form.user.trim();
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a demo user name is 1 to 32 letters, digits, '-' or '_'",
        )
            .into_response();
    }
    (
        [
            (
                header::SET_COOKIE,
                format!("demo_user={name}; Path=/; SameSite=Lax; HttpOnly"),
            ),
            (
                header::HeaderName::from_static("hx-refresh"),
                "true".to_owned(),
            ),
        ],
        "",
    )
        .into_response()
}

async fn logout() -> Response {
    (
        [
            (
                header::SET_COOKIE,
                "demo_user=; Path=/; Max-Age=0".to_owned(),
            ),
            (
                header::HeaderName::from_static("hx-refresh"),
                "true".to_owned(),
            ),
        ],
        "",
    )
        .into_response()
}

#[derive(Deserialize)]
struct ToastForm {
    scope: String,
    text: String,
    to: Option<String>,
    level: Option<String>,
}

async fn send_toast(
    State(app): State<App>,
    headers: HeaderMap,
    Form(form): Form<ToastForm>,
) -> Response {
    let level: Level = form
        .level
        .as_deref()
        .unwrap_or("info")
        .parse()
        .unwrap_or_default();
    let text = form.text.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a message has 1 to 200 characters",
        )
            .into_response();
    }
    let result = match form.scope.as_str() {
        "everyone" => match toast(text, level) {
            Ok(t) => app.manager.message(live::TOAST, t).send().await,
            Err(e) => Err(e),
        },
        "user" => {
            let Some(from) = demo_user(&headers) else {
                return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
            };
            let Some(to) = form.to.as_deref().and_then(|t| UserId::new(t.trim()).ok()) else {
                return (StatusCode::UNPROCESSABLE_ENTITY, "name a user").into_response();
            };
            match toast(&format!("{from} to {to}: {text}"), Level::Info) {
                Ok(t) => app.manager.message(live::TOAST, t).to_user(to).send().await,
                Err(e) => Err(e),
            }
        }
        _ => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                "scope is everyone or user",
            )
                .into_response();
        }
    };
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        // 503 with a JSON error while Redis is down, as the crate's routes.
        Err(e) => e.into_response(),
    }
}

/// Removes each toast 4 s after it arrives.
const DISMISS_TOASTS: &str = r#"
new MutationObserver(function (changes) {
  changes.forEach(function (c) {
    c.addedNodes.forEach(function (n) { if (n.nodeType === 1) setTimeout(function () { n.remove(); }, 4000); });
  });
}).observe(document.getElementById("toasts"), { childList: true });
"#;

/// A job's element, for the page's htmx: it swaps the job's (unnamed)
/// progress messages into itself and stops at the close event.
async fn start_job(State(app): State<App>, Query(query): Query<FlavorQuery>) -> Response {
    let flavor = match query.flavor() {
        Ok(f) => f,
        Err(bad) => return bad.into_response(),
    };
    let id = app.jobs.fetch_add(1, Ordering::Relaxed) + 1;
    let job = SseElement::new(format!("/jobs/{id}/progress"), flavor)
        .swap_event("message")
        .attr(AttributeName::from_static("class"), "job")
        .children(html! { "Job " (id) " starting…" })
        .render();
    match job {
        Ok(f) => Html(f.into_string()).into_response(),
        Err(e) => e.into_response(),
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
    let Some(name) = ASSETS.iter().find(|a| **a == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(dir.join(name)).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/javascript")], body).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---------------------------------------------------------------------------
// HTTPS with HTTP/2 (`--tls-cert`, `--tls-key`)
//
// `axum::serve` speaks cleartext HTTP/1.1 (and h2c); browsers speak HTTP/2
// only over TLS. So with a certificate the demo accepts each connection
// itself: rustls (through tokio-rustls) does the handshake and offers `h2`
// and `http/1.1` by ALPN, and hyper-util's auto builder serves the
// connection in whichever the browser chose.

use tokio_rustls::rustls;

/// The two PEM files given on the command line.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// Reads the certificate chain and the private key and checks that they
    /// belong together; every error names the file it is about.
    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::{self, PemObject};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let pem_error = |flag: &str, path: &std::path::Path, e: pem::Error| match e {
            pem::Error::Io(e) => format!("{flag} {}: cannot read it: {e}", path.display()),
            e => format!("{flag} {}: not a valid PEM file: {e}", path.display()),
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| pem_error("--tls-cert", &self.cert, e))?;
        if certs.is_empty() {
            return Err(format!(
                "--tls-cert {}: no certificate in it (expected \"-----BEGIN CERTIFICATE-----\")",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| match e {
            pem::Error::NoItemsFound => format!(
                "--tls-key {}: no private key in it (expected PKCS#8, SEC1 or PKCS#1 in PEM)",
                self.key.display()
            ),
            e => pem_error("--tls-key", &self.key, e),
        })?;
        // The provider is named rather than left to the process default,
        // which is ambiguous when a build enables two.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "--tls-key {} is not the key of the certificate in --tls-cert {}",
                    self.key.display(),
                    self.cert.display()
                ),
                e => format!(
                    "--tls-cert {} with --tls-key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ),
            })?;
        // HTTP/2 first: every tab's stream then shares one connection.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves `app` over TLS on `listener` until `signal` completes, each
/// connection on a task of its own in HTTP/2 or HTTP/1.1 (as ALPN chose);
/// then tells every open connection to finish (HTTP/2: GOAWAY; HTTP/1.1:
/// close after the response in flight) and returns once all have. The
/// streams end on the same signal (`StreamConfig::shutdown`), so this is
/// prompt; `Shutdown::drain_within` bounds it for clients that stopped
/// reading, as it does for `axum::serve`.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    signal: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let service = TowerToHyperService::new(app);
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little, as axum::serve does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Every tab's stream shares this socket: without TCP_NODELAY a
        // small frame waits for the ACK of the previous one (Nagle), and
        // under load that is most of the latency (BENCHMARKS.md, HTTP/2).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that never finishes its handshake is not waited for.
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // No new connections; the open ones finish what they are doing.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// `cargo test --features testing --example demo` (the workspace's
/// `cargo test --all-features` runs it): the page has an element for every
/// target the streams update and a listener for every event they send.
#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_has_every_name_the_streams_use_in_both_flavours() {
        let manager = BroadcastManager::new();
        let online = manager
            .public_presence_badge(live::VIEWERS, online_badge)
            .unwrap();
        let app = App {
            config: StreamConfig::new(),
            manager,
            notes: Arc::default(),
            assets: None,
            jobs: Arc::default(),
            online: Some(Arc::new(online)),
        };
        for flavor in [Flavor::Htmx2, Flavor::Htmx4] {
            let page = render_page(&app, None, flavor).await.unwrap().into_string();
            if let Err(missing) = htmx_sse::testing::check_page(&page, live::EVENTS, live::TARGETS)
            {
                panic!("{flavor}: {missing}");
            }
            assert!(
                page.contains("<strong>0</strong> tabs open, <strong>0</strong> users signed in"),
                "{flavor}: the presence badge as it is now"
            );
            // And the check sees a region that went missing.
            let renamed = page.replace(r#"id="clock""#, r#"id="time""#);
            let missing =
                htmx_sse::testing::check_page(&renamed, live::EVENTS, live::TARGETS).unwrap_err();
            assert_eq!(missing.targets, ["clock"], "{flavor}");
        }
    }

    #[tokio::test]
    async fn one_value_switches_the_page_between_htmx_2_and_htmx_4() {
        let app = App {
            config: StreamConfig::new(),
            manager: BroadcastManager::new(),
            notes: Arc::default(),
            assets: None,
            jobs: Arc::default(),
            online: None,
        };
        let htmx2 = render_page(&app, None, Flavor::Htmx2)
            .await
            .unwrap()
            .into_string();
        let htmx4 = render_page(&app, None, Flavor::Htmx4)
            .await
            .unwrap()
            .into_string();
        assert!(htmx2.contains(r#"hx-ext="sse" sse-connect="/sse?resumeFrom="#));
        assert!(htmx2.contains(r#"sse-swap="note""#));
        assert!(!htmx2.contains("hx-sse:connect") && !htmx2.contains("data-sse-swap"));
        assert!(htmx4.contains(r#"hx-sse:connect="/sse?resumeFrom="#));
        assert!(htmx4.contains(r#"data-sse-swap="note""#));
        assert!(!htmx4.contains("sse-connect=") && !htmx4.contains(" sse-swap="));
        assert!(htmx4.contains(HTMX4_CDN) && htmx2.contains(HTMX_CDN));
        // An unknown flavour is a 400 that says what is expected.
        let bad = FlavorQuery {
            htmx: Some("3".to_owned()),
        }
        .flavor()
        .unwrap_err();
        assert_eq!(bad.0, StatusCode::BAD_REQUEST);
        assert!(bad.1.contains("expected 2, 4, htmx2 or htmx4"), "{}", bad.1);
    }
}
