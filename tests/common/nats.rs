//! A real `nats-server` with JetStream (`-js`) on a free loopback port, for
//! the NATS backend tests. No mock: the tests need the real server and fail
//! loudly without it (`scripts/test.sh` installs it).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use htmx_sse::connections::ConnectionId;
use serde_json::{Value, json};

/// How long a raw request waits for its answer.
const WAIT: Duration = Duration::from_secs(10);

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

/// A connection to the server with the plain NATS protocol, as another
/// program on the same server could open.
pub struct Raw {
    con: tokio::net::TcpStream,
    /// Read and not consumed yet.
    got: Vec<u8>,
}

impl Raw {
    /// Connects, and says hello.
    pub async fn connect(nats: &NatsServer) -> Self {
        let addr = nats.url().replace("nats://", "");
        let con = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            con,
            got: Vec::new(),
        };
        while !raw.got.windows(2).any(|w| w == b"\r\n") {
            raw.read().await;
        }
        assert!(raw.got.starts_with(b"INFO "), "the server greets");
        raw.got.clear();
        raw.send(b"CONNECT {\"verbose\":false}\r\n").await;
        raw
    }

    async fn read(&mut self) {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.con.read(&mut buf))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.got.extend_from_slice(&buf[..n]);
    }

    /// Sends protocol lines as they are.
    pub async fn send(&mut self, lines: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        self.con.write_all(lines).await.unwrap();
    }

    /// Publishes `payload` on `subject`, asking for answers on `reply`.
    pub async fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let reply = reply.map_or_else(String::new, |r| format!(" {r}"));
        let mut out = format!("PUB {subject}{reply} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.send(&out).await;
    }

    /// Waits until the server handled everything sent so far (a PING and
    /// its PONG).
    pub async fn sync(&mut self) {
        self.send(b"PING\r\n").await;
        while !self.got.ends_with(b"PONG\r\n") {
            self.read().await;
        }
        self.got.clear();
    }

    /// The payload of the next message delivered to a subscription (its
    /// headers left out).
    pub async fn next_message(&mut self) -> Vec<u8> {
        loop {
            // MSG <subject> <sid> [reply] <bytes>\r\n<payload>\r\n, or with
            // headers (JetStream publishes carry some) HMSG <subject> <sid>
            // [reply] <header bytes> <total bytes>\r\n<headers><payload>\r\n.
            let text = String::from_utf8_lossy(&self.got).into_owned();
            if let Some(at) = text.find("MSG ")
                && let Some(eol) = text[at..].find("\r\n")
            {
                let headers = at > 0 && text.as_bytes()[at - 1] == b'H';
                let line_end = at + eol;
                let fields: Vec<&str> = text[at..line_end].split(' ').collect();
                let total: usize = fields[fields.len() - 1].parse().unwrap();
                let skip: usize = if headers {
                    fields[fields.len() - 2].parse().unwrap()
                } else {
                    0
                };
                let start = line_end + 2;
                if self.got.len() >= start + total {
                    let payload = self.got[start + skip..start + total].to_vec();
                    self.got.drain(..start + total);
                    return payload;
                }
            }
            self.read().await;
        }
    }
}

/// Publishes `payload` on `subject` with the plain NATS protocol, as
/// another program on the same server could: JetStream keeps it in the
/// stream whose subject it is.
pub async fn raw_publish(nats: &NatsServer, subject: &str, payload: &[u8]) {
    let mut raw = Raw::connect(nats).await;
    raw.publish(subject, None, payload).await;
    raw.sync().await;
}

#[derive(Debug, PartialEq)]
pub enum Place {
    Recorded,
    /// A delete marker.
    Deleted,
    /// No message at all for the key.
    Gone,
}

/// How many messages the stream of the bucket `bucket` holds: values and
/// delete markers.
pub async fn bucket_messages(nats: &NatsServer, bucket: &str) -> u64 {
    let answer = raw_request(nats, &format!("$JS.API.STREAM.INFO.KV_{bucket}"), b"").await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    answer["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// What the `PREFIX-where` bucket holds for `id`, read with the plain
/// JetStream API (the last message of the key's subject).
pub async fn place_entry(nats: &NatsServer, prefix: &str, id: &ConnectionId) -> Place {
    use base64::Engine as _;
    let request = json!({"last_by_subj": format!("$KV.{prefix}-where.{}", id.as_str())});
    let answer = raw_request(
        nats,
        &format!("$JS.API.STREAM.MSG.GET.KV_{prefix}-where"),
        request.to_string().as_bytes(),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    if answer["error"]["err_code"] == 10037 {
        return Place::Gone; // no message found
    }
    let message = &answer["message"];
    assert!(message.is_object(), "{answer}");
    let headers = message["hdrs"].as_str().map_or_else(Vec::new, |h| {
        base64::engine::general_purpose::STANDARD.decode(h).unwrap()
    });
    if String::from_utf8_lossy(&headers).contains("KV-Operation: DEL") {
        Place::Deleted
    } else {
        Place::Recorded
    }
}

/// A request with the plain NATS protocol; returns the answer's payload.
pub async fn raw_request(nats: &NatsServer, subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut raw = Raw::connect(nats).await;
    raw.send(b"SUB _INBOX.test 1\r\n").await;
    raw.publish(subject, Some("_INBOX.test"), payload).await;
    raw.next_message().await
}
