//! `BroadcastManager` and `setup_broadcast_routes` over real HTTP on
//! 127.0.0.1 with several clients: exclusions, `send_to`, history, resume
//! with Last-Event-ID, reset, slow clients, registry clean-up, bad input.
#![cfg(feature = "testing")]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::ConnectionId;
use htmx_sse::streaming::StreamConfig;
use htmx_sse::testing::{ReceivedEvent, TestClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

struct Server {
    base: String,
    manager: BroadcastManager,
    http: reqwest::Client,
}

impl Server {
    async fn start(manager: BroadcastManager) -> Server {
        let app = common::open_routes(Router::new(), manager.clone(), "/sse");
        let (base, _task) = common::serve(app).await;
        Server {
            base,
            manager,
            http: reqwest::Client::new(),
        }
    }

    /// Connects and reads the `connection` event; returns the client and
    /// its connection id.
    async fn client(&self) -> (TestClient, ConnectionId) {
        self.client_from(None).await
    }

    async fn client_from(&self, last_event_id: Option<&str>) -> (TestClient, ConnectionId) {
        common::open_connection(&format!("{}/sse", self.base), last_event_id).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn wait_for_connections(&self, n: usize) {
        let t0 = Instant::now();
        while self.manager.connection_count() != n || self.manager.registry().len() != n {
            assert!(
                t0.elapsed() < WAIT,
                "expected {n} connections, have {} (registry {})",
                self.manager.connection_count(),
                self.manager.registry().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
}

#[tokio::test]
async fn broadcast_reaches_everyone_with_ids() {
    let s = Server::start(BroadcastManager::new()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.client().await);
    }
    let (status, body) = s
        .post(
            "/sse/broadcast",
            json!({"type": "chat", "data": "<li>hello</li>"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 3);
    let msg_id = body["id"].as_str().unwrap().to_owned();
    for (c, id) in &mut clients {
        let ev = next(c).await;
        assert_eq!(ev.event, "chat");
        assert_eq!(ev.data, "<li>hello</li>");
        assert!(
            ev.last_event_id.starts_with(&format!("{msg_id}.{id}.")),
            "{}",
            ev.last_event_id
        );
    }
    // JSON data that is not a string arrives as compact JSON.
    s.manager
        .broadcast("stats", json!({"n": 1}), None, &[])
        .await
        .unwrap();
    for (c, _) in &mut clients {
        assert_eq!(next(c).await.data, r#"{"n":1}"#);
    }
}

#[tokio::test]
async fn exclusions_skip_exactly_the_excluded() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut a, a_id) = s.client().await;
    let (mut b, _) = s.client().await;
    let (mut c, c_id) = s.client().await;
    let (status, body) = s
        .post(
            "/sse/broadcast",
            json!({"type": "sync", "data": "from a", "exclude": [a_id.as_str(), c_id.as_str()]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 1);
    s.manager
        .broadcast("sync", "to all", None, &[])
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.data, "to all");
    assert_eq!(next(&mut b).await.data, "from a");
    assert_eq!(next(&mut b).await.data, "to all");
    assert_eq!(next(&mut c).await.data, "to all");
}

#[tokio::test]
async fn send_to_reaches_one_connection_and_unknown_ids_are_404() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut a, a_id) = s.client().await;
    let (mut b, _) = s.client().await;
    let (status, body) = s
        .post(
            &format!("/sse/send/{a_id}"),
            json!({"type": "private", "data": "for a only"}),
        )
        .await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    s.manager
        .broadcast("public", "everyone", None, &[])
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.data, "for a only");
    assert_eq!(next(&mut a).await.data, "everyone");
    assert_eq!(next(&mut b).await.data, "everyone");

    let before = s.manager.last_id();
    let (status, body) = s
        .post(
            "/sse/send/nobody-here",
            json!({"type": "private", "data": "x"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "unknown connection \"nobody-here\"");
    assert_eq!(s.manager.last_id(), before, "a failed send changed nothing");
    let err = s
        .manager
        .send_to(&ConnectionId::new("gone").unwrap(), "t", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, htmx_sse::Error::UnknownConnection { .. }));
}

#[tokio::test]
async fn history_is_bounded_and_lists_only_public_messages() {
    let s = Server::start(BroadcastManager::builder().history(5).build()).await;
    let (_a, a_id) = s.client().await;
    for n in 0..8 {
        s.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    s.manager
        .send_to(&a_id, "secret", "psst", None)
        .await
        .unwrap();
    let all = s.manager.history(None);
    // Five kept, one of them private: four listed.
    assert_eq!(all.len(), 4);
    assert_eq!(
        all.iter().map(|m| m.data.clone()).collect::<Vec<_>>(),
        [json!(4), json!(5), json!(6), json!(7)]
    );
    let (status, body) = s.get_json("/sse/history?limit=2").await;
    assert_eq!(status, 200);
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["data"], 6);
    assert_eq!(list[1]["type"], "n");
    assert!(list[1]["id"].as_str().unwrap().ends_with("-8"));
    assert!(list[1]["timestamp"].is_string());
    let (status, body) = s.get_json("/sse/history?limit=x").await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn resume_with_last_event_id_misses_nothing_and_respects_targets() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut a, a_id) = s.client().await;
    let (mut b, b_id) = s.client().await;
    s.manager.broadcast("m", "1", None, &[]).await.unwrap();
    assert_eq!(next(&mut a).await.data, "1");
    let resume_from = a.last_event_id().to_owned();
    a.close();
    s.wait_for_connections(1).await;

    // While `a` is away: public messages, one excluding it, one for `b`
    // alone, one for `b` excluded... only what was for `a` may come back.
    s.manager.broadcast("m", "2", None, &[]).await.unwrap();
    s.manager
        .broadcast("m", "not for a", None, std::slice::from_ref(&a_id))
        .await
        .unwrap();
    s.manager.send_to(&b_id, "m", "b only", None).await.unwrap();
    s.manager.broadcast("m", "3", None, &[]).await.unwrap();

    let (mut a2, a2_id) = s.client_from(Some(&resume_from)).await;
    assert_eq!(a2_id, a_id, "the same connection id comes back");
    assert_eq!(next(&mut a2).await.data, "2");
    assert_eq!(next(&mut a2).await.data, "3");
    // Live again, in order, and targets work for the resumed id.
    s.manager
        .send_to(&a_id, "m", "a again", None)
        .await
        .unwrap();
    s.manager.broadcast("m", "4", None, &[]).await.unwrap();
    assert_eq!(next(&mut a2).await.data, "a again");
    assert_eq!(next(&mut a2).await.data, "4");
    for want in ["1", "2", "not for a", "b only", "3", "4"] {
        assert_eq!(next(&mut b).await.data, want);
    }
}

#[tokio::test]
async fn resume_across_many_reconnects_loses_nothing() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut c, _) = s.client().await;
    let mut got = Vec::new();
    let mut sent = 0;
    for round in 0..10 {
        for _ in 0..7 {
            s.manager.broadcast("n", sent, None, &[]).await.unwrap();
            sent += 1;
        }
        // Read a few, drop the connection mid-stream, come back.
        for _ in 0..3 {
            got.push(next(&mut c).await.data);
        }
        let last = c.last_event_id().to_owned();
        c.close();
        if round % 2 == 0 {
            s.manager.broadcast("n", sent, None, &[]).await.unwrap();
            sent += 1;
        }
        c = s.client_from(Some(&last)).await.0;
    }
    s.manager.broadcast("n", "end", None, &[]).await.unwrap();
    loop {
        let ev = next(&mut c).await;
        if ev.data == "end" {
            break;
        }
        got.push(ev.data);
    }
    let want: Vec<String> = (0..sent).map(|n| n.to_string()).collect();
    assert_eq!(got, want, "every message exactly once, in order");
}

#[tokio::test]
async fn reset_when_history_is_too_short_or_from_another_process() {
    let s = Server::start(BroadcastManager::builder().history(3).build()).await;
    let (mut c, id) = s.client().await;
    s.manager.broadcast("m", "1", None, &[]).await.unwrap();
    assert_eq!(next(&mut c).await.data, "1");
    let last = c.last_event_id().to_owned();
    c.close();
    for n in 2..10 {
        s.manager.broadcast("m", n, None, &[]).await.unwrap();
    }
    let (mut c, again) = s.client_from(Some(&last)).await;
    assert_eq!(again, id);
    let reset = next(&mut c).await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data, r#"{"reason":"history-gap"}"#);
    // After the reset it is live, and its id points at the present.
    assert!(reset.last_event_id.contains("-9."));
    s.manager.broadcast("m", "live", None, &[]).await.unwrap();
    assert_eq!(next(&mut c).await.data, "live");

    // Exactly at the edge of the history: still resumable.
    let edge = c.last_event_id().to_owned();
    c.close();
    for n in 0..3 {
        s.manager.broadcast("m", n, None, &[]).await.unwrap();
    }
    let (mut c, _) = s.client_from(Some(&edge)).await;
    for n in 0..3 {
        assert_eq!(next(&mut c).await.data, n.to_string());
    }

    // An id from another process (a restart): reset, reason restarted.
    let other = Server::start(BroadcastManager::new()).await;
    let (mut c, _) = other.client_from(Some(&edge)).await;
    assert_eq!(next(&mut c).await.data, r#"{"reason":"restarted"}"#);
    // A render point (no connection) of another epoch: restarted too.
    let (mut c, _) = s.client_from(Some("00000000-1")).await;
    assert_eq!(next(&mut c).await.data, r#"{"reason":"restarted"}"#);
    // Not one of ours at all, or from the future: unrecognized.
    for bad in [
        "garbage",
        "00000000-",
        &format!("{}-999.x", s.manager.last_id().epoch()),
        &format!("{}-999", s.manager.last_id().epoch()),
    ] {
        let (mut c, _) = s.client_from(Some(bad)).await;
        let ev = next(&mut c).await;
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("reset", r#"{"reason":"unrecognized"}"#),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn registry_is_empty_after_clients_leave() {
    let s = Server::start(BroadcastManager::new()).await;
    for round in 0..5 {
        let mut clients = Vec::new();
        for _ in 0..40 {
            clients.push(s.client().await.0);
        }
        s.wait_for_connections(40).await;
        let (status, body) = s.get_json("/sse/status").await;
        assert_eq!(status, 200);
        assert_eq!(body["total"], 40);
        assert_eq!(body["active"], 40);
        assert_eq!(body["by_kind"]["broadcast"], 40);
        s.manager.broadcast("r", round, None, &[]).await.unwrap();
        for c in &mut clients {
            assert_eq!(next(c).await.data, round.to_string());
        }
        drop(clients);
        s.wait_for_connections(0).await;
    }
    let (_, body) = s.get_json("/sse/status").await;
    assert_eq!(body["total"], 0);
    assert_eq!(body["messages"], 200);
}

/// A client that connects with a tiny receive buffer and reads nothing until
/// told to: a stalled browser tab. Returns the raw response bytes once the
/// server ends the response.
async fn stalled_client(base: &str) -> (tokio::net::TcpStream, ConnectionId) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Read just the head and the connection event.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&head).contains("connection_id\" value=\"")
        || !head.ends_with(b"\">")
    {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
        assert!(head.len() < 4096, "{}", String::from_utf8_lossy(&head));
    }
    let text = String::from_utf8_lossy(&head);
    let id = text
        .rsplit("value=\"")
        .next()
        .unwrap()
        .trim_end_matches("\">");
    (stream, ConnectionId::new(id).unwrap())
}

/// Decodes a chunked HTTP body (what follows the connection event's data).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // The rest of the chunk that held the connection event: up to CRLF.
    let first = raw.windows(2).position(|w| w == b"\r\n").unwrap();
    out.extend_from_slice(&raw[..first]);
    raw = &raw[first + 2..];
    while !raw.is_empty() {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
    out
}

/// A client that stops reading stops counting as active (issue 15, item
/// 6): once its socket takes nothing more, it misses two heartbeats and is
/// closed as lagging, its registry state `Error`, long before TCP gives up
/// on it; the reading client stays active and gets everything.
#[tokio::test]
async fn a_client_that_stops_reading_stops_counting_as_active() {
    let manager = BroadcastManager::builder()
        .queue_capacity(4096)
        .history(4096)
        .stream(StreamConfig::new().heartbeat(Duration::from_millis(100)))
        .build();
    let s = Server::start(manager).await;
    let (mut fast, fast_id) = s.client().await;
    let (_stalled, stalled_id) = stalled_client(&s.base).await;
    s.wait_for_connections(2).await;
    assert_eq!(s.manager.stats().active, 2);
    // More than the kernel buffers and hyper's buffer hold for the stalled
    // client; the fast one reads along.
    let payload = "x".repeat(32 * 1024);
    for n in 0..300 {
        s.manager
            .broadcast("bulk", format!("{n}:{payload}"), None, &[])
            .await
            .unwrap();
        let ev = next(&mut fast).await;
        assert!(ev.data.starts_with(&format!("{n}:")), "{n}");
    }
    let state = |id: &ConnectionId| s.manager.registry().get(id).map(|c| c.state);
    let t0 = Instant::now();
    while s.manager.stats().active != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the stalled client still counts as active: {:?}",
            s.manager.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        state(&stalled_id),
        Some(htmx_sse::connections::ConnectionState::Error)
    );
    assert_eq!(
        state(&fast_id),
        Some(htmx_sse::connections::ConnectionState::Connected)
    );
    // The reading client goes on, heartbeats and all.
    s.manager
        .broadcast("bulk", "after", None, &[])
        .await
        .unwrap();
    assert_eq!(next(&mut fast).await.data, "after");
}

#[tokio::test]
async fn a_stalled_client_is_closed_while_the_others_keep_up() {
    use tokio::io::AsyncReadExt as _;
    let manager = BroadcastManager::builder()
        .queue_capacity(256)
        .history(4096)
        // 600 messages of 32 KiB: all kept, so that the resume is exact.
        .limits(htmx_sse::limits::Limits::new().history_bytes(32 * 1024 * 1024))
        .stream(StreamConfig::new().no_heartbeat())
        .build();
    let s = Server::start(manager).await;
    let (mut fast, _) = s.client().await;
    let (mut stalled, stalled_id) = stalled_client(&s.base).await;
    s.wait_for_connections(2).await;
    // Far more than the kernel buffers between server and stalled client
    // (4 MiB send buffer at most here, a 4 KiB receive buffer).
    let payload = "x".repeat(32 * 1024);
    let total = 600;
    // The fast client reads along, never more than 64 messages behind; the
    // stalled one reads nothing.
    let t0 = Instant::now();
    let mut read = 0;
    for n in 0..total {
        s.manager
            .broadcast("bulk", format!("{n}:{payload}"), None, &[])
            .await
            .unwrap();
        while read + 64 <= n {
            let ev = next(&mut fast).await;
            assert!(ev.data.starts_with(&format!("{read}:")), "{read}");
            read += 1;
        }
    }
    while read < total {
        let ev = next(&mut fast).await;
        assert!(ev.data.starts_with(&format!("{read}:")), "{read}");
        read += 1;
    }
    let fast_took = t0.elapsed();
    assert!(fast_took < Duration::from_secs(10), "{fast_took:?}");

    // Now the stalled tab reads again: it gets what was already on its way,
    // then the server ends its stream (no close event) because it fell
    // behind.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut raw))
        .await
        .expect("the stalled connection was not closed")
        .unwrap();
    let mut parser = htmx_sse::testing::Parser::new();
    let seen: Vec<String> = parser
        .feed(&dechunk(&raw))
        .into_iter()
        .filter_map(|i| match i {
            htmx_sse::testing::SseItem::Event(e) => Some(e.data),
            htmx_sse::testing::SseItem::Comment(_) => None,
        })
        .collect();
    assert!(seen.iter().all(|d| d.starts_with(char::is_numeric)));
    assert!(
        seen.len() < total,
        "the stalled client was not cut off ({} received)",
        seen.len()
    );
    for (n, d) in seen.iter().enumerate() {
        assert!(d.starts_with(&format!("{n}:")));
    }
    s.wait_for_connections(1).await;

    // It comes back with its Last-Event-ID and gets the rest: zero lost.
    let (mut again, id) = s.client_from(Some(parser.last_event_id())).await;
    assert_eq!(id, stalled_id);
    for n in seen.len()..total {
        let ev = next(&mut again).await;
        assert!(ev.data.starts_with(&format!("{n}:")), "{n}");
    }
}

#[tokio::test]
async fn bad_publish_input_is_refused_and_changes_nothing() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut c, _) = s.client().await;
    let before = s.manager.last_id();
    let url = format!("{}/sse/broadcast", s.base);
    let send = |body: Vec<u8>, ct: &'static str| {
        let http = s.http.clone();
        let url = url.clone();
        async move {
            let res = http
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let json = "application/json";
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"{not json".to_vec(), json, 400, "malformed JSON"),
        (b"".to_vec(), json, 400, "malformed JSON"),
        (
            br#"{"type": 5, "data": 1}"#.to_vec(),
            json,
            422,
            "invalid body",
        ),
        (
            br#"{"data": 1}"#.to_vec(),
            json,
            422,
            "missing field `type`",
        ),
        (
            br#"{"type": "t", "data": 1, "exclude": "x"}"#.to_vec(),
            json,
            422,
            "invalid body",
        ),
        (
            br#"{"type": "t", "data": 1, "extra": 1}"#.to_vec(),
            json,
            422,
            "unknown field `extra`",
        ),
        (
            br#"{"type": "a\nid: 9", "data": 1}"#.to_vec(),
            json,
            422,
            "invalid event name: a line feed at byte 1",
        ),
        (
            br#"{"type": "a\rb", "data": 1}"#.to_vec(),
            json,
            422,
            "carriage return",
        ),
        (
            br#"{"type": "", "data": 1}"#.to_vec(),
            json,
            422,
            "invalid event name: empty",
        ),
        (
            br#"{"type": "t", "data": 1, "exclude": ["a b"]}"#.to_vec(),
            json,
            422,
            "invalid connection id",
        ),
        (
            br#"{"type": "t", "data": 1}"#.to_vec(),
            "text/plain",
            415,
            "application/json",
        ),
        (
            br#"{"type": "t", "data": 1}"#.to_vec(),
            "application/x-www-form-urlencoded",
            415,
            "application/json",
        ),
        (
            format!(r#"{{"type": "t", "data": "{}"}}"#, "x".repeat(70 * 1024)).into_bytes(),
            json,
            413,
            "larger than 65536 bytes",
        ),
    ];
    for (body, ct, status, says) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (got, error) = send(body, ct).await;
        assert_eq!(got, status, "{shown}: {error}");
        assert!(error.contains(says), "{shown}: {error:?} lacks {says:?}");
    }
    let (status, body) = s
        .post("/sse/send/a%20b", json!({"type": "t", "data": 1}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.manager.last_id(), before, "nothing was published");
    assert!(s.manager.history(None).is_empty());
    // The open stream saw none of it.
    s.manager.broadcast("ok", "fine", None, &[]).await.unwrap();
    let ev = next(&mut c).await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("ok", "fine"));
}

