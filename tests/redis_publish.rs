//! Publishes in flight together through a real `redis-server` (started by
//! each test on a free loopback port), over real HTTP: `Message::submit`
//! queues a publish when it is called, so that a publisher keeps a window
//! of them in flight and the Redis backend writes them in one script call.
//! The order of the calls is the order of the log on every instance, a
//! failed script call fails every publish it carried, nothing acknowledged
//! is lost, and pages resume on any instance.
#![cfg(all(feature = "testing", feature = "redis"))]

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use axum::Router;
use common::redis::RedisServer;
use htmx_sse::Error;
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::{BroadcastManager, MessageId, Sent};
use htmx_sse::connections::ConnectionId;
use htmx_sse::testing::{ReceivedEvent, SseItem, TestClient};

const WAIT: Duration = Duration::from_secs(10);

/// One server instance: its own manager, its own HTTP port.
struct Instance {
    base: String,
    manager: BroadcastManager,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn instance(redis: &RedisServer, read_your_writes: bool) -> Instance {
    let manager = BroadcastManager::builder()
        .history(1000)
        .queue_capacity(1000)
        .read_your_writes(read_your_writes)
        .build_redis(RedisConfig::new(redis.url()).timeout(Duration::from_millis(500)))
        .await
        .expect("connects to the test redis-server");
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
}

/// The next event, heartbeats skipped.
async fn next(c: &mut TestClient) -> ReceivedEvent {
    loop {
        match c.next_item_within(WAIT).await.expect("an event in time") {
            SseItem::Event(ev) => return ev,
            SseItem::Comment(_) => {}
        }
    }
}

/// The message number in an event's id (`EPOCH-SEQ.CONNECTION…`).
fn seq(e: &ReceivedEvent) -> u64 {
    let msg = e.last_event_id.split('.').next().unwrap();
    msg.rsplit('-').next().unwrap().parse().unwrap()
}

/// Submits messages `{tag}-{n}` for each `n` of `numbers` keeping
/// `window` in flight, oldest awaited first; returns each outcome in the
/// order of the calls.
async fn windowed(
    m: BroadcastManager,
    tag: &'static str,
    numbers: std::ops::Range<usize>,
    window: usize,
) -> Vec<(String, Result<Sent, Error>)> {
    let mut in_flight = VecDeque::new();
    let mut outcomes = Vec::new();
    for n in numbers {
        let data = format!("{tag}-{n}");
        in_flight.push_back((data.clone(), m.message("n", data).submit()));
        if in_flight.len() >= window {
            let (data, submitted) = in_flight.pop_front().unwrap();
            outcomes.push((data, submitted.await));
        }
    }
    for (data, submitted) in in_flight {
        outcomes.push((data, submitted.await));
    }
    outcomes
}

/// Publishers on two instances, each with a window in flight: every page on
/// either instance gets every message once, in one order with no hole,
/// each publisher's in the order of its calls; with read-your-writes each
/// publish knows it reached the local page.
#[tokio::test]
async fn windowed_publishes_keep_one_order_across_instances() {
    let redis = RedisServer::start(false);
    let a = instance(&redis, true).await;
    let b = instance(&redis, true).await;
    let (mut on_a, _) = a.open(None).await;
    let (mut on_b, _) = b.open(None).await;

    let tasks = [
        tokio::spawn(windowed(a.manager.clone(), "a", 0..150, 32)),
        tokio::spawn(windowed(a.manager.clone(), "x", 0..150, 7)),
        tokio::spawn(windowed(b.manager.clone(), "b", 0..150, 32)),
    ];
    let mut ids = Vec::new();
    for t in tasks {
        let outcomes = t.await.unwrap();
        let mine: Vec<MessageId> = outcomes
            .into_iter()
            .map(|(data, sent)| {
                let sent = sent.unwrap_or_else(|e| panic!("{data}: {e}"));
                assert_eq!(sent.delivered, 1, "{data}: read your writes");
                sent.id
            })
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a publisher's ids follow its calls"
        );
        ids.extend(mine);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 450, "every publish got its own id");

