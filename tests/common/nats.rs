//! A real `nats-server` with JetStream (`-js`) on a free loopback port, for
//! the NATS backend tests. No mock: the tests need the real server and fail
//! loudly without it (`scripts/test.sh` installs it).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `nats-server -js` process, its JetStream data in a directory of its
/// own; killed (by its PID) when dropped.
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    jetstream: bool,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream, its store in a fresh directory.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without JetStream (`nats-server` without `-js`).
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("htmx-sse-nats-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = NatsServer {
            port,
            dir,
            jetstream,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        if self.jetstream {
            cmd.arg("-js");
        }
        let child = cmd
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): install it with \
                     `apt-get install nats-server` (scripts/test.sh does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the data it had.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again on the same port without its data (a new machine,
    /// a lost disk).
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("a temporary directory");
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
