//! Throughput through Redis as a ratio of in-memory throughput, in one run.
//!
//! `cargo bench --features redis --bench redis` starts a real
//! `redis-server` on a free loopback port, then for each case serves a
//! `BroadcastManager` over HTTP on 127.0.0.1, opens the same number of
//! real SSE connections (plain TCP clients that count frames, in this
//! process), publishes the same messages from concurrent publishers
//! (`--publishers N`, default 4), each keeping a window of publishes in
//! flight (`Message::submit`, the oldest awaited once `--window N`,
//! default 64, are pending; 1 is `send().await` one after another), and
//! times how long until every connection has every message. Prints
//! deliveries per second and the publish p99 (from `submit` to the outcome)
//! for memory, for Redis with read-your-writes (the default: a publish
//! returns once this instance delivered it) and without it
//! (`read_your_writes(false)`: once the shared log has it), at the window
//! and at window 1, and the ratios to memory, best of `--rounds N`
//! (default 3) alternating rounds. `--clients N`, `--messages N` change the
//! size. Built with `--features redis,nats`, it also starts a
//! `nats-server -js` and measures the NATS JetStream backend (with
//! read-your-writes, at window 1: it does not queue at submit) in the same
//! rounds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::{BroadcastBuilder, BroadcastManager, setup_broadcast_routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAYLOAD: usize = 256;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), format!("redis://127.0.0.1:{port}/"))
}

#[cfg(feature = "nats")]
fn start_nats() -> (Redis, String, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("htmx-sse-bench-nats-{port}"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), format!("nats://127.0.0.1:{port}"), dir)
}

/// Opens an SSE connection and counts `event: n` frames until `want`.
async fn client(addr: SocketAddr, want: u64, connected: Arc<AtomicU64>) -> u64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /sse HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request");
    let needle = b"event: n\n";
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    let mut seen = 0;
    let mut told = false;
    while seen < want {
        let n = match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        if !told && buf[..n].windows(17).any(|w| w == b"event: connection") {
            connected.fetch_add(1, Ordering::Relaxed);
            told = true;
        }
        tail.extend_from_slice(&buf[..n]);
        seen += tail.windows(needle.len()).filter(|w| *w == needle).count() as u64;
        let keep = tail.len().min(needle.len() - 1);
        tail.drain(..tail.len() - keep);
    }
    seen
}

/// Deliveries per second, and the 99th percentile of one publish call.
async fn run(
    manager: BroadcastManager,
    clients: usize,
    messages: usize,
    publishers: usize,
    window: usize,
) -> (f64, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = setup_broadcast_routes(Router::new(), manager.clone(), "/sse");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let connected = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(addr, messages as u64, Arc::clone(&connected))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < clients as u64 {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let payload = "x".repeat(PAYLOAD);
    let start = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (m, payload) = (manager.clone(), payload.clone());
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(messages / publishers + 1);
                // Up to `window` publishes in flight, awaited oldest first
                // (1: each awaited before the next, as `send().await`).
                let mut in_flight = VecDeque::with_capacity(window);
                for _ in (p..messages).step_by(publishers) {
                    let t0 = Instant::now();
                    let submitted = m
                        .message("n", htmx_sse::Fragment::trusted(payload.as_str()))
                        .submit();
                    in_flight.push_back((t0, submitted));
                    if in_flight.len() >= window
                        && let Some((t0, submitted)) = in_flight.pop_front()
                    {
                        submitted.await.expect("publish");
                        took.push(t0.elapsed());
                    }
                }
                for (t0, submitted) in in_flight {
                    submitted.await.expect("publish");
                    took.push(t0.elapsed());
                }
                took
            })
        })
        .collect();
    let mut took = Vec::with_capacity(messages);
    for p in tasks {
        took.extend(p.await.expect("publisher"));
    }
    took.sort_unstable();
    let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
    let mut delivered = 0;
    for r in readers {
        delivered += r.await.expect("reader");
    }
    let elapsed = start.elapsed().as_secs_f64();
    server.abort();
    let want = (clients * messages) as u64;
    assert_eq!(delivered, want, "lost messages");
    (delivered as f64 / elapsed, p99)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn builder(messages: usize) -> BroadcastBuilder {
    // Room for every message: this measures throughput, not lagging. (The
    // history is the Redis stream's length too: a publisher that returns
    // when logged can run ahead of the reader by more than 1,024, and what
    // is trimmed before it is read is a gap, a `reset` for every page.)
    BroadcastManager::builder()
        .history(messages.max(1024))
        .queue_capacity(messages.max(256))
}

