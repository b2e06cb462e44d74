//! Two server instances sharing one real `nats-server -js` (started by each
//! test on a free loopback port): what is published on one reaches pages
//! on the other, pages resume on either, a NATS outage is survived with
//! nothing acknowledged lost, and NATS coming back empty means `reset`.
#![cfg(all(feature = "testing", feature = "nats"))]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use common::nats::NatsServer;
use htmx_sse::Error;
use htmx_sse::backend::NatsConfig;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::ConnectionId;
use htmx_sse::streaming::StreamConfig;
use htmx_sse::testing::{ReceivedEvent, SseItem, TestClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// One server instance: its own manager, its own HTTP port.
struct Instance {
    base: String,
    manager: BroadcastManager,
    task: tokio::task::JoinHandle<()>,
}

async fn instance(nats: &NatsServer, heartbeat: Duration) -> Instance {
    instance_at(nats.url(), heartbeat).await
}

/// An instance connecting to NATS at `url` (through a proxy, say).
async fn instance_at(url: String, heartbeat: Duration) -> Instance {
    let manager = BroadcastManager::builder()
        .history(100)
        .stream(StreamConfig::new().heartbeat(heartbeat))
        .build_nats(NatsConfig::new(url).timeout(Duration::from_millis(500)))
        .await
        .expect("connects to the test nats-server");
    let app = common::open_routes(Router::new(), manager.clone(), "/sse");
    let (base, task) = common::serve(app).await;
    Instance {
        base,
        manager,
        task,
    }
}

impl Instance {
    async fn open(&self, last_event_id: Option<&str>) -> (TestClient, ConnectionId) {
        common::open_connection(&format!("{}/sse", self.base), last_event_id).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
}

#[tokio::test]
async fn what_is_published_on_b_reaches_pages_on_a() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    let b = instance(&nats, Duration::from_secs(15)).await;
    let (mut on_a, a_id) = a.open(None).await;
    let (mut other_on_a, other_id) = a.open(None).await;
    let (mut on_b, _) = b.open(None).await;

    // Broadcast from B with an exclusion of a connection on A.
    let (status, body) = b
        .post(
            "/sse/broadcast",
            json!({"type": "note", "data": "<p>from b</p>", "exclude": [other_id.as_str()]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next(&mut on_a).await.data, "<p>from b</p>");
    assert_eq!(next(&mut on_b).await.data, "<p>from b</p>");

    // send_to a connection on A, from B.
    let sent = b
        .manager
        .send_to(&a_id, "dm", "just a", None)
        .await
        .unwrap();
    assert_eq!(next(&mut on_a).await.data, "just a");

    // The excluded page and B's page saw neither: their next event is the
    // marker.
    a.manager.broadcast("marker", "m", None, &[]).await.unwrap();
    assert_eq!(next(&mut other_on_a).await.event, "marker");
    assert_eq!(next(&mut on_b).await.event, "marker");
    assert!(sent.id < a.manager.last_id());

    // Unknown ids are unknown on every instance.
    let ghost = ConnectionId::new("ghost").unwrap();
    let err = b
        .manager
        .send_to(&ghost, "dm", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConnection { .. }), "{err:?}");
    let (status, _) = b
        .post("/sse/send/ghost", json!({"type": "dm", "data": "x"}))
        .await;
    assert_eq!(status, 404);

    // Cluster-wide counts.
    assert_eq!(a.manager.connection_count(), 2);
    assert_eq!(b.manager.cluster_connection_count().await.unwrap(), 3);
}

#[tokio::test]
async fn ids_are_in_one_order_across_instances() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    let b = instance(&nats, Duration::from_secs(15)).await;
    let (mut on_a, _) = a.open(None).await;
    let (mut on_b, _) = b.open(None).await;
    // Both publish at once, from two tasks.
    let (ma, mb) = (a.manager.clone(), b.manager.clone());
    let pa = tokio::spawn(async move {
        for n in 0..50 {
            ma.broadcast("n", format!("a{n}"), None, &[]).await.unwrap();
        }
    });
    let pb = tokio::spawn(async move {
        for n in 0..50 {
            mb.broadcast("n", format!("b{n}"), None, &[]).await.unwrap();
        }
    });
    pa.await.unwrap();
    pb.await.unwrap();
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..100 {
        seen_a.push(next(&mut on_a).await);
        seen_b.push(next(&mut on_b).await);
    }
    let data = |v: &[ReceivedEvent]| v.iter().map(|e| e.data.clone()).collect::<Vec<_>>();
    assert_eq!(data(&seen_a), data(&seen_b), "one order everywhere");
    let seqs: Vec<u64> = seen_a
        .iter()
        .map(|e| {
            let msg = e.last_event_id.split('.').next().unwrap();
            msg.rsplit('-').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn a_page_resumes_on_another_instance_with_nothing_missed() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    let b = instance(&nats, Duration::from_secs(15)).await;
    let (mut page, page_id) = a.open(None).await;
    for n in 0..5 {
        a.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    for n in 0..5 {
        assert_eq!(next(&mut page).await.data, n.to_string());
    }
    let last = page.last_event_id().to_owned();
    page.close();
    // While it is away, both instances publish, one message to it alone.
    for n in 5..10 {
        let m = if n % 2 == 0 { &a.manager } else { &b.manager };
        m.broadcast("n", n, None, &[]).await.unwrap();
    }
    // The load balancer sends it to B this time.
    let (mut page, again) = b.open(Some(&last)).await;
    assert_eq!(again, page_id);
    for n in 5..10 {
        assert_eq!(next(&mut page).await.data, n.to_string());
    }
    b.manager
        .send_to(&page_id, "dm", "welcome back", None)
        .await
        .unwrap();
    assert_eq!(next(&mut page).await.data, "welcome back");

    // A server instance restarts (a new manager on the same NATS): ids
    // stay valid, the page catches up without a reset.
    let last = page.last_event_id().to_owned();
    page.close();
    b.task.abort();
    drop(b);
    a.manager.broadcast("n", 10, None, &[]).await.unwrap();
    let b2 = instance(&nats, Duration::from_secs(15)).await;
    let (mut page, _) = b2.open(Some(&last)).await;
    assert_eq!(next(&mut page).await.data, "10");
}

#[tokio::test]
async fn a_nats_outage_keeps_pages_open_and_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let a = instance(&nats, Duration::from_millis(200)).await;
    let b = instance(&nats, Duration::from_millis(200)).await;
    let (mut page, _) = a.open(None).await;
    let opened_at = page.last_event_id().to_owned();
    b.manager.broadcast("n", "before", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "before");
    let epoch = a.manager.last_id().epoch();

    nats.stop();
    // The instances say they lost NATS (`GET /sse/status`, `backend_connected`).
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.manager.backend_connected() {
        assert!(Instant::now() < deadline, "still says it reads NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Publishing fails with a clear error, on the API and over HTTP.
    let err = b
        .manager
        .broadcast("n", "lost?", None, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().starts_with("backend unavailable"), "{err}");
    let (status, body) = b
        .post("/sse/broadcast", json!({"type": "n", "data": "x"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("backend unavailable")
    );
    // The page stays open and heartbeats keep coming.
    let mut heartbeats = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        match page.next_item_within(WAIT).await.unwrap() {
            SseItem::Comment(_) => heartbeats += 1,
            SseItem::Event(ev) => panic!("no event while NATS is down: {ev:?}"),
        }
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 1 s at 200 ms");

    nats.restart(); // with its data
    // Delivery resumes once both instances reconnected (backoff ≤ 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match b.manager.broadcast("n", "after", None, &[]).await {
            Ok(_) => break,
            Err(Error::Backend(e)) => {
                assert!(Instant::now() < deadline, "NATS never came back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    loop {
        match page.next_item_within(WAIT).await.unwrap() {
            SseItem::Comment(_) => {}
            SseItem::Event(ev) => {
                assert_eq!(ev.data, "after");
                break;
            }
        }
    }
    assert!(a.manager.backend_connected());
    assert_eq!(a.manager.last_id().epoch(), epoch, "the data survived");

    // Nothing acknowledged was lost, nothing refused shows up: an instance
    // started now replays, to a page resuming from before `before`, both
    // acknowledged messages and only them.
    let c = instance(&nats, Duration::from_secs(15)).await;
    let (mut resumed, _) = c.open(Some(&opened_at)).await;
    assert_eq!(next(&mut resumed).await.data, "before");
    assert_eq!(next(&mut resumed).await.data, "after");
    c.manager.broadcast("marker", "m", None, &[]).await.unwrap();
    assert_eq!(next(&mut resumed).await.event, "marker");
}

#[tokio::test]
async fn nats_losing_its_data_means_a_new_epoch_and_a_reset() {
    let mut nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    let (mut page, _) = a.open(None).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "1");
    let old = a.manager.last_id();
    let last = page.last_event_id().to_owned();
    page.close();

    nats.restart_empty(); // everything is gone
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.manager.last_id().epoch() == old.epoch() {
        assert!(Instant::now() < deadline, "no new epoch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut page, _) = a.open(Some(&last)).await;
    let ev = next(&mut page).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"restarted"}"#)
    );
    a.manager.broadcast("n", 2, None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "2");
}

/// The sequence that lost messages silently (issue 15, item 1): 20
/// published, a page open at seq 20, NATS restarted without its data, 30
/// more published on the new epoch (numbered 1 to 30 again). The open page
/// must not skip the new epoch's first 20: its stream ends, and coming back
/// with its last id it gets `reset` (`restarted`), then what follows.
#[tokio::test]
async fn a_new_epoch_reaches_open_streams_as_a_reset_never_a_silent_skip() {
    let mut nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    for n in 1..=20 {
        a.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    let (mut page, _) = a.open(None).await;
    let old = a.manager.last_id();
    assert_eq!(old.seq(), 20);

    nats.restart_empty(); // everything is gone
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut published = 0;
    while published < 30 {
        assert!(Instant::now() < deadline, "published {published} of 30");
        // Refused (503) until this instance has read the new epoch.
        if a.manager
            .broadcast("n", 100 + published, None, &[])
            .await
            .is_ok()
        {
            published += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_ne!(a.manager.last_id().epoch(), old.epoch());
    // Before the fix the page went on receiving 121..=129 (it skipped the
    // new epoch's seq 1 to 20): now its stream ends first, having received
    // nothing of the new epoch.
    let got = page.collect_until_closed(WAIT).await.unwrap();
    assert!(got.is_empty(), "received without a reset: {got:?}");
    let last = page.last_event_id().to_owned();
    assert!(last.starts_with(&old.epoch().to_string()), "{last}");
    let (mut page, _) = a.open(Some(&last)).await;
    let ev = next(&mut page).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"restarted"}"#)
    );
    a.manager.broadcast("n", "after", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "after");
}

/// A `Last-Event-ID` far ahead of the shared sequence (issue 15, item 2),
/// with a valid proof for its connection id (the proof does not cover the
/// sequence): the reset event (`unrecognized`) and a fresh start, as in
/// memory, not a stream that waits silently forever.
#[tokio::test]
async fn an_id_far_ahead_of_the_shared_sequence_gets_the_reset_event() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    let (page, _) = a.open(None).await;
    let real = page.last_event_id().to_owned();
    page.close();
    let (message, tag) = real.split_once('.').unwrap();
    let epoch = message.split('-').next().unwrap();
    for ahead in ["1000000", "18446744073709551615"] {
        let forged = format!("{epoch}-{ahead}.{tag}");
        let (mut page, _) = a.open(Some(&forged)).await;
        let ev = next(&mut page).await;
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("reset", r#"{"reason":"unrecognized"}"#),
            "{forged}"
        );
        a.manager.broadcast("n", ahead, None, &[]).await.unwrap();
        assert_eq!(next(&mut page).await.data, ahead, "{forged}");
    }
    // A little ahead (another instance numbered it first) still resumes.
    let near = format!("{epoch}-{}.{tag}", a.manager.last_id().seq() + 1);
    let (mut page, _) = a.open(Some(&near)).await;
    a.manager.broadcast("n", "next", None, &[]).await.unwrap();
    a.manager.broadcast("n", "after", None, &[]).await.unwrap();
    // `next` took the id the page said it had: it is skipped, `after` comes.
    assert_eq!(next(&mut page).await.data, "after");
}

/// Publishes `payload` on `subject` with the plain NATS protocol, as
/// another program on the same server could: JetStream keeps it in the
/// stream whose subject it is.
async fn raw_publish(nats: &NatsServer, subject: &str, payload: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = nats.url().replace("nats://", "");
    let mut con = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut info = [0u8; 4096];
    let n = con.read(&mut info).await.unwrap();
    assert!(info[..n].starts_with(b"INFO "), "the server greets");
    let mut out = format!(
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    con.write_all(&out).await.unwrap();
    let mut pong = Vec::new();
    while !pong.ends_with(b"PONG\r\n") {
        let n = con.read(&mut info).await.unwrap();
        assert!(n > 0, "the server answers the PING");
        pong.extend_from_slice(&info[..n]);
    }
}

/// A hole in the history: a message in the shared stream that cannot be
/// read (written by something else, or damaged). A page whose resume
/// crosses it gets the reset event (`history-gap`), not a replay over the
/// hole as if nothing were missing; a page that starts after it resumes
/// exactly. So does an instance started afterwards, whose history was
/// loaded with the hole in it.
#[tokio::test]
async fn a_resume_across_a_hole_in_the_history_gets_the_reset_event() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    a.manager.broadcast("n", 2, None, &[]).await.unwrap();
    let (page, _) = a.open(None).await;
    let before_hole = page.last_event_id().to_owned();
    page.close();
    // Message 3: numbered by the stream, but not one this crate can read.
    let subject = format!("htmx-sse.log.{}", a.manager.last_id().epoch());
    raw_publish(&nats, &subject, b"garbage").await;
    a.manager.broadcast("n", 4, None, &[]).await.unwrap();
    assert_eq!(a.manager.last_id().seq(), 4, "the garbage took number 3");
    let after_hole = {
        let (mut page, _) = a.open(None).await;
        a.manager.broadcast("n", 5, None, &[]).await.unwrap();
        let ev = next(&mut page).await;
        assert_eq!(ev.data, "5");
        ev.last_event_id
    };
    a.manager.broadcast("n", 6, None, &[]).await.unwrap();
    let b = instance(&nats, Duration::from_secs(15)).await;
    for inst in [&a, &b] {
        let (mut page, _) = inst.open(Some(&before_hole)).await;
        let ev = next(&mut page).await;
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("reset", r#"{"reason":"history-gap"}"#),
            "a resume from 2 crosses the hole at 3"
        );
        let (mut page, _) = inst.open(Some(&after_hole)).await;
        assert_eq!(
            next(&mut page).await.data,
            "6",
            "a resume from 5 misses nothing"
        );
    }
}

/// Instances asking for different history lengths share one stream: it
/// keeps the longest asked for (a later instance with a longer history
/// raises the stream's limit), so a page resumes on that instance from
/// further back without a reset.
#[tokio::test]
async fn the_stream_keeps_the_longest_history_asked_for() {
    let nats = NatsServer::start();
    let with_history = |n: usize| {
        let url = nats.url();
        async move {
            BroadcastManager::builder()
                .history(n)
                .build_nats(NatsConfig::new(url))
                .await
                .unwrap()
        }
    };
    let short = with_history(3).await;
    let _long = with_history(50).await;
    for n in 0..20 {
        short.broadcast("n", n, None, &[]).await.unwrap();
    }
    // A third instance loads its history from the stream: all 20 are there.
    let late = with_history(50).await;
    let data: Vec<_> = late.history(None).iter().map(|m| m.data.clone()).collect();
    assert_eq!(data, (0..20).map(Value::from).collect::<Vec<_>>());
    // The short one kept only its own 3.
    assert_eq!(short.history(None).len(), 3);
}

/// A list of servers (`NatsConfig::new("nats://a,nats://b")`): the client
/// connects to one that answers, here the second.
#[tokio::test]
async fn a_list_of_servers_connects_to_one_that_answers() {
    let gone = NatsServer::start();
    let dead = gone.url();
    drop(gone);
    let nats = NatsServer::start();
    let manager = BroadcastManager::builder()
        .build_nats(
            NatsConfig::new(format!("{dead}, {}", nats.url())).timeout(Duration::from_millis(500)),
        )
        .await
        .expect("connects to the live server of the two");
    manager.broadcast("n", 1, None, &[]).await.unwrap();
    assert_eq!(manager.last_id().seq(), 1);
}

#[tokio::test]
async fn an_unreachable_nats_is_a_clear_error_at_start() {
    let nats = NatsServer::start();
    let url = nats.url();
    drop(nats);
    let err = BroadcastManager::builder()
        .build_nats(NatsConfig::new(url.clone()).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    let err = BroadcastManager::builder()
        .build_nats(NatsConfig::new(url).prefix("not.a.prefix"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad NATS prefix"), "{err}");

    let err = BroadcastManager::builder()
        .build_nats(NatsConfig::new("http://not nats"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad NATS URL"), "{err}");

    // A server started without `-js`: the error says what to do.
    let plain = NatsServer::start_without_jetstream();
    let err = BroadcastManager::builder()
        .build_nats(NatsConfig::new(plain.url()).timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("no JetStream (start nats-server with -js)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_instance_that_crashed_is_forgotten_after_its_liveness() {
    let nats = NatsServer::start();
    let config = || {
        NatsConfig::new(nats.url())
            .prefix("crash")
            .liveness(Duration::from_millis(600))
    };
    let a = BroadcastManager::builder()
        .build_nats(config())
        .await
        .unwrap();
    let (base_a, _ta) = common::serve(common::open_routes(Router::new(), a.clone(), "/sse")).await;
    let (_on_a, a_id) = common::open_connection(&format!("{base_a}/sse"), None).await;

    // Instance B lives on its own runtime; shutting that runtime down ends
    // every task of B at once, with no clean-up: a crash.
    let b_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let b_config = config();
    let base_b = b_runtime
        .spawn(async move {
            let b = BroadcastManager::builder()
                .build_nats(b_config)
                .await
                .unwrap();
            common::serve(common::open_routes(Router::new(), b, "/sse"))
                .await
                .0
        })
        .await
        .unwrap();
    let (on_b, b_id) = common::open_connection(&format!("{base_b}/sse"), None).await;
    assert_eq!(a.cluster_connection_count().await.unwrap(), 2);
    a.send_to(&b_id, "dm", "still there", None).await.unwrap();

    b_runtime.shutdown_background();
    drop(on_b);
    // Until its liveness runs out B still counts; then it is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.cluster_connection_count().await.unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "the crashed instance still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = a.send_to(&b_id, "dm", "gone?", None).await.unwrap_err();
    assert!(matches!(err, Error::UnknownConnection { .. }), "{err:?}");

    // And its record is removed from the bucket, leaving no delete marker
    // to pile up, while A's stays; so is B's own record in the meta
    // bucket, which keeps the resume key and A.
    let deadline = Instant::now() + Duration::from_secs(5);
    while place_entry(&nats, "crash", &b_id).await != Place::Gone
        || bucket_messages(&nats, "crash-meta").await != 2
    {
        assert!(
            Instant::now() < deadline,
            "the dead instance's records stay: {:?}, {} in the meta bucket",
            place_entry(&nats, "crash", &b_id).await,
            bucket_messages(&nats, "crash-meta").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(place_entry(&nats, "crash", &a_id).await, Place::Recorded);
    assert_eq!(bucket_messages(&nats, "crash-where").await, 1);
}

#[derive(Debug, PartialEq)]
enum Place {
    Recorded,
    /// A delete marker.
    Deleted,
    /// No message at all for the key.
    Gone,
}

/// How many messages the stream of the bucket `bucket` holds: values and
/// delete markers.
async fn bucket_messages(nats: &NatsServer, bucket: &str) -> u64 {
    let answer = raw_request(nats, &format!("$JS.API.STREAM.INFO.KV_{bucket}"), b"").await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    answer["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// What the `PREFIX-where` bucket holds for `id`, read with the plain
/// JetStream API (the last message of the key's subject).
async fn place_entry(nats: &NatsServer, prefix: &str, id: &ConnectionId) -> Place {
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
async fn raw_request(nats: &NatsServer, subject: &str, payload: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = nats.url().replace("nats://", "");
    let mut con = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n",
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    con.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, con.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(at) = text.find("MSG _INBOX.test 1 ") else {
            continue;
        };
        let Some(eol) = text[at..].find("\r\n") else {
            continue;
        };
        let len: usize = text[at..at + eol]
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let start = at + eol + 2;
        if got.len() >= start + len {
            return got[start..start + len].to_vec();
        }
    }
}

/// Reads the next message published on `subject` with a raw NATS
/// subscription opened before `publish` runs: its payload, as stored.
async fn capture<F: std::future::Future<Output = ()>>(
    nats: &NatsServer,
    subject: &str,
    publish: F,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = nats.url().replace("nats://", "");
    let mut con = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let n = con.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"INFO "), "the server greets");
    con.write_all(
        format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"PONG\r\n") {
        let n = con.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    publish.await;
    let mut got: Vec<u8> = Vec::new();
    loop {
        let n = tokio::time::timeout(WAIT, con.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed");
        got.extend_from_slice(&buf[..n]);
        // MSG <subject> <sid> [reply] <bytes>\r\n<payload>\r\n, or with
        // headers (JetStream publishes carry some) HMSG <subject> <sid>
        // [reply] <header bytes> <total bytes>\r\n<headers><payload>\r\n.
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(at) = text.find("MSG ") {
            let headers = at > 0 && text.as_bytes()[at - 1] == b'H';
            let line_end = at + text[at..].find("\r\n").unwrap();
            let fields: Vec<&str> = text[at..line_end].split(' ').collect();
            let total: usize = fields[fields.len() - 1].parse().unwrap();
            let skip: usize = if headers {
                fields[fields.len() - 2].parse().unwrap()
            } else {
                0
            };
            let start = line_end + 2;
            if got.len() >= start + total {
                return got[start + skip..start + total].to_vec();
            }
        }
    }
}

/// A well-formed message under this epoch's subject that says another
/// epoch inside (a foreign or broken writer) is skipped as unreadable: the
/// readers go on past it (new messages reach new pages) and a resume
/// across it gets the reset, never a reader stopped at it for good.
#[tokio::test]
async fn a_message_claiming_another_epoch_is_a_hole_not_a_stall() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_secs(15)).await;
    let epoch = a.manager.last_id().epoch().to_string();
    let subject = format!("htmx-sse.log.{epoch}");
    let payload = capture(&nats, &subject, async {
        a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    })
    .await;
    let (page, _) = a.open(None).await;
    let before = page.last_event_id().to_owned();
    page.close();
    // The same message, its epoch changed in place (same length, so the
    // lengths in the payload still hold; the payload is not text).
    let other = if epoch == "00000001" {
        "00000002"
    } else {
        "00000001"
    };
    let was = format!("\"e\":\"{epoch}\"");
    let at = payload
        .windows(was.len())
        .position(|w| w == was.as_bytes())
        .expect("the payload carries its epoch");
    let mut forged = payload.clone();
    forged[at..at + was.len()].copy_from_slice(format!("\"e\":\"{other}\"").as_bytes());
    raw_publish(&nats, &subject, &forged).await;
    // The reader goes on past it: what is published next is read (the
    // forged message took number 2)...
    a.manager.broadcast("n", 3, None, &[]).await.unwrap();
    for _ in 0..100 {
        if a.manager.last_id().seq() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.manager.last_id().seq(),
        3,
        "the reader stopped at the forged message"
    );
    // ...and reaches a page opened after it.
    let (mut fresh, _) = a.open(None).await;
    a.manager.broadcast("n", 4, None, &[]).await.unwrap();
    let ev = next(&mut fresh).await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("n", "4"));
    // And a resume across the hole is told.
    let (mut back, _) = a.open(Some(&before)).await;
    let ev = next(&mut back).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"history-gap"}"#)
    );
}

/// Connection churn leaves nothing behind in the registry bucket: 200
/// pages come and go, and the bucket holds the one record of the page
/// that stays (a delete marker per departure would be 200 more, forever).
#[tokio::test]
async fn the_registry_stays_bounded_under_connection_churn() {
    let nats = NatsServer::start();
    let a = instance(&nats, Duration::from_millis(200)).await;
    let (_stays, stays_id) = a.open(None).await;
    for _ in 0..200 {
        let (page, _) = a.open(None).await;
        page.close();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = bucket_messages(&nats, "htmx-sse-where").await;
        if a.manager.connection_count() == 1 && messages == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{messages} messages in the registry bucket, {} connections",
            a.manager.connection_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        place_entry(&nats, "htmx-sse", &stays_id).await,
        Place::Recorded
    );
}

/// `send_to` from B finds the connection `id` within `WAIT` (retrying
/// while it is unknown), and the page gets the message; panics with the
/// last error when it never does.
async fn reaches(b: &Instance, id: &ConnectionId, page: &mut TestClient, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match b.manager.send_to(id, "dm", what, None).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    loop {
        match page.next_item_within(WAIT).await.unwrap() {
            SseItem::Comment(_) => {}
            SseItem::Event(ev) => {
                assert_eq!(ev.data, what);
                break;
            }
        }
    }
}

/// An instance whose records NATS no longer has, while its pages are still
/// open, writes them again: when they were removed behind its back (as an
/// instance that took it for dead removes them), and after an outage
/// longer than its liveness (its liveness entry expired, and the other
/// instance buried it).
#[tokio::test]
async fn open_connections_are_recorded_again_when_nats_forgets_them() {
    let mut nats = NatsServer::start();
    let config = |url: String| {
        NatsConfig::new(url)
            .timeout(Duration::from_millis(500))
            .liveness(Duration::from_millis(600))
    };
    let a = BroadcastManager::builder()
        .stream(StreamConfig::new().heartbeat(Duration::from_millis(200)))
        .build_nats(config(nats.url()))
        .await
        .unwrap();
    let (base, _task) = common::serve(common::open_routes(Router::new(), a.clone(), "/sse")).await;
    let b = instance(&nats, Duration::from_secs(15)).await;
    let (mut page, page_id) = common::open_connection(&format!("{base}/sse"), None).await;
    reaches(&b, &page_id, &mut page, "before").await;

    // Removed behind its back: every record of the registry, and A's own
    // record in the meta bucket.
    raw_request(&nats, "$JS.API.STREAM.PURGE.KV_htmx-sse-where", b"{}").await;
    let filter = json!({"filter": "$KV.htmx-sse-meta.instance.>"});
    raw_request(
        &nats,
        "$JS.API.STREAM.PURGE.KV_htmx-sse-meta",
        filter.to_string().as_bytes(),
    )
    .await;
    reaches(&b, &page_id, &mut page, "after the purge").await;

    // NATS away for longer than the liveness, back with its data: A's
    // liveness entry has expired.
    nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    reaches(&b, &page_id, &mut page, "after the outage").await;
    // And it stays found over several liveness periods.
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reaches(&b, &page_id, &mut page, &format!("later {n}")).await;
    }
}

/// The liveness bucket's age is set by the instance that made it: an
/// instance configured with a longer liveness renews at a quarter of the
/// bucket's age, not of its own setting, and so is never taken for dead
/// (and buried, losing its records) while it is healthy; neither is one
/// with the same short setting, over many liveness periods.
#[tokio::test]
async fn a_healthy_instance_is_never_taken_for_dead() {
    let nats = NatsServer::start();
    let build = |liveness: u64| {
        let url = nats.url();
        async move {
            BroadcastManager::builder()
                .build_nats(
                    NatsConfig::new(url)
                        .prefix("alive")
                        .liveness(Duration::from_millis(liveness)),
                )
                .await
                .unwrap()
        }
    };
    let a = build(600).await; // makes the bucket: entries expire at 600 ms
    let mut pages = Vec::new();
    for liveness in [6_000, 600] {
        let m = build(liveness).await;
        let (base, _) = common::serve(common::open_routes(Router::new(), m, "/sse")).await;
        pages.push(common::open_connection(&format!("{base}/sse"), None).await);
    }
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for (_, id) in &pages {
            if let Err(e) = a.send_to(id, "dm", "ping", None).await {
                panic!("a healthy instance's connection is unknown: {e}");
            }
        }
        assert_eq!(a.cluster_connection_count().await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An instance that lost NATS for a while, during which another published
/// more than the history length (but less than the stream's margin above
/// it), reads every message when it is back: its page gets them all, in
/// order, and no reset.
#[tokio::test]
async fn a_reader_behind_by_less_than_the_margin_misses_nothing() {
    let nats = NatsServer::start();
    let proxy = common::proxy::Proxy::start(nats.url().replace("nats://", "")).await;
    let a = instance_at(
        format!("nats://127.0.0.1:{}", proxy.port()),
        Duration::from_millis(200),
    )
    .await;
    let b = instance(&nats, Duration::from_secs(15)).await;
    let (mut page, _) = a.open(None).await;
    proxy.cut();
    let deadline = Instant::now() + WAIT;
    while a.manager.backend_connected() {
        assert!(Instant::now() < deadline, "still says it reads NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 150: the history is 100.
    for n in 0..150 {
        b.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    proxy.restore();
    for n in 0..150 {
        let ev = loop {
            match page.next_item_within(WAIT).await {
                Ok(SseItem::Comment(_)) => {}
                Ok(SseItem::Event(ev)) => break ev,
                Err(e) => panic!("the page's stream ended before message {n}: {e}"),
            }
        };
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("n", &*n.to_string())
        );
    }
}
