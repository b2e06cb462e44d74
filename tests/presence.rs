//! Presence over real HTTP on 127.0.0.1: `GET /sse/presence` counts the
//! tabs of a user 1, 2, 3 and back, a topic's listeners with the anonymous
//! ones apart, and answers only those allowed to see it (401 without
//! credentials, 403 for a topic they may not subscribe to or another
//! user); bad queries are 400; on Redis it says it cannot answer (503)
//! rather than count one instance alone.
//!
//! Watched presence and the badge: a badge counts 1, 2, 3 tabs and back
//! to 0; a page back within the grace period (resumed with
//! `Last-Event-ID`, or reloaded) is no leave, no join and no new badge; a
//! page gone longer is exactly one leave; a topic's badge reaches no page
//! off that topic, and a user's presence no other user. The Redis tests
//! (feature `redis`) need a redis-server; the others run without.
#![cfg(feature = "testing")]

mod common;

use std::time::Duration;

use axum::Router;
#[cfg(feature = "redis")]
use common::redis::RedisServer;
use htmx_sse::auth::{AuthFuture, Authorizer, Subject, bearer};
#[cfg(feature = "redis")]
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::{BroadcastManager, Presence, PresenceBadge, PresenceScope};
use htmx_sse::connections::UserId;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use htmx_sse::topics::{Topic, TopicRoutes, TopicSelector};
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

#[cfg(feature = "redis")]
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

/// A manager with a short grace (so the tests wait little).
fn with_grace(grace: Duration) -> BroadcastManager {
    BroadcastManager::builder().presence_grace(grace).build()
}

/// The badge of `docs/7`'s viewers: `<b>N</b>`.
fn viewers_badge(manager: &BroadcastManager) -> PresenceBadge {
    let doc = Topic::new("docs/7").unwrap();
    manager
        .presence_badge(PresenceScope::Topic(doc), "viewers", |p: &Presence| {
            maud::html! { b { (p.connections) } }
        })
        .unwrap()
}

/// The next event of type `event` on `page` (others skipped), within 5 s.
async fn next_of(page: &mut TestClient, event: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = page
            .next_event_within(left)
            .await
            .unwrap_or_else(|e| panic!("no {event} event: {e:?}"));
        if e.event == event {
            return e.data;
        }
    }
}

/// Every event of `page` until the `sentinel` event (published to everyone
/// after what the test wants to be sure of), within 5 s.
async fn until_sentinel(page: &mut TestClient) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let e = page
            .next_event_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("no sentinel; saw {seen:?}: {e:?}"));
        if e.event == "sentinel" {
            return seen;
        }
        seen.push(format!("{}: {}", e.event, e.data));
    }
}

#[tokio::test]
async fn a_badge_counts_one_two_three_tabs_and_back_to_zero() {
    let manager = with_grace(Duration::from_millis(200));
    let badge = viewers_badge(&manager);
    assert_eq!(badge.render().as_str(), "<b>0</b>");
    let base = serve(&manager).await;

    let mut watcher = tab(&base, "/hub?topic=docs/7", None).await;
    assert_eq!(next_of(&mut watcher, "viewers").await, "<b>1</b>");
    let mut tabs = Vec::new();
    for n in 2..=3 {
        tabs.push(tab(&base, "/hub?topic=docs/7", Some("alice")).await);
        assert_eq!(
            next_of(&mut watcher, "viewers").await,
            format!("<b>{n}</b>")
        );
        assert_eq!(badge.render().as_str(), format!("<b>{n}</b>"));
    }
    // Each tab of alice's got the badge too (the later one, its own count).
    assert_eq!(next_of(&mut tabs[0], "viewers").await, "<b>2</b>");
    assert_eq!(next_of(&mut tabs[0], "viewers").await, "<b>3</b>");
    assert_eq!(next_of(&mut tabs[1], "viewers").await, "<b>3</b>");
    // A page elsewhere does not count.
    let _elsewhere = tab(&base, "/hub?topic=docs/8", Some("alice")).await;
    for n in (1..=2).rev() {
        tabs.pop().unwrap().close();
        assert_eq!(
            next_of(&mut watcher, "viewers").await,
            format!("<b>{n}</b>")
        );
    }
    watcher.close();
    for _ in 0..100 {
        if badge.render().as_str() == "<b>0</b>" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the badge never went back to 0: {}",
        badge.render().as_str()
    );
}

