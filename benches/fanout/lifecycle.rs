//! The connection life cycle under load (issue 15, items 8 and 11): the
//! scenarios `churn`, `shutdown` and `reconnect`, against the crate's
//! server only.
//!
//! - **churn**: connect/disconnect cycles (half closed cleanly with a FIN
//!   after the `connection` event, half reset with `SO_LINGER` 0), 64 in
//!   flight, after a warm-up; the registry must be empty afterwards (read
//!   from the server's `GET /stats`) and the RSS within 10 % of its level
//!   after the warm-up.
//! - **shutdown**: N open streams, SIGTERM to the server (its manager's
//!   `Shutdown` through `after_signal`, passed to `with_graceful_shutdown`);
//!   every stream must end cleanly (the chunked body finished) within 2 s
//!   of the signal.
//! - **reconnect**: N open streams, SIGTERM, and clients that obey
//!   `retry:` and reconnect to a second server; the reconnect instants
//!   relative to the signal, as a histogram, without and with
//!   `retry_on_shutdown(window)`.
//!
//! The client side runs in child processes (`--lc churn|hold …`) pinned
//! to the clients' CPU, as the load clients are; the parent drives them and
//! the servers and reads the server's RSS from `/proc`. Times are
//! `CLOCK_MONOTONIC`, one clock for every process.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memchr::memmem;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{ConnStats, Decoder, open};
use crate::{CLIENT_CPU, Child, SERVER_CPU, flag, sys};

/// The names `--only` selects these scenarios by.
pub(crate) const NAMES: [&str; 3] = ["churn", "shutdown", "reconnect"];

/// Connects in flight at once while the streams are opened.
const CONNECT_PARALLEL: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// One connect/disconnect cycle of the churn.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the registry may take to empty after the last disconnect (the
/// heartbeat, 15 s, would find any connection the server did not notice).
const EMPTY_TIMEOUT: Duration = Duration::from_secs(30);
/// The shutdown target (issue 15, item 11).
const SHUTDOWN_TARGET: Duration = Duration::from_secs(2);
/// The RSS target after the churn: at most this times the warm level.
const RSS_TARGET: f64 = 1.10;
/// The reconnection delay of a client that was told none: what Chromium's
/// `EventSource` waits (Firefox waits 5 s); the storm lands wherever it is.
const DEFAULT_RETRY_MS: u64 = 3_000;
/// Buckets of the reconnect histogram, over the retry window.
const BUCKETS: usize = 10;
/// A client process never outlives this.
const CLIENT_LIFETIME: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// Client processes
// ---------------------------------------------------------------------------

