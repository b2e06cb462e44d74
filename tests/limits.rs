//! The limits of `htmx_sse::limits`, as a client over real HTTP on
//! 127.0.0.1 meets them: each answers clearly (status, `Retry-After`,
//! JSON error), changes nothing, and lets the next request in once there is
//! room again.
#![cfg(feature = "testing")]

mod common;

use std::time::Duration;

use axum::Router;
use htmx_sse::auth::{Access, AuthFuture, Authorizer, Subject, bearer};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::UserId;
use htmx_sse::limits::Limits;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::{ClientError, TestClient};
use htmx_sse::topics::{TopicRoutes, TopicSelector};
use serde_json::{Value, json};

/// `Authorization: Bearer NAME` is user NAME, who may publish anything.
#[derive(Clone)]
struct Named;

impl Authorizer for Named {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            Ok(bearer(parts)?.map(|name| {
                Subject::user(UserId::new(name).unwrap()).with_publish(vec![TopicSelector::any()])
            }))
        })
    }
}

async fn serve(manager: &BroadcastManager) -> String {
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Named)
        .read(Access::Anyone)
        .install(Router::new());
    let app = TopicRoutes::new(manager.clone())
        .authorizer(Named)
        .install(app);
    common::serve(app).await.0
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A stream request that must be refused: its status, `Retry-After` and
/// JSON error.
async fn refused(url: &str, user: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = http().get(url);
    if let Some(user) = user {
        req = req.bearer_auth(user);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    (status, retry, body["error"].as_str().unwrap().to_owned())
}

async fn open(url: &str, user: Option<&str>) -> Result<TestClient, ClientError> {
    let mut b = TestClient::get(url);
    if let Some(user) = user {
        b = b.header("authorization", &format!("Bearer {user}"));
    }
    let mut c = b.connect().await?;
    let ev = c.next_event_within(Duration::from_secs(5)).await?;
    assert_eq!(ev.event, "connection");
    Ok(c)
}

/// Waits (bounded) until the manager counts `n` connections.
async fn until_count(manager: &BroadcastManager, n: usize) {
    for _ in 0..200 {
        if manager.connection_count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} connections, have {}",
        manager.connection_count()
    );
}

async fn post(url: &str, user: &str, body: &Value) -> (u16, Value) {
    let resp = http()
        .post(url)
        .bearer_auth(user)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_full_server_answers_503_with_retry_after_and_takes_the_next_page_once_one_leaves() {
    let manager = BroadcastManager::builder()
        .limits(
            Limits::new()
                .connections(2)
                .retry_after(Duration::from_millis(2500)),
        )
        .build();
    let base = serve(&manager).await;
    let url = format!("{base}/sse");
    let first = open(&url, None).await.unwrap();
    let _second = open(&url, None).await.unwrap();

    let (status, retry, error) = refused(&url, None).await;
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("3"), "rounded up to whole seconds");
    assert_eq!(error, "limit reached: at most 2 connections on this server");
    assert_eq!(
        manager.connection_count(),
        2,
        "the refused page left nothing"
    );

    // A page resuming its own connection replaces it: not refused.
    let resumed = TestClient::get(&url)
        .last_event_id(first.last_event_id())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("resume refused: {e}"));
    assert_eq!(manager.connection_count(), 2);
    drop(resumed);
    drop(first);
    until_count(&manager, 1).await;
    let _third = open(&url, None).await.unwrap();
    let (status, _, _) = refused(&url, None).await;
    assert_eq!(status, 503, "full again");
}

