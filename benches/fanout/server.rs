//! The three servers, each run in its own process (`--serve KIND`):
//!
//! - `crate`: `htmx_sse::setup_broadcast_routes` mounted on a plain axum
//!   router, served by `axum::serve`, publishing with
//!   `BroadcastManager::broadcast` (defaults: queue 256, history 1024,
//!   heartbeat 15 s);
//! - `baseline`: the twenty lines a user would write instead, as the axum
//!   examples do: `axum::response::sse::Sse` over a `BroadcastStream` of a
//!   `tokio::sync::broadcast::channel::<String>(256)`, each item mapped to
//!   `Event::default().data(msg)`, `KeepAlive::default()`;
//! - `raw`: no HTTP server at all: one thread writes the finished chunk
//!   (`data: …\n\n` in HTTP/1.1 chunked framing) to every socket in a loop,
//!   after writing the response head once per socket. The floor.
//!
//! Asked for by name only (`--servers`), variants of `crate`:
//! `crate-metrics` (with `htmx_sse::metrics` registered, feature
//! `metrics`), `crate-presence` (with `watch_presence(Everyone)` and its
//! feed read by a task), `crate-users` (an authorizer naming each request a
//! user of its own, `u1`, `u2`, …) and `crate-users-presence` (both: a
//! count per user in the watch, the most it can hold).
//!
//! Publishing is the same for all three: the bench client sends `P <seq>`
//! lines on a control connection; the server stamps the payload with
//! `CLOCK_MONOTONIC` right before it publishes (so latency is measured from
//! the publish call to the client's parse), then calls the kind's publish.
//!
//! The `crate` server also serves `GET /stats` (`connections=N
//! registry=M`: the manager's open connections and its registry's entries,
//! for the churn scenario) and shuts down gracefully on SIGTERM (the
//! manager's `Shutdown` through `Shutdown::after_signal`, passed to
//! `with_graceful_shutdown`), with `retry_on_shutdown` when started with
//! `--retry-window-ms MS`; it prints `STOPPED <ns>` (`CLOCK_MONOTONIC`)
//! when `axum::serve` has returned, every connection closed.

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use futures_util::Stream;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

use crate::sys;

/// Bytes of HTML in every published message.
pub(crate) const PAYLOAD_LEN: usize = 256;

/// Descriptors a server process must be able to open: the scale run's
/// connections plus listeners, control, epoll and stdio.
const SERVER_FDS: u64 = 19_600;

/// A server process never outlives this, whatever the parent does.
const SERVER_LIFETIME: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Crate,
    Baseline,
    Raw,
    /// The crate with `htmx_sse::metrics` registered (bench built with
    /// `--features metrics`); only when asked for with `--servers`.
    CrateMetrics,
    /// The crate with presence watched (`watch_presence(Everyone)`, its
    /// feed read by a task); only when asked for with `--servers`.
    CratePresence,
    /// The crate with every connection a user of its own (an authorizer
    /// that names each request `u1`, `u2`, …); only when asked for.
    CrateUsers,
    /// `CrateUsers` with presence watched as `CratePresence`: a count per
    /// user in the watch, the most a watch can hold.
    CrateUsersPresence,
}

impl Kind {
    /// What runs by default.
    pub(crate) const ALL: [Kind; 3] = [Kind::Crate, Kind::Baseline, Kind::Raw];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Crate => "crate",
            Kind::Baseline => "baseline",
            Kind::Raw => "raw",
            Kind::CrateMetrics => "crate-metrics",
            Kind::CratePresence => "crate-presence",
            Kind::CrateUsers => "crate-users",
            Kind::CrateUsersPresence => "crate-users-presence",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain([
                Kind::CrateMetrics,
                Kind::CratePresence,
                Kind::CrateUsers,
                Kind::CrateUsersPresence,
            ])
            .find(|k| k.name() == s)
    }
}