/// `--lc churn --port P --cycles N --inflight K` or `--lc hold --port P
/// --conns N [--port2 Q]`.
pub(crate) fn client_main(args: &[String]) -> Result<(), String> {
    let mode = flag::<String>(args, "--lc").ok_or("--lc needs churn or hold")?;
    let port: u16 = flag(args, "--port").ok_or("--lc: missing --port")?;
    let cpu = flag(args, "--cpu").unwrap_or(CLIENT_CPU);
    let pinned = sys::pin_to_cpu(cpu)?;
    let conns: usize = flag(args, "--conns").unwrap_or(0);
    sys::raise_nofile(2 * conns as u64 + 256)?;
    std::thread::spawn(|| {
        std::thread::sleep(CLIENT_LIFETIME);
        eprintln!("fanout lifecycle client: lifetime exceeded, exiting");
        std::process::exit(3);
    });
    eprintln!("fanout lifecycle client: {mode}, pinned to {pinned}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match mode.as_str() {
        "churn" => {
            let summary = rt.block_on(churn(
                port,
                flag(args, "--cycles").ok_or("--lc churn: missing --cycles")?,
                flag(args, "--inflight").unwrap_or(64),
            ));
            say(&format!("DONE {summary}"));
        }
        "hold" => rt.block_on(hold_all(port, conns, flag(args, "--port2").unwrap_or(0))),
        other => return Err(format!("--lc {other}: churn or hold")),
    }
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads events until the `connection` event (the crate's first); an error
/// if the stream ends or fails before it.
async fn until_connection_event(sock: &mut TcpStream, dec: &mut Decoder) -> Result<(), String> {
    let mut st = ConnStats::default();
    let mut buf = [0u8; 2048];
    loop {
        let mut got = false;
        let ended = dec.drain(&mut st, &mut |ev: &[u8], _: &mut ConnStats| {
            got |= memmem::find(ev, b"event: connection\n").is_some();
        })?;
        if got {
            return Ok(());
        }
        if ended {
            return Err("stream ended before the connection event".to_owned());
        }
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the connection event".to_owned());
        }
        dec.push(&buf[..n]);
    }
}

/// `cycles` connect/disconnect cycles, `inflight` at a time: odd cycles end
/// with a reset (`SO_LINGER` 0, then close), even ones with a FIN
/// (`shutdown(Write)`, then close), each after the `connection` event.
async fn churn(port: u16, cycles: usize, inflight: usize) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..inflight.max(1))
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let (mut clean, mut rst, mut failed) = (0u64, 0u64, 0u64);
                let mut error = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cycles {
                        break;
                    }
                    let reset = i % 2 == 1;
                    match tokio::time::timeout(CYCLE_TIMEOUT, cycle(port, reset)).await {
                        Ok(Ok(())) if reset => rst += 1,
                        Ok(Ok(())) => clean += 1,
                        Ok(Err(e)) => {
                            failed += 1;
                            error.get_or_insert(e);
                        }
                        Err(_) => {
                            failed += 1;
                            error.get_or_insert_with(|| "cycle timed out".to_owned());
                        }
                    }
                }
                (clean, rst, failed, error)
            })
        })
        .collect();
    let (mut clean, mut rst, mut failed) = (0, 0, 0);
    let mut error: Option<String> = None;
    for w in workers {
        let (c, r, f, e) = w
            .await
            .unwrap_or((0, 0, 1, Some("worker panicked".to_owned())));
        clean += c;
        rst += r;
        failed += f;
        if error.is_none() {
            error = e;
        }
    }
    serde_json::json!({
        "clean": clean,
        "rst": rst,
        "failed": failed,
        "elapsed_ms": t0.elapsed().as_millis() as u64,
        "error": error,
    })
}

async fn cycle(port: u16, reset: bool) -> Result<(), String> {
    let (mut sock, mut dec) = open(port).await?;
    until_connection_event(&mut sock, &mut dec).await?;
    if reset {
        // Zero linger: the close sends RST and never blocks.
        sock.set_zero_linger()
            .map_err(|e| format!("SO_LINGER: {e}"))?;
    } else {
        sock.shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
    }
    drop(sock);
    Ok(())
}

/// What one held stream saw.
#[derive(Debug, Default)]
struct Held {
    connected: bool,
    error: Option<String>,
    /// The chunked body ended (the terminating chunk): the server closed
    /// the stream on purpose.
    clean_end: bool,
    /// The socket closed or failed without the terminating chunk.
    cut: bool,
    close_events: u32,
    retry_events: u32,
    retry_ms: Option<u64>,
    end_ns: u64,
    /// When its `retry:` delay was over and it connected again.
    reconnect_at_ns: u64,
    reconnected_ns: u64,
    reconnect_error: Option<String>,
}

struct HoldShared {
    port: u16,
    port2: u16,
    connected: AtomicUsize,
    failed: AtomicUsize,
    stop: CancellationToken,
    /// The second server's connections, open until the process ends.
    kept: parking_lot::Mutex<Vec<TcpStream>>,
}

