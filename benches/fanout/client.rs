//! The bench client (`--client`): N real SSE connections over raw TCP, a
//! minimal HTTP/1.1 chunked + SSE reader, and the windowed publisher. With
//! `--h2 K` the N streams are HTTP/2 streams spread over K cleartext HTTP/2
//! connections (prior knowledge, h2c), through hyper's HTTP/2 client.
//!
//! Every connection parses each message's payload for its sequence number
//! and the server's `CLOCK_MONOTONIC` stamp, so latency is
//! `receive - publish` across processes on one clock, and a gap in the
//! sequence is a lost message.
//!
//! The publisher sends `P <seq>` lines to the server's control port and
//! never gets more than `window` messages ahead of the slowest connection:
//! message `i` goes out only when every open connection has received
//! message `i - window`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memchr::memmem;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::sys;

/// What the parent asks of one client process.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) port: u16,
    pub(crate) ctl: u16,
    pub(crate) conns: usize,
    pub(crate) msgs: u64,
    pub(crate) window: u64,
    /// When not zero, one message per `pace_us` at most (the paced
    /// latency runs); zero publishes as fast as the window allows.
    pub(crate) pace_us: u64,
    pub(crate) cpu: usize,
    /// When not zero, the streams are HTTP/2 streams over this many
    /// connections (round robin); zero: one HTTP/1.1 connection each.
    pub(crate) h2: usize,
}

/// Connects in flight at once (below the listen backlog, so no SYN is
/// dropped and retried a second later).
const CONNECT_PARALLEL: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const ALL_CONNECTED_TIMEOUT: Duration = Duration::from_secs(120);
/// The publisher forces the next message out when the window has not
/// moved for this long (a lost message would otherwise stall it).
const STALL: Duration = Duration::from_secs(5);
/// The whole publish phase is cut off after this.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// A client process never outlives this.
const CLIENT_LIFETIME: Duration = Duration::from_secs(900);

