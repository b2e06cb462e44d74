//! One suite, every shared engine: server instances sharing one real
//! `redis-server` or `nats-server -js` (started by each test on a free
//! loopback port). What is published on one reaches pages on the other,
//! ids are in one order, pages resume on either, an outage of the engine
//! is survived with nothing acknowledged lost, the engine coming back
//! empty means `reset`, a crashed instance is forgotten. Each scenario is
//! a function of the engine; `every_engine!` runs it as `redis::NAME` and
//! `nats::NAME`. What only one engine has is tested in `tests/redis.rs`
//! and `tests/nats.rs`.
#![cfg(all(feature = "testing", feature = "redis", feature = "nats"))]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use common::engine::{Engine, Instance, Kind};
use common::{cut_off, reaches};
use htmx_sse::Error;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::ConnectionId;
use htmx_sse::streaming::StreamConfig;
use htmx_sse::testing::{ReceivedEvent, SseItem, TestClient};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
/// A heartbeat that never comes during a test.
const QUIET: Duration = Duration::from_secs(15);

/// Runs each scenario, a function of the engine, once per engine.
macro_rules! every_engine {
    ($($scenario:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Kind::Redis).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Kind::Nats).await;
                }
            )*
        }
    };
}

every_engine!(
    what_is_published_on_b_reaches_pages_on_a,
    ids_are_in_one_order_across_instances,
    a_page_resumes_on_another_instance_with_nothing_missed,
    an_outage_keeps_pages_open_and_loses_nothing_acknowledged,
    losing_its_data_means_a_new_epoch_and_a_reset,
    a_new_epoch_reaches_open_streams_as_a_reset_never_a_silent_skip,
    an_id_far_ahead_of_the_shared_sequence_gets_the_reset_event,
    a_resume_across_a_hole_in_the_history_gets_the_reset_event,
    an_instance_that_crashed_is_forgotten_after_its_liveness,
    toasts_and_topic_hub_publishes_cross_instances,
    publishes_that_return_when_logged_reach_every_page_in_order,
    pages_that_come_or_go_during_a_short_outage_are_recorded_or_forgotten,
);

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
}

/// The next event, past heartbeats.
async fn next_past_heartbeats(c: &mut TestClient) -> ReceivedEvent {
    loop {
        match c.next_item_within(WAIT).await.unwrap() {
            SseItem::Comment(_) => {}
            SseItem::Event(ev) => return ev,
        }
    }
}

/// A page that resumes from `last` gets the reset event for `reason`.
async fn resumes_into_reset(on: &Instance, last: &str, reason: &str) -> TestClient {
    let (mut page, _) = on.open(Some(last)).await;
    let ev = next(&mut page).await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", &*format!(r#"{{"reason":"{reason}"}}"#)),
        "resuming from {last}"
    );
    page
}