/// Opens `conns` streams, reports `CONNECTED ok failed ms`, then waits
/// until every stream has ended (and, with `port2`, reconnected there after
/// its `retry:` delay) or `END` arrives on stdin, and reports `DONE
/// {summary}`; returns at `END` or the end of stdin.
async fn hold_all(port: u16, conns: usize, port2: u16) {
    let shared = Arc::new(HoldShared {
        port,
        port2,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        stop: CancellationToken::new(),
        kept: parking_lot::Mutex::new(Vec::new()),
    });
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(hold(Arc::clone(&shared), Arc::clone(&gate))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = shared.connected.load(Ordering::Acquire);
        let f = shared.failed.load(Ordering::Acquire);
        if c + f >= conns || Instant::now() >= deadline {
            say(&format!(
                "CONNECTED {c} {f} {}",
                started.elapsed().as_millis()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if line.trim() == "END" {
                break;
            }
        }
        stop.cancel();
    });
    let mut held = Vec::with_capacity(conns);
    for t in tasks {
        held.push(t.await.unwrap_or_default());
    }
    let kept = shared.kept.lock().len();
    let retries: Vec<u64> = held.iter().filter_map(|h| h.retry_ms).collect();
    let summary = serde_json::json!({
        "connected": held.iter().filter(|h| h.connected).count(),
        "clean_end": held.iter().filter(|h| h.clean_end).count(),
        "cut": held.iter().filter(|h| h.cut).count(),
        "close_events": held.iter().map(|h| u64::from(h.close_events)).sum::<u64>(),
        "retry_events": held.iter().map(|h| u64::from(h.retry_events)).sum::<u64>(),
        "retry_min_ms": retries.iter().min(),
        "retry_max_ms": retries.iter().max(),
        "with_retry": retries.len(),
        "end_ns": held.iter().filter(|h| h.end_ns > 0).map(|h| h.end_ns).collect::<Vec<_>>(),
        "reconnected_ns": held.iter().filter(|h| h.reconnected_ns > 0).map(|h| h.reconnected_ns).collect::<Vec<_>>(),
        // From the end of the delay to the `connection` event: what the
        // second server made each page wait.
        "reconnect_wait_ns": held.iter().filter(|h| h.reconnected_ns > 0).map(|h| h.reconnected_ns - h.reconnect_at_ns).collect::<Vec<_>>(),
        "kept": kept,
        "error": held.iter().find_map(|h| h.error.clone()),
        "reconnect_error": held.iter().find_map(|h| h.reconnect_error.clone()),
    });
    // The second server's connections stay open until the parent has
    // counted them: until `END` or the end of stdin.
    say(&format!("DONE {summary}"));
    shared.stop.cancelled().await;
}

async fn hold(shared: Arc<HoldShared>, gate: Arc<Semaphore>) -> Held {
    let mut h = Held::default();
    let permit = gate.acquire().await;
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, open(shared.port)).await;
    drop(permit);
    let (mut sock, mut dec) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            h.error = Some(e);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return h;
        }
        Err(_) => {
            h.error = Some("connect timed out".to_owned());
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return h;
        }
    };
    h.connected = true;
    shared.connected.fetch_add(1, Ordering::AcqRel);
    let mut st = ConnStats::default();
    let mut buf = vec![0u8; 4096];
    let (mut close_events, mut retry_events, mut retry_ms) = (0, 0, None);
    let ended = loop {
        let drained = dec.drain(&mut st, &mut |ev: &[u8], _: &mut ConnStats| {
            for line in ev.split(|&b| b == b'\n') {
                match line {
                    b"event: close" => close_events += 1,
                    b"event: htmx-sse-retry" => retry_events += 1,
                    _ => {
                        if let Some(ms) = line
                            .strip_prefix(b"retry: ")
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.parse().ok())
                        {
                            retry_ms = Some(ms);
                        }
                    }
                }
            }
        });
        match drained {
            Ok(true) => break true,
            Ok(false) => {}
            Err(e) => {
                h.error = Some(e);
                break false;
            }
        }
        let n = tokio::select! {
            r = sock.read(&mut buf) => r,
            () = shared.stop.cancelled() => return h,
        };
        match n {
            Ok(0) | Err(_) => break false,
            Ok(n) => dec.push(&buf[..n]),
        }
    };
    h.end_ns = sys::now_ns();
    let ended_at = tokio::time::Instant::now();
    h.clean_end = ended;
    h.cut = !ended;
    (h.close_events, h.retry_events, h.retry_ms) = (close_events, retry_events, retry_ms);
    drop(sock);
    if shared.port2 == 0 {
        return h;
    }
    // As a browser does: wait the `retry:` delay (or the default), then
    // connect again.
    let delay = Duration::from_millis(h.retry_ms.unwrap_or(DEFAULT_RETRY_MS));
    tokio::select! {
        () = tokio::time::sleep_until(ended_at + delay) => {}
        () = shared.stop.cancelled() => return h,
    }
    h.reconnect_at_ns = sys::now_ns();
    let again = async {
        let (mut sock, mut dec) = open(shared.port2).await?;
        until_connection_event(&mut sock, &mut dec).await?;
        Ok::<_, String>(sock)
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, again) => match r {
            Ok(Ok(sock)) => {
                h.reconnected_ns = sys::now_ns();
                shared.kept.lock().push(sock);
            }
            Ok(Err(e)) => h.reconnect_error = Some(e),
            Err(_) => h.reconnect_error = Some("reconnect timed out".to_owned()),
        },
        () = shared.stop.cancelled() => {}
    }
    h
}

