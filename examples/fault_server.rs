//! A bare broadcast server for fault tests (`tests/faults.rs`): the crate's
//! routes at `/sse` and nothing else, with the knobs a fault needs turned
//! from the command line, run as its own process so that it can be killed,
//! restarted, starved of Redis or left with a client that stopped reading.
//!
//! ```text
//! cargo run --example fault_server -- --addr 127.0.0.1:0 --heartbeat-ms 200 --queue 8
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example fault_server
//! ```
//!
//! It prints `listening on http://HOST:PORT` once it accepts connections
//! (with `--addr …:0`, the port it was given). `GET /sse` is the stream;
//! `POST /sse/broadcast`, `POST /sse/send/{id}`, `GET /sse/status` and `GET
//! /sse/history` are open to anyone, and string data is taken as HTML: a
//! test server on 127.0.0.1, never something to expose. SIGTERM or Ctrl-C
//! ends the streams cleanly and then the process.
//!
//! Options: `--heartbeat-ms N` (default 15000), `--queue N` (the manager's
//! queue capacity, default 256), `--history N` (default 1024), `--sndbuf
//! BYTES` (the kernel send buffer of every accepted socket, to make a client
//! that stops reading fill it quickly), `--drain-ms N` (how long connections
//! may take to end after the stop signal before the process stops anyway,
//! default 2000), and with Redis `--redis-timeout-ms N` and `--liveness-ms
//! N`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use htmx_sse::auth::Access;
use htmx_sse::broadcast::{BroadcastBuilder, BroadcastManager, BroadcastRoutes};
use htmx_sse::streaming::{Shutdown, StreamConfig};
use tokio::net::{TcpListener, TcpSocket};

struct Args {
    addr: SocketAddr,
    heartbeat: Duration,
    queue: usize,
    history: usize,
    sndbuf: Option<u32>,
    redis_timeout: Duration,
    liveness: Duration,
    drain: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat: Duration::from_secs(15),
        queue: 256,
        history: 1024,
        sndbuf: None,
        redis_timeout: Duration::from_secs(2),
        liveness: Duration::from_secs(15),
        drain: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("{arg} {v:?}: {e} (expected a whole number)"))
        };
        match arg.as_str() {
            "--addr" => {
                let v = value()?;
                args.addr = v.parse().map_err(|e| format!("--addr {v:?}: {e}"))?;
            }
            "--heartbeat-ms" => args.heartbeat = Duration::from_millis(number(value()?)?),
            "--queue" => args.queue = number(value()?)?.max(1) as usize,
            "--history" => args.history = number(value()?)? as usize,
            "--sndbuf" => {
                let n = number(value()?)?;
                args.sndbuf = Some(u32::try_from(n).map_err(|_| "--sndbuf too large")?);
            }
            "--redis-timeout-ms" => args.redis_timeout = Duration::from_millis(number(value()?)?),
            "--liveness-ms" => args.liveness = Duration::from_millis(number(value()?)?),
            "--drain-ms" => args.drain = Duration::from_millis(number(value()?)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// Builds on the Redis at `url` (feature `redis`).
#[cfg(feature = "redis")]
async fn on_redis(builder: BroadcastBuilder, url: &str, args: &Args) -> BroadcastManager {
    let config = htmx_sse::backend::RedisConfig::new(url)
        .timeout(args.redis_timeout)
        .liveness(args.liveness);
    match builder.build_redis(config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("REDIS_URL={url}: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(not(feature = "redis"))]
async fn on_redis(_: BroadcastBuilder, _: &str, _: &Args) -> BroadcastManager {
    eprintln!("REDIS_URL is set, but fault_server was built without `--features redis`");
    std::process::exit(2);
}

/// A listener on `addr` whose accepted sockets get a send buffer of
/// `sndbuf` bytes (Linux copies the listener's to each accepted socket).
fn listen(addr: SocketAddr, sndbuf: Option<u32>) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted server takes its port back at once.
    socket.set_reuseaddr(true)?;
    if let Some(bytes) = sndbuf {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let shutdown = Shutdown::new();
    let builder = BroadcastManager::builder()
        .history(args.history)
        .queue_capacity(args.queue)
        .stream(
            StreamConfig::new()
                .heartbeat(args.heartbeat)
                .shutdown(&shutdown),
        );
    let manager = match std::env::var("REDIS_URL") {
        Err(_) => builder.build(),
        Ok(url) => on_redis(builder, &url, &args).await,
    };
    let app = BroadcastRoutes::new(manager)
        .publish(Access::Anyone)
        .read(Access::Anyone)
        .trust_publisher_html()
        .install(Router::new());
    let listener = match listen(args.addr, args.sndbuf) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.addr);
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("listening on http://{addr}");
    let server = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown.clone().after_signal());
    // A graceful shutdown waits for every connection to finish, and the
    // connection of a client that stopped reading never does: hyper cannot
    // flush the end of its stream into a full socket. So the others get
    // `--drain-ms` to end, then the process stops anyway.
    if let Err(e) = shutdown.drain_within(server, args.drain).await {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}
