//! The fan-out load benchmark: `cargo bench --bench fanout`.
//!
//! One run starts, scenario by scenario, three servers, each in its own
//! process pinned to CPU 0 (the crate's `setup_broadcast_routes`, the naive
//! axum `Sse` + `tokio::sync::broadcast` baseline, and a raw socket loop),
//! and a client process pinned to CPU 1 that holds N real SSE connections
//! over 127.0.0.1. It measures deliveries per second, publish-to-receive
//! latency, lost messages, server CPU time per delivery (from
//! `/proc/<pid>/stat`) and server RSS per idle connection (from
//! `/proc/<pid>/status`), and writes a Markdown table and an SVG chart
//! under `target/bench/`. See `BENCHMARKS.md` for the method.
//!
//! ```text
//! cargo bench --bench fanout                    # everything, about 5 minutes
//! cargo bench --bench fanout -- --quick         # small counts, a smoke test
//! cargo bench --bench fanout -- --only load-1k --servers crate,baseline
//! cargo bench --bench fanout -- --only h2-1k    # HTTP/2: 1,000 streams over 10 connections
//! cargo bench --bench fanout -- --window 16 --repeat 3 --out target/bench
//! cargo bench --bench fanout -- --only churn,shutdown,reconnect --retry-window-ms 10000
//! ```
//!
//! The life-cycle scenarios (`churn`, `shutdown`, `reconnect`, crate server
//! only, see `lifecycle.rs`) run after the load scenarios and write
//! `lifecycle.md` next to the table; the bench exits non-zero when one of
//! them misses its target.
//!
//! The same binary is the server (`--serve KIND --cpu N`) and the client
//! (`--client …`); the parent spawns it. Run without `--bench` (as
//! `cargo test --benches` does) it does nothing.

mod client;
mod lifecycle;
mod report;
mod server;
mod sys;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use server::Kind;

/// The CPU each server process is pinned to; clients and the parent get
/// the other one.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Stop starting runs after this much time (the whole bench stays well
/// under 15 minutes).
const BUDGET: Duration = Duration::from_secs(12 * 60);
/// No life-cycle scenario (each at most about a minute) starts after this.
const LIFECYCLE_BUDGET: Duration = Duration::from_secs(13 * 60);
/// A run during which other processes took more than this share of the
/// server's or the client's CPU is noisy (the machine may be shared).
const NOISY: f64 = 0.10;
/// Extra tries of a load run that came out noisy.
const RETRIES: usize = 4;
/// How long to wait for a quiet machine before each run.
const QUIET_WAIT: Duration = Duration::from_secs(20);

/// One workload.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    conns: usize,
    msgs: u64,
    /// Client processes the connections are split over (each process has
    /// its own fd limit).
    clients: usize,
    /// Pause after connecting, before the memory reading.
    settle: Duration,
    repeat: usize,
    /// Zero: publish as fast as the window allows. Otherwise one message
    /// per this many microseconds (latency of one fan-out, unloaded).
    pace_us: u64,
    /// Zero: one HTTP/1.1 connection per stream. Otherwise the streams
    /// are HTTP/2 streams over this many cleartext connections (h2c, prior
    /// knowledge), for the two axum servers (the raw loop speaks only
    /// HTTP/1.1).
    h2_conns: usize,
}

