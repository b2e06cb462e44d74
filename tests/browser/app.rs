//! Application scenarios in a real browser, driven by
//! `tests/browser/app.mjs`: toasts from a `Notifier`, two tabs kept in sync
//! by a broadcast that excludes the tab it came from, a connection cut while
//! the server keeps publishing, a server restart, and a closed tab leaving
//! the registry, and a live presence badge counting tabs 1, 2, 3 and back
//! without a flicker when a tab reloads (see `tests/browser/README.md`).
//!
//! A server process here is a router built around one `BroadcastManager`
//! (mounted with `BroadcastRoutes` opened to anyone (`common::open_routes`) under `/sse`) and one `Notifier`
//! (`/notifications/{channel}`), both made fresh by [`Process::start`]. A
//! thin test layer (`/lab/*`) outlives the processes: it records every
//! stream request, ends open streams without the close event on demand (as
//! a dropped connection would), and restarts the process on the same port,
//! with a new manager from the scenario's [`Backend`]: in memory, or (with
//! the `redis` feature) on a real `redis-server` the test starts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use htmx_sse::broadcast::{BroadcastManager, Presence, PresenceBadge};
use htmx_sse::connections::ConnectionId;
use htmx_sse::connections::scripts::{self, ResetOptions, SseElement};
use htmx_sse::notify::{Level, NotificationStream, Notifier};
use htmx_sse::streaming::Swap;
use maud::{Markup, PreEscaped, html};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::lab::{cuttable, flavor, stream_request};
use super::{Flavour, drive, page_routes, page_shell};

/// How long a toast stays on the page.
const TOAST_MS: u64 = 1500;

/// The channel the toast page listens to.
const TOAST_CHANNEL: &str = "ops";

/// The presence scenario's grace period: a reload is well within it.
const PRESENCE_GRACE_MS: u64 = 1500;

/// What the restart page's list holds before anything is published.
const FIRST_ITEM: &str = "m0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `Notifier::send` → a toast with the escaped text, gone after
    /// `TOAST_MS`.
    Toasts,
    /// Two tabs; what one posts reaches the other by a broadcast that
    /// excludes the first, which shows its own answer once.
    TabSync,
    /// The stream is cut twice while numbered messages are published: the
    /// page reconnects by itself and shows every message once, in order.
    Cut,
    /// The server process restarts with a new manager: in memory, the page
    /// reconnects, gets the reset event and fetches its list again; on
    /// Redis, it resumes from the shared history, without a reset.
    Restart,
    /// Two tabs, one closes: the registry drops to one connection.
    TabClose,
    /// The page is rendered at `resume_point()`; its stream request is held
    /// while messages are published; the page then shows them, once.
    RenderGap,
    /// A `presence_badge` of everyone's connections: three tabs show 1, 2,
    /// 3; one reloads within the grace with no flicker; as tabs close the
    /// others show 2, then 1.
    Presence,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Toasts => "toasts",
            Scenario::TabSync => "tab-sync",
            Scenario::Cut => "cut",
            Scenario::Restart => "restart",
            Scenario::TabClose => "tab-close",
            Scenario::RenderGap => "render-gap",
            Scenario::Presence => "presence",
        }
    }
}

// ---------------------------------------------------------------------------
// Backends

/// Builds one manager: of a server process, or of a second instance.
type BuildManager =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = BroadcastManager> + Send>> + Send + Sync>;

/// The broadcast backend of the server processes: how each new process
/// gets its manager, and what a page that was connected to the previous
/// process receives when it reconnects.
#[derive(Clone)]
struct Backend {
    name: &'static str,
    build: BuildManager,
    /// The reason of the reset event a page gets after a restart, or
    /// `None` when the new process resumes it.
    reset_on_restart: Option<&'static str>,
    /// Whether the managers `build` makes share their messages and
    /// history, so that a second instance can publish for the pages while
    /// the process is down.
    shared: bool,
}

