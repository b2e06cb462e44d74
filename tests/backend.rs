//! One test suite, four backends: every test here runs against the
//! in-memory backend, against the Redis backend on a real `redis-server`
//! and the NATS backend on a real `nats-server -js` (each started by the
//! test on a free loopback port), and against `LogBackend`,
//! a shared backend written here with nothing but the crate's public
//! `backend::Backend` trait (an in-process log that several managers share,
//! as instances share Redis), over real HTTP on 127.0.0.1.
#![cfg(all(feature = "testing", feature = "redis", feature = "nats"))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use common::nats::NatsServer;
use common::redis::RedisServer;
use htmx_sse::Error;
use htmx_sse::backend::{
    Backend as SharedBackend, BoxFuture, Envelope, Epoch, NatsConfig, RedisConfig, Sink, Snapshot,
};
use htmx_sse::broadcast::{BroadcastBuilder, BroadcastManager, Subscription};
use htmx_sse::connections::{ConnectionId, UserId};
use htmx_sse::testing::{ReceivedEvent, TestClient};
use htmx_sse::topics::{Topic, TopicSelector};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(5);

/// A manager on one of the four backends; keeps its server alive.
struct Backend {
    manager: BroadcastManager,
    _redis: Option<RedisServer>,
    _nats: Option<NatsServer>,
}

async fn memory(builder: BroadcastBuilder) -> Backend {
    Backend {
        manager: builder.build(),
        _redis: None,
        _nats: None,
    }
}

async fn redis(builder: BroadcastBuilder) -> Backend {
    let server = RedisServer::start(false);
    let manager = builder
        .build_redis(RedisConfig::new(server.url()))
        .await
        .expect("connects to the test redis-server");
    Backend {
        manager,
        _redis: Some(server),
        _nats: None,
    }
}

async fn nats(builder: BroadcastBuilder) -> Backend {
    let server = NatsServer::start();
    let manager = builder
        .build_nats(NatsConfig::new(server.url()))
        .await
        .expect("connects to the test nats-server");
    Backend {
        manager,
        _redis: None,
        _nats: Some(server),
    }
}

async fn log(builder: BroadcastBuilder) -> Backend {
    Backend {
        manager: builder
            .build_on(LogBackend::default())
            .await
            .expect("an in-process log opens"),
        _redis: None,
        _nats: None,
    }
}

/// A shared log in this process: what a backend in an application's own
/// crate looks like. Clones share the log, as instances share Redis.
#[derive(Debug, Clone, Default)]
struct LogBackend(Arc<Log>);

#[derive(Debug)]
struct Log {
    epoch: Epoch,
    entries: Mutex<Vec<(u64, Envelope)>>,
    appended: Notify,
    /// Connection → user, for every manager on the log.
    connections: Mutex<HashMap<ConnectionId, Option<UserId>>>,
    /// While set, the readers deliver nothing (a slow reader).
    paused: std::sync::atomic::AtomicBool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            epoch: Epoch::random(),
            entries: Mutex::default(),
            appended: Notify::new(),
            connections: Mutex::default(),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl SharedBackend for LogBackend {
    fn name(&self) -> &'static str {
        "in-process log"
    }

