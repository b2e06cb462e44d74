//! Connection churn and graceful shutdown against a real server on
//! 127.0.0.1, scaled down from the load benchmark's `churn` and `shutdown`
//! scenarios (`cargo bench --bench fanout -- --only churn,shutdown`, see
//! BENCHMARKS.md): connect/disconnect cycles, clean and reset, leave the
//! manager and its registry empty; a graceful shutdown ends every open
//! stream cleanly within 2 s.
//!
//! Raw TCP with a minimal chunked decoder, so that a clean end (the
//! terminating chunk) is told apart from a cut connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use htmx_sse::BroadcastManager;
use htmx_sse::streaming::{Shutdown, StreamConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Every step of these tests is bounded by this.
const STEP: Duration = Duration::from_secs(10);

/// Enough descriptors for both ends of the streams these tests hold.
fn raise_nofile(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed && hard > soft {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(soft >= needed, "RLIMIT_NOFILE {soft} < {needed}");
}

/// A broadcast server with `shutdown` as its manager's signal and as the
/// graceful-shutdown signal of `axum::serve`.
async fn server(shutdown: &Shutdown) -> (BroadcastManager, u16, tokio::task::JoinHandle<()>) {
    let manager = BroadcastManager::builder()
        .stream(StreamConfig::new().shutdown(shutdown))
        .build();
    let app = htmx_sse::setup_broadcast_routes(Router::new(), manager.clone(), "/sse");
    let signal = shutdown.clone();
    let (base, task) =
        common::serve_with_shutdown(app, async move { signal.triggered().await }).await;
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    (manager, port, task)
}

/// One stream as raw bytes: the response head, then HTTP/1.1 chunks.
struct Stream {
    sock: TcpStream,
    raw: Vec<u8>,
    head_done: bool,
    body: Vec<u8>,
    /// The terminating chunk arrived: the server ended the body.
    ended: bool,
}

impl Stream {
    async fn open(port: u16) -> Stream {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        sock.write_all(
            b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
        Stream {
            sock,
            raw: Vec::new(),
            head_done: false,
            body: Vec::new(),
            ended: false,
        }
    }

    /// Decodes what has arrived.
    fn decode(&mut self) {
        if !self.head_done {
            let Some(p) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..p]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            self.raw.drain(..p + 4);
            self.head_done = true;
        }
        while !self.ended {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap(), 16)
                .expect("a chunk size");
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// Reads until `done(self)`; false when the socket closed first.
    async fn read_until(&mut self, done: impl Fn(&Stream) -> bool) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            self.decode();
            if done(self) {
                return true;
            }
            match self.sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn connection_event(&mut self) {
        let got = tokio::time::timeout(
            STEP,
            self.read_until(|s| {
                let body = String::from_utf8_lossy(&s.body);
                body.split("\n\n")
                    .any(|ev| ev.lines().any(|l| l == "event: connection"))
                    && body.contains("\n\n")
            }),
        )
        .await
        .expect("the connection event within 10 s");
        assert!(got, "closed before the connection event");
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < STEP, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// 1,000 connect/disconnect cycles, 32 at a time, every other one reset
/// (`SO_LINGER` 0) instead of closed with a FIN, each after the
/// `connection` event: the manager and its registry are empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_and_reset_disconnects_leave_the_registry_empty() {
    const CYCLES: usize = 1_000;
    const INFLIGHT: usize = 32;
    let shutdown = Shutdown::new();
    let (manager, port, _server) = server(&shutdown).await;
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..INFLIGHT)
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CYCLES {
                        return;
                    }
                    let mut s = Stream::open(port).await;
                    s.connection_event().await;
                    if i % 2 == 1 {
                        s.sock.set_zero_linger().unwrap();
                    } else {
                        s.sock.shutdown().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("the cycles within 60 s")
            .unwrap();
    }
    let took = wait_until("registry empty after the churn", || {
        manager.connection_count() == 0 && manager.registry().is_empty()
    })
    .await;
    eprintln!("{CYCLES} cycles: registry empty {took:?} after the last disconnect");
    // Still serving: a new stream registers.
    let mut s = Stream::open(port).await;
    s.connection_event().await;
    assert_eq!(manager.connection_count(), 1);
    shutdown.trigger();
}

/// 500 open streams, then the shutdown signal (as SIGTERM gives it through
/// `Shutdown::after_signal`): every stream ends cleanly, its chunked body
/// finished, within 2 s, without the close event (so that pages
/// reconnect), and the server returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_500_open_streams_cleanly_within_2_s() {
    const STREAMS: usize = 500;
    raise_nofile(4 * STREAMS as u64);
    let shutdown = Shutdown::new();
    let (manager, port, server) = server(&shutdown).await;
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        streams.push(Stream::open(port).await);
    }
    let opened: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                s.connection_event().await;
                s
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(STREAMS);
    for s in opened {
        streams.push(s.await.unwrap());
    }
    assert_eq!(manager.connection_count(), STREAMS);

    let signalled = Instant::now();
    shutdown.trigger();
    let ends: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let ended = s.read_until(|s| s.ended).await;
                let text = String::from_utf8_lossy(&s.body).into_owned();
                (ended, signalled.elapsed(), text)
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    let mut clean = 0;
    for e in ends {
        let (ended, at, text) = tokio::time::timeout(STEP, e)
            .await
            .expect("every stream ends within 10 s")
            .unwrap();
        assert!(
            !text.contains("event: close"),
            "a shutdown sends no close event: {text}"
        );
        clean += usize::from(ended);
        last = last.max(at);
    }
    eprintln!("{clean} of {STREAMS} streams ended cleanly; the last {last:?} after the signal");
    assert_eq!(clean, STREAMS, "streams cut without the terminating chunk");
    assert!(
        last <= Duration::from_secs(2),
        "the last stream ended {last:?} after the signal"
    );
    tokio::time::timeout(STEP, server)
        .await
        .expect("graceful shutdown returns")
        .unwrap();
    assert_eq!(manager.connection_count(), 0);
}

/// 500 requests reset right after they were sent, before the response
/// head (the server may or may not have registered them by then): none is
/// left in the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reset_before_the_response_leave_nothing_behind() {
    const CYCLES: usize = 500;
    let shutdown = Shutdown::new();
    let (manager, port, _server) = server(&shutdown).await;
    let workers: Vec<_> = (0..16)
        .map(|w| {
            tokio::spawn(async move {
                for _ in (w..CYCLES).step_by(16) {
                    let s = Stream::open(port).await;
                    s.sock.set_zero_linger().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("the cycles within 60 s")
            .unwrap();
    }
    let took = wait_until("registry empty after the resets", || {
        manager.connection_count() == 0 && manager.registry().is_empty()
    })
    .await;
    eprintln!("{CYCLES} early resets: registry empty {took:?} after the last");
    shutdown.trigger();
}