struct Shared {
    args: Args,
    /// `counts[i]`: connections that received message `i`.
    counts: Vec<AtomicU32>,
    /// Connections open (connected and not closed by the server).
    alive: AtomicUsize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    received: AtomicU64,
    /// The window may have moved.
    moved: Notify,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    connected: bool,
    received: u64,
    /// Messages skipped (a gap in the sequence numbers).
    gaps: u64,
    /// The server ended the response (or reset the socket) while the run
    /// was still on: for the crate, a lagging connection it closed.
    closed_by_server: bool,
    body_bytes: u64,
    last_recv_ns: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

pub(crate) fn run(args: Args) -> Result<(), String> {
    let pinned = sys::pin_to_cpu(args.cpu)?;
    let nofile = sys::raise_nofile(args.conns as u64 + 64)?;
    std::thread::spawn(|| {
        std::thread::sleep(CLIENT_LIFETIME);
        eprintln!("fanout client: lifetime exceeded, exiting");
        std::process::exit(3);
    });
    eprintln!(
        "fanout client: {} connections, pinned to {pinned}, nofile {nofile}",
        args.conns
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(client(args))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn client(args: Args) -> Result<(), String> {
    let shared = Arc::new(Shared {
        counts: (0..args.msgs).map(|_| AtomicU32::new(0)).collect(),
        alive: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        moved: Notify::new(),
        stop: CancellationToken::new(),
        args,
    });
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let started = Instant::now();
    let h2: Arc<[H2Sender]> = h2_connections(shared.args.port, shared.args.h2)
        .await?
        .into();
    let tasks: Vec<_> = (0..shared.args.conns)
        .map(|i| {
            let h2 = (!h2.is_empty()).then(|| h2[i % h2.len()].clone());
            tokio::spawn(connection(Arc::clone(&shared), Arc::clone(&gate), h2))
        })
        .collect();

    // Wait for every connection to be up (or to have failed).
    let deadline = tokio::time::Instant::now() + ALL_CONNECTED_TIMEOUT;
    loop {
        let c = shared.connected.load(Ordering::Acquire);
        let f = shared.failed.load(Ordering::Acquire);
        if c + f >= shared.args.conns || tokio::time::Instant::now() >= deadline {
            say(&format!(
                "CONNECTED {c} {f} {}",
                started.elapsed().as_millis()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Commands from the parent: GO (publish), END (disconnect, report).
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut publish = None;
    while let Ok(Some(cmd)) = stdin.next_line().await {
        match cmd.trim() {
            "GO" => {
                let cpu0 = sys::read_proc(std::process::id())?.cpu_ns;
                let p = publisher(&shared).await;
                let cpu1 = sys::read_proc(std::process::id())?.cpu_ns;
                publish = Some((p, cpu1.saturating_sub(cpu0)));
                // The parent reads the server's CPU time now, before the
                // disconnects below add their own.
                say("PUBLISHED");
            }
            "END" => break,
            _ => {}
        }
    }
    shared.stop.cancel();
    let mut stats = Vec::with_capacity(tasks.len());
    for t in tasks {
        stats.push(t.await.unwrap_or_default());
    }
    say(&format!(
        "DONE {}",
        summary(&shared, &stats, publish.as_ref())
    ));
    Ok(())
}

struct Published {
    first_ns: u64,
    sent: u64,
    forced: u64,
    timed_out: bool,
}

/// Publishes `msgs` messages through the control port, at most `window`
/// ahead of the slowest open connection; returns when every open
/// connection has the last message, or nothing has moved for `STALL`.
async fn publisher(shared: &Shared) -> Published {
    let a = &shared.args;
    let mut out = Published {
        first_ns: sys::now_ns(),
        sent: 0,
        forced: 0,
        timed_out: false,
    };
    let Ok(mut ctl) = TcpStream::connect(("127.0.0.1", a.ctl)).await else {
        out.timed_out = true;
        return out;
    };
    let _ = ctl.set_nodelay(true);
    let end = tokio::time::Instant::now() + RUN_TIMEOUT;
    let mut cmds = String::new();
    let mut waited = Duration::ZERO;
    let tick = Duration::from_millis(20);
    let pace = Duration::from_micros(a.pace_us);
    let mut next_at = tokio::time::Instant::now();
    while out.sent < a.msgs {
        cmds.clear();
        if !pace.is_zero() {
            tokio::time::sleep_until(next_at).await;
            next_at += pace;
        }
        while out.sent < a.msgs
            && (pace.is_zero() || cmds.is_empty())
            && (out.sent < a.window
                || shared.counts[(out.sent - a.window) as usize].load(Ordering::Acquire) as usize
                    >= shared.alive.load(Ordering::Acquire))
        {
            let _ = writeln!(cmds, "P {}", out.sent);
            out.sent += 1;
        }
        if cmds.is_empty() && waited >= STALL {
            // Nothing moved for a while: a message was lost somewhere;
            // go on with the next one rather than stall the run.
            let _ = writeln!(cmds, "P {}", out.sent);
            out.sent += 1;
            out.forced += 1;
        }
        if !cmds.is_empty() {
            waited = Duration::ZERO;
            if ctl.write_all(cmds.as_bytes()).await.is_err() {
                out.timed_out = true;
                return out;
            }
            continue;
        }
        if tokio::time::Instant::now() >= end {
            out.timed_out = true;
            return out;
        }
        if tokio::time::timeout(tick, shared.moved.notified())
            .await
            .is_err()
        {
            waited += tick;
        }
    }
    // Drain: wait for the last message everywhere, or for `STALL` without
    // progress (a message received or a connection closed).
    let last = a.msgs as usize - 1;
    let progress = || {
        shared.received.load(Ordering::Acquire)
            + (shared.connected.load(Ordering::Acquire) - shared.alive.load(Ordering::Acquire))
                as u64
    };
    let mut seen = progress();
    let mut since = tokio::time::Instant::now();
    while (shared.counts[last].load(Ordering::Acquire) as usize)
        < shared.alive.load(Ordering::Acquire)
    {
        let now = tokio::time::Instant::now();
        if now >= end {
            out.timed_out = true;
            break;
        }
        let _ = tokio::time::timeout(tick, shared.moved.notified()).await;
        let p = progress();
        if p != seen {
            seen = p;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= STALL {
            break;
        }
    }
    out
}

/// A stream's HTTP/2 connection: requests made with it are streams of it.
type H2Sender = hyper::client::conn::http2::SendRequest<axum::body::Body>;

/// `count` cleartext HTTP/2 connections (prior knowledge), each driven by
/// a task of its own.
async fn h2_connections(port: u16, count: usize) -> Result<Vec<H2Sender>, String> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("h2 connect: {e}"))?;
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        out.push(send);
    }
    Ok(out)
}

/// Where a connection's bytes come from: its own socket (HTTP/1.1, chunked)
/// or its stream of a shared HTTP/2 connection.
enum Reader {
    H1(TcpStream),
    H2(hyper::body::Incoming),
}

impl Reader {
    /// Reads what is there into `dec`; the number of bytes, 0 at the end.
    async fn read(&mut self, buf: &mut [u8], dec: &mut Decoder) -> std::io::Result<usize> {
        match self {
            Reader::H1(sock) => {
                let n = sock.read(buf).await?;
                dec.push(&buf[..n]);
                Ok(n)
            }
            Reader::H2(body) => loop {
                use hyper::body::Body as _;
                let frame =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await;
                match frame {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    Some(Ok(frame)) => {
                        // The DATA frames' payload is the SSE text itself:
                        // no chunked framing to take off.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            dec.sse.extend_from_slice(&data);
                            return Ok(data.len());
                        }
                    }
                }
            },
        }
    }
}

async fn connection(shared: Arc<Shared>, gate: Arc<Semaphore>, h2: Option<H2Sender>) -> ConnStats {
    let mut st = ConnStats {
        latencies_us: Vec::with_capacity(shared.args.msgs as usize),
        ..ConnStats::default()
    };
    let permit = gate.acquire().await;
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        match h2 {
            None => open(shared.args.port)
                .await
                .map(|(sock, dec)| (Reader::H1(sock), dec)),
            Some(h2) => open_h2(h2, shared.args.port)
                .await
                .map(|body| (Reader::H2(body), Decoder::new(Vec::new()))),
        }
    })
    .await;
    drop(permit);
    let (mut reader, mut dec) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            st.error = Some(e);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return st;
        }
        Err(_) => {
            st.error = Some("connect timed out".to_owned());
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return st;
        }
    };
    st.connected = true;
    shared.alive.fetch_add(1, Ordering::AcqRel);
    shared.connected.fetch_add(1, Ordering::AcqRel);