    fn open(&self, history: usize) -> BoxFuture<'_, Result<Snapshot, Error>> {
        let entries = self.0.entries.lock().unwrap();
        let last = entries.last().map_or(0, |(seq, _)| *seq);
        let recent = entries[entries.len().saturating_sub(history)..].to_vec();
        let snapshot = Snapshot::new(self.0.epoch, last).with_recent(recent);
        Box::pin(async move { Ok(snapshot) })
    }

    fn publish<'a>(
        &'a self,
        epoch: Epoch,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            if epoch != self.0.epoch {
                return Err(Error::Backend("another epoch".into()));
            }
            let seq = {
                let mut entries = self.0.entries.lock().unwrap();
                let seq = entries.len() as u64 + 1;
                entries.push((seq, envelope.clone()));
                seq
            };
            self.0.appended.notify_waiters();
            Ok(seq)
        })
    }

    fn run(self: Arc<Self>, sink: Sink, mut after: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            while sink.is_open() {
                let appended = self.0.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                let new: Vec<(u64, Envelope)> =
                    if self.0.paused.load(std::sync::atomic::Ordering::SeqCst) {
                        Vec::new()
                    } else {
                        self.0.entries.lock().unwrap()[usize::try_from(after).unwrap()..].to_vec()
                    };
                for (seq, envelope) in new {
                    after = seq;
                    if sink.deliver(self.0.epoch, seq, envelope).is_none() {
                        return;
                    }
                }
                // Woken by the next append, or after a while to see
                // whether the manager is still there.
                let _ = tokio::time::timeout(Duration::from_millis(200), appended).await;
            }
        })
    }

    fn connected(&self, id: &ConnectionId, user: Option<&UserId>) -> BoxFuture<'static, ()> {
        self.0
            .connections
            .lock()
            .unwrap()
            .insert(id.clone(), user.cloned());
        Box::pin(async {})
    }

    fn disconnected(&self, id: &ConnectionId) {
        self.0.connections.lock().unwrap().remove(id);
    }

    fn locate<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<Option<UserId>>, Error>> {
        let found = self.0.connections.lock().unwrap().get(id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, Error>> {
        let n = self.0.connections.lock().unwrap().len();
        Box::pin(async move { Ok(Some(n)) })
    }
}

struct Server {
    base: String,
    backend: Backend,
}

async fn user_stream(
    State(m): State<BroadcastManager>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let lei = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let sub = Subscription::new().user(UserId::new(&user).unwrap());
    m.subscribe(sub, lei, serde_json::Value::Null)
}

async fn topic_stream(
    State(m): State<BroadcastManager>,
    Path(topic): Path<String>,
) -> impl IntoResponse {
    let sub = Subscription::new().topics(vec![TopicSelector::new(&topic).unwrap()]);
    m.subscribe(sub, None, serde_json::Value::Null)
}

impl Server {
    async fn start(backend: Backend) -> Server {
        let manager = backend.manager.clone();
        let app = common::open_routes(Router::new(), manager.clone(), "/sse").merge(
            Router::new()
                .route("/user/{user}", get(user_stream))
                .route("/topic/{topic}", get(topic_stream))
                .with_state(manager),
        );
        let (base, _task) = common::serve(app).await;
        Server { base, backend }
    }

    fn m(&self) -> &BroadcastManager {
        &self.backend.manager
    }

    async fn open(&self, path: &str, last_event_id: Option<&str>) -> (TestClient, ConnectionId) {
        common::open_connection(&format!("{}{path}", self.base), last_event_id).await
    }
}

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
}

/// Asserts that `c` receives nothing before the marker broadcast now.
async fn nothing_before_marker(s: &Server, c: &mut TestClient, marker: &str) {
    s.m().broadcast("marker", marker, None, &[]).await.unwrap();
    let ev = next(c).await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("marker", marker));
}