#[tokio::test]
async fn disconnect_ends_a_connection_with_the_close_event() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut c, id) = s.client().await;
    assert!(s.manager.disconnect(&id));
    let evs = c.collect_until_closed(WAIT).await.unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event, "close");
    s.wait_for_connections(0).await;
    assert!(!s.manager.disconnect(&id));
}

#[tokio::test]
async fn manager_shutdown_ends_streams_without_close() {
    let s = Server::start(BroadcastManager::new()).await;
    let (mut c, _) = s.client().await;
    s.manager.shutdown();
    let evs = c.collect_until_closed(WAIT).await.unwrap();
    assert!(evs.is_empty(), "{evs:?}");
}

/// A deploy without a reconnect storm (issue 15, item 8, first part):
/// with `retry_on_shutdown(2 s)`, each of 200 pages is told, as its stream
/// ends on shutdown, to wait a delay of its own in 0..=2000 ms; the delays
/// cover the window (every 200 ms tenth of it holds some). Without the
/// option, nothing is added.
#[tokio::test]
async fn shutdown_spreads_the_reconnects_over_the_retry_window() {
    const PAGES: usize = 200;
    let manager = BroadcastManager::builder()
        .stream(StreamConfig::new().retry_on_shutdown(Duration::from_secs(2)))
        .build();
    let s = Server::start(manager).await;
    let mut pages = Vec::new();
    for _ in 0..PAGES {
        pages.push(s.client().await.0);
    }
    s.manager.shutdown();
    let mut tenths = [0usize; 10];
    for mut page in pages {
        let evs = page.collect_until_closed(WAIT).await.unwrap();
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].event, "htmx-sse-retry");
        assert_eq!(evs[0].data, "");
        let delay = page.retry().expect("a retry: field");
        assert!(delay <= 2000, "{delay}");
        tenths[usize::try_from(delay / 200).unwrap().min(9)] += 1;
    }
    assert!(
        tenths.iter().all(|&n| n > 0),
        "reconnects bunched: {tenths:?}"
    );
    println!("reconnect delays by 200 ms: {tenths:?}");
    // The name is the crate's: no publisher may send it.
    let other = BroadcastManager::new();
    assert!(matches!(
        other.broadcast("htmx-sse-retry", "x", None, &[]).await,
        Err(htmx_sse::Error::ReservedEventName { .. })
    ));
}