fn scenarios(quick: bool, repeat: usize) -> Vec<Scenario> {
    let s = |name, conns, msgs, clients, settle_ms, repeat| Scenario {
        name,
        conns,
        msgs,
        clients,
        settle: Duration::from_millis(settle_ms),
        repeat,
        pace_us: 0,
        h2_conns: 0,
    };
    let paced = |name, conns, msgs, pace_ms: u64, repeat| Scenario {
        pace_us: pace_ms * 1_000,
        ..s(name, conns, msgs, 1, 300, repeat)
    };
    // As `load-*`, the streams multiplexed over a few HTTP/2 connections.
    let h2 = |name, conns, msgs, h2_conns, repeat| Scenario {
        h2_conns,
        ..s(name, conns, msgs, 1, 1_000, repeat)
    };
    if quick {
        vec![
            s("load-1k", 200, 50, 1, 300, 1),
            s("load-10k", 1_000, 20, 1, 300, 1),
            paced("paced-1k", 200, 20, 20, 1),
            paced("paced-10k", 1_000, 10, 50, 1),
            s("idle-10k", 1_000, 0, 1, 500, 1),
            s("scale", 2_000, 0, 2, 500, 1),
            h2("h2-1k", 200, 50, 4, 1),
        ]
    } else {
        vec![
            s("load-1k", 1_000, 200, 1, 1_000, repeat),
            s("load-10k", 10_000, 50, 1, 1_000, repeat),
            // The same sizes at a pace each fan-out finishes within: the
            // latency of one broadcast, without queueing behind others.
            paced("paced-1k", 1_000, 100, 20, repeat.min(3)),
            paced("paced-10k", 10_000, 30, 150, repeat.min(3)),
            s("idle-10k", 10_000, 0, 1, 3_000, 1),
            // The same after 17 s: both servers have sent their first
            // heartbeat (15 s by default) on every connection, as every
            // connection idle for longer has.
            s("idle-10k-beat", 10_000, 0, 1, 17_000, 1),
            // Two client processes of 9,750: each stays far below its own
            // 20,000 descriptors; the server holds all 19,500.
            s("scale", 19_500, 0, 2, 3_000, 1),
            // load-1k's 1,000 streams and 200 messages, over 10 HTTP/2
            // connections of 100 streams each (hyper's default limit is
            // 200 per connection).
            h2("h2-1k", 1_000, 200, 10, repeat),
        ]
    }
}

#[derive(Debug)]
struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    servers: Vec<Kind>,
    window: u64,
    repeat: usize,
    out: PathBuf,
    nodelay: bool,
    /// Overrides of every scenario's connection and message counts (for
    /// profiling runs).
    conns: Option<usize>,
    msgs: Option<u64>,
    /// Overrides every scenario's pause before the memory reading.
    settle: Option<Duration>,
    /// The `reconnect` scenario's `retry_on_shutdown` window.
    retry_window_ms: Option<u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if let Some(i) = args.iter().position(|a| a == "--serve") {
        let kind = args.get(i + 1).and_then(|k| Kind::parse(k));
        match kind {
            Some(kind) => server::run(
                kind,
                flag(&args, "--cpu").unwrap_or(SERVER_CPU),
                args.iter().any(|a| a == "--nodelay"),
                flag(&args, "--retry-window-ms").map(Duration::from_millis),
            ),
            None => Err("--serve needs crate, baseline or raw".to_owned()),
        }
    } else if args.iter().any(|a| a == "--lc") {
        lifecycle::client_main(&args)
    } else if args.iter().any(|a| a == "--client") {
        client_args(&args).and_then(client::run)
    } else if args.iter().any(|a| a == "--bench") {
        options(&args).and_then(|o| orchestrate(&o))
    } else {
        println!("fanout: a load benchmark; run it with `cargo bench --bench fanout`");
        Ok(())
    };
    if let Err(e) = result {
        eprintln!("fanout: error: {e}");
        std::process::exit(1);
    }
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn client_args(args: &[String]) -> Result<client::Args, String> {
    let need = |name: &str| -> Result<u64, String> {
        flag(args, name).ok_or_else(|| format!("client: missing {name}"))
    };
    Ok(client::Args {
        port: need("--port")? as u16,
        ctl: need("--ctl")? as u16,
        conns: need("--conns")? as usize,
        msgs: need("--msgs")?,
        window: need("--window")?.max(1),
        pace_us: flag(args, "--pace-us").unwrap_or(0),
        cpu: flag(args, "--cpu").unwrap_or(CLIENT_CPU),
        h2: flag(args, "--h2").unwrap_or(0),
    })
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        only: None,
        servers: Kind::ALL.to_vec(),
        window: 16,
        repeat: 5,
        out: default_out(),
        nodelay: false,
        conns: None,
        msgs: None,
        settle: None,
        retry_window_ms: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--quick" => o.quick = true,
            "--nodelay" => o.nodelay = true,
            "--only" => o.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--servers" => {
                o.servers = value()?
                    .split(',')
                    .map(|k| Kind::parse(k).ok_or(format!("unknown server {k}")))
                    .collect::<Result<_, _>>()?;
            }
            "--window" => o.window = value()?.parse().map_err(|_| "bad --window")?,
            "--repeat" => o.repeat = value()?.parse().map_err(|_| "bad --repeat")?,
            "--out" => o.out = PathBuf::from(value()?),
            "--conns" => o.conns = Some(value()?.parse().map_err(|_| "bad --conns")?),
            "--msgs" => o.msgs = Some(value()?.parse().map_err(|_| "bad --msgs")?),
            "--retry-window-ms" => {
                let ms: u64 = value()?.parse().map_err(|_| "bad --retry-window-ms")?;
                o.retry_window_ms = Some(ms.max(10));
            }
            "--settle-ms" => {
                let ms = value()?.parse().map_err(|_| "bad --settle-ms")?;
                o.settle = Some(Duration::from_millis(ms));
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    o.window = o.window.max(1);
    o.repeat = o.repeat.max(1);
    Ok(o)
}

fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

/// A spawned copy of this binary, speaking in lines.
struct Child {
    name: String,
    proc: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn spawn(name: &str, args: &[String]) -> Result<Child, String> {
        Child::spawn_wrapped(name, args, None)
    }

    /// With `wrapper` (e.g. `valgrind --tool=callgrind`), the binary runs
    /// under it: for profiling a server (`FANOUT_SERVER_WRAPPER`).
    fn spawn_wrapped(name: &str, args: &[String], wrapper: Option<&str>) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut words: Vec<String> = wrapper
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        words.push(exe.display().to_string());
        let mut proc = Command::new(&words[0])
            .args(&words[1..])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdout = proc.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            name: name.to_owned(),
            stdin: proc.stdin.take(),
            proc,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// The rest of the next line that starts with `prefix`.
    fn expect(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {prefix} within {timeout:?}", self.name));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited before {prefix}", self.name));
                }
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: {e}", self.name))
    }

    /// Closes its stdin (servers exit on that), waits a little, then kills
    /// it (by its own pid).
    fn finish(mut self) {
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.proc.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// What one run of one server under one scenario measured.
#[derive(Debug, Clone, Default)]
struct Run {
    kind: &'static str,
    scenario: &'static str,
    conns: usize,
    connected: usize,
    connect_ms: u64,
    rss_start_kib: u64,
    rss_held_kib: u64,
    rss_after_kib: u64,
    tcp_mem_start_pages: u64,
    tcp_mem_held_pages: u64,
    slab_start_kib: u64,
    slab_held_kib: u64,
    server_cpu_ns: u64,
    server_wall_ns: u64,
    client_cpu_ns: u64,
    expected: u64,
    received: u64,
    lost: u64,
    closed: u64,
    forced: u64,
    timed_out: bool,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    body_bytes: u64,
    span_ns: u64,
    /// CPU time used on the server's and the clients' CPUs by processes
    /// other than the server and the clients during the publish phase
    /// (other work on a shared machine), in nanoseconds.
    foreign_server_cpu_ns: u64,
    foreign_client_cpu_ns: u64,
    /// Other processes took more than `NOISY` of a CPU during the publish
    /// phase: the run is reported but left out of the medians when the
    /// same cell has clean runs.
    noisy: bool,
    /// Write system calls and bytes written by the server during the
    /// publish phase (`/proc/<pid>/io`).
    server_writes: u64,
    server_wchar: u64,
}

/// `num / den`, or 0 when nothing was counted.
fn per(num: f64, den: u64) -> f64 {
    if den == 0 { 0.0 } else { num / den as f64 }
}

impl Run {
    fn deliveries_per_s(&self) -> f64 {
        per(self.received as f64 * 1e9, self.span_ns)
    }

    fn cpu_us_per_delivery(&self) -> f64 {
        per(self.server_cpu_ns as f64 / 1e3, self.received)
    }

    fn rss_per_conn_kib(&self) -> f64 {
        per(
            self.rss_held_kib.saturating_sub(self.rss_start_kib) as f64,
            self.connected as u64,
        )
    }

    fn tcp_mem_per_conn_kib(&self) -> f64 {
        per(
            self.tcp_mem_held_pages
                .saturating_sub(self.tcp_mem_start_pages) as f64
                * 4.0,
            self.connected as u64,
        )
    }

    /// Kernel slab memory (socket structures of both ends, files, epoll
    /// entries) per connection held, in KiB; machine-wide, so other work
    /// on the machine adds noise.
    fn slab_per_conn_kib(&self) -> f64 {
        per(
            self.slab_held_kib.saturating_sub(self.slab_start_kib) as f64,
            self.connected as u64,
        )
    }

    fn wire_bytes_per_msg(&self) -> f64 {
        per(self.body_bytes as f64, self.received)
    }

    /// Deliveries per write system call of the server: how many frames
    /// one `write`/`writev` carries on average.
    fn deliveries_per_write(&self) -> f64 {
        per(self.received as f64, self.server_writes)
    }

    fn server_util(&self) -> f64 {
        per(self.server_cpu_ns as f64, self.server_wall_ns)
    }

    /// The larger share of the server's or the client's CPU that other
    /// processes took during the publish phase.
    fn foreign(&self) -> f64 {
        per(
            self.foreign_server_cpu_ns.max(self.foreign_client_cpu_ns) as f64,
            self.server_wall_ns,
        )
    }

    fn client_util(&self) -> f64 {
        per(self.client_cpu_ns as f64, self.span_ns)
    }
}

fn orchestrate(o: &Options) -> Result<(), String> {
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let pinned = sys::pin_to_cpu(CLIENT_CPU)?;
    println!(
        "fanout: servers pinned to cpu {SERVER_CPU}, clients and this parent to cpu {CLIENT_CPU} \
         (sched_setaffinity via nix; this process now on {pinned}); {cpus} cpus visible; \
         window {} messages; repeat {}{}",
        o.window,
        o.repeat,
        if o.quick { "; QUICK counts" } else { "" },
    );
    let mut runs: Vec<Run> = Vec::new();
    let mut skipped = Vec::new();
    for mut sc in scenarios(o.quick, o.repeat) {
        if let Some(n) = o.conns {
            sc.conns = n;
        }
        if let (Some(m), true) = (o.msgs, sc.msgs > 0) {
            sc.msgs = m;
        }
        if let Some(settle) = o.settle {
            sc.settle = settle;
        }
        if o.only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|n| n == sc.name))
        {
            continue;
        }
        for rep in 0..sc.repeat {
            // Interleave the servers so drift hits all alike.
            for &kind in &o.servers {
                if sc.h2_conns > 0 && kind == Kind::Raw {
                    // The raw loop writes HTTP/1.1 chunks; it has no HTTP/2.
                    continue;
                }
                if started.elapsed() > BUDGET {
                    skipped.push(format!("{} {} #{}", sc.name, kind.name(), rep + 1));
                    continue;
                }
                for attempt in 0..=RETRIES {
                    let quiet = wait_quiet();
                    let t = Instant::now();
                    match run_once(kind, &sc, o) {
                        Ok(mut r) => {
                            r.noisy = sc.msgs > 0 && r.foreign() > NOISY;
                            println!(
                                "  {:<9} {:<8} #{}{} {:>6} conns  {:>10.0} deliveries/s  p99 {:>8.2} ms  \
                                 lost {:>6}  closed {:>5}  cpu {:>6.2} us/delivery  util srv {:>3.0}% cli {:>3.0}% other {:>3.0}%{}  {:.1} msg/write  \
                                 rss {:>6.2} KiB/conn  ({:.1} s{})",
                                sc.name,
                                kind.name(),
                                rep + 1,
                                if attempt > 0 { "r" } else { " " },
                                r.connected,
                                r.deliveries_per_s(),
                                r.p99_us as f64 / 1e3,
                                r.lost,
                                r.closed,
                                r.cpu_us_per_delivery(),
                                r.server_util() * 100.0,
                                r.client_util() * 100.0,
                                r.foreign() * 100.0,
                                if r.noisy { " NOISY" } else { "" },
                                r.deliveries_per_write(),
                                r.rss_per_conn_kib(),
                                t.elapsed().as_secs_f64(),
                                if quiet { "" } else { ", machine busy" },
                            );
                            let retry = r.noisy && started.elapsed() < BUDGET;
                            runs.push(r);
                            if !retry {
                                break;
                            }
                        }
                        Err(e) => {
                            println!(
                                "  {:<9} {:<8} #{} FAILED: {e}",
                                sc.name,
                                kind.name(),
                                rep + 1
                            );
                            skipped.push(format!("{} {} #{}: {e}", sc.name, kind.name(), rep + 1));
                            break;
                        }
                    }
                }
            }
        }
    }
    let lifecycle = {
        let selected: Vec<&str> = lifecycle::NAMES
            .into_iter()
            .filter(|n| {
                o.only
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|x| x == n))
            })
            .collect();
        (!selected.is_empty()).then(|| {
            lifecycle::run(
                &selected,
                lifecycle::Sizes::new(o.quick, o.retry_window_ms),
                started + LIFECYCLE_BUDGET,
            )
        })
    };
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    if let Some(lc) = &lifecycle {
        let path = o.out.join("lifecycle.md");
        let md = format!(
            "# Life-cycle results: churn, shutdown, reconnect\n\n`cargo bench --bench fanout`{}: {cpus} CPUs (the crate's server pinned to CPU 0, clients to CPU 1); {}.\n{}",
            if o.quick { " -- --quick" } else { "" },
            sys::sysctl("/proc/sys/kernel/osrelease"),
            lc.md
        );
        std::fs::write(&path, md).map_err(|e| e.to_string())?;
        println!("fanout: life-cycle results {}", path.display());
    }
    if runs.is_empty() && skipped.is_empty() {
        // Only life-cycle scenarios ran: leave the load table alone.
        println!("fanout: done in {:.0} s", started.elapsed().as_secs_f64());
        return lifecycle_verdict(lifecycle.as_ref());
    }
    let meta = report::Meta {
        window: o.window,
        repeat: o.repeat,
        quick: o.quick,
        cpus,
        elapsed: started.elapsed(),
        skipped,
    };
    let (md, svg) = report::render(&runs, &meta);
    let md_path = o.out.join("fanout.md");
    let svg_path = o.out.join("fanout.svg");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    std::fs::write(&svg_path, &svg).map_err(|e| e.to_string())?;
    println!("\n{md}");
    println!("fanout: table {}", md_path.display());
    println!("fanout: chart {}", svg_path.display());
    println!("fanout: done in {:.0} s", started.elapsed().as_secs_f64());
    lifecycle_verdict(lifecycle.as_ref())
}