macro_rules! suite {
    ($($backend:ident),*) => {$(
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn broadcast_reaches_all_but_the_excluded() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let (mut a, a_id) = s.open("/sse", None).await;
                let (mut b, _) = s.open("/sse", None).await;
                let sent = s.m().broadcast("note", htmx_sse::Fragment::trusted("<p>hi</p>"), None, &[a_id]).await.unwrap();
                assert_eq!(sent.delivered, 1);
                let ev = next(&mut b).await;
                assert_eq!((ev.event.as_str(), ev.data.as_str()), ("note", "<p>hi</p>"));
                assert!(ev.last_event_id.starts_with(&sent.id.to_string()));
                nothing_before_marker(&s, &mut a, "m1").await;
            }

            #[tokio::test]
            async fn send_to_one_connection_and_unknown_ids() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let (mut a, a_id) = s.open("/sse", None).await;
                let (mut b, _) = s.open("/sse", None).await;
                let sent = s.m().send_to(&a_id, "dm", "for a", None).await.unwrap();
                assert_eq!(sent.delivered, 1);
                assert_eq!(next(&mut a).await.data, "for a");
                nothing_before_marker(&s, &mut b, "m1").await;
                let before = s.m().last_id();
                let ghost = ConnectionId::new("ghost-1").unwrap();
                let err = s.m().send_to(&ghost, "dm", "x", None).await.unwrap_err();
                assert!(matches!(err, Error::UnknownConnection { .. }), "{err:?}");
                // Nothing was numbered for the unknown connection.
                assert_eq!(s.m().last_id(), before);
            }

            #[tokio::test]
            async fn per_user_delivery_reaches_every_tab_of_that_user_only() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let (mut ann1, _) = s.open("/user/ann", None).await;
                let (mut ann2, _) = s.open("/user/ann", None).await;
                let (mut bob, _) = s.open("/user/bob", None).await;
                let ann = UserId::new("ann").unwrap();
                let sent = s.m().send_to_user(&ann, "toast", "for ann", None).await.unwrap();
                assert_eq!(sent.delivered, 2);
                assert_eq!(next(&mut ann1).await.data, "for ann");
                assert_eq!(next(&mut ann2).await.data, "for ann");
                nothing_before_marker(&s, &mut bob, "m1").await;
            }

            #[tokio::test]
            async fn topics_reach_their_subscribers_only() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let (mut seven, _) = s.open("/topic/todos%2F7", None).await;
                let (mut any, _) = s.open("/topic/todos%2F%7Bid%7D", None).await;
                let (mut other, _) = s.open("/topic/lists", None).await;
                let sent = s
                    .m()
                    .message("message", htmx_sse::Fragment::trusted("<li>milk</li>"))
                    .topics([Topic::new("todos/7").unwrap()])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(sent.delivered, 2);
                assert_eq!(next(&mut seven).await.data, "<li>milk</li>");
                assert_eq!(next(&mut any).await.data, "<li>milk</li>");
                nothing_before_marker(&s, &mut other, "m1").await;
            }

            #[tokio::test]
            async fn resume_with_last_event_id_misses_nothing() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let (mut c, c_id) = s.open("/sse", None).await;
                for n in 0..3 {
                    s.m().broadcast("n", n, None, &[]).await.unwrap();
                }
                for n in 0..3 {
                    assert_eq!(next(&mut c).await.data, n.to_string());
                }
                let last = c.last_event_id().to_owned();
                c.close();
                for n in 3..8 {
                    s.m().broadcast("n", n, None, &[]).await.unwrap();
                }
                let (mut c, again) = s.open("/sse", Some(&last)).await;
                assert_eq!(again, c_id, "the connection id comes back");
                for n in 3..8 {
                    assert_eq!(next(&mut c).await.data, n.to_string());
                }
                nothing_before_marker(&s, &mut c, "m1").await;
            }

            #[tokio::test]
            async fn a_gap_beyond_the_history_gets_the_reset_event() {
                let s = Server::start(
                    super::$backend(BroadcastManager::builder().history(3)).await,
                )
                .await;
                let (mut c, _) = s.open("/sse", None).await;
                s.m().broadcast("n", 0, None, &[]).await.unwrap();
                assert_eq!(next(&mut c).await.data, "0");
                let last = c.last_event_id().to_owned();
                c.close();
                for n in 1..10 {
                    s.m().broadcast("n", n, None, &[]).await.unwrap();
                }
                let (mut c, _) = s.open("/sse", Some(&last)).await;
                let ev = next(&mut c).await;
                assert_eq!((ev.event.as_str(), ev.data.as_str()), ("reset", r#"{"reason":"history-gap"}"#));
                nothing_before_marker(&s, &mut c, "m1").await;
            }

            #[tokio::test]
            async fn history_lists_public_messages_oldest_first() {
                let s = Server::start(
                    super::$backend(BroadcastManager::builder().history(4)).await,
                )
                .await;
                for n in 0..6 {
                    s.m().broadcast("n", n, None, &[]).await.unwrap();
                }
                s.m()
                    .send_to_user(&UserId::new("ann").unwrap(), "private", "x", None)
                    .await
                    .unwrap();
                let h = s.m().history(Some(10));
                let data: Vec<_> = h.iter().map(|m| m.data.clone()).collect();
                assert_eq!(data, [3, 4, 5].map(serde_json::Value::from));
                assert!(h.windows(2).all(|w| w[0].id < w[1].id));
            }

            #[tokio::test]
            async fn bad_input_publishes_nothing() {
                let s = Server::start(super::$backend(BroadcastManager::builder()).await).await;
                let before = s.m().last_id();
                let err = s.m().broadcast("bad\ntype", "x", None, &[]).await.unwrap_err();
                assert!(matches!(err, Error::InvalidField { .. }), "{err:?}");
                let err = s.m().message("m", "x").topics([]).send().await.unwrap_err();
                assert!(matches!(err, Error::InvalidTopic(_)), "{err:?}");
                assert_eq!(s.m().last_id(), before);
            }
        }
    )*};
}