/// Waits (bounded) until the server saw every connection of `user` close
/// (the undebounced presence has none left), so that what comes next
/// comes back within the grace rather than over a live connection.
async fn closed(manager: &BroadcastManager, user: &str) {
    let scope = PresenceScope::User(UserId::new(user).unwrap());
    for _ in 0..250 {
        if manager.presence(&scope).unwrap().connections == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the server never saw {user}'s page close");
}

#[tokio::test]
async fn a_page_back_within_the_grace_is_no_leave_no_join_and_no_new_badge() {
    let grace = Duration::from_millis(1500);
    let manager = with_grace(grace);
    let badge = viewers_badge(&manager);
    let base = serve(&manager).await;
    let mut watcher = tab(&base, "/hub?topic=docs/7", None).await;
    assert_eq!(next_of(&mut watcher, "viewers").await, "<b>1</b>");
    let alice = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    assert_eq!(next_of(&mut watcher, "viewers").await, "<b>2</b>");
    let mut feed = manager
        .watch_presence(PresenceScope::User(UserId::new("alice").unwrap()))
        .unwrap();
    assert_eq!(feed.current().connections, 1);

    // Resumed with Last-Event-ID: the same connection id comes back.
    let resume_from = alice.last_event_id().to_owned();
    let id_before = resume_from.split('.').nth(1).unwrap().to_owned();
    alice.close();
    closed(&manager, "alice").await;
    let mut resumed = TestClient::get(format!("{base}/hub?topic=docs/7"))
        .header("authorization", "Bearer alice")
        .last_event_id(&resume_from)
        .connect()
        .await
        .unwrap();
    let first = resumed.next_event().await.unwrap();
    assert_eq!(first.event, "connection", "{first:?}");
    assert!(
        first.data.contains(&id_before),
        "{first:?} kept {id_before}"
    );
    // Reloaded (a fresh connection of the same user) within the grace.
    resumed.close();
    closed(&manager, "alice").await;
    let _reloaded = tab(&base, "/hub?topic=docs/7", Some("alice")).await;

    // Longer than the grace: nothing changed for anyone.
    let quiet = tokio::time::timeout(grace * 2, feed.changed()).await;
    assert!(quiet.is_err(), "a change: {quiet:?}");
    assert_eq!(feed.current().connections, 1);
    manager.message("sentinel", "-").send().await.unwrap();
    let seen = until_sentinel(&mut watcher).await;
    assert!(seen.is_empty(), "the badge flickered: {seen:?}");
    assert_eq!(badge.render().as_str(), "<b>2</b>");
}

#[tokio::test]
async fn a_page_gone_longer_than_the_grace_is_exactly_one_leave() {
    let grace = Duration::from_millis(300);
    let manager = with_grace(grace);
    let badge = viewers_badge(&manager);
    let base = serve(&manager).await;
    let mut watcher = tab(&base, "/hub?topic=docs/7", None).await;
    assert_eq!(next_of(&mut watcher, "viewers").await, "<b>1</b>");
    let mut feed = manager
        .watch_presence(PresenceScope::Topic(Topic::new("docs/7").unwrap()))
        .unwrap();
    let alice = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    let joined = feed.changed().await.unwrap();
    let alice_id = UserId::new("alice").unwrap();
    assert_eq!(joined.joined, std::slice::from_ref(&alice_id));
    assert!(joined.left.is_empty());
    assert_eq!(
        (joined.presence.connections, joined.presence.anonymous),
        (2, 1)
    );
    assert_eq!(next_of(&mut watcher, "viewers").await, "<b>2</b>");

    let gone = tokio::time::Instant::now();
    alice.close();
    let left = feed.changed().await.unwrap();
    assert!(gone.elapsed() >= grace, "left after {:?}", gone.elapsed());
    assert_eq!(left.left, [alice_id]);
    assert!(left.joined.is_empty());
    assert_eq!(
        (left.presence.connections, left.presence.users.len()),
        (1, 0)
    );
    // Exactly one: no second change, one badge.
    let again = tokio::time::timeout(grace * 3, feed.changed()).await;
    assert!(again.is_err(), "a second change: {again:?}");
    manager.message("sentinel", "-").send().await.unwrap();
    let seen = until_sentinel(&mut watcher).await;
    assert_eq!(seen, ["viewers: <b>1</b>"]);
    assert_eq!(badge.render().as_str(), "<b>1</b>");
}

#[tokio::test]
async fn presence_events_reach_no_page_off_the_topic_and_no_other_user() {
    let manager = with_grace(Duration::from_millis(100));
    let _viewers = viewers_badge(&manager);
    let alice = UserId::new("alice").unwrap();
    let _tabs = manager
        .presence_badge(
            PresenceScope::User(alice.clone()),
            "my-tabs",
            |p: &Presence| {
                maud::html! { i { (p.connections) " tabs" } }
            },
        )
        .unwrap();
    let base = serve(&manager).await;
    // Pages that must see neither badge: off the topic, another user's,
    // anonymous ones.
    let mut off_topic = tab(&base, "/hub?topic=docs/8", Some("bob")).await;
    let mut bobs = tab(&base, "/sse", Some("bob")).await;
    let mut anon = tab(&base, "/hub?topic=docs/**", None).await;
    let mut alices_stream = tab(&base, "/sse", Some("alice")).await;
    assert_eq!(
        next_of(&mut alices_stream, "my-tabs").await,
        "<i>1 tabs</i>"
    );
    let alice_on_doc = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    assert_eq!(
        next_of(&mut alices_stream, "my-tabs").await,
        "<i>2 tabs</i>"
    );
    alice_on_doc.close();
    assert_eq!(
        next_of(&mut alices_stream, "my-tabs").await,
        "<i>1 tabs</i>"
    );

    manager.message("sentinel", "-").send().await.unwrap();
    for (name, page) in [("off topic", &mut off_topic), ("bob", &mut bobs)] {
        let seen = until_sentinel(page).await;
        assert!(seen.is_empty(), "{name} saw {seen:?}");
    }
    // The pattern listener listens to docs/7: it sees the topic's badge
    // (it is counted), never alice's own.
    let seen = until_sentinel(&mut anon).await;
    assert!(seen.iter().all(|e| e.starts_with("viewers: ")), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("viewers: <b>1</b>"));
    // A private badge of the same topic reaches only the page whose
    // credentials allow docs/7 privately (alice's `private=1` stream).
    let _private = manager
        .private_presence_badge(Topic::new("docs/7").unwrap(), "who", |p: &Presence| {
            let names: Vec<&str> = p.users.iter().map(|u| u.user.as_str()).collect();
            names.join(",")
        })
        .unwrap();
    let mut allowed = tab(&base, "/hub?topic=docs/7&private=1", Some("alice")).await;
    // The badges come from their own tasks: in any order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = allowed
            .next_event_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("saw only {seen:?}: {e:?}"));
        if e.event != "connection" {
            seen.push(format!("{}: {}", e.event, e.data));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["my-tabs: <i>2 tabs</i>", "viewers: <b>2</b>", "who: alice"]
    );
    manager.message("sentinel", "-").send().await.unwrap();
    let seen = until_sentinel(&mut anon).await;
    assert_eq!(seen, ["viewers: <b>2</b>"]);
    // And over HTTP, nobody reads alice's presence but alice.
    let (status, body) = presence(&base, "?user=alice", Some("bob")).await;
    assert_eq!(status, 403);
    assert!(!body.to_string().contains("alice"), "{body}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn watching_on_a_shared_backend_says_it_cannot_answer() {
    let redis = RedisServer::start(false);
    let manager = BroadcastManager::builder()
        .build_redis(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let refused = manager.watch_presence(PresenceScope::Everyone).unwrap_err();
    assert!(refused.to_string().contains("redis"), "{refused}");
    assert!(viewers(&manager).is_err());
}

#[cfg(feature = "redis")]
fn viewers(manager: &BroadcastManager) -> Result<PresenceBadge, htmx_sse::Error> {
    manager.presence_badge(PresenceScope::Everyone, "viewers", |p: &Presence| {
        p.connections.to_string()
    })
}

#[tokio::test]
async fn an_everyone_badge_reaches_signed_in_pages_only_unless_public() {
    let manager = with_grace(Duration::ZERO);
    // Names: for those who may read presence alone.
    let _names = manager
        .presence_badge(PresenceScope::Everyone, "names", |p: &Presence| {
            let names: Vec<&str> = p.users.iter().map(|u| u.user.as_str()).collect();
            names.join(",")
        })
        .unwrap();
    // Counts, opted in to every page.
    let _count = manager
        .public_presence_badge("count", |p: &Presence| p.connections.to_string())
        .unwrap();
    let base = serve(&manager).await;
    // Anonymous may not read presence over HTTP…
    assert_eq!(presence(&base, "", None).await.0, 401);
    let mut anon = tab(&base, "/sse", None).await;
    let mut alice = tab(&base, "/sse", Some("alice")).await;
    assert_eq!(next_of(&mut alice, "names").await, "alice");
    let _bob = tab(&base, "/sse", Some("bob")).await;
    let names = next_of(&mut alice, "names").await;
    assert!(names == "alice,bob" || names == "bob,alice", "{names}");
    // Both badges have settled (3 pages): the last count alice sees is 3.
    loop {
        if next_of(&mut alice, "count").await == "3" {
            break;
        }
    }
    manager.message("sentinel", "-").send().await.unwrap();
    // …nor over its stream: it sees the public count, never the names.
    let seen = until_sentinel(&mut anon).await;
    assert!(seen.iter().all(|e| e.starts_with("count: ")), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("count: 3"));
    let raw = String::from_utf8_lossy(anon.raw()).into_owned();
    assert!(!raw.contains("alice") && !raw.contains("bob"), "{raw}");
}

#[tokio::test]
async fn badges_keep_out_of_the_history_and_a_resume_replays_the_notes_exactly() {
    let manager = BroadcastManager::builder()
        .history(16)
        .presence_grace(Duration::ZERO)
        .build();
    let _count = manager
        .public_presence_badge("count", |p: &Presence| p.connections.to_string())
        .unwrap();
    let base = serve(&manager).await;
    let mut page = tab(&base, "/sse", None).await;
    for n in 1..=8 {
        manager
            .message("note", format!("n{n}"))
            .send()
            .await
            .unwrap();
    }
    let mut after_first = String::new();
    for n in 1..=8 {
        assert_eq!(next_of(&mut page, "note").await, format!("n{n}"));
        if n == 1 {
            after_first = page.last_event_id().to_owned();
        }
    }
    let last_note = page.last_event_id().to_owned();
    // Churn: 30 anonymous pages open and close, a badge for most of them.
    for _ in 0..30 {
        tab(&base, "/sse", None).await.close();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let mut badges = 0;
    manager.message("sentinel", "-").send().await.unwrap();
    for e in until_sentinel(&mut page).await {
        assert!(e.starts_with("count: "), "{e}");
        badges += 1;
    }
    assert!(badges >= 10, "only {badges} badges");
    // A badge moves no page's Last-Event-ID past a message.
    let sentinel_id = page.last_event_id().to_owned();
    assert_ne!(sentinel_id, last_note);
    let notes: Vec<String> = manager
        .history(None)
        .iter()
        .map(|m| m.message_type.as_str().to_owned())
        .collect();
    assert_eq!(notes, [vec!["note"; 8], vec!["sentinel"]].concat());
    page.close();

    let mut resumed = TestClient::get(format!("{base}/sse"))
        .last_event_id(&after_first)
        .connect()
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let e = resumed
            .next_event_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("saw {seen:?}: {e:?}"));
        match e.event.as_str() {
            "connection" => {}
            "reset" => panic!("a reset after {seen:?}: {e:?}"),
            // The latest badge comes after the replay: all of it seen.
            "count" => break,
            _ => seen.push(e.data),
        }
    }
    let want: Vec<String> = (2..=8)
        .map(|n| format!("n{n}"))
        .chain(["-".to_owned()])
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn with_no_grace_a_resume_over_a_live_connection_changes_nothing() {
    let manager = with_grace(Duration::ZERO);
    let base = serve(&manager).await;
    let alice = tab(&base, "/hub?topic=docs/7", Some("alice")).await;
    let mut feeds = [
        PresenceScope::Everyone,
        PresenceScope::User(UserId::new("alice").unwrap()),
        PresenceScope::Topic(Topic::new("docs/7").unwrap()),
    ]
    .map(|scope| manager.watch_presence(scope).unwrap());
    // The old connection is still registered: the resume takes its place.
    let id_before = alice.last_event_id().split('.').nth(1).unwrap().to_owned();
    let mut resumed = TestClient::get(format!("{base}/hub?topic=docs/7"))
        .header("authorization", "Bearer alice")
        .last_event_id(alice.last_event_id())
        .connect()
        .await
        .unwrap();
    let first = resumed.next_event().await.unwrap();
    assert!(
        first.data.contains(&id_before),
        "{first:?} kept {id_before}"
    );
    for feed in &mut feeds {
        let quiet = tokio::time::timeout(Duration::from_millis(300), feed.changed()).await;
        assert!(quiet.is_err(), "{:?}: a change {quiet:?}", feed.scope());
        assert_eq!(feed.current().connections, 1, "{:?}", feed.scope());
    }
    drop(alice);
}