/// An error (so a non-zero exit) when a life-cycle scenario missed its
/// target.
fn lifecycle_verdict(lc: Option<&lifecycle::Outcome>) -> Result<(), String> {
    match lc {
        Some(lc) if !lc.failures.is_empty() => Err(format!(
            "life-cycle targets missed: {}",
            lc.failures.join(" | ")
        )),
        _ => Ok(()),
    }
}

fn run_once(kind: Kind, sc: &Scenario, o: &Options) -> Result<Run, String> {
    let mut args = vec![
        "--serve".to_owned(),
        kind.name().to_owned(),
        "--cpu".to_owned(),
        SERVER_CPU.to_string(),
    ];
    if o.nodelay {
        args.push("--nodelay".to_owned());
    }
    let server = Child::spawn_wrapped(
        &format!("server {}", kind.name()),
        &args,
        std::env::var("FANOUT_SERVER_WRAPPER").ok().as_deref(),
    )?;
    let result = drive(kind, sc, o.window, &server);
    server.finish();
    // Let the kernel finish closing the sockets before the next run.
    std::thread::sleep(Duration::from_millis(300));
    result
}

fn drive(kind: Kind, sc: &Scenario, window: u64, server: &Child) -> Result<Run, String> {
    let ready = server.expect("READY", Duration::from_secs(20))?;
    let mut words = ready.split_whitespace();
    let port: u16 = words
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("READY port")?;
    let ctl: u16 = words
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("READY ctl")?;
    warm_up(port)?;
    std::thread::sleep(Duration::from_millis(300));
    let start = sys::read_proc(server.pid())?;
    let sock_start = sys::sockstat();
    let slab_start = sys::meminfo_kib("Slab");

    let mut clients = Vec::new();
    let per = sc.conns.div_ceil(sc.clients);
    let mut left = sc.conns;
    for i in 0..sc.clients {
        let n = per.min(left);
        left -= n;
        clients.push(Child::spawn(
            &format!("client {i}"),
            &[
                "--client".to_owned(),
                "--port".to_owned(),
                port.to_string(),
                "--ctl".to_owned(),
                ctl.to_string(),
                "--conns".to_owned(),
                n.to_string(),
                "--msgs".to_owned(),
                sc.msgs.to_string(),
                "--window".to_owned(),
                window.to_string(),
                "--pace-us".to_owned(),
                sc.pace_us.to_string(),
                "--cpu".to_owned(),
                CLIENT_CPU.to_string(),
                "--h2".to_owned(),
                sc.h2_conns.to_string(),
            ],
        )?);
    }
    let result = drive_clients(
        kind,
        sc,
        server,
        &mut clients,
        start,
        (sock_start, slab_start),
    );
    for c in clients {
        c.finish();
    }
    result
}