/// Broadcasts and messages to one connection, published from another
/// thread while the connection is being written: its ids never go
/// backwards (the feed merges two queues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_never_go_backwards_when_broadcasts_and_direct_messages_interleave() {
    let s = Server::start(BroadcastManager::builder().queue_capacity(8192).build()).await;
    let (mut c, id) = s.client().await;
    let manager = s.manager.clone();
    let publisher = tokio::spawn(async move {
        for n in 0..1500 {
            manager.broadcast("n", n, None, &[]).await.unwrap();
            manager.send_to(&id, "n", n, None).await.unwrap();
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut last = 0u64;
    for _ in 0..3000 {
        let ev = next(&mut c).await;
        let seq: u64 = ev
            .last_event_id
            .split('.')
            .next()
            .and_then(|m| m.rsplit('-').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(seq > last, "id {seq} after {last}");
        last = seq;
    }
    publisher.await.unwrap();
}

/// Broadcasts published from the test's thread in short bursts while the
/// connections run on two workers, each burst waiting until every
/// connection has the burst's last message: a connection that is not woken
/// for a message stalls, and the test fails after `WAIT` (no heartbeat
/// here to wake it). Every connection gets every message, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_gets_every_broadcast_across_threads() {
    const CLIENTS: usize = 8;
    const BURSTS: usize = 1_500;
    let manager = BroadcastManager::builder()
        .stream(StreamConfig::new().no_heartbeat())
        .build();
    let s = Server::start(manager).await;
    let (tx, _) = tokio::sync::broadcast::channel::<usize>(BURSTS * 3);
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let (mut c, _) = s.client().await;
        let done = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let ev = next(&mut c).await;
                if ev.data == "end" {
                    return n;
                }
                assert_eq!(ev.data, n.to_string());
                let _ = done.send(n);
                n += 1;
            }
        }));
    }
    let mut acks = tx.subscribe();
    let mut sent = 0;
    for burst in 0..BURSTS {
        for i in 0..=(burst % 3) {
            if i > 0 {
                // A little apart, so that a message often arrives while a
                // connection is busy with the one before. (This thread is
                // the test's own, not a worker's.)
                std::thread::sleep(Duration::from_micros(100));
            }
            s.manager.broadcast("n", sent, None, &[]).await.unwrap();
            sent += 1;
        }
        // Every connection acknowledges the burst's last message.
        let mut got = 0;
        while got < CLIENTS {
            let n = tokio::time::timeout(WAIT, acks.recv())
                .await
                .expect("a connection stalled: a wake-up was lost")
                .unwrap();
            if n == sent - 1 {
                got += 1;
            }
        }
    }
    s.manager.broadcast("n", "end", None, &[]).await.unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap(), sent);
    }
}