#[tokio::main]
async fn main() {
    let clients = arg("--clients", 200);
    let messages = arg("--messages", 2000);
    let publishers = arg("--publishers", 4);
    let window = arg("--window", 64).max(1);
    let (_redis, url) = start_redis();
    #[cfg(feature = "nats")]
    let (nats_server, nats_url, nats_dir) = start_nats();
    #[cfg(feature = "nats")]
    let mut nats = Vec::new();
    println!(
        "{clients} clients x {messages} messages of {PAYLOAD} bytes, {publishers} publishers, \
         each with a window of {window} publishes in flight (and 1 for comparison)"
    );
    // Every case in every round, alternating; the best of each is kept.
    let cases: Vec<Case> = vec![
        Case::memory(window),
        Case::redis(true, window),
        Case::redis(false, window),
        Case::redis(true, 1),
        Case::redis(false, 1),
    ];
    let rounds = arg("--rounds", 3);
    let mut best = vec![(0.0, Duration::ZERO); cases.len()];
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for (i, case) in cases.iter().enumerate() {
            let manager = match case.redis {
                None => builder(messages).build(),
                Some(read_your_writes) => builder(messages)
                    .read_your_writes(read_your_writes)
                    .build_redis(
                        RedisConfig::new(url.as_str()).prefix(format!("bench-{round}-{i}")),
                    )
                    .await
                    .expect("redis"),
            };
            let r = run(manager, clients, messages, publishers, case.window).await;
            line.push_str(&format!(" {:.0}/s {:.1}ms |", r.0, ms(r.1)));
            if r.0 > best[i].0 {
                best[i] = r;
            }
        }
        println!("{line}");
        #[cfg(feature = "nats")]
        {
            let manager = builder(messages)
                .build_nats(
                    htmx_sse::backend::NatsConfig::new(nats_url.as_str())
                        .prefix(format!("bench-{round}")),
                )
                .await
                .expect("nats");
            // The NATS backend does not queue at submit: each publish is
            // made when awaited, so it runs at window 1.
            let n = run(manager, clients, messages, publishers, 1).await;
            println!(
                "round {round}: nats (window 1) {:>10.0}/s p99 {:>8.3} ms",
                n.0,
                ms(n.1)
            );
            nats.push(n);
        }
    }
    let m = best[0];
    for (case, r) in cases.iter().zip(&best) {
        println!(
            "best: {:<52} {:>9.0}/s = {:.2}x memory, publish p99 {:>8.3} ms",
            case.name(),
            r.0,
            r.0 / m.0,
            ms(r.1)
        );
    }
    #[cfg(feature = "nats")]
    {
        let n = nats
            .iter()
            .copied()
            .fold((0.0, Duration::ZERO), |a, b| if b.0 > a.0 { b } else { a });
        println!(
            "best: nats (window 1) {:.0}/s = {:.2}x (p99 {:.3} ms)",
            n.0,
            n.0 / m.0,
            ms(n.1)
        );
        drop(nats_server);
        let _ = std::fs::remove_dir_all(nats_dir);
    }
}

/// One measured configuration.
struct Case {
    /// `None`: in memory; else whether with read-your-writes.
    redis: Option<bool>,
    window: usize,
}

impl Case {
    fn memory(window: usize) -> Self {
        Case {
            redis: None,
            window,
        }
    }

    fn redis(read_your_writes: bool, window: usize) -> Self {
        Case {
            redis: Some(read_your_writes),
            window,
        }
    }

    fn name(&self) -> String {
        match self.redis {
            None => format!("memory, window {}", self.window),
            Some(rw) => format!(
                "redis{}, window {}",
                if rw { "" } else { " returned when logged" },
                self.window
            ),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
