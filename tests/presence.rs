//! Presence over real HTTP on 127.0.0.1: `GET /sse/presence` counts the
//! tabs of a user 1, 2, 3 and back, a topic's listeners with the anonymous
//! ones apart, and answers only those allowed to see it (401 without
//! credentials, 403 for a topic they may not subscribe to or another
//! user); bad queries are 400; on Redis it says it cannot answer (503)
//! rather than count one instance alone.
#![cfg(all(feature = "testing", feature = "redis"))]

mod common;

use std::time::Duration;

use axum::Router;
use common::redis::RedisServer;
use htmx_sse::auth::{AuthFuture, Authorizer, Subject, bearer};
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::UserId;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use htmx_sse::topics::{TopicRoutes, TopicSelector};
use serde_json::Value;

/// `Authorization: Bearer NAME` is user NAME; `alice` may subscribe to
/// `docs/**`, nobody else to anything.
#[derive(Clone)]
struct Named;

impl Authorizer for Named {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            Ok(bearer(parts)?.map(|name| {
                let subject = Subject::user(UserId::new(name).unwrap());
                if name == "alice" {
                    subject.with_subscribe(vec![TopicSelector::new("docs/**").unwrap()])
                } else {
                    subject
                }
            }))
        })
    }
}

async fn serve(manager: &BroadcastManager) -> String {
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Named)
        .install(Router::new());
    let app = TopicRoutes::new(manager.clone())
        .authorizer(Named)
        .prefix("/hub")
        .install(app);
    common::serve(app).await.0
}

/// A stream at `path` as `user` (anonymous without), its first event read.
async fn tab(base: &str, path: &str, user: Option<&str>) -> TestClient {
    let mut b = TestClient::get(format!("{base}{path}"));
    if let Some(user) = user {
        b = b.header("authorization", &format!("Bearer {user}"));
    }
    let mut c = b.connect().await.unwrap();
    c.next_event().await.unwrap();
    c
}

/// `GET /sse/presence{query}` as `user`: status and JSON body.
async fn presence(base: &str, query: &str, user: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/sse/presence{query}"));
    if let Some(user) = user {
        req = req.bearer_auth(user);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Waits (bounded) until `alice`'s own presence shows `want` tabs.
async fn alices_tabs(base: &str, want: u64) {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = presence(base, "?user=alice", Some("alice")).await;
        assert_eq!(status, 200, "{body}");
        let n = body["users"]
            .as_array()
            .unwrap()
            .first()
            .map_or(0, |u| u["connections"].as_u64().unwrap());
        if n == want {
            assert_eq!(body["connections"], want);
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("alice never had {want} tab(s): {last}");
}

#[tokio::test]
async fn a_users_tabs_count_one_two_three_and_back() {
    let manager = BroadcastManager::new();
    let base = serve(&manager).await;
    alices_tabs(&base, 0).await;
    let mut tabs = Vec::new();
    for n in 1..=3 {
        tabs.push(tab(&base, "/sse", Some("alice")).await);
        alices_tabs(&base, n).await;
    }
    let (_, body) = presence(&base, "?user=alice", Some("alice")).await;
    assert_eq!(body["users"][0]["user"], "alice");
    assert_eq!(body["anonymous"], 0);
    assert!(body["users"][0]["since"].as_str().unwrap().contains('T'));
    for n in (0..3).rev() {
        tabs.pop().unwrap().close();
        alices_tabs(&base, n).await;
    }
}

#[tokio::test]
async fn a_topics_listeners_and_everyone() {
    let manager = BroadcastManager::new();
    let base = serve(&manager).await;
    let _a1 = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    let _a2 = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    let _anon = tab(&base, "/hub?topic=docs/7", None).await;
    let _other_doc = tab(&base, "/hub?topic=docs/8", Some("bob")).await;
    let _bob = tab(&base, "/sse", Some("bob")).await;

    let (status, body) = presence(&base, "?topic=docs/7", Some("alice")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 3);
    assert_eq!(body["anonymous"], 1);
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    assert_eq!(body["users"][0]["user"], "alice");
    assert_eq!(body["users"][0]["connections"], 2);

    let (status, body) = presence(&base, "", Some("bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 5);
    assert_eq!(body["anonymous"], 1);
    let users: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2);
    assert!(users.contains(&"alice") && users.contains(&"bob"));
    let bob = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "bob")
        .unwrap();
    assert_eq!(bob["connections"], 2);
}

#[tokio::test]
async fn only_those_allowed_see_it_and_bad_queries_are_refused() {
    let manager = BroadcastManager::new();
    let base = serve(&manager).await;
    let _a = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    let cases: [(&str, Option<&str>, u16); 9] = [
        ("", None, 401),
        ("?topic=docs/7", None, 401),
        ("?topic=docs/7", Some("bob"), 403),
        ("?user=alice", Some("bob"), 403),
        ("?user=bob", Some("bob"), 200),
        ("?topic=docs/7&user=alice", Some("alice"), 400),
        ("?topic=docs/7&topic=docs/8", Some("alice"), 400),
        ("?topic=%0Abad", Some("alice"), 400),
        ("?user=a%20b", Some("alice"), 400),
    ];
    for (query, user, want) in cases {
        let (status, body) = presence(&base, query, user).await;
        assert_eq!(status, want, "{query} as {user:?}: {body}");
        if want != 200 {
            // Nobody's presence leaks into a refusal.
            assert!(!body.to_string().contains("alice"), "{query}: {body}");
            assert!(body["error"].is_string(), "{query}: {body}");
        }
    }
}

#[tokio::test]
async fn on_a_shared_backend_it_says_it_cannot_answer() {
    let redis = RedisServer::start(false);
    let manager = BroadcastManager::builder()
        .build_redis(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let base = serve(&manager).await;
    let _a = tab(&base, "/sse", Some("alice")).await;
    let (status, body) = presence(&base, "", Some("alice")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("redis"), "{body}");
}