#[cfg(feature = "metrics")]
fn with_metrics(
    manager: &htmx_sse::BroadcastManager,
) -> Result<prometheus_client::registry::Registry, String> {
    let mut registry = prometheus_client::registry::Registry::default();
    htmx_sse::metrics::register(&mut registry, manager);
    Ok(registry)
}

#[cfg(not(feature = "metrics"))]
fn with_metrics(_: &htmx_sse::BroadcastManager) -> Result<(), String> {
    Err(
        "crate-metrics needs the metrics feature: cargo bench --features metrics --bench fanout"
            .to_owned(),
    )
}

/// Names every request a user of its own: `u1`, `u2`, … (the
/// `crate-users` kinds).
#[derive(Clone, Default)]
struct EachAUser(Arc<std::sync::atomic::AtomicU64>);

impl htmx_sse::auth::Authorizer for EachAUser {
    fn authorize<'a>(
        &'a self,
        _parts: &'a axum::http::request::Parts,
    ) -> htmx_sse::auth::AuthFuture<'a> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Box::pin(async move {
            Ok(htmx_sse::connections::UserId::new(&format!("u{n}"))
                .ok()
                .map(htmx_sse::auth::Subject::user))
        })
    }
}

/// The 256-byte HTML payload of message `seq`, stamped with `t_ns`:
/// `<p id="m" data-seq="…" data-t="…">xxx…</p>`.
pub(crate) fn payload(seq: u64, t_ns: u64) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(PAYLOAD_LEN);
    let _ = write!(
        s,
        "<p id=\"m\" data-seq=\"{seq:010}\" data-t=\"{t_ns:020}\">"
    );
    while s.len() < PAYLOAD_LEN - 4 {
        s.push('x');
    }
    s.push_str("</p>");
    s
}