    let mut seen = Vec::new();
    for page in [&mut on_a, &mut on_b] {
        let events: Vec<ReceivedEvent> = {
            let mut v = Vec::new();
            for _ in 0..450 {
                v.push(next(page).await);
            }
            v
        };
        let seqs: Vec<u64> = events.iter().map(seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        for tag in ["a", "x", "b"] {
            let mine: Vec<&str> = events
                .iter()
                .map(|e| e.data.as_str())
                .filter(|d| d.starts_with(&format!("{tag}-")))
                .collect();
            let want: Vec<String> = (0..150).map(|n| format!("{tag}-{n}")).collect();
            assert_eq!(mine, want, "{tag}'s messages in its order");
        }
        seen.push(events.into_iter().map(|e| e.data).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1], "one order on both instances");
}

/// The log's order is the order of the `submit` calls, not of the awaits:
/// awaited newest first, the ids still follow the calls.
#[tokio::test]
async fn the_log_follows_the_calls_not_the_awaits() {
    let redis = RedisServer::start(false);
    let a = instance(&redis, false).await;
    let (mut page, _) = a.open(None).await;
    let submitted: Vec<_> = (0..64)
        .map(|n| a.manager.message("n", n.to_string()).submit())
        .collect();
    let mut ids = Vec::new();
    for s in submitted.into_iter().rev() {
        ids.push(s.await.unwrap().id);
    }
    ids.reverse();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for n in 0..64 {
        assert_eq!(next(&mut page).await.data, n.to_string());
    }
}

/// Redis killed while windows of publishes are in flight: every publish
/// ends (none hangs) with its id or a backend error, at least one fails
/// (every one queued after the kill), and once Redis is back (from its
/// append-only file) a page on another instance has every acknowledged
/// message, in order, once: nothing acknowledged is lost.
#[tokio::test]
async fn a_failed_batch_fails_each_publish_in_it_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start(true);
    let a = instance(&redis, false).await;
    let b = instance(&redis, true).await;
    let (mut page, _) = b.open(None).await;

    let publishers: Vec<_> = ["p", "q"]
        .into_iter()
        .map(|tag| tokio::spawn(windowed(a.manager.clone(), tag, 0..3000, 64)))
        .collect();
    // Some are acknowledged (the page sees them), then Redis dies.
    let first = next(&mut page).await;
    redis.stop();
    let mut acked = Vec::new();
    let mut failed = 0;
    for p in publishers {
        for (data, outcome) in p.await.unwrap() {
            match outcome {
                Ok(sent) => acked.push((sent.id, data)),
                Err(Error::Backend(_)) => failed += 1,
                Err(e) => panic!("{data}: not a backend error: {e}"),
            }
        }
    }
    assert!(failed > 0, "publishes made while Redis is down fail");
    assert!(!acked.is_empty());
    acked.sort();

    redis.restart();
    // Every acknowledged message reaches the page, after the reader
    // reconnected (backoff ≤ 5 s); failed ones may be in the log too
    // (written before the reply was lost), never twice, never out of order.
    let mut seen = vec![(seq(&first), first.data)];
    while seen.last().map(|(s, _)| *s) < acked.last().map(|(id, _)| id.seq()) {
        let ev = next(&mut page).await;
        assert_ne!(ev.event, "reset", "the log was kept");
        seen.push((seq(&ev), ev.data));
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in order, once");
    for (id, data) in &acked {
        assert!(
            seen.iter().any(|(s, d)| *s == id.seq() && d == data),
            "acknowledged {data} ({id}) was delivered"
        );
    }
}

/// A page that read part of a windowed run on one instance resumes on the
/// other with `Last-Event-ID`, and gets the rest, in order, nothing missed.
#[tokio::test]
async fn a_page_resumes_windowed_publishes_on_another_instance() {
    let redis = RedisServer::start(false);
    let a = instance(&redis, true).await;
    let b = instance(&redis, true).await;
    let (mut page, page_id) = a.open(None).await;
    for (data, sent) in windowed(a.manager.clone(), "m", 0..40, 16).await {
        sent.unwrap_or_else(|e| panic!("{data}: {e}"));
    }
    for n in 0..10 {
        assert_eq!(next(&mut page).await.data, format!("m-{n}"));
    }
    let last = page.last_event_id().to_owned();
    page.close();
    // While it is away, the other instance publishes too.
    for (data, sent) in windowed(b.manager.clone(), "m", 40..80, 16).await {
        sent.unwrap_or_else(|e| panic!("{data}: {e}"));
    }
    let (mut page, again) = b.open(Some(&last)).await;
    assert_eq!(again, page_id);
    for n in 10..80 {
        assert_eq!(next(&mut page).await.data, format!("m-{n}"));
    }
}