impl Backend {
    /// The scenario name the driver gets, which names its screenshot:
    /// `restart` in memory, `restart-redis` on Redis.
    fn scenario_name(&self, scenario: Scenario) -> String {
        if self.shared {
            format!("{}-{}", scenario.name(), self.name)
        } else {
            scenario.name().to_owned()
        }
    }
}

/// In memory: a new process is a new epoch with an empty history, so a
/// page that comes back gets `reset` with `{"reason":"restarted"}`.
fn memory() -> Backend {
    Backend {
        name: "memory",
        build: Arc::new(|| {
            Box::pin(async {
                BroadcastManager::builder()
                    .history(256)
                    .presence_grace(Duration::from_millis(PRESENCE_GRACE_MS))
                    .build()
            })
        }),
        reset_on_restart: Some("restarted"),
        shared: false,
    }
}

/// On the `redis-server` at `url`, under `prefix`: the epoch and the
/// history live in Redis, so a new process (or a second instance) goes on
/// with the same ids and resumes a page that comes back, without a reset.
#[cfg(feature = "redis")]
fn redis(url: String, prefix: String) -> Backend {
    let config = htmx_sse::backend::RedisConfig::new(url).prefix(prefix);
    Backend {
        name: "redis",
        build: Arc::new(move || {
            let config = config.clone();
            Box::pin(async move {
                BroadcastManager::builder()
                    .history(256)
                    .build_redis(config)
                    .await
                    .expect("connects to the test redis-server")
            })
        }),
        reset_on_restart: None,
        shared: true,
    }
}

// ---------------------------------------------------------------------------
// The test layer, which outlives server processes

/// One item added to the restart page's list and broadcast (type `item`).
#[derive(Debug, Clone, serde::Serialize)]
struct Added {
    text: String,
    /// The message id it got.
    id: String,
    /// How many connections it was queued for on the manager that
    /// published it.
    delivered: usize,
    /// Who published it: `process 1`, `second instance`, `process 2`, ….
    by: String,
}

/// One stream request as the server saw it.
#[derive(Debug, Clone, serde::Serialize)]
struct StreamRequest {
    /// Path and query.
    uri: String,
    /// The `Last-Event-ID` header, if any.
    header: Option<String>,
    /// The `htmx-sse-resume` cookie (`ENC(path and query)|ENC(id)`), if any.
    cookie: Option<String>,
    /// The server process that answered it (1, then 2 after a restart).
    generation: usize,
}

struct Lab {
    scenario: Scenario,
    flavour: Flavour,
    backend: Backend,
    /// The process now serving (0 while none is).
    generation: AtomicUsize,
    /// Processes started so far.
    started: AtomicUsize,
    /// A database the processes share: the restart page's list.
    db: Mutex<Vec<String>>,
    requests: Mutex<Vec<StreamRequest>>,
    /// What each `POST /note` broadcast: `{text, from, delivered}`.
    notes: Mutex<Vec<Value>>,
    /// Every item broadcast for the restart page, by whichever manager.
    added: Mutex<Vec<Added>>,
    /// Bumped to end every open stream without the close event.
    cut: watch::Sender<u64>,
    /// Asks the test to restart the server process.
    restart: mpsc::UnboundedSender<RestartQuery>,
    /// Lets the render-gap page's first stream request through.
    release: tokio::sync::Notify,
}

type Shared = Arc<Lab>;

/// One server process's state: the lab, and its own manager and notifier.
struct Ctx {
    lab: Shared,
    generation: usize,
    manager: BroadcastManager,
    notifier: Notifier,
    /// The presence scenario's badge (`None` in the others).
    badge: Option<PresenceBadge>,
}

type Proc = Arc<Ctx>;

/// The test layer's controls, which every process serves.
fn lab_routes() -> Router<Proc> {
    Router::new()
        .route("/lab/state", get(state))
        .route("/lab/publish", post(publish))
        .route("/lab/add", post(add))
        .route("/lab/toast", post(toast))
        .route("/lab/cut", post(cut))
        .route("/lab/restart", post(restart))
        .route("/lab/release", post(release))
}

