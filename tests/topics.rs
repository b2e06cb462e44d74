//! Topics, private delivery, JWT authorization and per-user delivery over
//! real HTTP on 127.0.0.1.
#![cfg(all(feature = "testing", feature = "jwt"))]

mod common;

use std::time::Duration;

use axum::Router;
use htmx_sse::auth::{AuthError, AuthFuture, Authorizer, JwtAuthorizer, Subject};
use htmx_sse::broadcast::{BroadcastManager, BroadcastRoutes};
use htmx_sse::connections::UserId;
use htmx_sse::model_topic;
use htmx_sse::testing::{ClientError, ReceivedEvent, TestClient};
use htmx_sse::topics::{ModelTopic, Topic, TopicRoutes, TopicSelector};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"test secret, 32 bytes or more!!!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_token(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn claims(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({"sub": sub, "exp": now() + 600, "mercure": {"subscribe": subscribe, "publish": publish}})
}

struct Hub {
    base: String,
    manager: BroadcastManager,
    http: reqwest::Client,
}

async fn hub(auth: Option<JwtAuthorizer>) -> Hub {
    let manager = BroadcastManager::new();
    // These tests publish HTML through the hub (the escaping default is
    // tested in tests/hostile.rs).
    let mut routes = TopicRoutes::new(manager.clone()).trust_publisher_html();
    routes = match auth {
        Some(a) => routes.authorizer(a),
        // Without credentials to check, these tests publish as anyone.
        None => routes.publish(htmx_sse::auth::Access::Anyone),
    };
    let (base, _) = common::serve(routes.install(Router::new())).await;
    Hub {
        base,
        manager,
        http: reqwest::Client::new(),
    }
}

impl Hub {
    async fn subscribe(&self, query: &str, token: Option<&str>) -> Result<TestClient, ClientError> {
        let mut b = TestClient::get(format!("{}/hub?{query}", self.base));
        if let Some(t) = token {
            b = b.header("cookie", &format!("htmx_sse_token={t}"));
        }
        let mut c = b.connect().await?;
        assert_eq!(c.next_event_within(WAIT).await?.event, "connection");
        Ok(c)
    }

