//! `cargo bench --features compression --bench compression`: what
//! compressing the demo's dashboard stream saves on the wire, and what it
//! costs in CPU time and memory per connection.
//!
//! The stream is the demo's (`examples/demo.rs`, `dashboard()`): one
//! out-of-band message of four regions every second, a log line added
//! every 5th, published through a `BroadcastManager` to connections opened
//! as its routes open them. Sixty seconds of it are replayed: the 60
//! messages are made as the demo makes them (a clock starting at 12:00:00,
//! the same sine waves for CPU and requests per second) and published one
//! after the other without waiting a second in between; each is read by
//! every connection before the next is published, so every message is a
//! chunk of its own, compressed and flushed alone, as it is when the
//! messages come a second apart.
//!
//! Each configuration runs in a process of its own (this program started
//! again with `--child`), so that one's memory does not stay in the
//! next one's reading: it opens `--conns` connections (1,000 by default)
//! by `connect(…).accept_encoding(…).into_response()` and reads their
//! bodies in the process, with no socket in between. What it measures:
//!
//! - bytes on the wire per connection: every chunk of the body, plus
//!   HTTP/1.1's chunk framing (`{len:X}\r\n` … `\r\n`) as hyper writes it;
//!   the response headers are left out (a few hundred bytes, once);
//! - CPU time per event per connection: the process's CPU time over the 60
//!   publishes and the reading of every chunk, divided by 60 × conns; all
//!   on one thread (a current-thread runtime);
//! - memory per connection: the growth of the resident set over opening
//!   the connections and streaming the 60 messages, divided by conns.
//!
//! Each configuration runs `--repeat` times (5 by default); the table
//! shows the median run by CPU time and the median memory reading.
//! `--quick` runs each once with 20 connections. Writes
//! `target/bench/compression.md`.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse as _;
use chrono::{DateTime, TimeZone as _, Utc};
use futures_util::StreamExt as _;
use htmx_sse::BroadcastManager;
use htmx_sse::streaming::{Compression, OobStreamBuilder, StreamConfig, Swap};
use maud::html;
use nix::time::{ClockId, clock_gettime};

/// The configurations compared: a label, the `Accept-Encoding` sent, and
/// the settings (`None`: no compression configured).
#[derive(Debug, Clone, Copy)]
struct Setup {
    label: &'static str,
    accept: &'static str,
    compression: Option<Compression>,
    /// Connections for this one (brotli's own defaults take megabytes
    /// each).
    conns_div: usize,
}

