//! The `tracing` spans a message leaves from publish to every socket, as an
//! application's subscriber (an OpenTelemetry exporter, say) receives them,
//! over real HTTP on 127.0.0.1: `htmx_sse.publish` with the message id,
//! `htmx_sse.fanout` with the same id (inside the publish in memory, inside
//! the backend's reader on Redis, on the instance that delivers), a
//! `delivered` event with that id inside the receiving connection's
//! `htmx_sse.connection` span, and the connection span's id, user and end
//! reason.
#![cfg(all(feature = "testing", feature = "redis"))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::redis::RedisServer;
use htmx_sse::auth::{AuthFuture, Authorizer, Subject, bearer};
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::UserId;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------------------
// A subscriber that keeps every span and event

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<usize>,
    closed: bool,
}

#[derive(Debug, Clone)]
struct EventRec {
    fields: BTreeMap<String, String>,
    /// The span it happened in (an index into `spans`).
    span: Option<usize>,
}

#[derive(Default)]
struct Rec {
    spans: Vec<SpanRec>,
    /// Open span ids to their index (the registry reuses closed ids).
    open: HashMap<u64, usize>,
    events: Vec<EventRec>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Rec>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent_id = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        let mut rec = self.0.lock();
        let parent = parent_id.and_then(|p| rec.open.get(&p).copied());
        rec.spans.push(SpanRec {
            name: attrs.metadata().name(),
            fields,
            parent,
            closed: false,
        });
        let index = rec.spans.len() - 1;
        rec.open.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut rec = self.0.lock();
        if let Some(&i) = rec.open.get(&id.into_u64()) {
            values.record(&mut Fields(&mut rec.spans[i].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span_id = ctx.event_span(event).map(|s| s.id().into_u64());
        let mut rec = self.0.lock();
        let span = span_id.and_then(|s| rec.open.get(&s).copied());
        rec.events.push(EventRec { fields, span });
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut rec = self.0.lock();
        if let Some(i) = rec.open.remove(&id.into_u64()) {
            rec.spans[i].closed = true;
        }
    }
}

impl Recorder {
    /// Installs it for this thread (the tests run on one), for as long as
    /// the guard lives.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn spans(&self, name: &str) -> Vec<(usize, SpanRec)> {
        let rec = self.0.lock();
        rec.spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == name)
            .map(|(i, s)| (i, s.clone()))
            .collect()
    }

    /// The one span named `name` whose `field` is `value`.
    fn span_with(&self, name: &str, field: &str, value: &str) -> (usize, SpanRec) {
        let found: Vec<_> = self
            .spans(name)
            .into_iter()
            .filter(|(_, s)| s.fields.get(field).map(String::as_str) == Some(value))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} span with {field}={value}; every {name}: {:#?}",
            self.spans(name)
        );
        found.into_iter().next().unwrap()
    }

    fn events_in(&self, span: usize) -> Vec<EventRec> {
        let rec = self.0.lock();
        rec.events
            .iter()
            .filter(|e| e.span == Some(span))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until the span at `index` is closed.
    async fn closed(&self, index: usize) -> SpanRec {
        for _ in 0..100 {
            let span = self.0.lock().spans[index].clone();
            if span.closed {
                return span;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("span {:?} never closed", self.0.lock().spans[index]);
    }
}

// ---------------------------------------------------------------------------
// The server

/// `Authorization: Bearer NAME` is user NAME.
#[derive(Clone)]
struct Named;

impl Authorizer for Named {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(
            async move { Ok(bearer(parts)?.map(|name| Subject::user(UserId::new(name).unwrap()))) },
        )
    }
}

async fn serve(manager: &BroadcastManager) -> String {
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Named)
        .install(Router::new());
    common::serve(app).await.0
}

