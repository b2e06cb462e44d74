//! Faults over real processes (issue 15, item 9): the server is
//! `examples/fault_server.rs` run as its own process on a free port of
//! 127.0.0.1, Redis a real `redis-server`, and what is checked is what a
//! page would see on the wire: frames, event ids, the `reset` event and its
//! data.
//!
//! - a client that stops reading is closed for lag, the others receive
//!   everything, and it resumes exactly with its `Last-Event-ID` (or gets
//!   `reset` with `history-gap` when the history is shorter than its lag);
//! - a client that goes silent is noticed by the heartbeat (no frame
//!   written for three intervals: no longer active), and one that vanishes
//!   with a reset (RST, no FIN) leaves the registry (`GET /sse/status`);
//! - a restarted server: in memory the page gets `reset` (`restarted`), on
//!   Redis it resumes exactly; SIGTERM with a frozen tab attached still
//!   ends the other streams at once;
//! - Redis killed and restarted mid-publish, with its data (nothing
//!   acknowledged is lost) and without (a `reset`, never a silent skip);
//!   publishes during the outage answer 503 with a JSON error; an instance
//!   started after Redis lost its data still resumes the others' pages;
//! - two instances on one Redis, one killed with SIGKILL mid-publish: the
//!   survivor's pages lose nothing acknowledged, and the dead one's pages
//!   resume on the survivor with the same connection id and nothing
//!   missed.
//!
//! The server binary is built by `cargo build --example fault_server` with
//! this test's features the first time a test needs it (a no-op when it is
//! fresh), so `cargo test --test faults` runs on its own.
#![cfg(all(unix, feature = "testing"))]

mod common;

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
#[cfg(feature = "redis")]
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use htmx_sse::testing::{ClientError, Parser, ReceivedEvent, SseItem, TestClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The server process.

/// `target/debug/examples/fault_server`, built with this test's features.
fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| common::example::example_binary("fault_server"))
}

/// One `fault_server` process; killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    redis: Option<String>,
}