fn drive_clients(
    kind: Kind,
    sc: &Scenario,
    server: &Child,
    clients: &mut [Child],
    start: sys::ProcReading,
    (sock_start, slab_start): (sys::SockStat, u64),
) -> Result<Run, String> {
    let mut run = Run {
        kind: kind.name(),
        scenario: sc.name,
        conns: sc.conns,
        rss_start_kib: start.rss_kib,
        tcp_mem_start_pages: sock_start.mem_pages,
        slab_start_kib: slab_start,
        ..Run::default()
    };
    for c in clients.iter() {
        let line = c.expect("CONNECTED", Duration::from_secs(150))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        run.connected += v.first().copied().unwrap_or(0) as usize;
        run.connect_ms = run.connect_ms.max(v.get(2).copied().unwrap_or(0));
    }
    std::thread::sleep(sc.settle);
    let held = sys::read_proc(server.pid())?;
    run.rss_held_kib = held.rss_kib;
    run.tcp_mem_held_pages = sys::sockstat().mem_pages;
    run.slab_held_kib = sys::meminfo_kib("Slab");

    if sc.msgs > 0 {
        let t0 = Instant::now();
        let busy0 = sys::cpu_busy_ns();
        let cpu0 = sys::read_proc(server.pid())?.cpu_ns;
        let client0 = sys::read_proc(clients[0].pid())?.cpu_ns;
        let io0 = sys::write_calls(server.pid());
        clients[0].send("GO")?;
        clients[0].expect("PUBLISHED", Duration::from_secs(240))?;
        let after = sys::read_proc(server.pid())?;
        let client1 = sys::read_proc(clients[0].pid())?.cpu_ns;
        let busy1 = sys::cpu_busy_ns();
        let io1 = sys::write_calls(server.pid());
        run.server_writes = io1.0.saturating_sub(io0.0);
        run.server_wchar = io1.1.saturating_sub(io0.1);
        run.server_cpu_ns = after.cpu_ns.saturating_sub(cpu0);
        run.server_wall_ns = t0.elapsed().as_nanos() as u64;
        run.rss_after_kib = after.rss_kib;
        let busy = |c: usize| {
            busy1
                .get(c)
                .unwrap_or(&0)
                .saturating_sub(*busy0.get(c).unwrap_or(&0))
        };
        run.foreign_server_cpu_ns = busy(SERVER_CPU).saturating_sub(run.server_cpu_ns);
        run.foreign_client_cpu_ns =
            busy(CLIENT_CPU).saturating_sub(client1.saturating_sub(client0));
    }
    for c in clients.iter_mut() {
        c.send("END")?;
    }
    for c in clients.iter() {
        let done = c.expect("DONE", Duration::from_secs(60))?;
        let v: serde_json::Value =
            serde_json::from_str(&done).map_err(|e| format!("client summary: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        run.expected += n("expected");
        run.received += n("received");
        run.lost += n("lost");
        run.closed += n("closed_by_server");
        run.forced += n("forced");
        run.timed_out |= v["timed_out"].as_bool().unwrap_or(false);
        run.p50_us = run.p50_us.max(n("p50_us"));
        run.p99_us = run.p99_us.max(n("p99_us"));
        run.max_us = run.max_us.max(n("max_us"));
        run.body_bytes += n("body_bytes");
        run.client_cpu_ns += n("client_cpu_ns");
        run.span_ns = run
            .span_ns
            .max(n("last_receive_ns").saturating_sub(n("first_publish_ns")));
        if let Some(e) = v["error"].as_str() {
            eprintln!("  ({} client: first connection error: {e})", kind.name());
        }
    }
    Ok(run)
}

/// Waits (up to `QUIET_WAIT`) until both CPUs are idle but for noise over
/// half a second; says whether they were.
fn wait_quiet() -> bool {
    let end = Instant::now() + QUIET_WAIT;
    loop {
        let a = sys::cpu_busy_ns();
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let b = sys::cpu_busy_ns();
        let wall = t.elapsed().as_nanos() as f64;
        let busiest = a
            .iter()
            .zip(&b)
            .map(|(x, y)| y.saturating_sub(*x) as f64 / wall)
            .fold(0.0, f64::max);
        if busiest < NOISY {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
    }
}

/// One request before the memory reading, so that what every server
/// allocates on its first connection is not charged to the N connections.
fn warm_up(port: u16) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("warm-up connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("warm-up: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => return Err("warm-up: closed".to_owned()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("warm-up read: {e}")),
        }
    }
    Ok(())
}