    let msgs = shared.args.msgs;
    let mut next_seq = 0u64;
    let mut buf = vec![0u8; 8192];
    let mut on_event = |ev: &[u8], st: &mut ConnStats| {
        let Some((seq, t)) = parse_stamp(ev) else {
            return;
        };
        let now = sys::now_ns();
        if seq >= msgs {
            return;
        }
        if seq > next_seq {
            st.gaps += seq - next_seq;
        }
        next_seq = seq + 1;
        st.received += 1;
        st.last_recv_ns = now;
        st.latencies_us
            .push((now.saturating_sub(t) / 1_000).min(u64::from(u32::MAX)) as u32);
        let c = shared.counts[seq as usize].fetch_add(1, Ordering::AcqRel) + 1;
        shared.received.fetch_add(1, Ordering::Relaxed);
        if c as usize >= shared.alive.load(Ordering::Acquire) {
            shared.moved.notify_one();
        }
    };
    // Anything that came with the head.
    if let Err(e) = dec.drain(&mut st, &mut on_event) {
        st.error = Some(e);
    }
    loop {
        let n = tokio::select! {
            r = reader.read(&mut buf, &mut dec) => r,
            () = shared.stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => {
                st.closed_by_server = true;
                break;
            }
            Ok(n) => {
                // Count from the read that brings the first message on,
                // so the opening frames are not charged to messages.
                if st.received == 0 {
                    st.body_bytes = 0;
                }
                st.body_bytes += n as u64;
                match dec.drain(&mut st, &mut on_event) {
                    Ok(true) => {
                        st.closed_by_server = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        st.error = Some(e);
                        st.closed_by_server = true;
                        break;
                    }
                }
            }
        }
    }
    if st.closed_by_server {
        shared.alive.fetch_sub(1, Ordering::AcqRel);
        shared.moved.notify_one();
    }
    st
}

/// Connects, sends the request, reads the response head (which must be 200
/// with chunked transfer encoding).
pub(crate) async fn open(port: u16) -> Result<(TcpStream, Decoder), String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.write_all(b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".to_owned());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(p) = memmem::find(&raw, b"\r\n\r\n") {
            break p + 4;
        }
        if raw.len() > 16 * 1024 {
            return Err("response head too long".to_owned());
        }
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("bad status: {}", head.lines().next().unwrap_or("")));
    }
    if !head.contains("transfer-encoding: chunked") {
        return Err("response is not chunked".to_owned());
    }
    raw.drain(..end);
    Ok((sock, Decoder::new(raw)))
}