suite!(memory, redis, nats, log);

/// Two managers on one `LogBackend`, as two server instances on one Redis:
/// what is published on one reaches the other's pages, `send_to` finds a
/// connection of the other, both count every connection, and a page
/// resumes on the other one with nothing missed.
#[tokio::test]
async fn two_managers_on_one_in_process_log_act_as_one() {
    let shared = LogBackend::default();
    let start = |backend: LogBackend| async move {
        Server::start(Backend {
            manager: BroadcastManager::builder()
                .resume_key(&[7; 32])
                .build_on(backend)
                .await
                .unwrap(),
            _redis: None,
            _nats: None,
        })
        .await
    };
    let a = start(shared.clone()).await;
    let b = start(shared).await;
    assert_eq!(a.m().backend_name(), "in-process log");
    let (mut on_a, a_id) = a.open("/sse", None).await;
    let (mut on_b, _) = b.open("/sse", None).await;

    let sent = b.m().broadcast("n", "from b", None, &[]).await.unwrap();
    assert_eq!(sent.delivered, 1, "b's own page, counted on b");
    assert_eq!(next(&mut on_a).await.data, "from b");
    assert_eq!(next(&mut on_b).await.data, "from b");

    let to_a = b.m().send_to(&a_id, "dm", "for a", None).await.unwrap();
    assert_eq!(to_a.delivered, 0, "queued on a, not on b");
    assert_eq!(next(&mut on_a).await.data, "for a");
    assert_eq!(b.m().cluster_connection_count().await.unwrap(), 2);

    let last = on_a.last_event_id().to_owned();
    on_a.close();
    a.m().broadcast("n", "while away", None, &[]).await.unwrap();
    let (mut moved, same) = b.open("/sse", Some(&last)).await;
    assert_eq!(same, a_id, "the page keeps its id on the other manager");
    assert_eq!(next(&mut moved).await.data, "while away");
}

/// With `read_your_writes(false)` a publish returns before this instance's
/// reader has it: a page rendered then must still not be behind it, or it
/// would show the message and have it replayed. Here the reader is held
/// back; the render point covers the publish anyway, and once the reader
/// goes on, a page opened from that point gets only what came after.
#[tokio::test]
async fn the_render_point_covers_publishes_this_reader_has_not_read() {
    let log = LogBackend::default();
    let manager = BroadcastManager::builder()
        .read_your_writes(false)
        .build_on(log.clone())
        .await
        .unwrap();
    let s = Server::start(Backend {
        manager: manager.clone(),
        _redis: None,
        _nats: None,
    })
    .await;
    log.0
        .paused
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = manager.broadcast("n", "shown", None, &[]).await.unwrap();
    assert_eq!(manager.last_id().seq(), 0, "not read back yet");
    let point = manager.resume_point();
    assert_eq!(point, sent.id, "the point covers the returned publish");
    log.0
        .paused
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (mut page, _) = s.open(&format!("/sse?resumeFrom={point}"), None).await;
    manager.broadcast("n", "after", None, &[]).await.unwrap();
    assert_eq!(next(&mut page).await.data, "after", "not `shown` again");
}