#[tokio::test]
async fn one_user_past_their_share_gets_429_and_other_users_are_not_affected() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().connections_per_user(2))
        .build();
    let base = serve(&manager).await;
    let url = format!("{base}/sse");
    let _a1 = open(&url, Some("ann")).await.unwrap();
    let a2 = open(&url, Some("ann")).await.unwrap();

    let (status, retry, error) = refused(&url, Some("ann")).await;
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(error, "limit reached: at most 2 connections for this user");

    // Others: a second user and anonymous pages.
    let _b = open(&url, Some("bob")).await.unwrap();
    let _anon = open(&url, None).await.unwrap();
    assert_eq!(
        manager.user_connection_count(&UserId::new("ann").unwrap()),
        2
    );

    // Ann's own resume is a replacement, not a third stream.
    let again = TestClient::get(&url)
        .header("authorization", "Bearer ann")
        .last_event_id(a2.last_event_id())
        .connect()
        .await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn topics_per_connection_and_per_message_are_bounded() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().topics_per_connection(3).topics_per_publish(2))
        .build();
    let base = serve(&manager).await;
    let hub = format!("{base}/hub");

    let three = "topic=a&topic=b&topic=c";
    let _ok = open(&format!("{hub}?{three}"), None).await.unwrap();
    let (status, _, error) = refused(&format!("{hub}?{three}&topic=d"), None).await;
    assert_eq!(status, 400);
    assert_eq!(error, "limit reached: at most 3 topics per connection");

    // The manager refuses it too, for applications that build their own
    // subscriptions.
    let sub = htmx_sse::broadcast::Subscription::new().topics(
        ["a", "b", "c", "d"]
            .map(|t| TopicSelector::new(t).unwrap())
            .to_vec(),
    );
    let err = manager.subscribe(sub, None, Value::Null).unwrap_err();
    assert_eq!(err.status(), 400);

    let before = manager.last_id();
    let (status, body) = post(
        &hub,
        "ann",
        &json!({"topics": ["a", "b", "c"], "data": "hi"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "limit reached: at most 2 topics per message");
    assert_eq!(manager.last_id(), before, "nothing was published");
    let (status, body) = post(&hub, "ann", &json!({"topics": ["a", "b"], "data": "hi"})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_long_exclusion_list_is_refused_before_anything_is_sent() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().exclude(3))
        .build();
    let base = serve(&manager).await;
    let mut page = open(&format!("{base}/sse"), None).await.unwrap();
    let url = format!("{base}/sse/broadcast");

    let four: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    let (status, body) = post(
        &url,
        "ann",
        &json!({"type": "note", "data": "x", "exclude": four}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"],
        "limit reached: at most 3 excluded connections per message"
    );
    let (status, body) = post(
        &url,
        "ann",
        &json!({"type": "note", "data": "second", "exclude": &four[..3]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The page got the second message and nothing before it.
    let ev = page
        .next_event_within(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("note", "second"));

    // From the manager's own API, the same limit.
    let ids: Vec<_> = (0..4)
        .map(|i| htmx_sse::connections::ConnectionId::new(&format!("c{i}")).unwrap())
        .collect();
    let err = manager
        .broadcast("note", "x", None, &ids)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 422);
}

#[tokio::test]
async fn the_history_is_bounded_in_bytes_and_a_resume_past_it_gets_the_reset() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().history_bytes(8 * 1024))
        .build();
    let base = serve(&manager).await;
    let url = format!("{base}/sse");
    let mut page = open(&url, None).await.unwrap();
    let kib = "x".repeat(1024);
    let mut ids = Vec::new();
    for i in 0..20 {
        let sent = manager
            .broadcast("note", format!("{i}:{kib}"), None, &[])
            .await
            .unwrap();
        ids.push(sent.id);
        let ev = page
            .next_event_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(ev.data.starts_with(&format!("{i}:")));
    }
    let kept = manager.history(None);
    assert!(
        (5..=7).contains(&kept.len()),
        "about 8 KiB of 1 KiB frames: {} kept",
        kept.len()
    );
    assert_eq!(kept.last().unwrap().id, ids[19], "the newest stays");
    let tag = page.last_event_id().split_once('.').unwrap().1.to_owned();
    drop(page);

    // From the third message: its successors left the history.
    let mut early = TestClient::get(&url)
        .last_event_id(&format!("{}.{tag}", ids[2]))
        .connect()
        .await
        .unwrap();
    let first = early
        .next_event_within(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.event, "connection");
    let reset = early
        .next_event_within(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reset.event, "reset");
    assert!(reset.data.contains("history-gap"), "{}", reset.data);
    drop(early);

    // From the 18th: replayed exactly, the 19th and 20th.
    let mut late = TestClient::get(&url)
        .last_event_id(&format!("{}.{tag}", ids[17]))
        .connect()
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            late.next_event_within(Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }
    assert_eq!(got[0].event, "connection");
    assert!(got[1].data.starts_with("18:"), "{}", got[1].data);
    assert!(got[2].data.starts_with("19:"), "{}", got[2].data);
}

#[tokio::test]
async fn history_answers_are_bounded_and_say_when_they_were_cut() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().history_response_bytes(8 * 1024))
        .build();
    let base = serve(&manager).await;
    let url = format!("{base}/sse/history");
    let kib = "y".repeat(1024);
    for i in 0..3 {
        manager
            .broadcast("note", format!("{i}:{kib}"), None, &[])
            .await
            .unwrap();
    }
    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-history-truncated").is_none());
    let all: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(all.len(), 3);

    for i in 3..40 {
        manager
            .broadcast("note", format!("{i}:{kib}"), None, &[])
            .await
            .unwrap();
    }
    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-history-truncated"], "true");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let bytes = resp.bytes().await.unwrap();
    assert!(bytes.len() <= 8 * 1024, "{} bytes", bytes.len());
    let listed: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    assert!(listed.len() >= 5, "{} listed", listed.len());
    // The newest, oldest first, with no hole.
    let numbers: Vec<u64> = listed
        .iter()
        .map(|m| {
            let data = m["data"].as_str().unwrap();
            data.split(':').next().unwrap().parse().unwrap()
        })
        .collect();
    let want: Vec<u64> = (40 - numbers.len() as u64..40).collect();
    assert_eq!(numbers, want);
}

#[tokio::test]
async fn the_manager_body_limit_is_the_routes_default() {
    let manager = BroadcastManager::builder()
        .limits(Limits::new().body(200))
        .build();
    let base = serve(&manager).await;
    let before = manager.last_id();
    let big = json!({"type": "note", "data": "z".repeat(300)});
    let (status, body) = post(&format!("{base}/sse/broadcast"), "ann", &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "request body larger than 200 bytes");
    let big = json!({"topics": ["a"], "data": "z".repeat(300)});
    let (status, _) = post(&format!("{base}/hub"), "ann", &big).await;
    assert_eq!(status, 413);
    assert_eq!(manager.last_id(), before, "nothing was published");
}