/// An application's own stream handler, with the `LastEventId` extractor
/// and `State`: a page that comes back resumes exactly, whether the id
/// comes as the header or as the `lastEventId` query parameter; a request
/// without one gets a fresh connection; the typed parts read back.
#[tokio::test]
async fn an_own_handler_with_the_last_event_id_extractor_resumes_exactly() {
    use axum::{extract::State, response::IntoResponse, routing::get};
    use htmx_sse::broadcast::{LastEventId, Subscription};

    async fn events(
        State(manager): State<BroadcastManager>,
        last: Option<LastEventId>,
    ) -> impl IntoResponse {
        let last = last.as_ref().map(LastEventId::as_str);
        manager.subscribe(Subscription::new(), last, Value::Null)
    }
    async fn seen(last: LastEventId) -> String {
        format!(
            "{:?} {:?}",
            last.message().map(|m| m.seq()),
            last.connection().map(ConnectionId::as_str)
        )
    }

    let manager = BroadcastManager::new();
    let app = Router::new()
        .route("/events", get(events))
        .route("/seen", get(seen))
        .with_state(manager.clone());
    let (base, _task) = common::serve(app).await;
    let url = format!("{base}/events");
    let (mut page, id) = common::open_connection(&url, None).await;
    manager.broadcast("n", "one", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "one");
    let last = page.last_event_id().to_owned();
    drop(page);
    for n in ["two", "three"] {
        manager.broadcast("n", n, None, &[]).await.unwrap();
    }

    // By header.
    let (mut again, same) = common::open_connection(&url, Some(&last)).await;
    assert_eq!(same, id);
    assert_eq!(next(&mut again).await.data, "two");
    assert_eq!(next(&mut again).await.data, "three");
    drop(again);

    // By query parameter: the same replay.
    let query = format!("{url}?lastEventId={}", last.replace('.', "%2E"));
    let (mut by_query, same) = common::open_connection(&query, None).await;
    assert_eq!(same, id);
    assert_eq!(next(&mut by_query).await.data, "two");

    // The typed parts; without a resume point the plain extractor refuses.
    let http = reqwest::Client::new();
    let typed = http
        .get(format!("{base}/seen"))
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(typed, format!("Some(1) Some({:?})", id.as_str()));
    let refused = http.get(format!("{base}/seen")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
}

/// `htmx_sse::routes(manager)` nested under an application's path: the
/// stream answers there with its `connection` event, a page resumes there
/// exactly, and publishing stays closed (401) until opened.
#[tokio::test]
async fn the_routes_function_nests_under_an_application_path() {
    let manager = BroadcastManager::new();
    let app = Router::new().nest("/live", htmx_sse::routes(manager.clone()));
    let (base, _task) = common::serve(app).await;
    let url = format!("{base}/live/sse");
    let (mut page, id) = common::open_connection(&url, None).await;
    manager.broadcast("n", "one", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "one");
    let last = page.last_event_id().to_owned();
    drop(page);
    manager.broadcast("n", "two", None, &[]).await.unwrap();
    let (mut again, same) = common::open_connection(&url, Some(&last)).await;
    assert_eq!(same, id);
    assert_eq!(next(&mut again).await.data, "two");

    let res = reqwest::Client::new()
        .post(format!("{base}/live/sse/broadcast"))
        .json(&json!({"type": "n", "data": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(manager.history(None).len(), 2, "nothing published");
}

/// `GET /sse/htmx-sse.js`: the helper scripts' runtime, byte for byte the
/// file whose hash `Helpers::runtime_src` puts in `integrity`, with an ETag
/// (304 when the browser has it) and a year's cache for the versioned URL.
#[tokio::test]
async fn the_runtime_is_served_once_cacheable_and_matches_its_integrity() {
    use base64::Engine as _;
    use htmx_sse::connections::runtime;
    use sha2::Digest as _;

    let s = Server::start(BroadcastManager::new()).await;
    let url = format!("{}/sse/htmx-sse.js", s.base);
    let res = s.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap();
    assert_eq!(&body[..], runtime::RUNTIME_JS.as_bytes());
    let digest = sha2::Sha384::digest(&body);
    let sri = format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    assert_eq!(sri, runtime::integrity());

    let again = s
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    let versioned = s
        .http
        .get(format!("{url}?v={}", runtime::version()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        versioned.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // Anything else asked for, from anyone: the same file, kept by no
    // cache under that URL, and a garbage If-None-Match is no match.
    for hostile in ["v=%3Cscript%3E", "v=0000000000000000", "v=&v=x"] {
        let res = s
            .http
            .get(format!("{url}?{hostile}"))
            .header("if-none-match", "\"<img>\", W/garbage")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{hostile}");
        assert_eq!(res.headers()["cache-control"], "no-store", "{hostile}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            &res.bytes().await.unwrap()[..],
            runtime::RUNTIME_JS.as_bytes()
        );
    }
}

/// A page rendered at `resume_point()` and connected later with
/// `?resumeFrom=` gets what was published in between, exactly once, with a
/// fresh connection id and no reset; nothing meant for one connection or
/// one user leaks into it; once it has an id of its own, that wins; and a
/// point older than the history gets the reset.
#[tokio::test]
async fn a_point_rendered_into_the_page_loses_nothing_before_the_connect() {
    let s = Server::start(BroadcastManager::builder().history(8).build()).await;
    let m = &s.manager;
    let (_other, other_id) = s.client().await;
    let point = m.resume_point();
    // Published after the render, before the connect.
    m.broadcast("n", "one", None, &[]).await.unwrap();
    m.send_to(&other_id, "dm", "not yours", None).await.unwrap();
    m.send_to_user(
        &htmx_sse::connections::UserId::new("ann").unwrap(),
        "dm",
        "not yours either",
        None,
    )
    .await
    .unwrap();
    m.broadcast("n", "two", None, &[]).await.unwrap();

    let url = format!("{}/sse?resumeFrom={point}", s.base);
    let (mut page, id) = common::open_connection(&url, None).await;
    assert_ne!(id, other_id);
    assert_eq!(next(&mut page).await.data, "one");
    assert_eq!(next(&mut page).await.data, "two");
    m.broadcast("n", "three", None, &[]).await.unwrap();
    assert_eq!(
        next(&mut page).await.data,
        "three",
        "nothing else came first"
    );

    // Reconnecting with its own id (the header), the same URL: from there.
    let last = page.last_event_id().to_owned();
    drop(page);
    m.broadcast("n", "four", None, &[]).await.unwrap();
    let (mut again, same) = common::open_connection(&url, Some(&last)).await;
    assert_eq!(same, id);
    assert_eq!(next(&mut again).await.data, "four");

    // A point the history no longer reaches.
    for n in 0..10 {
        m.broadcast("n", n, None, &[]).await.unwrap();
    }
    let (mut late, _) = common::open_connection(&url, None).await;
    let ev = next(&mut late).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"history-gap"}"#)
    );
}

/// `connection_event(false)`: a stream opens without writing anything;
/// its first frame is the first message, whose id still names the
/// connection with its proof, so that the page resumes exactly.
#[tokio::test]
async fn without_the_connection_event_a_stream_starts_with_its_first_message() {
    let s = Server::start(BroadcastManager::builder().connection_event(false).build()).await;
    let url = format!("{}/sse?resumeFrom={}", s.base, s.manager.resume_point());
    let mut page = TestClient::get(&url).connect().await.unwrap();
    s.wait_for_connections(1).await;
    s.manager.broadcast("n", "first", None, &[]).await.unwrap();
    let ev = next(&mut page).await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("n", "first"));
    assert!(
        !String::from_utf8_lossy(page.raw()).contains("event: connection"),
        "{}",
        String::from_utf8_lossy(page.raw())
    );
    let last = page.last_event_id().to_owned();
    assert_eq!(last.split('.').count(), 3, "EPOCH-SEQ.ID.PROOF: {last}");
    drop(page);
    s.manager.broadcast("n", "second", None, &[]).await.unwrap();
    let mut again = TestClient::get(format!("{}/sse", s.base))
        .last_event_id(&last)
        .connect()
        .await
        .unwrap();
    assert_eq!(next(&mut again).await.data, "second");
    assert_eq!(
        again.last_event_id().split('.').nth(1),
        last.split('.').nth(1)
    );
}