/// Lets the held stream request of the render-gap page through.
async fn release(State(ctx): State<Proc>) -> StatusCode {
    ctx.lab.release.notify_one();
    StatusCode::NO_CONTENT
}

fn app(ctx: Proc) -> Router {
    let router = page_routes(page)
        .route("/items", get(items))
        .route("/generation", get(generation))
        .route("/note", post(note))
        .merge(lab_routes())
        .with_state(ctx.clone());
    let router = ctx
        .notifier
        .routes()
        .listen(htmx_sse::auth::Access::Anyone)
        .install(router);
    crate::common::open_routes(router, ctx.manager.clone(), "/sse")
        .layer(middleware::from_fn_with_state(ctx, lab_layer))
}

/// Records stream requests and makes their streams endable by `/lab/cut`;
/// closes the connection after every `/lab` answer, so that no test-side
/// client holds on to a process that restarts.
async fn lab_layer(State(ctx): State<Proc>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/lab/") {
        let mut res = next.run(req).await;
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    if req.method() != Method::GET || path != "/sse" {
        return next.run(req).await;
    }
    let seen = stream_request(&req);
    let first = {
        let mut requests = ctx.lab.requests.lock();
        requests.push(StreamRequest {
            uri: seen.uri,
            header: seen.header,
            cookie: seen.cookie,
            generation: ctx.generation,
        });
        requests.len() == 1
    };
    if first && ctx.lab.scenario == Scenario::RenderGap {
        // As a slow network would: the page was rendered, its stream is
        // not open yet, and the test publishes meanwhile.
        let _ = tokio::time::timeout(Duration::from_secs(10), ctx.lab.release.notified()).await;
    }
    cuttable(&ctx.lab.cut, req, next).await
}

async fn state(State(ctx): State<Proc>) -> Json<Value> {
    let lab = &ctx.lab;
    Json(json!({
        "generation": lab.generation.load(Ordering::SeqCst),
        "backend": lab.backend.name,
        "resetOnRestart": lab.backend.reset_on_restart,
        "count": ctx.manager.connection_count(),
        "registry": ctx.manager.registry().len(),
        "toastListeners": ctx.notifier.client_count(Some(TOAST_CHANNEL)),
        "requests": *lab.requests.lock(),
        "notes": *lab.notes.lock(),
        "added": *lab.added.lock(),
        "badge": ctx.badge.as_ref().map(|b| b.render().into_string()),
    }))
}

#[derive(serde::Deserialize)]
struct PublishQuery {
    from: u32,
    to: u32,
    /// Cut every open stream right after publishing this number.
    cut_after: Option<u32>,
    #[serde(default)]
    gap_ms: u64,
}