// ---------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------

/// The sizes of one run of the three scenarios.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) warm_cycles: usize,
    pub(crate) cycles: usize,
    pub(crate) inflight: usize,
    pub(crate) shutdown_streams: usize,
    pub(crate) reconnect_streams: usize,
    pub(crate) window_ms: u64,
    /// Client processes the streams are split over.
    pub(crate) clients: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool, window_ms: Option<u64>) -> Sizes {
        if quick {
            Sizes {
                // The warm-up is the full one: fewer cycles leave the
                // allocator short of its plateau (200 read 1.15×).
                warm_cycles: 2_000,
                cycles: 4_000,
                inflight: 64,
                shutdown_streams: 1_000,
                reconnect_streams: 500,
                window_ms: window_ms.unwrap_or(2_000),
                clients: 1,
            }
        } else {
            Sizes {
                warm_cycles: 2_000,
                cycles: 20_000,
                inflight: 64,
                shutdown_streams: 10_000,
                reconnect_streams: 5_000,
                window_ms: window_ms.unwrap_or(10_000),
                clients: 2,
            }
        }
    }
}

/// What the scenarios found: Markdown for the report and the failures.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) md: String,
    pub(crate) failures: Vec<String>,
}

impl Outcome {
    fn line(&mut self, text: &str) {
        println!("  {text}");
        let _ = writeln!(self.md, "{text}");
    }
}

/// Runs the selected scenarios; `deadline` stops starting new ones.
pub(crate) fn run(selected: &[&str], sizes: Sizes, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    for &name in selected {
        if Instant::now() > deadline {
            out.failures
                .push(format!("{name}: not run (the bench's time budget)"));
            continue;
        }
        let t = Instant::now();
        let _ = writeln!(out.md, "\n## {name}\n");
        println!("fanout: lifecycle scenario {name}");
        let r = match name {
            "churn" => churn_scenario(sizes, &mut out),
            "shutdown" => shutdown_scenario(sizes, &mut out),
            "reconnect" => reconnect_scenario(sizes, &mut out),
            _ => Err(format!("unknown scenario {name}")),
        };
        let took = t.elapsed().as_secs_f64();
        match r {
            Ok(()) => out.line(&format!("\n{name}: PASS ({took:.1} s)")),
            Err(e) => {
                out.line(&format!("\n{name}: FAIL: {e} ({took:.1} s)"));
                out.failures.push(format!("{name}: {e}"));
            }
        }
        // Let the kernel finish closing the sockets before the next one.
        std::thread::sleep(Duration::from_millis(500));
    }
    out
}

/// A crate server (`--retry-window-ms` when `window_ms` is given) and its
/// stream port.
fn crate_server(name: &str, window_ms: Option<u64>) -> Result<(Child, u16), String> {
    let mut args = vec![
        "--serve".to_owned(),
        "crate".to_owned(),
        "--cpu".to_owned(),
        SERVER_CPU.to_string(),
    ];
    if let Some(ms) = window_ms {
        args.extend(["--retry-window-ms".to_owned(), ms.to_string()]);
    }
    let server = Child::spawn(name, &args)?;
    let ready = server.expect("READY", Duration::from_secs(20))?;
    let port = ready
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("READY port")?;
    Ok((server, port))
}

fn lc_client(name: &str, mode: &str, port: u16, extra: &[(&str, String)]) -> Result<Child, String> {
    let mut args = vec![
        "--lc".to_owned(),
        mode.to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--cpu".to_owned(),
        CLIENT_CPU.to_string(),
    ];
    for (k, v) in extra {
        args.push((*k).to_owned());
        args.push(v.clone());
    }
    Child::spawn(name, &args)
}

/// `GET /stats` of the crate server: (open connections, registry entries).
fn stats(port: u16) -> Result<(usize, usize), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("stats connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /stats HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("stats: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("stats read: {e}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let field = |k: &str| -> Option<usize> {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    match (field("connections"), field("registry")) {
        (Some(c), Some(r)) => Ok((c, r)),
        _ => Err(format!("stats: unexpected answer {text:?}")),
    }
}