async fn what_is_published_on_b_reaches_pages_on_a(kind: Kind) {
    let engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    let b = engine.instance(QUIET).await;
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

async fn ids_are_in_one_order_across_instances(kind: Kind) {
    let engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    let b = engine.instance(QUIET).await;
    let (mut on_a, _) = a.open(None).await;
    let (mut on_b, _) = b.open(None).await;
    // Both publish at once, from two tasks.
    let publisher = |m: BroadcastManager, name: &'static str| {
        tokio::spawn(async move {
            for n in 0..50 {
                m.broadcast("n", format!("{name}{n}"), None, &[])
                    .await
                    .unwrap();
            }
        })
    };
    let pa = publisher(a.manager.clone(), "a");
    let pb = publisher(b.manager.clone(), "b");
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

async fn a_page_resumes_on_another_instance_with_nothing_missed(kind: Kind) {
    let engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    let b = engine.instance(QUIET).await;
    let (mut page, page_id) = a.open(None).await;
    for n in 0..5 {
        a.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    for n in 0..5 {
        assert_eq!(next(&mut page).await.data, n.to_string());
    }
    let last = page.last_event_id().to_owned();
    page.close();
    // While it is away, both instances publish.
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

    // A server instance restarts (a new manager on the same engine): ids
    // stay valid, the page catches up without a reset.
    let last = page.last_event_id().to_owned();
    page.close();
    b.task.abort();
    drop(b);
    a.manager.broadcast("n", 10, None, &[]).await.unwrap();
    let b2 = engine.instance(QUIET).await;
    let (mut page, _) = b2.open(Some(&last)).await;
    assert_eq!(next(&mut page).await.data, "10");
}

async fn an_outage_keeps_pages_open_and_loses_nothing_acknowledged(kind: Kind) {
    let mut engine = Engine::start(kind);
    let name = engine.name();
    let a = engine.instance(Duration::from_millis(200)).await;
    let b = engine.instance(Duration::from_millis(200)).await;
    let (mut page, _) = a.open(None).await;
    let opened_at = page.last_event_id().to_owned();
    b.manager.broadcast("n", "before", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "before");
    let epoch = a.manager.last_id().epoch();

    engine.stop();
    // The instances say they lost the engine (`GET /sse/status`,
    // `backend_connected`).
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.manager.backend_connected() {
        assert!(Instant::now() < deadline, "still says it reads {name}");
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
            SseItem::Event(ev) => panic!("no event while {name} is down: {ev:?}"),
        }
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 1 s at 200 ms");

    engine.restart(); // with its data
    // Delivery resumes once both instances reconnected (backoff ≤ 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match b.manager.broadcast("n", "after", None, &[]).await {
            Ok(_) => break,
            Err(Error::Backend(e)) => {
                assert!(Instant::now() < deadline, "{name} never came back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(next_past_heartbeats(&mut page).await.data, "after");
    assert!(a.manager.backend_connected());
    assert_eq!(a.manager.last_id().epoch(), epoch, "the data survived");

    // Nothing acknowledged was lost, nothing refused shows up: an instance
    // started now replays, to a page resuming from before `before`, both
    // acknowledged messages and only them.
    let c = engine.instance(QUIET).await;
    let (mut resumed, _) = c.open(Some(&opened_at)).await;
    assert_eq!(next(&mut resumed).await.data, "before");
    assert_eq!(next(&mut resumed).await.data, "after");
    c.manager.broadcast("marker", "m", None, &[]).await.unwrap();
    assert_eq!(next(&mut resumed).await.event, "marker");
}

async fn losing_its_data_means_a_new_epoch_and_a_reset(kind: Kind) {
    let mut engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    let (mut page, _) = a.open(None).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "1");
    let old = a.manager.last_id();
    let last = page.last_event_id().to_owned();
    page.close();

    engine.restart_empty(); // everything is gone
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.manager.last_id().epoch() == old.epoch() {
        assert!(Instant::now() < deadline, "no new epoch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut page = resumes_into_reset(&a, &last, "restarted").await;
    a.manager.broadcast("n", 2, None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "2");
}

/// The sequence that lost messages silently (issue 15, item 1): 20
/// published, a page open at seq 20, the engine restarted without its
/// data, 30 more published on the new epoch (numbered 1 to 30 again). The
/// open page must not skip the new epoch's first 20: its stream ends, and
/// coming back with its last id it gets `reset` (`restarted`), then what
/// follows.
async fn a_new_epoch_reaches_open_streams_as_a_reset_never_a_silent_skip(kind: Kind) {
    let mut engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    for n in 1..=20 {
        a.manager.broadcast("n", n, None, &[]).await.unwrap();
    }
    let (mut page, _) = a.open(None).await;
    let old = a.manager.last_id();
    assert_eq!(old.seq(), 20);

    engine.restart_empty(); // everything is gone
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
    // Its stream ends first, having received nothing of the new epoch.
    let got = page.collect_until_closed(WAIT).await.unwrap();
    assert!(got.is_empty(), "received without a reset: {got:?}");
    let last = page.last_event_id().to_owned();
    assert!(last.starts_with(&old.epoch().to_string()), "{last}");
    let mut page = resumes_into_reset(&a, &last, "restarted").await;
    a.manager.broadcast("n", "after", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "after");
}

/// A `Last-Event-ID` far ahead of the shared sequence (issue 15, item 2),
/// with a valid proof for its connection id (the proof does not cover the
/// sequence): the reset event (`unrecognized`) and a fresh start, as in
/// memory, not a stream that waits silently forever.
async fn an_id_far_ahead_of_the_shared_sequence_gets_the_reset_event(kind: Kind) {
    let engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    let (page, _) = a.open(None).await;
    let real = page.last_event_id().to_owned();
    page.close();
    let (message, tag) = real.split_once('.').unwrap();
    let epoch = message.split('-').next().unwrap();
    for ahead in ["1000000", "18446744073709551615"] {
        let forged = format!("{epoch}-{ahead}.{tag}");
        let mut page = resumes_into_reset(&a, &forged, "unrecognized").await;
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

/// A hole in the history (issue 15, item 3): an entry in the shared log
/// that cannot be read (written by something else, or damaged). A page
/// whose resume crosses it gets the reset event (`history-gap`), not a
/// replay over the hole as if nothing were missing; a page that starts
/// after it resumes exactly. So does an instance started afterwards, whose
/// history was loaded with the hole in it.
async fn a_resume_across_a_hole_in_the_history_gets_the_reset_event(kind: Kind) {
    let engine = Engine::start(kind);
    let a = engine.instance(QUIET).await;
    a.manager.broadcast("n", 1, None, &[]).await.unwrap();
    a.manager.broadcast("n", 2, None, &[]).await.unwrap();
    let (page, _) = a.open(None).await;
    let before_hole = page.last_event_id().to_owned();
    page.close();
    // Entry 3: numbered, but not one this crate can read.
    engine.write_unreadable(&a.manager, 3).await;
    a.manager.broadcast("n", 4, None, &[]).await.unwrap();
    assert_eq!(a.manager.last_id().seq(), 4, "the unreadable entry took 3");
    let after_hole = {
        let (mut page, _) = a.open(None).await;
        a.manager.broadcast("n", 5, None, &[]).await.unwrap();
        let ev = next(&mut page).await;
        assert_eq!(ev.data, "5");
        ev.last_event_id
    };
    a.manager.broadcast("n", 6, None, &[]).await.unwrap();
    let b = engine.instance(QUIET).await;
    for inst in [&a, &b] {
        // A resume from 2 crosses the hole at 3.
        resumes_into_reset(inst, &before_hole, "history-gap").await;
        let (mut page, _) = inst.open(Some(&after_hole)).await;
        assert_eq!(
            next(&mut page).await.data,
            "6",
            "a resume from 5 misses nothing"
        );
    }
}

async fn an_instance_that_crashed_is_forgotten_after_its_liveness(kind: Kind) {
    let engine = Engine::start(kind);
    let at = engine
        .endpoint()
        .prefix("crash")
        .liveness(Duration::from_millis(600));
    let a = Instance::serve(at.build(BroadcastManager::builder()).await).await;
    let (_on_a, a_id) = a.open(None).await;

    // Instance B lives on its own runtime, to crash.
    let b_runtime = common::Crashable::start();
    let b_at = at.clone();
    let base_b = b_runtime
        .run(async move {
            let b = b_at.build(BroadcastManager::builder()).await;
            Instance::serve(b).await.base
        })
        .await;
    let (on_b, b_id) = common::open_connection(&format!("{base_b}/sse"), None).await;
    assert_eq!(a.manager.cluster_connection_count().await.unwrap(), 2);
    a.manager
        .send_to(&b_id, "dm", "still there", None)
        .await
        .unwrap();
    assert_eq!(engine.instances_recorded("crash").await, 2);

    b_runtime.crash();
    drop(on_b);
    // Until its liveness runs out B still counts; then it is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.manager.cluster_connection_count().await.unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "the crashed instance still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = a
        .manager
        .send_to(&b_id, "dm", "gone?", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConnection { .. }), "{err:?}");

    // And its records are removed (not left to pile up), A's stay.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.recorded("crash", &b_id).await || engine.instances_recorded("crash").await != 1 {
        assert!(
            Instant::now() < deadline,
            "the dead instance's records stay ({} instances recorded)",
            engine.instances_recorded("crash").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(engine.recorded("crash", &a_id).await);
}

/// The notification stream, open to every page (the test has no users).
fn listen(n: &htmx_sse::notify::Notifier, router: Router) -> Router {
    n.routes()
        .listen(htmx_sse::auth::Access::Anyone)
        .install(router)
}

async fn toasts_and_topic_hub_publishes_cross_instances(kind: Kind) {
    use htmx_sse::notify::{Level, Notifier};

    let engine = Engine::start(kind);
    let toasts = engine.endpoint().prefix("toasts");
    let (na, nb) = (
        Notifier::with_manager(toasts.build(BroadcastManager::builder()).await),
        Notifier::with_manager(toasts.build(BroadcastManager::builder()).await),
    );
    let hub = |m: BroadcastManager| {
        htmx_sse::topics::TopicRoutes::new(m)
            .publish(htmx_sse::auth::Access::Anyone)
            .trust_publisher_html()
            .install(Router::new())
    };
    let at_hub = engine.endpoint().prefix("hub");
    let hub_a = at_hub.build(BroadcastManager::builder()).await;
    let hub_b = at_hub.build(BroadcastManager::builder()).await;
    let (base_a, _ta) = common::serve(listen(&na, hub(hub_a))).await;
    let (base_b, _tb) = common::serve(listen(&nb, hub(hub_b))).await;

    // A toast sent on B reaches the page listening on A; B has no
    // listener of its own, and still publishes.
    let mut toasts = TestClient::get(format!("{base_a}/notifications/ops"))
        .connect()
        .await
        .unwrap();
    assert_eq!(next(&mut toasts).await.event, "connection");
    assert_eq!(nb.client_count(Some("ops")), 0);
    nb.send("ops", "<b>deployed</b>", Level::Success)
        .await
        .unwrap();
    let ev = next(&mut toasts).await;
    assert!(
        ev.data.contains("&#60;b&#62;deployed&#60;/b&#62;"),
        "{}",
        ev.data
    );
    assert!(ev.data.contains("alert-success"), "{}", ev.data);

    // A Mercure-style publish to B's hub reaches A's subscriber.
    let mut sub = TestClient::get(format!("{base_a}/hub?topic=todos%2F7"))
        .connect()
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.event, "connection");
    let res = reqwest::Client::new()
        .post(format!("{base_b}/hub"))
        .json(&json!({"topics": ["todos/7"], "html": "<li>milk</li>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(next(&mut sub).await.data, "<li>milk</li>");
}

/// `read_your_writes(false)`: a publish returns once the engine has it
/// (with `delivered: 0`, the count not being known yet), and every page,
/// on this instance and on another, still gets every message once, in the
/// shared order; concurrent publishers all succeed and no id is given
/// twice.
async fn publishes_that_return_when_logged_reach_every_page_in_order(kind: Kind) {
    let engine = Engine::start(kind);
    let fast = engine
        .endpoint()
        .build(BroadcastManager::builder().read_your_writes(false))
        .await;
    let other = engine.instance(QUIET).await;
    let fast = Instance::serve(fast).await;
    let (mut here, _) = fast.open(None).await;
    let (mut there, _) = other.open(None).await;

    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let m = fast.manager.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..25 {
                    let sent = m
                        .broadcast("n", format!("{p}-{n}"), None, &[])
                        .await
                        .unwrap();
                    assert_eq!(sent.delivered, 0, "not known when logged");
                    ids.push(sent.id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for p in publishers {
        ids.extend(p.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "every publish got its own id");
    // A page rendered now must not be behind what returned: its point
    // covers every publish, delivered here yet or not.
    assert!(fast.manager.resume_point() >= *ids.last().unwrap());
    for page in [&mut here, &mut there] {
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen.push(next(page).await.data);
        }
        // Each publisher's messages in its own order.
        for p in 0..4 {
            let mine: Vec<_> = seen
                .iter()
                .filter(|d| d.starts_with(&format!("{p}-")))
                .collect();
            let want: Vec<String> = (0..25).map(|n| format!("{p}-{n}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
    }
}

/// An instance cut off from the engine for less than its liveness (no
/// other instance takes it for dead, and nothing it recorded was lost):
/// a page that arrives on it meanwhile is recorded once it is back, so
/// `send_to` from another instance reaches it, and one that left
/// meanwhile is forgotten: unknown, and no longer counted.
async fn pages_that_come_or_go_during_a_short_outage_are_recorded_or_forgotten(kind: Kind) {
    let engine = Engine::start(kind);
    let proxy = engine.proxy().await;
    let at = engine
        .endpoint()
        .prefix("blip")
        .liveness(Duration::from_secs(60));
    let heartbeat = StreamConfig::new().heartbeat(Duration::from_millis(200));
    let a = at
        .clone()
        .through(&proxy)
        .build(BroadcastManager::builder().stream(heartbeat))
        .await;
    let a = Instance::serve(a).await;
    let b = Instance::serve(at.build(BroadcastManager::builder()).await).await;
    let (leaves, leaves_id) = a.open(None).await;
    let (mut stays, stays_id) = a.open(None).await;
    reaches(&b, &stays_id, &mut stays, "before").await;
    assert_eq!(b.manager.cluster_connection_count().await.unwrap(), 2);

    cut_off(&proxy, &a.manager).await;
    let (mut arrives, arrives_id) = a.open(None).await;
    leaves.close();
    let deadline = Instant::now() + WAIT;
    while a.manager.connection_count() != 2 {
        assert!(Instant::now() < deadline, "the page did not leave");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();

    // Well within the liveness: A renews it throughout, and B never takes
    // A for dead.
    reaches(&b, &arrives_id, &mut arrives, "welcome").await;
    reaches(&b, &stays_id, &mut stays, "still here").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let count = b.manager.cluster_connection_count().await.unwrap();
        let left = b.manager.send_to(&leaves_id, "dm", "gone?", None).await;
        if count == 2 && matches!(left, Err(Error::UnknownConnection { .. })) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} connections counted, the page that left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