/// Opens `/sse` as `user` and returns the client with its connection id.
async fn open(base: &str, user: &str) -> (TestClient, String) {
    let mut client = TestClient::get(format!("{base}/sse"))
        .header("authorization", &format!("Bearer {user}"))
        .connect()
        .await
        .unwrap();
    let hello = client.next_event().await.unwrap();
    assert_eq!(hello.event, "connection");
    let id = hello
        .data
        .split("value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the connection event carries the id")
        .to_owned();
    (client, id)
}

// ---------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "current_thread")]
async fn one_message_is_traced_from_publish_to_the_socket_in_memory() {
    let recorder = Recorder::default();
    let _guard = recorder.install();
    let manager = BroadcastManager::new();
    let base = serve(&manager).await;
    let (mut client, connection) = open(&base, "alice").await;

    let sent = manager.message("note", "hello").send().await.unwrap();
    let got = client.next_event().await.unwrap();
    assert_eq!((got.event.as_str(), got.data.as_str()), ("note", "hello"));
    let id = sent.id.to_string();

    let (publish, p) = recorder.span_with("htmx_sse.publish", "message.id", &id);
    assert_eq!(p.fields["message.type"], "note");
    assert_eq!(p.fields["backend"], "memory");
    assert_eq!(p.fields["delivered"], "1");
    let (_, fanout) = recorder.span_with("htmx_sse.fanout", "message.id", &id);
    assert_eq!(
        fanout.parent,
        Some(publish),
        "the fan-out happens inside the publish"
    );
    assert_eq!(fanout.fields["delivered"], "1");

    let (conn, c) = recorder.span_with("htmx_sse.connection", "connection.id", &connection);
    assert_eq!(c.fields["user"], "alice");
    assert_eq!(c.fields["resumed"], "false");
    let delivered: Vec<_> = recorder
        .events_in(conn)
        .into_iter()
        .filter(|e| e.fields.get("message") == Some(&"delivered".to_owned()))
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].fields["message.id"], id);

    // The page goes away: the span ends with the reason.
    client.close();
    let ended = recorder.closed(conn).await;
    assert_eq!(ended.fields["end_reason"], "ClientGone");
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_through_redis_carries_its_id_to_the_other_instance() {
    let recorder = Recorder::default();
    let _guard = recorder.install();
    let redis = RedisServer::start(false);
    let config = || RedisConfig::new(redis.url()).timeout(Duration::from_millis(500));
    let a = BroadcastManager::builder()
        .build_redis(config())
        .await
        .unwrap();
    let b = BroadcastManager::builder()
        .build_redis(config())
        .await
        .unwrap();
    let base_b = serve(&b).await;
    let (mut client, connection) = open(&base_b, "bob").await;

    let sent = a.message("note", "across").send().await.unwrap();
    let got = client.next_event().await.unwrap();
    assert_eq!(got.data, "across");
    let id = sent.id.to_string();

    let (_, p) = recorder.span_with("htmx_sse.publish", "message.id", &id);
    assert_eq!(p.fields["backend"], "redis");
    // Fanned out by each instance's reader, inside its backend span.
    let fanouts: Vec<_> = recorder
        .spans("htmx_sse.fanout")
        .into_iter()
        .filter(|(_, s)| s.fields.get("message.id") == Some(&id))
        .collect();
    assert_eq!(fanouts.len(), 2, "A and B each fan it out: {fanouts:#?}");
    let rec = recorder.0.lock();
    for (_, f) in &fanouts {
        let parent = f.parent.map(|i| rec.spans[i].clone());
        assert_eq!(parent.as_ref().map(|s| s.name), Some("htmx_sse.backend"));
        assert_eq!(parent.unwrap().fields["backend"], "redis");
    }
    drop(rec);
    assert!(fanouts.iter().any(|(_, f)| f.fields["delivered"] == "1"));

    let (conn, c) = recorder.span_with("htmx_sse.connection", "connection.id", &connection);
    assert_eq!(c.fields["user"], "bob");
    let delivered = recorder
        .events_in(conn)
        .into_iter()
        .filter(|e| e.fields.get("message.id") == Some(&id))
        .count();
    assert_eq!(delivered, 1);
}
