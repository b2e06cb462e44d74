//! Throughput through Redis as a ratio of in-memory throughput, in one run.
//!
//! `cargo bench --features redis --bench redis` starts a real
//! `redis-server` on a free loopback port, then for each backend serves a
//! `BroadcastManager` over HTTP on 127.0.0.1, opens the same number of
//! real SSE connections (plain TCP clients that count frames), publishes
//! the same messages from concurrent publishers (`--publishers N`, default 4) and times how long
//! until every connection has every message. Prints deliveries per second
//! and the publish p99 for memory, for Redis with read-your-writes (the
//! default: a publish returns once this instance delivered it) and for
//! Redis without it (`read_your_writes(false)`: once the shared log has
//! it), and the ratios to memory. `--clients N`, `--messages N` change the
//! size. Built with `--features redis,nats`, it also starts a
//! `nats-server -js` and measures the NATS JetStream backend (with
//! read-your-writes) in the same rounds.

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
    // (memory, redis, redis returned when logged) at the window, then the
    // two Redis cases at window 1.
    let mut rounds: Vec<[(f64, Duration); 5]> = Vec::new();
    // Alternate, three rounds each, and keep the best of each.
    for round in 0..3 {
        let m = run(
            builder(messages).build(),
            clients,
            messages,
            publishers,
            window,
        )
        .await;
        let on_redis = |read_your_writes: bool, prefix: String, window: usize| {
            let url = url.clone();
            async move {
                let manager = builder(messages)
                    .read_your_writes(read_your_writes)
                    .build_redis(RedisConfig::new(url.as_str()).prefix(prefix))
                    .await
                    .expect("redis");
                run(manager, clients, messages, publishers, window).await
            }
        };
        let r = on_redis(true, format!("bench-{round}"), window).await;
        let l = on_redis(false, format!("bench-l{round}"), window).await;
        let r1 = on_redis(true, format!("bench-1-{round}"), 1).await;
        let l1 = on_redis(false, format!("bench-l1-{round}"), 1).await;
        println!(
            "round {round}: memory {:>9.0}/s p99 {:>7.3} ms | window {window}: redis {:>9.0}/s \
             p99 {:>7.3} ms, logged {:>9.0}/s p99 {:>7.3} ms | window 1: redis {:>9.0}/s \
             p99 {:>7.3} ms, logged {:>9.0}/s p99 {:>7.3} ms",
            m.0,
            ms(m.1),
            r.0,
            ms(r.1),
            l.0,
            ms(l.1),
            r1.0,
            ms(r1.1),
            l1.0,
            ms(l1.1),
        );
        rounds.push([m, r, l, r1, l1]);
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
    let best = |i: usize| {
        rounds
            .iter()
            .map(|r| r[i])
            .fold((0.0, Duration::ZERO), |a, b| if b.0 > a.0 { b } else { a })
    };
    let m = best(0);
    println!("best: memory {:.0}/s (publish p99 {:.3} ms)", m.0, ms(m.1));
    for (i, name) in [
        (1, format!("redis, window {window}")),
        (2, format!("redis returned when logged, window {window}")),
        (3, "redis, window 1".to_owned()),
        (4, "redis returned when logged, window 1".to_owned()),
    ] {
        let r = best(i);
        println!(
            "best: {name}: {:.0}/s = {:.2}x memory (publish p99 {:.3} ms)",
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