fn setups() -> Vec<Setup> {
    let gzip = Compression::new().brotli(false);
    let br = Compression::new().gzip(false);
    vec![
        Setup {
            label: "identity (no compression)",
            accept: "gzip, deflate, br, zstd",
            compression: None,
            conns_div: 1,
        },
        Setup {
            label: "gzip level 6 (default)",
            accept: "gzip, deflate, br, zstd",
            compression: Some(gzip),
            conns_div: 1,
        },
        Setup {
            label: "gzip level 1",
            accept: "gzip",
            compression: Some(gzip.gzip_level(1)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 5, window 2^16",
            accept: "br",
            compression: Some(br.brotli_quality(5).brotli_window_bits(16)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 5, window 2^18",
            accept: "br",
            compression: Some(br.brotli_quality(5).brotli_window_bits(18)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 4, window 2^16",
            accept: "br",
            compression: Some(br.brotli_quality(4).brotli_window_bits(16)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 3, window 2^16 (default)",
            accept: "gzip, deflate, br, zstd",
            compression: Some(br.brotli_quality(3).brotli_window_bits(16)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 2, window 2^16",
            accept: "br",
            compression: Some(br.brotli_quality(2).brotli_window_bits(16)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 1, window 2^16",
            accept: "br",
            compression: Some(br.brotli_quality(1).brotli_window_bits(16)),
            conns_div: 1,
        },
        Setup {
            label: "br quality 11, window 2^22 (brotli's own defaults)",
            accept: "br",
            compression: Some(br.brotli_quality(11).brotli_window_bits(22)),
            conns_div: 20,
        },
    ]
}

/// The demo's 60 dashboard messages, second by second.
fn messages() -> Vec<htmx_sse::Fragment> {
    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 12, 5, 12, 0, 0)
        .single()
        .expect("a valid date");
    (1..=60u64)
        .map(|n| {
            let now = start + chrono::Duration::seconds(n as i64);
            let t = n as f64;
            let cpu = 45.0 + 30.0 * (t / 7.0).sin() + 8.0 * (t * 1.3).sin();
            let rps = 1200.0 + 400.0 * (t / 11.0).cos();
            let up = n;
            let mut oob = OobStreamBuilder::new()
                .add("clock", Swap::InnerHtml, html! { (now.format("%H:%M:%S")) })
                .add("cpu", Swap::InnerHtml, html! { (format!("{cpu:.0}")) "%" })
                .add("rps", Swap::InnerHtml, html! { (format!("{rps:.0}")) })
                .add(
                    "uptime",
                    Swap::InnerHtml,
                    html! { (format!("{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60)) },
                );
            if n.is_multiple_of(5) {
                let line = format!("{} cpu={cpu:.1}% rps={rps:.0}", now.format("%H:%M:%S"));
                oob = oob.add("log", Swap::AfterBegin, html! { li { (line) } });
            }
            oob.build().expect("a valid OOB message")
        })
        .collect()
}

fn cpu_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("process CPU clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// One configuration, in this process: prints one `RESULT` line.
fn child(index: usize, conns: usize) {
    let setup = setups()[index];
    let conns = (conns / setup.conns_div).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let messages = messages();
        let mut config = StreamConfig::new().no_heartbeat();
        if let Some(c) = setup.compression {
            config = config.compression(c);
        }
        let manager = BroadcastManager::builder().stream(config).build();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(setup.accept),
        );
        // Warm up the allocator and the manager with one connection.
        drop(manager.connect(None, serde_json::Value::Null));
        let rss0 = rss_bytes();
        let mut bodies = Vec::with_capacity(conns);
        let mut encoding = String::from("identity");
        for _ in 0..conns {
            let conn = manager
                .connect(None, serde_json::Value::Null)
                .expect("under the limit")
                .accept_encoding(&headers);
            let res = conn.into_response();
            if let Some(e) = res.headers().get(header::CONTENT_ENCODING) {
                encoding = e.to_str().unwrap_or("?").to_owned();
            }
            bodies.push(res.into_body().into_data_stream());
        }
        let (mut body, mut framed) = (0u64, 0u64);
        let mut take = |chunk: &[u8]| {
            body += chunk.len() as u64;
            framed += (format!("{:X}", chunk.len()).len() + 4 + chunk.len()) as u64;
        };
        // The `connection` event.
        for b in &mut bodies {
            let chunk = b.next().await.expect("a chunk").expect("no error");
            take(&chunk);
        }
        let cpu0 = cpu_ns();
        for m in messages {
            manager
                .message("dashboard", m)
                .send()
                .await
                .expect("published");
            for b in &mut bodies {
                let chunk = tokio::time::timeout(Duration::from_secs(10), b.next())
                    .await
                    .expect("the message within 10 s")
                    .expect("a chunk")
                    .expect("no error");
                take(&chunk);
            }
        }
        let cpu = cpu_ns() - cpu0;
        let rss = rss_bytes().saturating_sub(rss0);
        let n = conns as f64;
        println!(
            "RESULT {index} {encoding} {conns} {:.1} {:.1} {:.0} {:.1}",
            body as f64 / n,
            framed as f64 / n,
            cpu as f64 / (60.0 * n),
            rss as f64 / n / 1024.0,
        );
        drop(bodies);
    });
}

/// Runs configuration `index` in a process of its own.
fn run_child(exe: &std::path::Path, index: usize, setup: &Setup, conns: usize) -> Row {
    let out = Command::new(exe)
        .args(["--child", &index.to_string(), "--conns", &conns.to_string()])
        .output()
        .expect("the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
        eprintln!(
            "{}: no result\n{stdout}\n{}",
            setup.label,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| f[i].parse::<f64>().expect("a number");
    Row {
        label: setup.label,
        encoding: f[2].to_owned(),
        conns: f[3].parse().expect("a count"),
        body: num(4),
        framed: num(5),
        cpu_ns: num(6),
        kib: num(7),
    }
}

struct Row {
    label: &'static str,
    encoding: String,
    conns: usize,
    body: f64,
    framed: f64,
    cpu_ns: f64,
    kib: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let conns = arg("--conns").unwrap_or(1000);
    if let Some(index) = arg("--child") {
        child(index, conns);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: run
    // the smallest case then, to check that it works.
    let quick = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--quick");
    let conns = if quick { 20 } else { conns };
    let exe = std::env::current_exe().expect("this program");
    let mut rows = Vec::new();
    let repeat = if quick {
        1
    } else {
        arg("--repeat").unwrap_or(5).max(1)
    };
    for (index, setup) in setups().iter().enumerate() {
        let mut runs: Vec<Row> = (0..repeat)
            .map(|_| run_child(&exe, index, setup, conns))
            .collect();
        // The median run by CPU time (the machine is shared: CPU time is
        // the noisy reading; bytes do not change between runs).
        runs.sort_by(|a, b| a.cpu_ns.total_cmp(&b.cpu_ns));
        let mut row = runs.swap_remove(runs.len() / 2);
        let mut kib: Vec<f64> = runs.iter().map(|r| r.kib).chain([row.kib]).collect();
        kib.sort_by(f64::total_cmp);
        row.kib = kib[kib.len() / 2];
        eprintln!(
            "{:<52} {:>8} conns {:>5}  {:>8.0} B  {:>6.0} ns/event  {:>7.1} KiB/conn",
            row.label, row.encoding, row.conns, row.framed, row.cpu_ns, row.kib
        );
        rows.push(row);
    }
    let base = &rows[0];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| configuration | encoding | conns | bytes on the wire per connection, 60 s (body) | × identity | CPU per event per connection | × identity | memory per connection (RSS growth) | compressor's share |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} ({:.0}) | {:.3}× | {:.1} µs | {:.1}× | {:.1} KiB | {:+.1} KiB |",
            r.label,
            r.encoding,
            r.conns,
            r.framed,
            r.body,
            r.framed / base.framed,
            r.cpu_ns / 1000.0,
            r.cpu_ns / base.cpu_ns,
            r.kib,
            r.kib - base.kib,
        );
    }
    println!("{md}");
    let dir = std::path::Path::new("target/bench");
    if std::fs::create_dir_all(dir).is_ok()
        && std::fs::write(dir.join("compression.md"), &md).is_ok()
    {
        println!("wrote target/bench/compression.md");
    }
    // The defaults (`Compression::new()`).
    let worst = rows
        .iter()
        .filter(|r| r.label.contains("(default)"))
        .map(|r| r.framed / base.framed)
        .fold(0.0, f64::max);
    if !quick && worst > 0.25 {
        eprintln!("a default configuration's ratio is {worst:.3}: above the 0.25 target");
        std::process::exit(1);
    }
}