/// Polls `/stats` every 50 ms until `done(connections, registry)`, for at
/// most `timeout`; returns the last reading and the time it took.
fn wait_stats(
    port: u16,
    timeout: Duration,
    done: impl Fn(usize, usize) -> bool,
) -> Result<((usize, usize), Duration, bool), String> {
    let t = Instant::now();
    loop {
        let s = stats(port)?;
        if done(s.0, s.1) {
            return Ok((s, t.elapsed(), true));
        }
        if t.elapsed() >= timeout {
            return Ok((s, t.elapsed(), false));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(server: &Child) -> Result<(), String> {
    let pid = i32::try_from(server.pid()).map_err(|e| e.to_string())?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("kill(SIGTERM): {e}"))
}

fn done_json(c: &Child, timeout: Duration) -> Result<serde_json::Value, String> {
    let line = c.expect("DONE", timeout)?;
    serde_json::from_str(&line).map_err(|e| format!("{}: summary: {e}", c.name))
}

/// Waits for a hold client's summary; after `timeout`, tells it to stop
/// and takes what it has.
fn hold_summary(c: &mut Child, timeout: Duration) -> Result<serde_json::Value, String> {
    match done_json(c, timeout) {
        Ok(v) => Ok(v),
        Err(_) => {
            c.send("END")?;
            done_json(c, Duration::from_secs(20))
        }
    }
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn list(v: &serde_json::Value, k: &str) -> Vec<u64> {
    v[k].as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn churn_scenario(sz: Sizes, out: &mut Outcome) -> Result<(), String> {
    let (server, port) = crate_server("server crate (churn)", None)?;
    let r = churn_with(&server, port, sz, out);
    server.finish();
    r
}

fn churn_phase(port: u16, cycles: usize, inflight: usize) -> Result<serde_json::Value, String> {
    let client = lc_client(
        "churn client",
        "churn",
        port,
        &[
            ("--cycles", cycles.to_string()),
            ("--inflight", inflight.to_string()),
        ],
    )?;
    let v = done_json(&client, Duration::from_secs(300));
    client.finish();
    v
}

/// The churn in `STAGES` equal parts, each followed by the wait for an
/// empty registry and an RSS reading: a leak grows with every part, a
/// plateau (the allocator keeping the pages of its busiest moment) does not.
const STAGES: usize = 4;

/// `VmRSS` and `VmHWM` (its peak so far) of a process, in KiB.
fn rss_hwm(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |k: &str| -> Result<u64, String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {k} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn churn_with(server: &Child, port: u16, sz: Sizes, out: &mut Outcome) -> Result<(), String> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (rss_start, _) = rss_hwm(server.pid())?;
    let _ = writeln!(
        out.md,
        "| phase | cycles (clean FIN + RST) | failed | took s | cycles/s | registry at the last disconnect (open, entries) | empty after | server RSS MiB (peak so far) | RSS ÷ warm-up |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut phases = vec![("warm-up".to_owned(), sz.warm_cycles)];
    let part = sz.cycles / STAGES;
    for i in 0..STAGES {
        let k = if i + 1 == STAGES {
            sz.cycles - part * (STAGES - 1)
        } else {
            part
        };
        phases.push((format!("churn {}/{STAGES}", i + 1), k));
    }
    let mut rss_warm = 0;
    let mut ratio = 0.0;
    let mut failed = 0;
    let mut errors = Vec::new();
    let mut total = (0, 0, 0, 0u64);
    let mut last = ((0, 0), Duration::ZERO, true);
    for (i, (name, cycles)) in phases.iter().enumerate() {
        let v = churn_phase(port, *cycles, sz.inflight)?;
        let at_last = stats(port)?;
        last = wait_stats(port, EMPTY_TIMEOUT, |c, r| c == 0 && r == 0)?;
        let ((conns, reg), wait, empty) = last;
        if !empty {
            return Err(format!(
                "registry not empty {EMPTY_TIMEOUT:?} after {name}: {conns} open, {reg} entries"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
        let (rss, hwm) = rss_hwm(server.pid())?;
        if i == 0 {
            rss_warm = rss;
        } else {
            total.0 += n(&v, "clean");
            total.1 += n(&v, "rst");
            total.2 += n(&v, "failed");
            total.3 += n(&v, "elapsed_ms");
        }
        ratio = rss as f64 / rss_warm.max(1) as f64;
        failed += n(&v, "failed");
        if let Some(e) = v["error"].as_str() {
            errors.push(format!("{name}: {e}"));
        }
        let secs = n(&v, "elapsed_ms") as f64 / 1e3;
        out.line(&format!(
            "| {name} | {cycles} ({} + {}) | {} | {secs:.2} | {:.0} | {}, {} | {} ms | {:.1} ({:.1}){} | {ratio:.3} |",
            n(&v, "clean"),
            n(&v, "rst"),
            n(&v, "failed"),
            *cycles as f64 / secs.max(1e-3),
            at_last.0,
            at_last.1,
            wait.as_millis(),
            mib(rss),
            mib(hwm),
            if i == 0 {
                format!(", {:.1} before", mib(rss_start))
            } else {
                String::new()
            },
        ));
    }
    let ((conns, reg), _, empty) = last;
    out.line(&format!(
        "\n{} cycles ({} clean + {} reset, {} failed) in {:.1} s after a warm-up of {}, {} in flight. RSS after the churn ÷ after the warm-up: **{ratio:.3}** (target ≤ {RSS_TARGET:.2}); registry after: **{conns} open, {reg} entries** (target 0, within {EMPTY_TIMEOUT:?}).",
        sz.cycles,
        total.0,
        total.1,
        total.2,
        total.3 as f64 / 1e3,
        sz.warm_cycles,
        sz.inflight,
    ));
    if let Some(e) = errors.first() {
        out.line(&format!("first cycle error: {e}"));
    }
    let mut problems = Vec::new();
    if !empty {
        problems.push(format!(
            "registry not empty {EMPTY_TIMEOUT:?} after the churn: {conns} open, {reg} entries"
        ));
    }
    if ratio > RSS_TARGET {
        problems.push(format!(
            "RSS {ratio:.3}× the warm-up level (target ≤ {RSS_TARGET:.2}×)"
        ));
    }
    if failed > 0 {
        problems.push(format!("{failed} cycles failed"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Opens `total` streams over `sz.clients` hold clients to `port` (and
/// `port2` to reconnect to); returns them once all are registered.
fn open_streams(
    port: u16,
    port2: Option<u16>,
    total: usize,
    clients: usize,
) -> Result<(Vec<Child>, Duration), String> {
    let t = Instant::now();
    let per = total.div_ceil(clients.max(1));
    let mut left = total;
    let mut out = Vec::new();
    for i in 0..clients.max(1) {
        let k = per.min(left);
        left -= k;
        let mut extra = vec![("--conns", k.to_string())];
        if let Some(p2) = port2 {
            extra.push(("--port2", p2.to_string()));
        }
        out.push(lc_client(
            &format!("hold client {i}"),
            "hold",
            port,
            &extra,
        )?);
    }
    let mut connected = 0;
    let mut failed = 0;
    for c in &out {
        let line = c.expect("CONNECTED", Duration::from_secs(150))?;
        let v: Vec<usize> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        connected += v.first().copied().unwrap_or(0);
        failed += v.get(1).copied().unwrap_or(0);
    }
    if failed > 0 || connected != total {
        return Err(format!(
            "{connected} of {total} streams opened ({failed} failed)"
        ));
    }
    let ((c, _), _, all) = wait_stats(port, Duration::from_secs(30), |c, _| c >= total)?;
    if !all {
        return Err(format!("the server has {c} of {total} streams registered"));
    }
    Ok((out, t.elapsed()))
}

fn finish_all(clients: Vec<Child>) {
    for c in clients {
        c.finish();
    }
}

fn shutdown_scenario(sz: Sizes, out: &mut Outcome) -> Result<(), String> {
    let (mut server, port) = crate_server("server crate (shutdown)", None)?;
    let r = shutdown_with(&mut server, port, sz, out);
    server.finish();
    r
}

fn shutdown_with(
    server: &mut Child,
    port: u16,
    sz: Sizes,
    out: &mut Outcome,
) -> Result<(), String> {
    let total = sz.shutdown_streams;
    let (mut clients, opened) = open_streams(port, None, total, sz.clients)?;
    let r = (|| {
        std::thread::sleep(Duration::from_millis(500));
        let rss_held = sys::read_proc(server.pid())?.rss_kib;
        let signal_ns = sys::now_ns();
        sigterm(server)?;
        let stopped = server.expect("STOPPED", Duration::from_secs(30));
        let mut sums = Vec::new();
        for c in &mut clients {
            sums.push(hold_summary(c, Duration::from_secs(30))?);
        }
        let total_of = |k: &str| sums.iter().map(|v| n(v, k)).sum::<u64>();
        let clean = total_of("clean_end");
        let cut = total_of("cut");
        let mut ends: Vec<u64> = sums
            .iter()
            .flat_map(|v| list(v, "end_ns"))
            .map(|e| e.saturating_sub(signal_ns))
            .collect();
        ends.sort_unstable();
        let last = ends.last().copied().unwrap_or(u64::MAX);
        let stop_ms = stopped
            .as_ref()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| format!("{:.0} ms", ms(s.saturating_sub(signal_ns))))
            .unwrap_or_else(|| "not within 30 s".to_owned());
        let _ = writeln!(
            out.md,
            "| streams | opened in | server RSS held MiB | ended cleanly / streams | cut (no end chunk) | `event: close` received | ended after SIGTERM: p50 / p99 / last | server exited (axum::serve returned) |\n|---|---|---|---|---|---|---|---|"
        );
        out.line(&format!(
            "| {total} | {:.1} s | {:.1} | **{clean} / {total}** | {cut} | {} | {:.0} / {:.0} / **{:.0} ms** | {stop_ms} after SIGTERM |",
            opened.as_secs_f64(),
            rss_held as f64 / 1024.0,
            total_of("close_events"),
            ms(pct(&ends, 0.5)),
            ms(pct(&ends, 0.99)),
            ms(last),
        ));
        let mut problems = Vec::new();
        if clean as usize != total {
            problems.push(format!(
                "{clean} of {total} streams ended cleanly ({cut} cut)"
            ));
        }
        if last > SHUTDOWN_TARGET.as_nanos() as u64 {
            problems.push(format!(
                "the last stream ended {:.0} ms after SIGTERM (target ≤ {} ms)",
                ms(last),
                SHUTDOWN_TARGET.as_millis()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    })();
    finish_all(clients);
    r
}

fn reconnect_scenario(sz: Sizes, out: &mut Outcome) -> Result<(), String> {
    let w = sz.window_ms;
    let _ = writeln!(
        out.md,
        "{} streams; SIGTERM to server A; each client waits the `retry:` it got (or {DEFAULT_RETRY_MS} ms, the browser default, when none) after its stream ended, then connects to server B and reads its `connection` event. Reconnects (B's `connection` event received) counted per {} ms after the signal:\n",
        sz.reconnect_streams,
        histogram_span_ms(sz) / BUCKETS as u64
    );
    let mut problems = Vec::new();
    for window in [None, Some(w)] {
        let label = match window {
            None => "without retry_on_shutdown (storm)".to_owned(),
            Some(ms) => format!("retry_on_shutdown({ms} ms)"),
        };
        if let Err(e) = reconnect_once(sz, window, &label, out) {
            problems.push(format!("{label}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The histogram covers the retry window, or the default retry and a
/// second when that is longer (the quick run's short window), so that both
/// runs of one bench land in the same buckets.
fn histogram_span_ms(sz: Sizes) -> u64 {
    sz.window_ms.max(DEFAULT_RETRY_MS + 1_000)
}

fn reconnect_once(
    sz: Sizes,
    window: Option<u64>,
    label: &str,
    out: &mut Outcome,
) -> Result<(), String> {
    let total = sz.reconnect_streams;
    let (a, port_a) = crate_server("server A", window)?;
    let (b, port_b) = match crate_server("server B", None) {
        Ok(s) => s,
        Err(e) => {
            a.finish();
            return Err(e);
        }
    };
    let r = (|| {
        let (mut clients, _) = open_streams(port_a, Some(port_b), total, sz.clients)?;
        let r = (|| {
            std::thread::sleep(Duration::from_millis(500));
            let signal_ns = sys::now_ns();
            sigterm(&a)?;
            let stopped = a.expect("STOPPED", Duration::from_secs(30));
            let wait =
                Duration::from_millis(sz.window_ms.max(DEFAULT_RETRY_MS)) + Duration::from_secs(30);
            let mut sums = Vec::new();
            for c in &mut clients {
                sums.push(hold_summary(c, wait)?);
            }
            let total_of = |k: &str| sums.iter().map(|v| n(v, k)).sum::<u64>();
            let mut at: Vec<u64> = sums
                .iter()
                .flat_map(|v| list(v, "reconnected_ns"))
                .map(|t| t.saturating_sub(signal_ns))
                .collect();
            at.sort_unstable();
            let ((on_b, _), _, _) = wait_stats(port_b, Duration::from_secs(5), |c, _| c >= total)?;
            let span_ns = histogram_span_ms(sz) * 1_000_000;
            let bucket_ns = span_ns / BUCKETS as u64;
            let mut hist = [0u64; BUCKETS];
            let mut over = 0;
            for &t in &at {
                match usize::try_from(t / bucket_ns.max(1)) {
                    Ok(i) if i < BUCKETS => hist[i] += 1,
                    _ => over += 1,
                }
            }
            // Reconnects in the busiest 100 ms.
            let mut peak = 0;
            let mut j = 0;
            for i in 0..at.len() {
                while at[i] - at[j] >= 100_000_000 {
                    j += 1;
                }
                peak = peak.max(i + 1 - j);
            }
            let mut waits: Vec<u64> = sums
                .iter()
                .flat_map(|v| list(v, "reconnect_wait_ns"))
                .collect();
            waits.sort_unstable();
            let max = hist.iter().copied().max().unwrap_or(0);
            let mean = hist.iter().sum::<u64>() as f64 / BUCKETS as f64;
            let retry_range = match (
                sums.iter().filter_map(|v| v["retry_min_ms"].as_u64()).min(),
                sums.iter().filter_map(|v| v["retry_max_ms"].as_u64()).max(),
            ) {
                (Some(lo), Some(hi)) => format!("{lo}–{hi} ms"),
                _ => "none".to_owned(),
            };
            out.line(&format!(
                "\n**{label}**: {} of {total} reconnected ({} on B by its own count), {} of {total} told a `retry:` (range {retry_range}), {} `htmx-sse-retry` events, {} streams ended cleanly; A's serve returned {} after SIGTERM. Busiest 100 ms: **{peak}** reconnects; largest {}-ms bucket ÷ mean bucket: **{:.2}**; first / p50 / last reconnect {:.0} / {:.0} / {:.0} ms after SIGTERM; connect to `connection` event on B p50 / p99 / max {:.1} / {:.1} / {:.1} ms.\n",
                at.len(),
                on_b,
                total_of("with_retry"),
                total_of("retry_events"),
                total_of("clean_end"),
                stopped
                    .as_ref()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|s| format!("{:.0} ms", ms(s.saturating_sub(signal_ns))))
                    .unwrap_or_else(|| "not within 30 s".to_owned()),
                bucket_ns / 1_000_000,
                if mean > 0.0 { max as f64 / mean } else { 0.0 },
                ms(at.first().copied().unwrap_or(0)),
                ms(pct(&at, 0.5)),
                ms(at.last().copied().unwrap_or(0)),
                ms(pct(&waits, 0.5)),
                ms(pct(&waits, 0.99)),
                ms(waits.last().copied().unwrap_or(0)),
            ));
            let _ = writeln!(out.md, "```text");
            let scale = max.max(1) as f64 / 50.0;
            for (i, &c) in hist.iter().enumerate() {
                let lo = i as u64 * bucket_ns / 1_000_000;
                let hi = (i as u64 + 1) * bucket_ns / 1_000_000;
                out.line(&format!(
                    "{lo:>6}–{hi:<6} ms {c:>6} {}",
                    "#".repeat((c as f64 / scale).round() as usize)
                ));
            }
            out.line(&format!("   > {:<6} ms {over:>6}", span_ns / 1_000_000));
            let _ = writeln!(out.md, "```");
            if let Some(e) = sums.iter().find_map(|v| v["reconnect_error"].as_str()) {
                out.line(&format!("first reconnect error: {e}"));
            }
            if at.len() != total {
                return Err(format!("{} of {total} reconnected", at.len()));
            }
            Ok(())
        })();
        finish_all(clients);
        r
    })();
    b.finish();
    a.finish();
    r
}