/// Publishes `<li>n</li>` as type `num` for `from..=to`, `gap_ms` apart,
/// cutting the streams after `cut_after`; answers how many connections
/// each message was queued for.
async fn publish(State(ctx): State<Proc>, Query(q): Query<PublishQuery>) -> Response {
    let mut delivered = Vec::new();
    for n in q.from..=q.to {
        let item = html! { li { (n) } };
        match ctx.manager.broadcast("num", item, None, &[]).await {
            Ok(sent) => delivered.push(sent.delivered),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
        if q.cut_after == Some(n) {
            ctx.lab.cut.send_modify(|c| *c += 1);
        }
        if q.gap_ms > 0 && n < q.to {
            tokio::time::sleep(Duration::from_millis(q.gap_ms)).await;
        }
    }
    Json(json!({ "delivered": delivered })).into_response()
}

#[derive(serde::Deserialize)]
struct TextQuery {
    text: String,
}

fn item(text: &str) -> Markup {
    html! { li { (text) } }
}

/// Adds an item to the database and broadcasts it (type `item`).
async fn add(State(ctx): State<Proc>, Query(q): Query<TextQuery>) -> Response {
    let by = format!("process {}", ctx.generation);
    match add_item(&ctx.lab, &ctx.manager, &q.text, by).await {
        Ok(sent) => Json(json!({ "delivered": sent.delivered })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Writes `text` to the database, then broadcasts it with `manager` and
/// records it.
async fn add_item(
    lab: &Lab,
    manager: &BroadcastManager,
    text: &str,
    by: String,
) -> Result<htmx_sse::broadcast::Sent, htmx_sse::Error> {
    lab.db.lock().push(text.to_owned());
    let sent = manager.broadcast("item", item(text), None, &[]).await?;
    lab.added.lock().push(Added {
        text: text.to_owned(),
        id: sent.id.to_string(),
        delivered: sent.delivered,
        by,
    });
    Ok(sent)
}

async fn items(State(ctx): State<Proc>) -> Markup {
    let db = ctx.lab.db.lock().clone();
    html! { @for text in &db { (item(text)) } }
}

async fn generation(State(ctx): State<Proc>) -> String {
    ctx.generation.to_string()
}

#[derive(serde::Deserialize)]
struct ToastQuery {
    text: String,
    level: String,
    #[serde(default = "toast_channel")]
    channel: String,
}

fn toast_channel() -> String {
    TOAST_CHANNEL.to_owned()
}

async fn toast(State(ctx): State<Proc>, Query(q): Query<ToastQuery>) -> Response {
    let level: Level = match q.level.parse() {
        Ok(level) => level,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match ctx.notifier.send(&q.channel, &q.text, level).await {
        Ok(reached) => Json(json!({ "reached": reached })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn cut(State(ctx): State<Proc>) -> StatusCode {
    ctx.lab.cut.send_modify(|n| *n += 1);
    StatusCode::NO_CONTENT
}

#[derive(serde::Deserialize)]
struct RestartQuery {
    /// An item written to the database while no process runs; with a
    /// shared backend, a second server instance (a manager of its own on
    /// the same Redis) also broadcasts it then.
    add: Option<String>,
    /// An item the new process adds (database and broadcast) as soon as
    /// its manager is built, before it serves: before the page can be back.
    publish: Option<String>,
}

/// Asks for a restart and answers at once: the process that answers is the
/// one that stops (see [`run_with`]).
async fn restart(State(ctx): State<Proc>, Query(q): Query<RestartQuery>) -> StatusCode {
    match ctx.lab.restart.send(q) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[derive(serde::Deserialize)]
struct NoteForm {
    text: String,
    connection_id: Option<String>,
}

/// The tab that posts shows the note from this answer; every other tab gets
/// it from a broadcast that excludes the posting tab's connection.
async fn note(State(ctx): State<Proc>, Form(form): Form<NoteForm>) -> Response {
    let from = form
        .connection_id
        .as_deref()
        .and_then(|id| ConnectionId::new(id).ok());
    let exclude: Vec<ConnectionId> = from.iter().cloned().collect();
    let li = item(&form.text);
    let sent = match ctx
        .manager
        .broadcast("note", li.clone(), None, &exclude)
        .await
    {
        Ok(sent) => sent,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    ctx.lab.notes.lock().push(json!({
        "text": form.text,
        "from": from.as_ref().map(ConnectionId::as_str),
        "delivered": sent.delivered,
    }));
    Html(li.into_string()).into_response()
}

// ---------------------------------------------------------------------------
// The pages

/// A connection to `/sse` swapping `event` broadcasts at the end of
/// `target`.
fn feed(f: Flavour, event: &'static str, target: &str) -> SseElement {
    SseElement::new("/sse", flavor(f))
        .id("feed")
        .swap_event(event)
        .hx_target(target)
        .hx_swap(Swap::BeforeEnd)
}

async fn page(State(ctx): State<Proc>) -> Response {
    let (scenario, f) = (ctx.lab.scenario, ctx.lab.flavour);
    let mut head: Vec<htmx_sse::Fragment> = Vec::new();
    let body: Markup = match scenario {
        Scenario::Toasts => {
            let toasts = NotificationStream::new(TOAST_CHANNEL)
                .flavor(flavor(f))
                .dismiss_ms(TOAST_MS)
                .render()
                .expect("a valid channel");
            html! {
                p { "Toasts from channel " code { (TOAST_CHANNEL) } " appear top right and go after " (TOAST_MS) " ms." }
                (PreEscaped(toasts.as_str()))
            }
        }
        Scenario::TabSync => {
            let form = html! {
                form #note-form hx-post="/note" hx-target="#notes" hx-swap="beforeend" {
                    // The `connection` event puts this tab's id here.
                    span #cid { (PreEscaped(scripts::connection_id_slot(flavor(f)).as_str())) }
                    input name="text" required autocomplete="off";
                    button { "Add" }
                }
            };
            let el = feed(f, "note", "#notes")
                .children(form)
                .render()
                .expect("a valid element");
            html! {
                (PreEscaped(el.as_str()))
                ul #notes {}
            }
        }
        Scenario::Cut => {
            let el = feed(f, "num", "#log").render().expect("a valid element");
            html! { (PreEscaped(el.as_str())) ul #log {} }
        }
        Scenario::Restart => {
            head.push(scripts::reset_script(ResetOptions::new()));
            let el = feed(f, "item", "#items").render().expect("a valid element");
            html! {
                p { "backend: " code { (ctx.lab.backend.name) } }
                p { "server process: " span #gen hx-get="/generation"
                    hx-trigger="load, htmx-sse:reset from:document" hx-swap="innerHTML" { "?" } }
                (PreEscaped(el.as_str()))
                // Fetched on load, and again when the server cannot catch
                // the page up.
                ul #items hx-get="/items" hx-trigger="load, htmx-sse:reset from:document"
                    hx-swap="innerHTML" {}
            }
        }
        Scenario::TabClose => {
            let el = feed(f, "chat", "#log").render().expect("a valid element");
            html! { (PreEscaped(el.as_str())) ul #log {} }
        }
        Scenario::Presence => {
            // The badge as it is now, in the page; then kept live by the
            // stream (`sse-swap` in htmx 2, the crate's listener in htmx 4).
            let badge = ctx
                .badge
                .as_ref()
                .expect("the presence scenario has a badge")
                .listener(flavor(f), "viewers")
                .render()
                .expect("a valid listener");
            let el = SseElement::new("/sse", flavor(f))
                .id("feed")
                .children(badge)
                .render()
                .expect("a valid element");
            html! { p { "viewers now:" } (PreEscaped(el.as_str())) }
        }
        Scenario::RenderGap => {
            // The page's state would be read here; the stream goes on from
            // the same point.
            let el = feed(f, "num", "#log")
                .resume_from(ctx.manager.resume_point())
                .render()
                .expect("a valid element");
            html! { (PreEscaped(el.as_str())) ul #log {} }
        }
    };
    let markup = page_shell(
        "htmx-sse app",
        scenario.name(),
        f,
        &head,
        concat!(
            "body{font:16px sans-serif;margin:1.5em}",
            "#feed,ul{border:1px solid #999;padding:.5em 1.5em;margin:.5em 0;min-height:1em}",
            ".toast{position:fixed;top:1em;right:1em;display:flex;flex-direction:column;gap:.5em}",
            ".alert{padding:.6em 1em;border-radius:.4em;background:#dbeafe}",
            ".alert-success{background:#dcfce7}.alert-error{background:#fee2e2}",
        ),
        &body,
    );
    ([(header::CACHE_CONTROL, "no-cache")], markup).into_response()
}

// ---------------------------------------------------------------------------
// Server processes

/// One running server process.
struct Process {
    manager: BroadcastManager,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Process {
    /// Builds a manager with the lab's backend, adds `publish` (see
    /// [`RestartQuery`]) with it, and serves on `listener`.
    async fn start(lab: &Shared, listener: TcpListener, publish: Option<&str>) -> Process {
        let manager = (lab.backend.build)().await;
        let generation = lab.started.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(text) = publish {
            add_item(lab, &manager, text, format!("process {generation}"))
                .await
                .expect("the new process publishes");
        }
        let badge = (lab.scenario == Scenario::Presence).then(|| {
            manager
                .public_presence_badge("viewers", |p: &Presence| {
                    html! { b.count { (p.connections) } }
                })
                .expect("a badge in memory")
        });
        let ctx = Arc::new(Ctx {
            lab: lab.clone(),
            generation,
            manager: manager.clone(),
            notifier: Notifier::new(),
            badge,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = app(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        lab.generation.store(generation, Ordering::SeqCst);
        Process {
            manager,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the process as a restart would: every stream ends without the
    /// close event, the listener closes, and the manager is dropped once
    /// the server has finished (or after 5 s, when it is aborted).
    async fn stop(mut self) {
        self.manager.shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` again after a restart (the old listener is closed; its
/// port may take a moment to be free).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not bind {addr} again after the restart: {last:?}");
}

/// What happens while no process runs: `add` goes to the database and,
/// with a shared backend, a second instance broadcasts it (and stops).
async fn while_down(lab: &Lab, add: Option<&str>) {
    let Some(text) = add else { return };
    if lab.backend.shared {
        let second = (lab.backend.build)().await;
        add_item(lab, &second, text, "second instance".to_owned())
            .await
            .expect("the second instance publishes");
        second.shutdown();
    } else {
        lab.db.lock().push(text.to_owned());
    }
}

/// Serves the scenario, restarting the process on the same port whenever
/// `POST /lab/restart` asks, until the driver has finished.
async fn run_with(scenario: Scenario, f: Flavour, backend: Backend) -> Shared {
    let (restart, mut restarts) = mpsc::unbounded_channel();
    let lab = Arc::new(Lab {
        scenario,
        flavour: f,
        backend,
        generation: AtomicUsize::new(0),
        started: AtomicUsize::new(0),
        db: Mutex::new(vec![FIRST_ITEM.to_owned()]),
        requests: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
        added: Mutex::new(Vec::new()),
        cut: watch::channel(0).0,
        restart,
        release: tokio::sync::Notify::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let mut process = Process::start(&lab, listener, None).await;
    let base = format!("http://{addr}");
    let name = lab.backend.scenario_name(scenario);
    let control = {
        let lab = lab.clone();
        // Owns the running process: dropped (and its server aborted) when
        // the driver has finished.
        async move {
            while let Some(q) = restarts.recv().await {
                process.stop().await;
                lab.generation.store(0, Ordering::SeqCst);
                while_down(&lab, q.add.as_deref()).await;
                let listener = rebind(addr).await;
                process = Process::start(&lab, listener, q.publish.as_deref()).await;
            }
        }
    };
    tokio::select! {
        () = drive("app.mjs", &name, f, &base) => {}
        () = control => unreachable!("the lab keeps the restart channel open"),
    }
    lab
}

async fn run(scenario: Scenario, f: Flavour) -> Shared {
    run_with(scenario, f, memory()).await
}

/// Runs the scenario on a `redis-server` of its own (on a free loopback
/// port), under a key prefix of its own.
#[cfg(feature = "redis")]
async fn run_on_redis(scenario: Scenario, f: Flavour) -> Shared {
    let server = super::common::redis::RedisServer::start(false);
    let prefix = format!(
        "htmx-sse-browser-{}-{}-{}",
        scenario.name(),
        f.name(),
        std::process::id()
    );
    let lab = run_with(scenario, f, redis(server.url(), prefix)).await;
    drop(server);
    lab
}

// ---------------------------------------------------------------------------
// The tests

fn assert_notes_excluded_their_tab(lab: &Shared) {
    let notes = lab.notes.lock().clone();
    assert_eq!(notes.len(), 2, "{notes:?}");
    for n in &notes {
        assert!(
            n["from"].is_string(),
            "a note without its connection id: {n}"
        );
        assert_eq!(n["delivered"], 1, "the posting tab was not excluded: {n}");
    }
    assert_ne!(notes[0]["from"], notes[1]["from"], "{notes:?}");
}

/// Three streams, the last two resumed with the `Last-Event-ID` header: both
/// flavours reconnect by themselves, without the crate's helper.
fn assert_resumed_by_header(lab: &Shared) {
    let requests = lab.requests.lock().clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[0].header.is_none(), "{requests:?}");
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.header.is_some() && !r.uri.contains("lastEventId")),
        "{requests:?}"
    );
}

fn assert_restarted_once(lab: &Lab) {
    let requests = lab.requests.lock().clone();
    let generations: Vec<usize> = requests.iter().map(|r| r.generation).collect();
    assert_eq!(generations, [1, 2], "{requests:?}");
    assert!(requests[0].header.is_none() && !requests[0].uri.contains("lastEventId"));
}

/// The stream request after the restart, which resumed the page: with the
/// runtime (brought by `reset_script`) through its cookie in htmx 2 (never
/// in the URL), by hx-sse with the header in htmx 4.
fn resumed(lab: &Lab, f: Flavour) -> StreamRequest {
    let back = lab.requests.lock()[1].clone();
    match f {
        Flavour::Htmx2 => assert!(
            back.cookie.is_some() && !back.uri.contains("lastEventId"),
            "{back:?}"
        ),
        Flavour::Htmx4 => assert!(back.header.is_some(), "{back:?}"),
    }
    back
}

async fn in_memory_restart(f: Flavour) {
    let lab = run(Scenario::Restart, f).await;
    assert_restarted_once(&lab);
    resumed(&lab, f);
}

/// The page came back with the id of m2, the last item it had (the id on
/// the wire is `EPOCH-SEQ.CONNECTION`), and the items kept one epoch and
/// increasing ids across the restart and the second instance.
#[cfg(feature = "redis")]
async fn redis_restart(f: Flavour) {
    let lab = run_on_redis(Scenario::Restart, f).await;
    assert_restarted_once(&lab);
    let back = resumed(&lab, f);
    let resumed = match f {
        Flavour::Htmx2 => back
            .cookie
            .as_deref()
            .and_then(|c| c.split_once('|'))
            .map(|(_, id)| id),
        Flavour::Htmx4 => back.header.as_deref(),
    };
    let added = lab.added.lock().clone();
    let texts: Vec<&str> = added.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5"], "{added:?}");
    let ids: Vec<(&str, u64)> = added
        .iter()
        .map(|a| {
            let (epoch, seq) = a.id.rsplit_once('-').expect("an id is EPOCH-SEQ");
            (epoch, seq.parse().expect("a numeric sequence"))
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
        "one epoch, increasing ids: {added:?}"
    );
    let m2 = &added[1].id;
    assert!(
        resumed.is_some_and(|id| id == m2 || id.starts_with(&format!("{m2}."))),
        "resumed from {resumed:?}, m2 is {m2}; requests: {:?}",
        lab.requests.lock()
    );
}

in_both_flavours! {
    toasts_appear_escaped_and_dismiss_themselves: |f| run(Scenario::Toasts, f).await;
    two_tabs_in_sync_without_their_own_echo:
        |f| assert_notes_excluded_their_tab(&run(Scenario::TabSync, f).await);
    cut_mid_publish_loses_and_doubles_nothing:
        |f| assert_resumed_by_header(&run(Scenario::Cut, f).await);
    in_memory_restart_resets_the_page: |f| in_memory_restart(f).await;
    #[cfg(feature = "redis")]
    redis_restart_resumes_the_page_without_a_reset: |f| redis_restart(f).await;
    closing_a_tab_unregisters_its_connection: |f| run(Scenario::TabClose, f).await;
    nothing_published_between_render_and_connect_is_lost:
        |f| run(Scenario::RenderGap, f).await;
    presence_badge_counts_tabs_without_a_flicker_on_reload:
        |f| run(Scenario::Presence, f).await;
}
