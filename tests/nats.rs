//! What only the NATS backend has, on a real `nats-server -js` (started by
//! each test on a free loopback port): the stream's length and margin, a
//! list of servers, errors at start, foreign messages in the stream, and
//! what it keeps in its key-value buckets (bounded under churn, written
//! again when NATS lost it, renewed within the bucket's age). What every
//! shared engine does is tested once for all in `tests/cluster.rs`.
#![cfg(all(feature = "testing", feature = "nats"))]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use common::nats::{
    NatsServer, Place, Raw, bucket_messages, place_entry, raw_publish, raw_request,
};
use common::{Instance, cut_off, reaches};
use htmx_sse::Error;
use htmx_sse::backend::NatsConfig;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::streaming::StreamConfig;
use htmx_sse::testing::{ReceivedEvent, SseItem, TestClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

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
    Instance::serve(manager).await
}

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
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

/// Reads the next message published on `subject` with a raw NATS
/// subscription opened before `publish` runs: its payload, as stored.
async fn capture<F: std::future::Future<Output = ()>>(
    nats: &NatsServer,
    subject: &str,
    publish: F,
) -> Vec<u8> {
    let mut raw = Raw::connect(nats).await;
    raw.send(format!("SUB {subject} 1\r\n").as_bytes()).await;
    raw.sync().await;
    publish.await;
    raw.next_message().await
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
    resumes_across_a_gap(&a, &before).await;
}

/// A page that resumes on `on` from `last` gets the reset event
/// (`history-gap`).
async fn resumes_across_a_gap(on: &Instance, last: &str) {
    let (mut back, _) = on.open(Some(last)).await;
    let ev = next(&mut back).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"history-gap"}"#),
        "resuming from {last}"
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
/// order, and no reset. Behind by more than the margin, the page gets the
/// reset event, never silence.
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
    cut_off(&proxy, &a.manager).await;
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

    // Behind by more than the margin (the stream keeps 356 for a history
    // of 100): the page is told, never left silent. Its stream ends, and
    // coming back it gets the reset event (had it been given what came
    // after the gap, its last id would be past it, and no reset).
    cut_off(&proxy, &a.manager).await;
    for n in 0..400 {
        b.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    proxy.restore();
    if let Err(e) = page.collect_until_closed(Duration::from_secs(20)).await {
        panic!("the stream goes on past a gap: {e}");
    }
    resumes_across_a_gap(&a, page.last_event_id()).await;
}

/// An instance cut off from NATS (the others still reach it) for longer
/// than its liveness is buried by the others: its connections unknown,
/// its record gone from the meta bucket with no marker left. Back, it
/// records itself and its still open pages again, so `send_to` from the
/// others finds them, and it would be buried again if it died.
#[tokio::test]
async fn an_instance_cut_off_for_longer_than_its_liveness_comes_back_whole() {
    let nats = NatsServer::start();
    let proxy = common::proxy::Proxy::start(nats.url().replace("nats://", "")).await;
    let config = |url: String| {
        NatsConfig::new(url)
            .prefix("part")
            .timeout(Duration::from_millis(500))
            .liveness(Duration::from_millis(600))
    };
    let a = BroadcastManager::builder()
        .build_nats(config(nats.url()))
        .await
        .unwrap();
    let b = BroadcastManager::builder()
        .stream(StreamConfig::new().heartbeat(Duration::from_millis(200)))
        .build_nats(config(format!("nats://127.0.0.1:{}", proxy.port())))
        .await
        .unwrap();
    let b = Instance::serve(b).await;
    let (mut page, page_id) = b.open(None).await;
    a.send_to(&page_id, "dm", "before", None).await.unwrap();
    assert_eq!(next(&mut page).await.data, "before");
    // The resume key, A and B.
    assert_eq!(bucket_messages(&nats, "part-meta").await, 3);

    proxy.cut();
    let deadline = Instant::now() + WAIT;
    // Sent while B still counted: in the stream, B reads them when back.
    let mut sent_while_cut = 0;
    loop {
        let found = a.send_to(&page_id, "dm", "cut off", None).await;
        sent_while_cut += usize::from(found.is_ok());
        let meta = bucket_messages(&nats, "part-meta").await;
        if matches!(found, Err(Error::UnknownConnection { .. })) && meta == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B is not buried: {found:?}, {meta} in the meta bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(place_entry(&nats, "part", &page_id).await, Place::Gone);

    proxy.restore();
    let deadline = Instant::now() + WAIT;
    while a.send_to(&page_id, "dm", "back", None).await.is_err()
        || bucket_messages(&nats, "part-meta").await != 3
    {
        assert!(Instant::now() < deadline, "B did not record itself again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page stayed open throughout, and gets all that was sent to it:
    // before B was buried, and once it was found again.
    let mut got = Vec::new();
    while got.last().is_none_or(|d| d != "back") {
        match page.next_item_within(WAIT).await.unwrap() {
            SseItem::Comment(_) => {}
            SseItem::Event(ev) => got.push(ev.data),
        }
    }
    let mut want = vec!["cut off"; sent_while_cut];
    want.push("back");
    assert_eq!(got, want);
}