    async fn publish(&self, body: Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}/hub", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

async fn next(c: &mut TestClient) -> ReceivedEvent {
    c.next_event_within(WAIT).await.unwrap()
}

/// Asserts nothing more arrives: publishes a marker to `topic` and expects
/// it to be the next event.
async fn nothing_before_marker(h: &Hub, c: &mut TestClient, topic: &str) {
    h.manager
        .message("message", "marker")
        .topics([Topic::new(topic).unwrap()])
        .send()
        .await
        .unwrap();
    assert_eq!(next(c).await.data, "marker");
}

#[tokio::test]
async fn one_connection_many_topics() {
    let h = hub(None).await;
    let mut c = h
        .subscribe("topic=news&topic=todos%2F%7Bid%7D", None)
        .await
        .unwrap();
    for (topics, html) in [
        (json!(["news"]), "n1"),
        (json!(["todos/7"]), "t7"),
        (json!(["todos/7/items"]), "deeper: not matched"),
        (json!(["other"]), "other: not matched"),
        (json!(["other", "todos/8"]), "t8 via second topic"),
    ] {
        let (status, body) = h
            .publish(json!({"topics": topics, "html": html}), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for want in ["n1", "t7", "t8 via second topic"] {
        let ev = next(&mut c).await;
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("message", want));
    }
    nothing_before_marker(&h, &mut c, "news").await;

    // The topic as event type routes each topic to its own element.
    let (_, body) = h
        .publish(
            json!({"topics": ["news"], "html": "<p>x</p>", "topic_as_type": true}),
            None,
        )
        .await;
    assert_eq!(body["delivered"], 1);
    let ev = next(&mut c).await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("news", "<p>x</p>"));
}

struct TodoList {
    id: u32,
}
model_topic!(TodoList, |list| list.id);

#[tokio::test]
async fn class_and_instance_topics() {
    let h = hub(None).await;
    let l42 = TodoList { id: 42 };
    let mut one = h.subscribe("topic=TodoList%2F42", None).await.unwrap();
    let mut class = h.subscribe("topic=TodoList", None).await.unwrap();
    let every = TodoList::every_instance().unwrap();
    let mut all = h
        .subscribe(
            &format!(
                "topic={}",
                every
                    .as_str()
                    .replace('/', "%2F")
                    .replace('{', "%7B")
                    .replace('}', "%7D")
            ),
            None,
        )
        .await
        .unwrap();
    let send = async |topic: Topic, html: &str| {
        h.manager
            .message("message", html)
            .topics([topic])
            .send()
            .await
            .unwrap()
            .delivered
    };
    assert_eq!(send(TodoList::class_topic().unwrap(), "new list").await, 1);
    assert_eq!(send(l42.topic().unwrap(), "item in 42").await, 2);
    assert_eq!(
        send(TodoList { id: 7 }.topic().unwrap(), "item in 7").await,
        1
    );
    assert_eq!(next(&mut one).await.data, "item in 42");
    assert_eq!(next(&mut class).await.data, "new list");
    assert_eq!(next(&mut all).await.data, "item in 42");
    assert_eq!(next(&mut all).await.data, "item in 7");
    nothing_before_marker(&h, &mut one, "TodoList/42").await;
    nothing_before_marker(&h, &mut class, "TodoList").await;
}

#[tokio::test]
async fn private_messages_reach_only_authorized_subscribers() {
    let h = hub(Some(JwtAuthorizer::hs256(SECRET).unwrap())).await;
    let alice = hs_token(&claims("alice", &["lists/alice/**"], &[]));
    let bob = hs_token(&claims("bob", &["lists/bob/**"], &[]));
    let publisher = hs_token(&claims("svc", &[], &["lists/**"]));
    let q = "topic=lists%2F**";
    let mut a = h.subscribe(q, Some(&alice)).await.unwrap();
    let mut b = h.subscribe(q, Some(&bob)).await.unwrap();
    let mut anon = h.subscribe(q, None).await.unwrap();

    let (s, body) = h
        .publish(
            json!({"topics": ["lists/alice/1"], "html": "alice's", "private": true}),
            Some(&publisher),
        )
        .await;
    assert_eq!((s, body["delivered"].as_u64()), (200, Some(1)));
    let (s, _) = h
        .publish(
            json!({"topics": ["lists/bob/1"], "html": "bob's", "private": true}),
            Some(&publisher),
        )
        .await;
    assert_eq!(s, 200);
    let (_, body) = h
        .publish(
            json!({"topics": ["lists/alice/1"], "html": "public"}),
            Some(&publisher),
        )
        .await;
    assert_eq!(body["delivered"], 3);
    assert_eq!(next(&mut a).await.data, "alice's");
    assert_eq!(next(&mut a).await.data, "public");
    assert_eq!(next(&mut b).await.data, "bob's");
    assert_eq!(next(&mut b).await.data, "public");
    assert_eq!(next(&mut anon).await.data, "public");
    // Topic messages, private or not, never show in the history: it lists
    // what every page is sent, and a topic's pages may be chosen by an
    // authorizer (a notification channel per user).
    assert!(h.manager.history(None).is_empty());
    h.manager
        .broadcast("note", "to everyone", None, &[])
        .await
        .unwrap();
    let history = h.manager.history(None);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].data, "to everyone");
    // private=1 without credentials: 401, not a silent empty stream.
    match h.subscribe("topic=lists%2F**&private=1", None).await {
        Err(ClientError::NotAnEventStream { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_and_good_ones_accepted() {
    let keys = common::keys::Keys::make("topics");
    let es = JwtAuthorizer::es256_pem(&keys.read("ec.pub")).unwrap();
    let rs = JwtAuthorizer::rs256_pem(&keys.read("rsa.pub")).unwrap();
    let es_key = EncodingKey::from_ec_pem(&keys.read("ec8.pem")).unwrap();
    let rs_key = EncodingKey::from_rsa_pem(&keys.read("rsa.pem")).unwrap();
    let good = claims("alice", &["*"], &["*"]);
    let es_token = encode(&Header::new(Algorithm::ES256), &good, &es_key).unwrap();
    let rs_token = encode(&Header::new(Algorithm::RS256), &good, &rs_key).unwrap();
    assert_eq!(
        es.verify(&es_token).unwrap().user,
        Some(UserId::new("alice").unwrap())
    );
    assert_eq!(rs.verify(&rs_token).unwrap().publish.len(), 1);

    let hs = JwtAuthorizer::hs256(SECRET).unwrap();
    let expired = hs_token(&json!({"sub": "a", "exp": now() - 3600}));
    let no_exp = hs_token(&json!({"sub": "a"}));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another secret, also long enough"),
    )
    .unwrap();
    let valid = hs_token(&good);
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let evil = common::keys::base64url(
            &serde_json::to_vec(&claims("mallory", &["*"], &["*"])).unwrap(),
        );
        format!("{}.{}.{}", parts[0], evil, parts[2])
    };
    let alg_none = format!(
        "{}.{}.",
        common::keys::base64url(br#"{"alg":"none","typ":"JWT"}"#),
        common::keys::base64url(&serde_json::to_vec(&good).unwrap())
    );
    let bad_selector = hs_token(&claims("a", &["x/{"], &[]));
    for (name, token, auth) in [
        ("expired", &expired, &hs),
        ("without exp", &no_exp, &hs),
        ("forged", &forged, &hs),
        ("tampered", &tampered, &hs),
        ("alg none", &alg_none, &hs),
        ("bad selector", &bad_selector, &hs),
        ("HS256 to an ES256 key", &valid, &es),
        ("RS256 to an ES256 key", &rs_token, &es),
        ("ES256 to an RS256 key", &es_token, &rs),
        ("garbage", &"not.a.jwt".to_owned(), &hs),
    ] {
        match auth.verify(token) {
            Err(AuthError::Invalid(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
    }

    // Over HTTP: every bad token is a 401 on subscribe and publish.
    let h = hub(Some(hs)).await;
    for token in [&expired, &forged, &tampered, &alg_none] {
        match h.subscribe("topic=a", Some(token)).await {
            Err(ClientError::NotAnEventStream {
                status: 401, body, ..
            }) => {
                assert!(body.contains("invalid credentials"), "{body}");
            }
            other => panic!("{other:?}"),
        }
        let (s, _) = h
            .publish(json!({"topics": ["a"], "html": "x"}), Some(token))
            .await;
        assert_eq!(s, 401);
    }
    // No token: may subscribe to public topics, may not publish.
    assert!(h.subscribe("topic=a", None).await.is_ok());
    let (s, body) = h.publish(json!({"topics": ["a"], "html": "x"}), None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("credentials required"))
    );
    // A token without the right: 403; with it: 200.
    let reader = hs_token(&claims("r", &["*"], &["other/**"]));
    let (s, _) = h
        .publish(json!({"topics": ["a"], "html": "x"}), Some(&reader))
        .await;
    assert_eq!(s, 403);
    let (s, _) = h
        .publish(json!({"topics": ["a"], "html": "x"}), Some(&valid))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.manager.last_id().seq(),
        1,
        "refused publishes changed nothing"
    );
}

#[tokio::test]
async fn bad_hub_input_is_refused() {
    let h = hub(None).await;
    for (query, says) in [
        ("", "at least one topic"),
        ("topic=a%2F%7B", "must close"),
        ("topic=a%20b", "white space"),
        (&"topic=x&".repeat(33), "at most 32"),
    ] {
        match TestClient::get(format!("{}/hub?{query}", h.base))
            .connect()
            .await
        {
            Err(ClientError::NotAnEventStream {
                status: 400, body, ..
            }) => {
                assert!(body.contains(says), "{query}: {body}");
            }
            other => panic!("{query}: {other:?}"),
        }
    }
    for (body, says) in [
        (
            json!({"topics": ["a"], "html": "x", "data": 1}),
            "exactly one",
        ),
        (json!({"topics": ["a"]}), "exactly one"),
        (json!({"topics": [], "html": "x"}), "must not be empty"),
        (
            json!({"topics": ["a*"], "html": "x"}),
            "belong to selectors",
        ),
        (
            json!({"topics": ["a"], "html": "x", "nope": 1}),
            "unknown field",
        ),
        (
            json!({"topics": ["a"], "html": "x", "type": "a\nb"}),
            "line feed",
        ),
    ] {
        let (s, res) = h.publish(body.clone(), None).await;
        assert_eq!(s, 422, "{body}: {res}");
        assert!(
            res["error"].as_str().unwrap().contains(says),
            "{body}: {res}"
        );
    }
    assert_eq!(h.manager.last_id().seq(), 0);
}

/// Names the user in its `user` cookie; `bad` is refused.
struct CookieUser;

impl Authorizer for CookieUser {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            match htmx_sse::auth::cookie(parts, "user") {
                None => Ok(None),
                Some("bad") => Err(AuthError::Invalid("bad user".into())),
                Some(name) => Ok(Some(
                    Subject::user(
                        UserId::new(name).map_err(|e| AuthError::Invalid(e.to_string()))?,
                    )
                    .with_publish(vec![TopicSelector::new("note").unwrap()]),
                )),
            }
        })
    }
}