/// Opens a stream on an HTTP/2 connection: `GET /sse`, which must answer
/// 200.
async fn open_h2(mut h2: H2Sender, port: u16) -> Result<hyper::body::Incoming, String> {
    h2.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let req = axum::http::Request::get(format!("http://127.0.0.1:{port}/sse"))
        .header("accept", "text/event-stream")
        .body(axum::body::Body::empty())
        .map_err(|e| e.to_string())?;
    let res = h2
        .send_request(req)
        .await
        .map_err(|e| format!("h2 request: {e}"))?;
    if res.status() != axum::http::StatusCode::OK {
        return Err(format!("bad status: {}", res.status()));
    }
    Ok(res.into_body())
}

enum Chunk {
    /// Expecting `HEX\r\n`.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
}

/// HTTP/1.1 chunked decoding into an SSE buffer, then events split at the
/// blank line. Only what our three servers send (LF line ends).
pub(crate) struct Decoder {
    raw: Vec<u8>,
    state: Chunk,
    sse: Vec<u8>,
}

impl Decoder {
    /// A decoder with `raw` already read (after the response head).
    fn new(raw: Vec<u8>) -> Decoder {
        Decoder {
            raw,
            state: Chunk::Size,
            sse: Vec::with_capacity(1024),
        }
    }

    /// Appends bytes read from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// Decodes what is buffered; calls `on_event` for each complete event.
    /// `Ok(true)` at the last chunk.
    pub(crate) fn drain<F>(&mut self, st: &mut ConnStats, on_event: &mut F) -> Result<bool, String>
    where
        F: FnMut(&[u8], &mut ConnStats),
    {
        let mut pos = 0;
        let mut ended = false;
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(off) = memchr::memchr(b'\n', &self.raw[pos..]) else {
                        break;
                    };
                    let line = &self.raw[pos..pos + off];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .ok_or_else(|| {
                            format!("bad chunk size {:?}", String::from_utf8_lossy(line))
                        })?;
                    pos += off + 1;
                    if size == 0 {
                        ended = true;
                        break;
                    }
                    self.state = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let avail = self.raw.len() - pos;
                    if avail == 0 {
                        break;
                    }
                    let take = left.min(avail);
                    self.sse.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    self.state = if take == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::DataEnd => {
                    if self.raw.len() - pos < 2 {
                        break;
                    }
                    if &self.raw[pos..pos + 2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".to_owned());
                    }
                    pos += 2;
                    self.state = Chunk::Size;
                }
            }
        }
        self.raw.drain(..pos);
        // Events end at a blank line.
        let mut start = 0;
        while let Some(off) = memmem::find(&self.sse[start..], b"\n\n") {
            on_event(&self.sse[start..start + off + 1], st);
            start += off + 2;
        }
        self.sse.drain(..start);
        Ok(ended)
    }
}

/// The sequence number and publish stamp in an event's payload.
fn parse_stamp(ev: &[u8]) -> Option<(u64, u64)> {
    fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
        let at = memmem::find(hay, key)? + key.len();
        let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&hay[at..at + digits])
            .ok()?
            .parse()
            .ok()
    }
    Some((
        number_after(ev, b"data-seq=\"")?,
        number_after(ev, b"data-t=\"")?,
    ))
}

fn summary(shared: &Shared, stats: &[ConnStats], publish: Option<&(Published, u64)>) -> String {
    let a = &shared.args;
    let connected = stats.iter().filter(|s| s.connected).count();
    let closed = stats.iter().filter(|s| s.closed_by_server).count();
    let received: u64 = stats.iter().map(|s| s.received).sum();
    let gaps: u64 = stats.iter().map(|s| s.gaps).sum();
    let bytes: u64 = stats.iter().map(|s| s.body_bytes).sum();
    let expected = connected as u64 * publish.map_or(0, |(p, _)| p.sent);
    let last_ns = stats.iter().map(|s| s.last_recv_ns).max().unwrap_or(0);
    let mut lat: Vec<u32> = stats
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        u64::from(lat[i])
    };
    let first_error = stats.iter().find_map(|s| s.error.clone());
    let (first_ns, forced, timed_out, client_cpu) = publish.map_or((0, 0, false, 0), |(p, c)| {
        (p.first_ns, p.forced, p.timed_out, *c)
    });
    serde_json::json!({
        "conns": a.conns,
        "connected": connected,
        "failed": a.conns - connected,
        "closed_by_server": closed,
        "expected": expected,
        "received": received,
        "lost": expected.saturating_sub(received),
        "gaps": gaps,
        "body_bytes": bytes,
        "first_publish_ns": first_ns,
        "last_receive_ns": last_ns,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": lat.last().copied().unwrap_or(0),
        "forced": forced,
        "timed_out": timed_out,
        "client_cpu_ns": client_cpu,
        "error": first_error,
    })
    .to_string()
}