/// Runs one server until its standard input closes (or, for the crate,
/// until SIGTERM and the graceful shutdown that follows). `retry_window`:
/// the crate's `StreamConfig::retry_on_shutdown`.
pub(crate) fn run(
    kind: Kind,
    cpu: usize,
    nodelay: bool,
    retry_window: Option<Duration>,
) -> Result<(), String> {
    let pinned = sys::pin_to_cpu(cpu)?;
    let nofile = sys::raise_nofile(SERVER_FDS)?;
    // The parent ends a server by closing its stdin; a lost parent cannot
    // leave one behind for longer than SERVER_LIFETIME.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(SERVER_LIFETIME);
        eprintln!("fanout server: lifetime exceeded, exiting");
        std::process::exit(3);
    });
    // One worker thread: the server has one core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (sse, ctl) = rt
        .block_on(async { Ok::<_, std::io::Error>((listen().await?, listen().await?)) })
        .map_err(|e| format!("bind: {e}"))?;
    let ports = (
        sse.local_addr().map_err(|e| e.to_string())?.port(),
        ctl.local_addr().map_err(|e| e.to_string())?.port(),
    );
    let ready = || {
        println!(
            "READY {} {} pinned={} nofile={} workers=1 nodelay={nodelay}",
            ports.0,
            ports.1,
            pinned.replace(' ', ","),
            nofile
        );
        let _ = std::io::stdout().flush();
    };
    match kind {
        Kind::Crate
        | Kind::CrateMetrics
        | Kind::CratePresence
        | Kind::CrateUsers
        | Kind::CrateUsersPresence => rt.block_on(async move {
            let shutdown = htmx_sse::streaming::Shutdown::new();
            let mut config = htmx_sse::streaming::StreamConfig::new().shutdown(&shutdown);
            if let Some(window) = retry_window {
                config = config.retry_on_shutdown(window);
            }
            // FANOUT_NO_CONNECTION_EVENT=1: streams open without the
            // `connection` event (nothing written at connect), to measure
            // what that first write costs an idle connection.
            let connection_event =
                std::env::var_os("FANOUT_NO_CONNECTION_EVENT").is_none_or(|v| v != "1");
            let manager = htmx_sse::BroadcastManager::builder()
                .stream(config)
                .connection_event(connection_event)
                .build();
            // What metrics cost: counted as an application that scrapes
            // them would count (the scrape itself is not part of the run).
            let _registry = if kind == Kind::CrateMetrics {
                Some(with_metrics(&manager)?)
            } else {
                None
            };
            // What watching presence costs: a feed read as an application
            // would read it (the changes are gathered while it is busy).
            let _presence = if matches!(kind, Kind::CratePresence | Kind::CrateUsersPresence) {
                let mut feed = manager
                    .watch_presence(htmx_sse::broadcast::PresenceScope::Everyone)
                    .map_err(|e| e.to_string())?;
                // FANOUT_PRESENCE_PACE_MS (default 100): the pause after
                // each read, as a badge renders at most ten times a second;
                // 0 reads after every change.
                let pace = std::env::var("FANOUT_PRESENCE_PACE_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::from_millis(100), Duration::from_millis);
                Some(tokio::spawn(async move {
                    while let Some(change) = feed.changed().await {
                        std::hint::black_box(change);
                        tokio::time::sleep(pace).await;
                    }
                }))
            } else {
                None
            };
            let stats = manager.clone();
            let routes = htmx_sse::routes::BroadcastRoutes::new(manager.clone()).prefix("/sse");
            let routes = if matches!(kind, Kind::CrateUsers | Kind::CrateUsersPresence) {
                routes.authorizer(EachAUser::default())
            } else {
                routes
            };
            let app = routes.install(Router::new()).route(
                "/stats",
                get(move || {
                    let m = stats.clone();
                    async move {
                        format!(
                            "connections={} registry={}",
                            m.connection_count(),
                            m.registry().len()
                        )
                    }
                }),
            );
            tokio::spawn(control(ctl, move |msg| {
                let manager = manager.clone();
                async move {
                    let _ = manager
                        .broadcast("bench", htmx_sse::Fragment::trusted(msg), None, &[])
                        .await;
                }
            }));
            ready();
            serve(sse, app, nodelay, shutdown.after_signal()).await?;
            println!("STOPPED {}", sys::now_ns());
            let _ = std::io::stdout().flush();
            Ok(())
        }),
        Kind::Baseline => rt.block_on(async move {
            let (tx, _) = broadcast::channel::<String>(256);
            let announce = std::env::var_os("FANOUT_BASELINE_ANNOUNCE").is_some_and(|v| v == "1");
            let app = if announce {
                Router::new().route("/sse", get(baseline_announce_handler))
            } else {
                Router::new().route("/sse", get(baseline_handler))
            }
            .with_state(tx.clone());
            tokio::spawn(control(ctl, move |msg| {
                let _ = tx.send(msg);
                std::future::ready(())
            }));
            ready();
            serve(sse, app, nodelay, std::future::pending()).await
        }),
        Kind::Raw => {
            let sse = rt
                .block_on(async { sse.into_std() })
                .map_err(|e| e.to_string())?;
            let ctl = rt
                .block_on(async { ctl.into_std() })
                .map_err(|e| e.to_string())?;
            drop(rt);
            sse.set_nonblocking(false).map_err(|e| e.to_string())?;
            ctl.set_nonblocking(false).map_err(|e| e.to_string())?;
            ready();
            raw(sse, &ctl, nodelay)
        }
    }
}

/// `axum::serve` as a user writes it, with graceful shutdown on `signal`;
/// with `nodelay`, with the `tap_io(set_nodelay)` that axum documents for
/// it.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    nodelay: bool,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    // FANOUT_MAKE_SERVICE=1: `app.into_make_service()`, which finalises
    // the router once; `axum::serve(listener, app)` does it again for every
    // connection (`Router::with_state` per connection in axum 0.8).
    let once = std::env::var_os("FANOUT_MAKE_SERVICE").is_some_and(|v| v == "1");
    let done = match (nodelay, once) {
        (true, false) => {
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(signal)
            .await
        }
        (true, true) => {
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app.into_make_service(),
            )
            .with_graceful_shutdown(signal)
            .await
        }
        (false, false) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        }
        (false, true) => {
            axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(signal)
                .await
        }
    };
    done.map_err(|e| e.to_string())
}