#[tokio::test]
async fn thousands_of_user_messages_reach_exactly_their_users() {
    let manager = BroadcastManager::builder().history(4096).build();
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(CookieUser)
        .install(Router::new());
    let (base, _) = common::serve(app).await;
    let users: Vec<UserId> = (0..5)
        .map(|i| UserId::new(&format!("user{i}")).unwrap())
        .collect();
    // Two tabs per user, and one anonymous tab.
    let mut tabs: Vec<(Option<usize>, TestClient)> = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for _ in 0..2 {
            let mut c = TestClient::get(format!("{base}/sse"))
                .header("cookie", &format!("user={u}"))
                .connect()
                .await
                .unwrap();
            assert_eq!(c.next_event_within(WAIT).await.unwrap().event, "connection");
            tabs.push((Some(i), c));
        }
    }
    let mut anon = TestClient::get(format!("{base}/sse"))
        .connect()
        .await
        .unwrap();
    anon.next_event_within(WAIT).await.unwrap();
    tabs.push((None, anon));
    for u in &users {
        assert_eq!(manager.user_connection_count(u), 2);
    }

    // A deterministic pseudo-random sequence of recipients.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    let total = 3000;
    for n in 0..total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let to = (x % users.len() as u64) as usize;
        let text = format!("{n}:for-user{to}");
        let sent = manager
            .send_to_user(&users[to], "note", &text, None)
            .await
            .unwrap();
        assert_eq!(sent.delivered, 2);
        expected[to].push(text);
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    manager.broadcast("end", "end", None, &[]).await.unwrap();
    let mut wrong = 0;
    for (owner, tab) in &mut tabs {
        let mut got = Vec::new();
        loop {
            let ev = tab.next_event_within(WAIT).await.unwrap();
            if ev.event == "end" {
                break;
            }
            if !owner.is_some_and(|o| ev.data.ends_with(&format!("for-user{o}"))) {
                wrong += 1;
            }
            got.push(ev.data);
        }
        match owner {
            Some(o) => assert_eq!(got, expected[*o], "user{o}: every message, in order"),
            None => assert!(
                got.is_empty(),
                "the anonymous tab got {} messages",
                got.len()
            ),
        }
    }
    assert_eq!(wrong, 0, "deliveries to the wrong user");
}