impl Server {
    /// Starts a server on a free port with `args`, on the Redis at `redis`
    /// if given; returns once it accepts connections.
    fn start(args: &[&str], redis: Option<&str>) -> Server {
        let mut server = Server {
            child: None,
            port: 0,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            redis: redis.map(str::to_owned),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(server_binary());
        cmd.arg("--addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("HTMX_SSE_FAULTS_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = &self.redis {
            cmd.env("REDIS_URL", url);
        }
        let mut child = cmd.spawn().expect("fault_server starts");
        // Its first line says where it listens; the rest is drained.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("fault_server did not start: {other:?}");
            }
        };
        let addr: SocketAddr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        assert!(self.port == 0 || self.port == addr.port());
        self.port = addr.port();
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The stream's URL.
    fn sse(&self) -> String {
        format!("{}/sse", self.base())
    }

    /// Sends SIGTERM, as a deploy stops it.
    fn send_term(&self) {
        let child = self.child.as_ref().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit 0, for at most 5 s.
    fn wait_exit(&mut self) {
        let mut child = self.child.take().expect("running");
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "fault_server exited with {status}");
                return;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fault_server did not stop within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: it must exit 0 within 5 s.
    fn terminate(&mut self) {
        self.send_term();
        self.wait_exit();
    }

    /// SIGKILL, as a crash: no clean end for anyone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same arguments.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Publishing and reading the status, over HTTP.

/// The data of message `n`: `n=N;` and `pad` bytes of padding.
fn payload(n: u64, pad: usize) -> String {
    format!("n={n};{}", "x".repeat(pad))
}

/// `N` from a message's data.
fn number(ev: &ReceivedEvent) -> u64 {
    ev.data
        .strip_prefix("n=")
        .and_then(|s| s.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a test message: {ev:?}"))
}

/// An HTTP client for publishing and reading the status (no proxy, 5 s
/// timeout).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// What a publish answered: the status and the JSON body; `None` when no
/// answer came (the process died with the request in flight).
async fn publish(client: &reqwest::Client, base: &str, n: u64, pad: usize) -> Option<(u16, Value)> {
    let res = client
        .post(format!("{base}/sse/broadcast"))
        .json(&json!({"type": "n", "data": payload(n, pad)}))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let body = res.json().await.ok()?;
    Some((status, body))
}

/// Publishes message `n`, which must succeed; returns its id `EPOCH-SEQ`.
async fn publish_ok(client: &reqwest::Client, base: &str, n: u64, pad: usize) -> String {
    let t0 = Instant::now();
    let (status, body) = publish(client, base, n, pad).await.expect("an answer");
    assert_eq!(status, 200, "publishing {n}: {body}");
    // A publisher never waits for a connection.
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "publish {n} took {:?}",
        t0.elapsed()
    );
    body["id"].as_str().expect("an id").to_owned()
}

/// A publish refused while the backend is down: 503 with a JSON error.
#[cfg(feature = "redis")]
fn assert_unavailable(n: u64, answer: Option<&(u16, Value)>) {
    let (status, body) = answer.unwrap_or_else(|| panic!("publish {n}: no answer"));
    assert_eq!(*status, 503, "publish {n} while Redis is down: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("backend unavailable"),
        "publish {n}: not the JSON error: {body}"
    );
}

/// What one publish of a background [`Publisher`] got: its number, the
/// index of the server it went to, and the answer.
#[cfg(feature = "redis")]
type Attempt = (u64, usize, Option<(u16, Value)>);

/// Publishes `1, 2, 3, …` in the background, message `n` to
/// `bases[n % bases.len()]`, until stopped.
#[cfg(feature = "redis")]
struct Publisher {
    acked: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Attempt>>,
}

#[cfg(feature = "redis")]
impl Publisher {
    fn start(http: &reqwest::Client, bases: Vec<String>) -> Publisher {
        let acked = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (http, acked, attempts, stop) =
                (http.clone(), acked.clone(), attempts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let to = (n % bases.len() as u64) as usize;
                    let answer = publish(&http, &bases[to], n, 0).await;
                    if answer.as_ref().is_some_and(|(s, _)| *s == 200) {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    results.push((n, to, answer));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                results
            })
        };
        Publisher {
            acked,
            attempts,
            stop,
            task,
        }
    }

    /// Waits until `count` publishes were acknowledged.
    async fn wait_acked(&self, count: usize) {
        let t0 = Instant::now();
        while self.acked.load(Ordering::Relaxed) < count {
            assert!(
                t0.elapsed() < WAIT,
                "fewer than {count} publishes acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for `more` further attempts, then stops; returns every attempt.
    async fn finish_after(self, more: usize) -> Vec<Attempt> {
        let from = self.attempts.load(Ordering::Relaxed);
        let t0 = Instant::now();
        while self.attempts.load(Ordering::Relaxed) < from + more {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the publisher is stuck"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `GET /sse/status`.
async fn status(client: &reqwest::Client, base: &str) -> Value {
    let res = client
        .get(format!("{base}/sse/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Polls the status until `ok` holds, for at most `within`.
async fn wait_status(
    client: &reqwest::Client,
    base: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let s = status(client, base).await;
        if ok(&s) {
            return s;
        }
        assert!(t0.elapsed() < within, "{what}: still {s} after {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Event ids, as a page sees them.

/// The parts of an event id `EPOCH-SEQ.CONNECTION.PROOF`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Id {
    epoch: String,
    seq: u64,
    connection: String,
}

fn id_of(ev: &ReceivedEvent) -> Id {
    let mut parts = ev.last_event_id.split('.');
    let message = parts.next().unwrap();
    let connection = parts.next().unwrap_or_else(|| panic!("{ev:?}")).to_owned();
    let proof = parts.next().unwrap_or_else(|| panic!("{ev:?}"));
    // 24 hex digits, 48 when masked (the opening event's, a compressed stream's).
    assert!(
        matches!(proof.len(), 24 | 48) && parts.next().is_none(),
        "{ev:?}"
    );
    let (epoch, seq) = message.split_once('-').unwrap();
    assert_eq!(epoch.len(), 8, "{ev:?}");
    Id {
        epoch: epoch.to_owned(),
        seq: seq.parse().unwrap(),
        connection,
    }
}

/// The connection id a `connection` event hands the page.
fn connection_id(ev: &ReceivedEvent) -> String {
    assert_eq!(ev.event, "connection", "{ev:?}");
    let id = id_of(ev).connection;
    assert_eq!(
        ev.data,
        format!("<input type=\"hidden\" name=\"connection_id\" value=\"{id}\">")
    );
    id
}

/// Checks everything one page received, over all its connections: each
/// message follows the one before it by exactly one in the same epoch (no
/// gap, no duplicate), a message of another epoch is either its first or
/// comes after a `reset`, and a resumed connection starts where the page
/// stood. Returns the reasons of the resets, in order.
fn check_no_silent_skip(log: &[ReceivedEvent]) -> Vec<String> {
    let mut at: Option<(String, u64)> = None;
    let mut connection: Option<String> = None;
    let mut resets = Vec::new();
    for (i, ev) in log.iter().enumerate() {
        let id = id_of(ev);
        match ev.event.as_str() {
            "connection" => {
                let this = connection_id(ev);
                match (&at, &connection) {
                    (Some((epoch, seq)), Some(before)) => {
                        let reset_next = log.get(i + 1).is_some_and(|n| n.event == "reset");
                        if !reset_next {
                            assert_eq!(
                                (&id.epoch, id.seq),
                                (epoch, *seq),
                                "event {i}: resumed elsewhere than where the page stood"
                            );
                            assert_eq!(&this, before, "event {i}: resumed under another id");
                        }
                    }
                    _ => at = Some((id.epoch, id.seq)),
                }
                connection = Some(this);
            }
            "reset" => {
                let data: Value = serde_json::from_str(&ev.data).unwrap();
                let reason = data["reason"].as_str().unwrap().to_owned();
                assert!(
                    ["history-gap", "restarted", "unrecognized"].contains(&reason.as_str()),
                    "{reason}"
                );
                // Exactly the documented payload, nothing else in it.
                assert_eq!(ev.data, format!("{{\"reason\":\"{reason}\"}}"));
                assert_eq!(
                    log[i - 1].event,
                    "connection",
                    "a reset follows the connection event"
                );
                // The same point and connection (each proof masked anew).
                let without_proof = |id: &str| id.rsplit_once('.').unwrap().0.to_owned();
                assert_eq!(
                    without_proof(&log[i - 1].last_event_id),
                    without_proof(&ev.last_event_id)
                );
                resets.push(reason);
                at = Some((id.epoch, id.seq));
            }
            _ => {
                let (epoch, seq) = at.as_ref().expect("a connection event first");
                if id.epoch == *epoch {
                    assert_eq!(
                        id.seq,
                        seq + 1,
                        "event {i} ({}): a gap or a duplicate after {epoch}-{seq}",
                        ev.last_event_id
                    );
                } else {
                    assert_eq!(
                        id.seq, 1,
                        "event {i} ({}): a new epoch entered mid-way without a reset (a silent skip)",
                        ev.last_event_id
                    );
                }
                at = Some((id.epoch, id.seq));
            }
        }
    }
    resets
}

/// The test messages among `log`, by number.
fn numbers(log: &[ReceivedEvent]) -> Vec<u64> {
    log.iter().filter(|e| e.event == "n").map(number).collect()
}

// ---------------------------------------------------------------------------
// A page: an SSE client that reconnects with its Last-Event-ID, as a
// browser does.

struct Page {
    client: Option<TestClient>,
    /// Every event received, over all connections.
    log: Vec<ReceivedEvent>,
    /// How each connection ended: `true` cleanly, `false` cut.
    ends: Vec<bool>,
}

impl Page {
    async fn open(url: &str) -> Page {
        let mut page = Page {
            client: None,
            log: Vec::new(),
            ends: Vec::new(),
        };
        page.connect(url, Instant::now() + WAIT).await;
        page
    }

    /// The id a browser would send back.
    fn last_event_id(&self) -> Option<&str> {
        self.log.last().map(|e| e.last_event_id.as_str())
    }

    /// Connects to `url` with the last event id (retrying while nothing
    /// listens there) and reads the `connection` event.
    async fn connect(&mut self, url: &str, deadline: Instant) {
        loop {
            let mut b = TestClient::get(url);
            if let Some(id) = self.last_event_id() {
                b = b.last_event_id(id);
            }
            match b.connect().await {
                Ok(mut c) => {
                    let hello = c.next_event_within(WAIT).await.unwrap();
                    connection_id(&hello);
                    self.log.push(hello);
                    self.client = Some(c);
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reconnect to {url}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Reads until `done(log)` holds, reconnecting to `url` whenever the
    /// stream ends; fails after `within`.
    async fn follow(
        &mut self,
        url: &str,
        within: Duration,
        done: impl Fn(&[ReceivedEvent]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(&self.log) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not done after {within:?}: {:?}",
                summary(&self.log)
            );
            let Some(client) = self.client.as_mut() else {
                self.connect(url, deadline).await;
                continue;
            };
            match client.next_event_within(left).await {
                Ok(ev) => {
                    self.log.push(ev);
                    // Fails at the first event out of line, not later.
                    check_no_silent_skip(&self.log);
                }
                Err(ClientError::Timeout) => {}
                Err(e) => {
                    self.ends.push(matches!(e, ClientError::Closed));
                    self.client = None;
                }
            }
        }
    }

    /// Reads until the current connection ends; returns whether it ended
    /// cleanly (the last chunk of the body) rather than cut.
    async fn until_closed(&mut self) -> bool {
        let client = self.client.as_mut().expect("connected");
        let clean = loop {
            match client.next_event_within(WAIT).await {
                Ok(ev) => self.log.push(ev),
                Err(ClientError::Closed) => break true,
                Err(ClientError::Http(_)) => break false,
                Err(e) => panic!("the stream did not end: {e}"),
            }
        };
        self.client = None;
        self.ends.push(clean);
        clean
    }
}

/// The log in short, for failure messages.
fn summary(log: &[ReceivedEvent]) -> Vec<String> {
    log.iter()
        .map(|e| {
            let data: String = e.data.chars().take(24).collect();
            format!(
                "{} {} {data}",
                e.event,
                e.last_event_id.split('.').next().unwrap_or("")
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client with a tiny receive buffer, that can stop reading
// and vanish with a reset.

struct RawClient {
    stream: TcpStream,
    /// Bytes received and not yet de-chunked.
    wire: Vec<u8>,
    parser: Parser,
    events: VecDeque<ReceivedEvent>,
    /// The last chunk of the body arrived.
    ended: bool,
}

impl RawClient {
    /// `GET /sse` on `port`, with a 4 KiB receive buffer (so that a few
    /// frames fill it), resuming from `last_event_id` if given.
    async fn connect(port: u16, last_event_id: Option<&str>) -> RawClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(
                format!(
                    "GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{resume}\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("response headers in time")
                .unwrap();
            assert!(n > 0, "closed before the headers");
            head.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 "), "{text}");
        assert!(text.contains("content-type: text/event-stream"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        RawClient {
            stream,
            wire: head[end..].to_vec(),
            parser: Parser::new(),
            events: VecDeque::new(),
            ended: false,
        }
    }

    /// Moves every complete chunk from `wire` through the parser.
    fn dechunk(&mut self) {
        while !self.ended {
            let Some(eol) = self.wire.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line = std::str::from_utf8(&self.wire[..eol]).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                self.ended = true;
                return;
            }
            let total = eol + 2 + size + 2;
            if self.wire.len() < total {
                return;
            }
            assert_eq!(&self.wire[total - 2..total], b"\r\n", "chunk framing");
            let items = self.parser.feed(&self.wire[eol + 2..eol + 2 + size]);
            self.wire.drain(..total);
            for item in items {
                if let SseItem::Event(ev) = item {
                    self.events.push_back(ev);
                }
            }
        }
    }

    /// The next event, or `None` once the body ended cleanly.
    async fn next_event(&mut self) -> Option<ReceivedEvent> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.dechunk();
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
                .await
                .expect("an event or the end in time")
                .expect("read");
            assert!(n > 0, "the connection was cut, not ended");
            self.wire.extend_from_slice(&buf[..n]);
        }
    }

    /// Disappears without a FIN: `SO_LINGER` 0, so closing sends a reset.
    fn vanish(self) {
        self.stream.set_zero_linger().unwrap();
        drop(self.stream);
    }
}

// ---------------------------------------------------------------------------
// 1. A client that stops reading.

/// How many messages the stalling tests publish, and their padding.
const STALL_N: u64 = 200;
const STALL_PAD: usize = 4096;

/// A server whose queue holds 8 and whose sockets have small buffers, with
/// `history` kept; a page that stops reading (a frozen tab, a stalled
/// proxy) while 200 messages of 4 KiB are published, and another that
/// reads along, receives each message at once and never waits for the
/// first (no publish takes long). The stalled page then reads again: what
/// was buffered, then the end of its stream (closed for lag, without the
/// close event). Returns the server, the page that read along, the stalled
/// page's connection id, and what it received.
async fn stall_one_page(
    history: &str,
) -> (
    Server,
    reqwest::Client,
    TestClient,
    String,
    Vec<ReceivedEvent>,
) {
    let server = Server::start(
        &["--queue", "8", "--history", history, "--sndbuf", "4096"],
        None,
    );
    let http = http();
    let (mut fast, _) = common::open_connection(&server.sse(), None).await;
    let mut slow = RawClient::connect(server.port, None).await;
    let hello = slow.next_event().await.unwrap();
    let slow_id = connection_id(&hello);
    assert_eq!(id_of(&hello).seq, 0);

    for n in 1..=STALL_N {
        let id = publish_ok(&http, &server.base(), n, STALL_PAD).await;
        assert!(id.ends_with(&format!("-{n}")), "{id}");
        let ev = fast.next_event_within(WAIT).await.unwrap();
        assert_eq!((ev.event.as_str(), number(&ev)), ("n", n));
        assert_eq!(ev.data, payload(n, STALL_PAD));
    }

    let mut log = vec![hello];
    while let Some(ev) = slow.next_event().await {
        assert_eq!(ev.event, "n", "only messages, no close event: {ev:?}");
        log.push(ev);
    }
    let got = numbers(&log);
    println!(
        "the stalled page read {} buffered messages, then its stream ended",
        got.len()
    );
    assert!(
        (got.len() as u64) < STALL_N / 2,
        "not closed for lag: {} of {STALL_N} messages were buffered",
        got.len()
    );
    assert!(check_no_silent_skip(&log).is_empty());
    (server, http, fast, slow_id, log)
}

/// With a history longer than the lag, the stalled page, coming back with
/// its `Last-Event-ID`, gets its connection id back and exactly the rest:
/// together, 1 to 200, no gap, no duplicate, no reset.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_for_lag_and_resumes_exactly() {
    let (server, http, mut fast, slow_id, mut log) = stall_one_page("1000").await;
    let last = log.last().unwrap().last_event_id.clone();
    let mut back = TestClient::get(server.sse())
        .last_event_id(&last)
        .connect()
        .await
        .unwrap();
    let again = back.next_event_within(WAIT).await.unwrap();
    assert_eq!(connection_id(&again), slow_id, "its connection id back");
    log.push(again);
    while numbers(&log).last() != Some(&STALL_N) {
        log.push(back.next_event_within(WAIT).await.unwrap());
    }
    assert!(
        check_no_silent_skip(&log).is_empty(),
        "no reset: the history covers it"
    );
    assert_eq!(numbers(&log), (1..=STALL_N).collect::<Vec<_>>());

    // Both are live afterwards; both registered, both active.
    publish_ok(&http, &server.base(), STALL_N + 1, 0).await;
    assert_eq!(
        number(&fast.next_event_within(WAIT).await.unwrap()),
        STALL_N + 1
    );
    assert_eq!(
        number(&back.next_event_within(WAIT).await.unwrap()),
        STALL_N + 1
    );
    let s = status(&http, &server.base()).await;
    assert_eq!(
        (s["total"].as_u64(), s["active"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
}

/// With a history of 16, shorter than the lag, the stalled page coming back
/// gets its connection id back and `reset` with
/// `{"reason":"history-gap"}` (never a replay with a hole in it), then
/// what is published next.
#[tokio::test]
async fn a_client_that_lagged_past_the_history_gets_reset_history_gap() {
    let (server, http, mut fast, slow_id, mut log) = stall_one_page("16").await;
    let last = log.last().unwrap().last_event_id.clone();
    let mut back = TestClient::get(server.sse())
        .last_event_id(&last)
        .connect()
        .await
        .unwrap();
    let again = back.next_event_within(WAIT).await.unwrap();
    assert_eq!(connection_id(&again), slow_id, "its connection id back");
    let reset = back.next_event_within(WAIT).await.unwrap();
    assert_eq!(
        (reset.event.as_str(), reset.data.as_str()),
        ("reset", r#"{"reason":"history-gap"}"#)
    );
    assert_eq!(id_of(&reset).seq, STALL_N, "it starts from now");
    log.extend([again, reset]);
    publish_ok(&http, &server.base(), STALL_N + 1, 0).await;
    log.push(back.next_event_within(WAIT).await.unwrap());
    assert_eq!(check_no_silent_skip(&log), ["history-gap"]);
    assert_eq!(numbers(&log).last(), Some(&(STALL_N + 1)));
    assert_eq!(
        number(&fast.next_event_within(WAIT).await.unwrap()),
        STALL_N + 1
    );
}

// ---------------------------------------------------------------------------
// 2. A client that vanishes.

/// Heartbeats every 200 ms. A page whose peer resets its connection (no
/// FIN, `SO_LINGER` 0) while idle leaves the registry within a few
/// heartbeats. A page that goes silent (it stops reading, its socket
/// fills) is no longer counted active once nothing could be written to it
/// for three heartbeat intervals; when it then vanishes with a reset, it
/// leaves the registry too. The page reading along receives everything and
/// stays active throughout.
#[tokio::test]
async fn a_client_that_vanishes_is_noticed_and_leaves_the_registry() {
    const PAD: usize = 4096;
    let server = Server::start(
        &[
            "--heartbeat-ms",
            "200",
            "--queue",
            "1024",
            "--history",
            "1000",
            "--sndbuf",
            "4096",
        ],
        None,
    );
    let http = http();
    let base = server.base();
    let (mut page, _) = common::open_connection(&server.sse(), None).await;
    let mut idle = RawClient::connect(server.port, None).await;
    connection_id(&idle.next_event().await.unwrap());
    let mut silent = RawClient::connect(server.port, None).await;
    connection_id(&silent.next_event().await.unwrap());
    let s = status(&http, &base).await;
    assert_eq!(
        (s["total"].as_u64(), s["active"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );

    // An idle connection reset by its peer: gone within a few heartbeats.
    idle.vanish();
    wait_status(
        &http,
        &base,
        Duration::from_secs(3),
        "the reset idle connection",
        |s| s["total"] == 2 && s["active"] == 2,
    )
    .await;

    // The silent one's socket fills (600 KiB for a 4 KiB buffer), far
    // below the queue: only the heartbeat can notice it.
    let mut n = 0;
    while n < 150 {
        n += 1;
        publish_ok(&http, &base, n, PAD).await;
        assert_eq!(number(&page.next_event_within(WAIT).await.unwrap()), n);
    }
    wait_status(
        &http,
        &base,
        Duration::from_secs(5),
        "the silent connection",
        |s| s["active"] == 1,
    )
    .await;

    // It vanishes with a reset: it leaves the registry.
    silent.vanish();
    wait_status(
        &http,
        &base,
        Duration::from_secs(3),
        "the vanished connection",
        |s| s["total"] == 1 && s["active"] == 1,
    )
    .await;

    // The page reading along was never held up and is still live, with
    // heartbeats while idle.
    publish_ok(&http, &base, n + 1, 0).await;
    assert_eq!(number(&page.next_event_within(WAIT).await.unwrap()), n + 1);
    match page.next_item_within(Duration::from_secs(2)).await.unwrap() {
        SseItem::Comment(c) => assert_eq!(c, ""),
        SseItem::Event(ev) => panic!("a heartbeat was expected: {ev:?}"),
    }
}

// ---------------------------------------------------------------------------
// 3. The server restarted with pages attached.

/// In memory, a restart loses the history: SIGTERM ends the page's stream
/// cleanly (no close event, so it reconnects), and coming back with its
/// `Last-Event-ID` it gets a fresh connection id and `reset` with
/// `{"reason":"restarted"}`, then the new process's messages.
#[tokio::test]
async fn a_restarted_server_in_memory_sends_reset_restarted() {
    let mut server = Server::start(&[], None);
    let http = http();
    let mut page = Page::open(&server.sse()).await;
    let first_id = connection_id(&page.log[0]);
    for n in 1..=3 {
        publish_ok(&http, &server.base(), n, 0).await;
    }
    page.follow(&server.sse(), WAIT, |log| numbers(log).len() == 3)
        .await;

    server.terminate();
    assert!(page.until_closed().await, "SIGTERM ends the stream cleanly");
    assert!(
        page.log.iter().all(|e| e.event != "close"),
        "no close event"
    );
    server.restart();

    page.connect(&server.sse(), Instant::now() + WAIT).await;
    let hello = page.log.last().unwrap().clone();
    assert_ne!(connection_id(&hello), first_id, "a fresh connection id");
    page.follow(&server.sse(), WAIT, |log| {
        log.last().is_some_and(|e| e.event == "reset")
    })
    .await;
    let reset = page.log.last().unwrap();
    assert_eq!(reset.data, r#"{"reason":"restarted"}"#);
    assert_ne!(id_of(reset).epoch, id_of(&page.log[0]).epoch, "a new epoch");
    publish_ok(&http, &server.base(), 4, 0).await;
    page.follow(&server.sse(), WAIT, |log| numbers(log).last() == Some(&4))
        .await;
    assert_eq!(check_no_silent_skip(&page.log), ["restarted"]);
    assert_eq!(numbers(&page.log), [1, 2, 3, 4]);
    assert_eq!(id_of(page.log.last().unwrap()).seq, 1, "numbered afresh");
}

/// On Redis, ids outlive the process: after SIGTERM and a new process on
/// the same Redis (messages published before the page comes back), the
/// page resumes with its connection id, no reset, nothing lost.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_restarted_server_on_redis_resumes_exactly() {
    let redis = common::redis::RedisServer::start(false);
    let mut server = Server::start(&[], Some(&redis.url()));
    let http = http();
    let mut page = Page::open(&server.sse()).await;
    let first_id = connection_id(&page.log[0]);
    for n in 1..=5 {
        publish_ok(&http, &server.base(), n, 0).await;
    }
    page.follow(&server.sse(), WAIT, |log| numbers(log).len() == 5)
        .await;

    server.terminate();
    assert!(page.until_closed().await, "SIGTERM ends the stream cleanly");
    server.restart();
    // Published while the page is away (a browser waits ~3 s).
    for n in 6..=8 {
        publish_ok(&http, &server.base(), n, 0).await;
    }
    page.connect(&server.sse(), Instant::now() + WAIT).await;
    assert_eq!(
        connection_id(page.log.last().unwrap()),
        first_id,
        "the same connection id"
    );
    publish_ok(&http, &server.base(), 9, 0).await;
    page.follow(&server.sse(), WAIT, |log| numbers(log).last() == Some(&9))
        .await;
    assert!(check_no_silent_skip(&page.log).is_empty(), "no reset");
    assert_eq!(numbers(&page.log), (1..=9).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// 4. Redis killed and restarted mid-publish.

/// Publishes `n` on and on until `count` succeeded (each failure must be
/// the 503 JSON error), for at most 20 s; returns the numbers acknowledged.
#[cfg(feature = "redis")]
async fn publish_through_recovery(
    http: &reqwest::Client,
    base: &str,
    n: &mut u64,
    count: usize,
) -> Vec<u64> {
    let t0 = Instant::now();
    let mut acked = Vec::new();
    while acked.len() < count {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "Redis never came back: {} of {count} published",
            acked.len()
        );
        *n += 1;
        let answer = publish(http, base, *n, 0).await;
        if answer.as_ref().is_some_and(|(s, _)| *s == 200) {
            acked.push(*n);
        } else {
            assert_unavailable(*n, answer.as_ref());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acked
}

/// Redis dies (SIGKILL) mid-publish and comes back with its data (an
/// append-only file, fsynced on every write). Publishes while it is down
/// answer 503 with a JSON error; the page open all along receives every
/// acknowledged message, in one epoch, without a gap or a reset.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_killed_and_restarted_with_its_data_loses_nothing_acknowledged() {
    let mut redis = common::redis::RedisServer::start(true);
    let server = Server::start(&["--redis-timeout-ms", "300"], Some(&redis.url()));
    let http = http();
    let base = server.base();
    let mut page = Page::open(&server.sse()).await;
    // Publishing in the background while Redis is killed.
    let publisher = Publisher::start(&http, vec![base.clone()]);
    publisher.wait_acked(5).await;
    redis.stop();
    let mut acked = Vec::new();
    let mut n = 0;
    for (m, _, answer) in publisher.finish_after(3).await {
        n = m;
        match answer {
            Some((200, _)) => acked.push(m),
            other => assert_unavailable(m, other.as_ref()),
        }
    }
    assert!(acked.len() >= 5);
    // Down: refused, with the JSON error, every time; the status says so.
    for _ in 0..3 {
        n += 1;
        assert_unavailable(n, publish(&http, &base, n, 0).await.as_ref());
    }
    wait_status(&http, &base, WAIT, "Redis down", |s| {
        s["backend_connected"] == false && s["cluster_connections"].is_null()
    })
    .await;

    redis.restart();
    acked.extend(publish_through_recovery(&http, &base, &mut n, 10).await);
    let want = acked.clone();
    page.follow(&server.sse(), WAIT, |log| {
        let got = numbers(log);
        want.iter().all(|m| got.contains(m))
    })
    .await;
    let resets = check_no_silent_skip(&page.log);
    assert!(
        resets.is_empty(),
        "the data survived: no reset, got {resets:?}"
    );
    assert!(
        page.ends.is_empty(),
        "the stream stayed open through the outage"
    );
    let epochs: std::collections::HashSet<String> =
        page.log.iter().map(|e| id_of(e).epoch).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout");
    // In order; a publish answered 503 that Redis did take (the answer,
    // not the write, was lost) may be delivered too.
    let got = numbers(&page.log);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    let extra: Vec<u64> = got.iter().filter(|m| !acked.contains(m)).copied().collect();
    if !extra.is_empty() {
        println!("delivered though answered 503: {extra:?}");
    }
    wait_status(&http, &base, WAIT, "Redis back", |s| {
        s["backend_connected"] == true && s["cluster_connections"] == 1
    })
    .await;
}

/// Redis dies mid-publish and comes back empty. The open page's stream
/// ends (a new epoch numbers from 1 again: left open it would skip the new
/// messages numbered below where it stood); coming back with its
/// `Last-Event-ID` it gets `reset` with `{"reason":"restarted"}` and then
/// every message published after.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_restarted_empty_means_reset_never_a_silent_skip() {
    let mut redis = common::redis::RedisServer::start(false);
    let server = Server::start(&["--redis-timeout-ms", "300"], Some(&redis.url()));
    let http = http();
    let base = server.base();
    let mut page = Page::open(&server.sse()).await;
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        publish_ok(&http, &base, n, 0).await;
    }
    page.follow(&server.sse(), WAIT, |log| numbers(log).len() == 20)
        .await;
    let old_epoch = id_of(&page.log[0]).epoch;

    redis.stop();
    for _ in 0..3 {
        n += 1;
        assert_unavailable(n, publish(&http, &base, n, 0).await.as_ref());
    }
    redis.restart();
    // 30 on the new epoch (numbered 1 to 30, below where the page stood).
    publish_through_recovery(&http, &base, &mut n, 30).await;

    // The stream ended with nothing of the new epoch; then the reset.
    page.follow(&server.sse(), WAIT, |log| {
        log.iter().any(|e| e.event == "reset")
    })
    .await;
    assert_eq!(page.ends, [true], "the open stream was ended, cleanly");
    let after = n;
    for _ in 0..5 {
        n += 1;
        publish_ok(&http, &base, n, 0).await;
    }
    page.follow(&server.sse(), WAIT, |log| numbers(log).last() == Some(&n))
        .await;
    assert_eq!(check_no_silent_skip(&page.log), ["restarted"]);
    let reset_at = page.log.iter().position(|e| e.event == "reset").unwrap();
    let reset = &page.log[reset_at];
    assert_eq!(reset.data, r#"{"reason":"restarted"}"#);
    assert_ne!(
        id_of(reset).epoch,
        old_epoch,
        "the reset is of the new epoch"
    );
    // Before the connection event that precedes the reset: the old epoch.
    let (before, since) = page.log.split_at(reset_at - 1);
    assert!(
        before.iter().all(|e| id_of(e).epoch == old_epoch),
        "{:?}",
        summary(before)
    );
    assert_eq!(numbers(before), (1..=20).collect::<Vec<_>>());
    assert_eq!(numbers(since), (after + 1..=n).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// 5. Two instances, one killed.

/// Two instances on one Redis; pages on each; a publisher alternating
/// between them; the second instance killed with SIGKILL mid-publish. The
/// page on the survivor receives every acknowledged message, without a
/// gap, a reset or an end. The page on the dead instance, cut off,
/// reconnects to the survivor with its `Last-Event-ID` and gets its
/// connection id back and exactly what it missed (as the backend docs
/// promise: resume on any instance), no reset. Once the dead instance's
/// liveness runs out, the cluster counts only the survivor's two pages.
#[cfg(feature = "redis")]
#[tokio::test]
async fn an_instance_killed_mid_publish_loses_nothing_acknowledged() {
    let redis = common::redis::RedisServer::start(false);
    let args = ["--redis-timeout-ms", "500", "--liveness-ms", "1000"];
    let survivor = Server::start(&args, Some(&redis.url()));
    let mut victim = Server::start(&args, Some(&redis.url()));
    let http = http();
    let mut on_survivor = Page::open(&survivor.sse()).await;
    let mut on_victim = Page::open(&victim.sse()).await;
    let victim_page_id = connection_id(&on_victim.log[0]);
    wait_status(&http, &survivor.base(), WAIT, "both pages known", |s| {
        s["cluster_connections"] == 2
    })
    .await;

    // Odd numbers to the victim, even ones to the survivor.
    let publisher = Publisher::start(&http, vec![survivor.base(), victim.base()]);
    publisher.wait_acked(10).await;
    victim.kill();
    let results = publisher.finish_after(10).await;
    let mut acked = Vec::new();
    for (n, to, answer) in &results {
        match answer {
            Some((200, _)) => acked.push(*n),
            // Once killed, the victim answers nothing; the survivor always.
            None if *to == 1 => {}
            other => panic!("publish {n} to server {to}: {other:?}"),
        }
    }
    assert!(
        results
            .iter()
            .any(|(n, to, _)| *to == 1 && acked.contains(n)),
        "nothing was published on the victim"
    );
    assert!(
        results.iter().any(|(_, to, a)| *to == 1 && a.is_none()),
        "the victim was not killed mid-publish"
    );

    let want = acked.clone();
    let has_all = move |log: &[ReceivedEvent]| {
        let got = numbers(log);
        want.iter().all(|m| got.contains(m))
    };
    on_survivor.follow(&survivor.sse(), WAIT, &has_all).await;
    assert!(
        on_survivor.ends.is_empty(),
        "the survivor's page kept its stream"
    );
    assert!(check_no_silent_skip(&on_survivor.log).is_empty());

    // Cut off; back on the survivor with its Last-Event-ID.
    on_victim.follow(&survivor.sse(), WAIT, &has_all).await;
    assert_eq!(on_victim.ends, [false], "cut once, by the kill");
    let hellos: Vec<&ReceivedEvent> = on_victim
        .log
        .iter()
        .filter(|e| e.event == "connection")
        .collect();
    assert_eq!(hellos.len(), 2);
    assert_eq!(
        connection_id(hellos[1]),
        victim_page_id,
        "its connection id back"
    );
    assert!(check_no_silent_skip(&on_victim.log).is_empty(), "no reset");
    // Both saw the same messages, in the same order.
    assert_eq!(numbers(&on_victim.log), numbers(&on_survivor.log));

    // The dead instance is forgotten: the survivor's two pages remain.
    let s = wait_status(
        &http,
        &survivor.base(),
        WAIT,
        "the dead instance forgotten",
        |s| s["cluster_connections"] == 2 && s["total"] == 2,
    )
    .await;
    assert_eq!(s["backend_connected"], true, "{s}");
}

/// Redis comes back empty while an instance runs; a second instance starts
/// afterwards. A page of the first (which got its reset and goes on in the
/// new epoch) moves to the second with its `Last-Event-ID`: it resumes
/// there with its connection id and nothing missed, as between any two
/// instances. Before the fix (the backend's reader now puts the resume key
/// back with the new epoch), the second instance made a resume key of its
/// own, and the page got `reset` (`unrecognized`) and a fresh id: the
/// instances no longer shared the key that proves connection ids.
#[cfg(feature = "redis")]
#[tokio::test]
async fn an_instance_started_after_redis_lost_its_data_resumes_the_others_pages() {
    let mut redis = common::redis::RedisServer::start(false);
    let args = ["--redis-timeout-ms", "300"];
    let first = Server::start(&args, Some(&redis.url()));
    let http = http();
    let mut page = Page::open(&first.sse()).await;
    let mut n = 1;
    publish_ok(&http, &first.base(), n, 0).await;
    page.follow(&first.sse(), WAIT, |log| numbers(log) == [1])
        .await;

    redis.restart();
    publish_through_recovery(&http, &first.base(), &mut n, 1).await;
    page.follow(&first.sse(), WAIT, |log| {
        log.iter().any(|e| e.event == "reset")
    })
    .await;
    n += 1;
    publish_ok(&http, &first.base(), n, 0).await;
    page.follow(&first.sse(), WAIT, |log| numbers(log).last() == Some(&n))
        .await;
    let id = connection_id(
        page.log
            .iter()
            .rev()
            .find(|e| e.event == "connection")
            .unwrap(),
    );

    // A second instance, started on the Redis that lost its data.
    let second = Server::start(&args, Some(&redis.url()));
    page.client = None;
    n += 1;
    publish_ok(&http, &first.base(), n, 0).await;
    page.connect(&second.sse(), Instant::now() + WAIT).await;
    page.follow(&second.sse(), WAIT, |log| {
        numbers(log).last() == Some(&n) || log.iter().filter(|e| e.event == "reset").count() > 1
    })
    .await;
    assert_eq!(
        check_no_silent_skip(&page.log),
        ["restarted"],
        "only the reset for the lost data: {:?}",
        summary(&page.log)
    );
    assert_eq!(
        connection_id(
            page.log
                .iter()
                .rev()
                .find(|e| e.event == "connection")
                .unwrap()
        ),
        id,
        "its connection id on the second instance"
    );
}

/// A deploy with a frozen tab attached (it stopped reading; its socket is
/// full). SIGTERM ends the stream of the page reading along at once and
/// cleanly. The frozen tab's connection cannot end (hyper cannot flush the
/// end of its stream into its full socket), so a graceful shutdown that
/// waits for every connection would wait forever: `fault_server` gives
/// connections `--drain-ms` and then stops anyway, with exit 0, as an
/// application must (see the report of issue 15, item 9).
#[tokio::test]
async fn sigterm_with_a_client_that_stopped_reading_still_stops() {
    let mut server = Server::start(&["--sndbuf", "4096", "--drain-ms", "3000"], None);
    let http = http();
    let mut page = Page::open(&server.sse()).await;
    let mut frozen = RawClient::connect(server.port, None).await;
    connection_id(&frozen.next_event().await.unwrap());
    for n in 1..=120 {
        publish_ok(&http, &server.base(), n, 4096).await;
        page.follow(&server.sse(), WAIT, |log| numbers(log).last() == Some(&n))
            .await;
    }
    server.send_term();
    let t0 = Instant::now();
    assert!(
        page.until_closed().await,
        "a clean end for the page reading along"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the page reading along waited {:?} for its end",
        t0.elapsed()
    );
    assert!(
        page.log.iter().all(|e| e.event != "close"),
        "no close event"
    );
    // The frozen connection holds the graceful shutdown until the drain
    // time runs out; then the process stops, exit 0.
    server.wait_exit();
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "stopped before the drain time: was the frozen tab's socket full?"
    );
    frozen.vanish();
}