/// A listener on 127.0.0.1 with room for a burst of connects (the
/// machine's `somaxconn` caps it).
async fn listen() -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind("127.0.0.1:0".parse().expect("literal address"))?;
    socket.listen(4096)
}

/// The baseline handler, as the axum examples write it.
async fn baseline_handler(
    State(tx): State<broadcast::Sender<String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(tx.subscribe())
        .filter_map(|msg| msg.ok())
        .map(|msg| Ok(Event::default().data(msg)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `FANOUT_BASELINE_ANNOUNCE=1`: the baseline, but it also tells the page
/// its id and where it starts as soon as it connects, as the crate's
/// `connection` event does. Not the axum examples' way: for the
/// like-for-like memory reading in BENCHMARKS.md.
async fn baseline_announce_handler(
    State(tx): State<broadcast::Sender<String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let hello = Event::default()
        .event("connection")
        .id(format!("0-0.{id}"))
        .data(id);
    let stream = tokio_stream::once(Ok(hello)).chain(
        BroadcastStream::new(tx.subscribe())
            .filter_map(|msg| msg.ok())
            .map(|msg| Ok(Event::default().data(msg))),
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Reads `P <seq>` lines from control connections and publishes each
/// message, stamped just before the call.
async fn control<F, Fut>(listener: tokio::net::TcpListener, mut publish: F)
where
    F: FnMut(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    while let Ok((sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        let mut lines = tokio::io::BufReader::new(sock).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(seq) = line.strip_prefix("P ").and_then(|n| n.parse().ok()) {
                publish(payload(seq, sys::now_ns())).await;
            }
        }
    }
}

const RAW_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

/// The raw limit: accept, answer the head once, then write the frames to
/// every socket in one loop: one `write` per socket for all the messages
/// that arrived together (as hyper writes all queued frames at once).
fn raw(
    sse: std::net::TcpListener,
    ctl: &std::net::TcpListener,
    nodelay: bool,
) -> Result<(), String> {
    let socks: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let accepted = Arc::clone(&socks);
    std::thread::spawn(move || {
        for stream in sse.incoming() {
            let Ok(mut s) = stream else { continue };
            if nodelay {
                let _ = s.set_nodelay(true);
            }
            // Read the request head; its content does not matter.
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let mut list = accepted.lock().expect("raw socket list");
            if s.write_all(RAW_HEAD).is_ok() {
                list.push(s);
            }
        }
    });
    let mut frames = Vec::with_capacity(16 * (PAYLOAD_LEN + 32));
    let mut line = String::new();
    for conn in ctl.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let mut reader = BufReader::new(conn);
        loop {
            // Block for one command, then take every one already buffered.
            frames.clear();
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => push_raw_frame(&mut frames, &line),
            }
            while reader.buffer().contains(&b'\n') {
                line.clear();
                if reader.read_line(&mut line).is_err() {
                    break;
                }
                push_raw_frame(&mut frames, &line);
            }
            if frames.is_empty() {
                continue;
            }
            let mut list = socks.lock().expect("raw socket list");
            list.retain_mut(|s| write_all(s, &frames).is_ok());
        }
    }
    Ok(())
}

/// `write_all` through `writev` (as tokio and hyper write; std's plain
/// `write` on a socket is `send`, which `/proc/<pid>/io` does not count).
fn write_all(s: &mut std::net::TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write_vectored(&[std::io::IoSlice::new(buf)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends the chunk for a `P <seq>` command: `data: …\n\n` in chunked
/// framing.
fn push_raw_frame(frames: &mut Vec<u8>, line: &str) {
    let Some(seq) = line.trim().strip_prefix("P ").and_then(|n| n.parse().ok()) else {
        return;
    };
    let data = payload(seq, sys::now_ns());
    let len = data.len() + 8; // "data: " + "\n\n"
    let _ = write!(frames, "{len:x}\r\ndata: {data}\n\n\r\n");
}