#[tokio::test]
async fn a_forged_last_event_id_reveals_nothing_of_another_user() {
    let manager = BroadcastManager::new();
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(CookieUser)
        .install(Router::new());
    let (base, _) = common::serve(app).await;
    let connect = |user: &'static str, last: Option<String>| {
        let base = base.clone();
        async move {
            let mut b =
                TestClient::get(format!("{base}/sse")).header("cookie", &format!("user={user}"));
            if let Some(l) = last {
                b = b.last_event_id(&l);
            }
            let mut c = b.connect().await.unwrap();
            let ev = c.next_event_within(WAIT).await.unwrap();
            (c, ev)
        }
    };
    let (mut alice, hello) = connect("alice", None).await;
    let alice_last = hello.last_event_id.clone();
    // `EPOCH-SEQ.ID.PROOF`
    let alice_conn = alice_last.split('.').nth(1).unwrap().to_owned();
    let alice_id = htmx_sse::connections::ConnectionId::new(&alice_conn).unwrap();
    // Mallory presents Alice's Last-Event-ID while Alice is connected.
    let (mallory, hello) = connect("mallory", Some(alice_last.clone())).await;
    assert!(
        !hello.data.contains(&alice_conn),
        "mallory got alice's connection id"
    );
    manager
        .send_to(&alice_id, "secret", "alice only", None)
        .await
        .unwrap();
    manager
        .send_to_user(
            &UserId::new("alice").unwrap(),
            "secret",
            "the tabs of alice",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        alice.next_event_within(WAIT).await.unwrap().data,
        "alice only"
    );
    assert_eq!(
        alice.next_event_within(WAIT).await.unwrap().data,
        "the tabs of alice"
    );
    // And after Alice left, Mallory replaying from her id gets none of it.
    alice.close();
    tokio::time::sleep(Duration::from_millis(200)).await;
    mallory.close();
    let (mut mallory, _) = connect("mallory", Some(alice_last)).await;
    manager
        .broadcast("public", "everyone", None, &[])
        .await
        .unwrap();
    // Alice's id's proof does not hold for Mallory: the reset event, then
    // only what everyone gets.
    let ev = mallory.next_event_within(WAIT).await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("reset", r#"{"reason":"unrecognized"}"#)
    );
    let ev = mallory.next_event_within(WAIT).await.unwrap();
    assert_eq!(ev.data, "everyone", "mallory received {ev:?} first");
    // A bad cookie is a 401.
    match TestClient::get(format!("{base}/sse"))
        .header("cookie", "user=bad")
        .connect()
        .await
    {
        Err(ClientError::NotAnEventStream { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn broadcast_publish_routes_need_rights_with_an_authorizer() {
    let manager = BroadcastManager::new();
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(CookieUser)
        .install(Router::new());
    let (base, _) = common::serve(app).await;
    let http = reqwest::Client::new();
    let post = |cookie: Option<&'static str>, ty: &'static str| {
        let mut r = http
            .post(format!("{base}/sse/broadcast"))
            .json(&json!({"type": ty, "data": "x"}));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(None, "note").await, 401);
    assert_eq!(post(Some("user=bad"), "note").await, 401);
    assert_eq!(post(Some("user=alice"), "admin").await, 403);
    assert_eq!(post(Some("user=alice"), "note").await, 200);
    assert_eq!(manager.last_id().seq(), 1);
}

/// Topic messages and broadcasts published from the test's thread while
/// six connections (three on `a`, three on `b`) run on two workers, with
/// room for only 4 waiting messages each. A connection on `b` sits through
/// twelve messages on `a` between its own, none of which wakes it: it
/// must neither be closed as lagging nor miss one of its own. Each round
/// waits until the connections it was for have its last message, so a
/// lost wake-up fails the test after `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topic_connections_skip_messages_for_others_across_threads() {
    const ROUNDS: usize = 400;
    let manager = BroadcastManager::builder()
        .queue_capacity(4)
        .stream(htmx_sse::streaming::StreamConfig::new().no_heartbeat())
        .build();
    let (base, _) = common::serve(
        TopicRoutes::new(manager.clone())
            .publish(htmx_sse::auth::Access::Anyone)
            .install(Router::new()),
    )
    .await;
    let (acks, _) = tokio::sync::broadcast::channel::<(usize, String)>(ROUNDS * 40);
    let mut readers = Vec::new();
    for n in 0..6 {
        let topic = if n < 3 { "a" } else { "b" };
        let mut c = TestClient::get(format!("{base}/hub?topic={topic}"))
            .connect()
            .await
            .unwrap();
        assert_eq!(next(&mut c).await.event, "connection");
        let acks = acks.clone();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let data = next(&mut c).await.data;
                if data == "end" {
                    return got;
                }
                let _ = acks.send((n / 3, data.clone()));
                got.push(data);
            }
        }));
    }
    let mut heard = acks.subscribe();
    let mut expected: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // To `a` mostly, to `b` every fifth round, to everyone every
        // seventh.
        let to: &[usize] = match (round % 7, round % 5) {
            (6, _) => &[0, 1],
            (_, 4) => &[1],
            _ => &[0],
        };
        let mut last = String::new();
        for i in 0..3 {
            if i > 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
            last = format!("{round}.{i}");
            let message = manager.message("message", last.as_str());
            if to.len() == 2 {
                message.send().await.unwrap();
            } else {
                let topic = if to[0] == 0 { "a" } else { "b" };
                message
                    .topics([Topic::new(topic).unwrap()])
                    .send()
                    .await
                    .unwrap();
            }
            for &group in to {
                expected[group].push(last.clone());
            }
        }
        let mut waiting_for = 3 * to.len();
        while waiting_for > 0 {
            let (_, data) = tokio::time::timeout(WAIT, heard.recv())
                .await
                .expect("a connection stalled: a wake-up was lost")
                .unwrap();
            if data == last {
                waiting_for -= 1;
            }
        }
    }
    assert_eq!(manager.connection_count(), 6, "a connection was closed");
    manager
        .broadcast("message", "end", None, &[])
        .await
        .unwrap();
    for (n, r) in readers.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), expected[n / 3], "connection {n}");
    }
}
