//! The demo, as a newcomer runs it: `examples/demo.rs` started as its own
//! process, two tabs of headless Chromium kept in sync, then Ctrl-C (SIGINT)
//! with those streams open must stop it promptly; and SIGTERM, as a
//! container is stopped, must end an open stream cleanly and stop it.
//!
//! Needs what the browser tests need (`npm ci`, Debian's `chromium`);
//! `scripts/test.sh` installs both.
#![cfg(unix)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[path = "common/example.rs"]
mod example;

/// The demo as its own process, built with this test's features (the
/// demo's own tests make `cargo test` build it as a test, not a binary).
fn demo_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| example::example_binary("demo")).clone()
}

/// The four files the demo's `--assets` wants, from the npm packages, in
/// a directory of this process's named `tag` (tests run in parallel).
fn assets(tag: &str) -> PathBuf {
    let modules = root().join("node_modules");
    let dir =
        std::env::temp_dir().join(format!("htmx-sse-demo-assets-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in [
        ("htmx2/dist/htmx.min.js", "htmx.min.js"),
        ("htmx-ext-sse/dist/sse.js", "sse.js"),
        ("htmx4/dist/htmx.min.js", "htmx4.min.js"),
        ("htmx4/dist/ext/hx-sse.js", "hx-sse.js"),
    ] {
        let src = modules.join(from);
        assert!(
            src.is_file(),
            "{} missing: run `npm ci` in {} (or scripts/test.sh)",
            src.display(),
            root().display()
        );
        std::fs::copy(&src, dir.join(to)).unwrap();
    }
    dir
}

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Demo {
    /// Starts the demo on a free port of 127.0.0.1 with `args` and `env`,
    /// and returns it once it listens, with its port.
    fn start(args: &[&str], env: &[(&str, &str)]) -> (Demo, u16) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut demo = Demo(
            Command::new(demo_binary())
                .args(["--addr", &format!("127.0.0.1:{port}")])
                .args(args)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        wait_until_listening(port, &mut demo.0);
        (demo, port)
    }

    /// Sends `signal` (`INT`, `TERM`) and requires exit 0 within 5 s.
    fn stop_with(&mut self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "demo exited with {status}");
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the demo did not stop within 5 s of SIG{signal} with a stream open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_until_listening(port: u16, child: &mut Child) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the demo exited early: {status}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the demo did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tests/browser/demo.mjs` against a demo of its own, in `flavour`
/// (`htmx2`: the page at `/`; `htmx4`: the page at `/?htmx=4`), then stops
/// the demo with Ctrl-C while a stream is open: it must stop within a few
/// seconds.
fn demo_in_a_browser(flavour: &str) {
    assert!(
        Path::new(
            &std::env::var("HTMX_SSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
        )
        .is_file(),
        "chromium missing: apt-get update && apt-get install -y chromium (or scripts/test.sh)"
    );
    let assets = assets(flavour);
    let assets_arg = assets.to_string_lossy().into_owned();
    let (mut demo, port) = Demo::start(&["--assets", &assets_arg], &[("RUST_LOG", "warn")]);

    let shots = root().join("target").join("browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root().join("tests/browser/demo.mjs"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&shots)
        .arg(flavour)
        .current_dir(root())
        .output()
        .expect("node not found: install nodejs (or run scripts/test.sh)");
    println!("screenshots: {}", shots.display());
    assert!(
        out.status.success(),
        "demo scenario on {flavour} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Ctrl-C with a stream open: the demo must stop within a few seconds.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    demo.stop_with("INT");
    let _ = std::fs::remove_dir_all(assets);
}

#[test]
fn demo_keeps_two_tabs_in_sync_and_stops_on_ctrl_c() {
    demo_in_a_browser("htmx2");
}

/// The same page and scenario on htmx 4 (`/?htmx=4`): one value switches
/// the page's markup, the stream is the same.
#[test]
fn demo_runs_the_same_on_htmx_4() {
    demo_in_a_browser("htmx4");
}

/// SIGTERM, as containers and systemd stop a server, with a stream open:
/// the demo ends the stream cleanly (its chunked body finished, no close
/// event, so browsers reconnect to the next process) and exits 0 promptly.
#[test]
fn sigterm_ends_open_streams_cleanly_and_stops_the_demo() {
    use std::io::{Read as _, Write as _};
    let (mut demo, port) = Demo::start(&[], &[("RUST_LOG", "warn")]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Wait for the connection event, so the stream is open for sure.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event: connection") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let killer = std::thread::spawn(move || {
        demo.stop_with("TERM");
    });
    // The stream ends with the last chunk of a chunked body, not a cut.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the stream did not end within 5 s of SIGTERM ({e}): {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.ends_with("0\r\n\r\n"), "not a clean end: {text:?}");
    assert!(!text.contains("event: close"), "{text}");
    // The demo spreads reconnects over 5 s: the last event says when.
    assert!(text.contains("event: htmx-sse-retry\nretry: "), "{text}");
    killer.join().unwrap();
}

/// `POST path` to the demo on `port`: the status and the body.
fn post(port: u16, path: &str, content_type: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    // The server may answer before reading a body it refuses.
    let _ = s.read_to_string(&mut out);
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The demo's own forms (`POST /notes`, `POST /toast`) take the manager's
/// body limit: a 100 KiB form is refused with 413, not read into memory.
#[test]
fn the_demo_forms_refuse_oversized_bodies() {
    let (_demo, port) = Demo::start(&[], &[("RUST_LOG", "error")]);
    let form = "application/x-www-form-urlencoded";
    let huge = format!("text={}", "a".repeat(100 * 1024));
    for path in ["/notes", "/toast"] {
        let (status, text) = post(port, path, form, &huge);
        assert_eq!(status, 413, "{path}: {text}");
    }
    let (status, text) = post(port, "/notes", form, "text=fits");
    assert_eq!(status, 200, "{text}");
}

#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

/// Redis down while the demo runs on it: every publish path the demo offers
/// (`POST /notes`, `POST /toast`, and the crate's `POST /sse/broadcast`
/// opened with `--open-publish`) answers 503 with a JSON error, and
/// nothing is shown as sent.
#[cfg(feature = "redis")]
#[test]
fn publishing_while_redis_is_down_is_a_503_with_a_json_error() {
    let mut redis = redis_server::RedisServer::start(false);
    let url = redis.url();
    let (_demo, port) = Demo::start(
        &["--open-publish"],
        &[("REDIS_URL", url.as_str()), ("RUST_LOG", "error")],
    );
    let form = "application/x-www-form-urlencoded";
    let paths = [
        ("/notes", form, "text=hello"),
        ("/toast", form, "scope=everyone&text=hello&level=info"),
        (
            "/sse/broadcast",
            "application/json",
            r#"{"type":"note","data":"hello"}"#,
        ),
    ];
    // Up: each path publishes.
    for (path, ct, body) in paths {
        let (status, text) = post(port, path, ct, body);
        assert!(
            (200..300).contains(&status),
            "{path} with Redis up: {status} {text}"
        );
    }
    redis.stop();
    for (path, ct, body) in paths {
        let (status, text) = post(port, path, ct, body);
        assert_eq!(status, 503, "{path} with Redis down: {text}");
        assert!(
            text.contains(r#""error":"#),
            "{path}: not a JSON error: {text}"
        );
    }
}

/// Built with the `metrics` feature (as `cargo test --all-features`
/// builds it), the demo answers `GET /metrics` in the Prometheus text
/// format, counting its own streams.
#[cfg(feature = "metrics")]
#[test]
fn the_demo_serves_its_metrics() {
    let (_demo, port) = Demo::start(&[], &[("RUST_LOG", "warn")]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The stream's first bytes: it is open and counted.
    let mut first = [0u8; 64];
    let n = std::io::Read::read(&mut stream, &mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut metrics = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut metrics,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut metrics, &mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    assert!(text.contains("htmx_sse_connects_total 1"), "{text}");
    assert!(
        text.contains("htmx_sse_backend_up{backend=\"memory\"} 1"),
        "{text}"
    );
}

/// The dashboard (`dashboards/htmx-sse.json`) rendered from scrapes of the
/// demo under load by `scripts/dashboard.mjs`, which fails when a panel
/// gets no data: the same script made the README's picture, over 60 s.
#[cfg(feature = "metrics")]
#[test]
fn the_dashboard_renders_from_the_demo_under_load() {
    let (_demo, port) = Demo::start(&[], &[("RUST_LOG", "warn")]);
    let out = root().join("target").join("dashboard");
    let run = Command::new("node")
        .arg(root().join("scripts/dashboard.mjs"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&out)
        .arg("6")
        .current_dir(root())
        .output()
        .expect("node not found: install nodejs (or run scripts/test.sh)");
    assert!(
        run.status.success(),
        "dashboard failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(out.join("dashboard.html")).unwrap();
    assert_eq!(html.matches("<section").count(), 13, "every panel rendered");
    assert!(!html.contains("no data"), "{html}");
    assert!(out.join("dashboard.png").is_file());
}

/// `--compress` (built with the `compression` feature) compresses the
/// shared stream for a browser that accepts it; without the flag the
/// demo never compresses (the stream mixes posted notes with secrets).
#[cfg(feature = "compression")]
#[test]
fn the_demo_compresses_its_stream_only_when_asked() {
    let head = |port: u16| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    };
    let (_plain, port) = Demo::start(&[], &[("RUST_LOG", "warn")]);
    let text = head(port);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(!text.contains("content-encoding"), "{text}");
    let (_compressed, port) = Demo::start(&["--compress"], &[("RUST_LOG", "warn")]);
    let text = head(port);
    assert!(text.contains("content-encoding: br"), "{text}");
}
