//! Hostile requests over real HTTP on 127.0.0.1, one row each: what a
//! stranger, a publisher with too few rights, or a broken client can send
//! to the routes as the README installs them. Every row states the status
//! it must get, and after every row the test checks that nothing was
//! published (the manager's last id did not move), nothing was listed in
//! the history, and the page listening all along received nothing.
//!
//! The rows cover SECURITY.md's promises for the routes: publish and read
//! routes closed until opened, grants checked per type, reserved event
//! names, CR/LF/NUL in names, bad shapes, sizes and encodings, bad ids and
//! selectors. The stream-side rows (bad `Last-Event-ID`, slow and vanishing
//! clients) are the tests after the table.
#![cfg(all(feature = "testing", feature = "askama"))]

mod common;

use std::time::Duration;

use axum::Router;
use htmx_sse::auth::{Access, AuthError, AuthFuture, Authorizer, Subject, bearer};
use htmx_sse::broadcast::{BroadcastManager, MessageId, setup_broadcast_routes};
use htmx_sse::connections::UserId;
use htmx_sse::notify::Notifier;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use htmx_sse::topics::{TopicRoutes, TopicSelector};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(5);

/// Bearer tokens as a stand-in for real credentials: `reader` is a valid
/// user without rights, `notes` may publish the type `note`, and may hear
/// the notification channel `user/notes`.
struct Tokens;

impl Authorizer for Tokens {
    fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            let token = match bearer(parts)? {
                Some(t) => t,
                None => match htmx_sse::auth::cookie(parts, "token") {
                    Some(t) => t,
                    None => return Ok(None),
                },
            };
            let user = |name: &str| Subject::user(UserId::new(name).unwrap());
            match token {
                "reader" => Ok(Some(user("reader"))),
                "notes" => Ok(Some(
                    user("notes")
                        .with_publish(vec![TopicSelector::new("note").unwrap()])
                        .with_subscribe(vec![TopicSelector::new("user/notes").unwrap()]),
                )),
                _ => Err(AuthError::Invalid("unknown token".into())),
            }
        })
    }
}

/// One server of each kind, sharing nothing.
struct Servers {
    /// As the README installs it: `setup_broadcast_routes`, `TopicRoutes`
    /// and `Notifier::routes()` with their defaults.
    closed: Server,
    /// The same routes behind [`Tokens`].
    authed: Server,
    /// Opened to anyone on purpose: the rows check input, not rights.
    open: Server,
}

struct Server {
    base: String,
    manager: BroadcastManager,
    notifier: Notifier,
    /// A page listening on the broadcast stream the whole time.
    page: TestClient,
    /// Its connection id, for `send/{id}` rows.
    page_id: String,
    /// A page listening to the topic `x`.
    topic_page: TestClient,
}

impl Server {
    async fn start(configure: impl FnOnce(BroadcastManager, Notifier) -> Router) -> Server {
        let manager = BroadcastManager::new();
        let notifier = Notifier::new();
        let app = configure(manager.clone(), notifier.clone());
        let (base, _) = common::serve(app).await;
        let (page, id) = common::open_connection(&format!("{base}/sse"), None).await;
        let mut topic_page = TestClient::get(format!("{base}/hub?topic=x"))
            .connect()
            .await
            .unwrap();
        assert_eq!(
            topic_page.next_event_within(WAIT).await.unwrap().event,
            "connection"
        );
        Server {
            base,
            manager,
            notifier,
            page,
            page_id: id.as_str().to_owned(),
            topic_page,
        }
    }

    /// Nothing was published and both pages received nothing: a marker
    /// published now is the next thing each page reads.
    async fn assert_untouched(&mut self, row: &str, before: MessageId) {
        assert_eq!(
            self.manager.last_id(),
            before,
            "{row}: something was published"
        );
        assert!(
            self.manager.history(None).is_empty(),
            "{row}: history changed"
        );
        let marker = format!("marker after {row}");
        // Text goes out escaped (the row names hold quotes).
        let on_wire = htmx_sse::Fragment::text(&marker).into_string();
        self.manager
            .message("message", marker.as_str())
            .topics([htmx_sse::topics::Topic::new("x").unwrap()])
            .send()
            .await
            .unwrap();
        let got = self.topic_page.next_event_within(WAIT).await.unwrap();
        assert_eq!(
            got.data, on_wire,
            "{row}: the topic page received something else first"
        );
        self.manager
            .send_to(&self.page_id.parse().unwrap(), "m", marker.as_str(), None)
            .await
            .unwrap();
        let got = self.page.next_event_within(WAIT).await.unwrap();
        assert_eq!(
            got.data, on_wire,
            "{row}: the page received something else first"
        );
    }
}

async fn servers() -> Servers {
    let closed = Server::start(|m, n| {
        let app = setup_broadcast_routes(Router::new(), m.clone(), "/sse");
        let app = TopicRoutes::new(m).install(app);
        n.routes().install(app)
    })
    .await;
    let authed = Server::start(|m, n| {
        let app = BroadcastRoutes::new(m.clone())
            .authorizer(Tokens)
            .install(Router::new());
        let app = TopicRoutes::new(m).authorizer(Tokens).install(app);
        n.routes().authorizer(Tokens).install(app)
    })
    .await;
    let open = Server::start(|m, n| {
        let app = BroadcastRoutes::new(m.clone())
            .publish(Access::Anyone)
            .read(Access::Anyone)
            .install(Router::new());
        let app = TopicRoutes::new(m).publish(Access::Anyone).install(app);
        n.routes().listen(Access::Anyone).install(app)
    })
    .await;
    Servers {
        closed,
        authed,
        open,
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Closed,
    Authed,
    Open,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
    /// Streamed without a length.
    Chunked(Vec<u8>),
}

struct Row {
    name: &'static str,
    on: Which,
    method: &'static str,
    /// `{id}` is replaced by the listening page's connection id.
    path: String,
    token: Option<&'static str>,
    body: Body,
    status: u16,
}

fn row(name: &'static str, on: Which, method: &'static str, path: &str) -> Row {
    Row {
        name,
        on,
        method,
        path: path.to_owned(),
        token: None,
        body: Body::None,
        status: 0,
    }
}

impl Row {
    fn json(mut self, v: Value) -> Self {
        self.body = Body::Json(v);
        self
    }
    fn raw(mut self, content_type: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Raw(content_type, bytes.into());
        self
    }
    fn chunked(mut self, bytes: Vec<u8>) -> Self {
        self.body = Body::Chunked(bytes);
        self
    }
    fn token(mut self, t: &'static str) -> Self {
        self.token = Some(t);
        self
    }
    fn expect(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

fn rows() -> Vec<Row> {
    use Which::{Authed, Closed, Open};
    let html = json!({"type": "chat", "data": "<img src=x onerror=alert(1)>"});
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let mut too_big = br#"{"type":"chat","data":""#.to_vec();
    too_big.extend(std::iter::repeat_n(b'x', 70 * 1024));
    too_big.extend(br#""}"#);
    vec![
        // Closed until opened: the README's routes as installed.
        row(
            "anonymous broadcast of HTML",
            Closed,
            "POST",
            "/sse/broadcast",
        )
        .json(html.clone())
        .expect(401),
        row(
            "anonymous close event to every page",
            Closed,
            "POST",
            "/sse/broadcast",
        )
        .json(json!({"type": "close", "data": ""}))
        .expect(401),
        row("anonymous send to a page", Closed, "POST", "/sse/send/{id}")
            .json(json!({"type": "chat", "data": "hi"}))
            .expect(401),
        row("anonymous status", Closed, "GET", "/sse/status").expect(401),
        row("anonymous history", Closed, "GET", "/sse/history").expect(401),
        row("anonymous topic publish", Closed, "POST", "/hub")
            .json(json!({"topics": ["x"], "html": "<b>x</b>"}))
            .expect(401),
        row(
            "anonymous notification listener",
            Closed,
            "GET",
            "/notifications/ops",
        )
        .expect(401),
        row(
            "a token where no authorizer is set",
            Closed,
            "POST",
            "/sse/broadcast",
        )
        .token("notes")
        .json(html.clone())
        .expect(401),
        row(
            "a refused body is not read first",
            Closed,
            "POST",
            "/sse/broadcast",
        )
        .raw("application/json", "{not json")
        .expect(401),
        // Rights checked per request.
        row("forged token, broadcast", Authed, "POST", "/sse/broadcast")
            .token("forged")
            .json(html.clone())
            .expect(401),
        row("forged token, stream", Authed, "GET", "/sse")
            .token("forged")
            .expect(401),
        row("forged token, status", Authed, "GET", "/sse/status")
            .token("forged")
            .expect(401),
        row(
            "valid user without publish rights",
            Authed,
            "POST",
            "/sse/broadcast",
        )
        .token("reader")
        .json(json!({"type": "note", "data": "x"}))
        .expect(403),
        row(
            "publisher of `note` sending `chat`",
            Authed,
            "POST",
            "/sse/broadcast",
        )
        .token("notes")
        .json(html)
        .expect(403),
        row(
            "publisher of `note` sending `close`",
            Authed,
            "POST",
            "/sse/broadcast",
        )
        .token("notes")
        .json(json!({"type": "close", "data": ""}))
        .expect(403),
        row(
            "user without rights sends to a page",
            Authed,
            "POST",
            "/sse/send/{id}",
        )
        .token("reader")
        .json(json!({"type": "note", "data": "x"}))
        .expect(403),
        row(
            "anonymous status behind an authorizer",
            Authed,
            "GET",
            "/sse/status",
        )
        .expect(401),
        row("topic publish outside the grant", Authed, "POST", "/hub")
            .token("notes")
            .json(json!({"topics": ["x"], "html": "x"}))
            .expect(403),
        row(
            "anonymous listener of a channel",
            Authed,
            "GET",
            "/notifications/user%2Fnotes",
        )
        .expect(401),
        row(
            "listener of another user's channel",
            Authed,
            "GET",
            "/notifications/user%2Fother",
        )
        .token("reader")
        .expect(403),
        row(
            "private topic stream without credentials",
            Authed,
            "GET",
            "/hub?topic=x&private=1",
        )
        .expect(401),
        // Reserved names, CR/LF/NUL: refused for every publisher.
        row("published `close`", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "close", "data": ""}))
            .expect(422),
        row("published `connection`", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "connection", "data": "<input name=connection_id value=evil>"}))
            .expect(422),
        row("published `reset`", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "reset", "data": {"reason": "restarted"}}))
            .expect(422),
        row("`close` sent to one page", Open, "POST", "/sse/send/{id}")
            .json(json!({"type": "close", "data": ""}))
            .expect(422),
        row("`close` as a topic message type", Open, "POST", "/hub")
            .json(json!({"topics": ["x"], "type": "close", "html": ""}))
            .expect(422),
        row("topic `close` used as the type", Open, "POST", "/hub")
            .json(json!({"topics": ["close"], "topic_as_type": true, "html": ""}))
            .expect(422),
        row("LF in the type", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "a\ndata: forged", "data": "x"}))
            .expect(422),
        row("CR in the type", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "a\rb", "data": "x"}))
            .expect(422),
        row("NUL in the type", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "a\u{0}b", "data": "x"}))
            .expect(422),
        row("NUL in a topic message type", Open, "POST", "/hub")
            .json(json!({"topics": ["x"], "type": "a\u{0}b", "html": ""}))
            .expect(422),
        row(
            "CRLF in a type sent to one page",
            Open,
            "POST",
            "/sse/send/{id}",
        )
        .json(json!({"type": "a\r\nid: 1", "data": "x"}))
        .expect(422),
        row("empty type", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "", "data": "x"}))
            .expect(422),
        // Shapes, sizes, encodings.
        row("unknown field", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "chat", "data": "x", "admin": true}))
            .expect(422),
        row("missing data", Open, "POST", "/sse/broadcast")
            .json(json!({"type": "chat"}))
            .expect(422),
        row(
            "type of the wrong JSON type",
            Open,
            "POST",
            "/sse/broadcast",
        )
        .json(json!({"type": 7, "data": "x"}))
        .expect(422),
        row(
            "bad connection id in exclude",
            Open,
            "POST",
            "/sse/broadcast",
        )
        .json(json!({"type": "chat", "data": "x", "exclude": ["a b"]}))
        .expect(422),
        row("malformed JSON", Open, "POST", "/sse/broadcast")
            .raw("application/json", "{\"type\": \"chat\",")
            .expect(400),
        row("invalid UTF-8", Open, "POST", "/sse/broadcast")
            .raw(
                "application/json",
                b"{\"type\":\"chat\",\"data\":\"\xff\xfe\"}".to_vec(),
            )
            .expect(400),
        row("JSON nested 5,000 deep", Open, "POST", "/sse/broadcast")
            .raw(
                "application/json",
                format!("{{\"type\":\"chat\",\"data\":{nested}}}"),
            )
            .expect(400),
        row(
            "text/plain body (a cross-site form)",
            Open,
            "POST",
            "/sse/broadcast",
        )
        .raw("text/plain", r#"{"type":"chat","data":"x"}"#)
        .expect(415),
        row("form-encoded body", Open, "POST", "/sse/broadcast")
            .raw("application/x-www-form-urlencoded", "type=chat&data=x")
            .expect(415),
        row(
            "body over the limit, with its length",
            Open,
            "POST",
            "/sse/broadcast",
        )
        .raw("application/json", too_big.clone())
        .expect(413),
        row(
            "body over the limit, chunked",
            Open,
            "POST",
            "/sse/broadcast",
        )
        .chunked(too_big)
        .expect(413),
        row(
            "send to an unknown page",
            Open,
            "POST",
            "/sse/send/nobody_here",
        )
        .json(json!({"type": "chat", "data": "x"}))
        .expect(404),
        row("send to a malformed id", Open, "POST", "/sse/send/a%20b")
            .json(json!({"type": "chat", "data": "x"}))
            .expect(400),
        row(
            "send to an id of 65 bytes",
            Open,
            "POST",
            &format!("/sse/send/{}", "a".repeat(65)),
        )
        .json(json!({"type": "chat", "data": "x"}))
        .expect(400),
        row(
            "history limit not a number",
            Open,
            "GET",
            "/sse/history?limit=abc",
        )
        .expect(400),
        row(
            "history limit negative",
            Open,
            "GET",
            "/sse/history?limit=-1",
        )
        .expect(400),
        row("topic publish without topics", Open, "POST", "/hub")
            .json(json!({"topics": [], "html": "x"}))
            .expect(422),
        row("topic publish with html and data", Open, "POST", "/hub")
            .json(json!({"topics": ["x"], "html": "x", "data": 1}))
            .expect(422),
        row("topic with white space", Open, "POST", "/hub")
            .json(json!({"topics": ["a b"], "html": "x"}))
            .expect(422),
        row(
            "topic publish of raw HTML where publishers are not trusted with it",
            Open,
            "POST",
            "/hub",
        )
        .json(json!({"topics": ["x"], "html": "<img src=x onerror=alert(1)>"}))
        .expect(422),
        row("topic stream without a topic", Open, "GET", "/hub").expect(400),
        row("topic selector with LF", Open, "GET", "/hub?topic=a%0Ab").expect(400),
        row(
            "33 topics on one stream",
            Open,
            "GET",
            &format!(
                "/hub?{}",
                (0..33)
                    .map(|i| format!("topic=t{i}"))
                    .collect::<Vec<_>>()
                    .join("&")
            ),
        )
        .expect(400),
        row(
            "notification channel with white space",
            Open,
            "GET",
            "/notifications/a%20b",
        )
        .expect(400),
    ]
}

async fn send(http: &reqwest::Client, server: &Server, row: &Row) -> (u16, String, String) {
    let url = format!(
        "{}{}",
        server.base,
        row.path.replace("{id}", &server.page_id)
    );
    let mut req = match row.method {
        "GET" => http.get(&url),
        _ => http.post(&url),
    };
    if let Some(t) = row.token {
        req = req.bearer_auth(t);
    }
    req = match &row.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(ct, bytes) => req.header("content-type", *ct).body(bytes.clone()),
        Body::Chunked(bytes) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
            req.header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
        }
    };
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if ct.starts_with("text/event-stream") {
        return (status, ct, String::new());
    }
    (status, ct, res.text().await.unwrap())
}

#[tokio::test]
async fn hostile_requests_get_their_status_and_change_nothing() {
    let mut s = servers().await;
    let http = reqwest::Client::new();
    let rows = rows();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    let mut report = Vec::new();
    for row in &rows {
        let server = match row.on {
            Which::Closed => &mut s.closed,
            Which::Authed => &mut s.authed,
            Which::Open => &mut s.open,
        };
        let before = server.manager.last_id();
        let (status, ct, body) = send(&http, server, row).await;
        assert_eq!(status, row.status, "{}: {body}", row.name);
        assert!(
            ct.starts_with("application/json"),
            "{}: content type {ct:?}",
            row.name
        );
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: {body}",
            row.name
        );
        server.assert_untouched(row.name, before).await;
        report.push(format!(
            "{:>3} {:?} {} {}",
            status, row.on, row.method, row.name
        ));
    }
    // The table, for the closing note (`cargo test --test hostile -- --nocapture`).
    println!("{}", report.join("\n"));
    // The notifiers reached nobody: no listener got through.
    for server in [&s.closed, &s.authed] {
        assert_eq!(server.notifier.client_count(None), 0);
    }
}

#[tokio::test]
async fn granted_requests_still_work_and_read_only_what_they_may() {
    let s = servers().await;
    let http = reqwest::Client::new();
    let a = &s.authed;
    // The publisher of `note` publishes a note.
    let res = http
        .post(format!("{}/sse/broadcast", a.base))
        .bearer_auth("notes")
        .json(&json!({"type": "note", "data": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Messages for one user, one page or a topic are never listed.
    let reader = UserId::new("reader").unwrap();
    a.manager
        .send_to_user(&reader, "dm", "for reader", None)
        .await
        .unwrap();
    a.manager
        .send_to(&a.page_id.parse().unwrap(), "dm", "for the page", None)
        .await
        .unwrap();
    a.manager
        .message("message", "topic only")
        .topics([htmx_sse::topics::Topic::new("x").unwrap()])
        .send()
        .await
        .unwrap();
    for token in ["reader", "notes"] {
        let history: Value = http
            .get(format!("{}/sse/history", a.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_str().unwrap())
            .collect();
        assert_eq!(data, ["hello"], "{token}");
    }
    let status = http
        .get(format!("{}/sse/status", a.base))
        .bearer_auth("reader")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    // The channel's own user may listen to it.
    let mut c = TestClient::get(format!("{}/notifications/user%2Fnotes", a.base))
        .header("authorization", "Bearer notes")
        .connect()
        .await
        .unwrap();
    assert_eq!(c.next_event_within(WAIT).await.unwrap().event, "connection");
    assert_eq!(
        a.notifier
            .send("user/notes", "yours", htmx_sse::notify::Level::Info)
            .await
            .unwrap(),
        1
    );
    assert!(
        c.next_event_within(WAIT)
            .await
            .unwrap()
            .data
            .contains("yours")
    );
}

#[tokio::test]
async fn a_recipient_filter_keeps_what_it_withholds_out_of_the_history() {
    let manager = BroadcastManager::builder()
        .recipient_filter(
            |msg, to| match msg.metadata.as_ref().and_then(|m| m["only"].as_str()) {
                Some(only) => to.user.is_some_and(|u| u.as_str() == only),
                None => true,
            },
        )
        .build();
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Tokens)
        .install(Router::new());
    let (base, _) = common::serve(app).await;
    manager
        .broadcast("n", "only notes", Some(json!({"only": "notes"})), &[])
        .await
        .unwrap();
    manager.broadcast("n", "everyone", None, &[]).await.unwrap();
    let http = reqwest::Client::new();
    let listed = |token: &'static str| {
        let req = http
            .get(format!("{base}/sse/history"))
            .bearer_auth(token)
            .send();
        async move {
            let v: Value = req.await.unwrap().json().await.unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|m| m["data"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("reader").await, ["everyone"]);
    assert_eq!(listed("notes").await, ["only notes", "everyone"]);
    assert_eq!(
        manager.history(None).len(),
        1,
        "anonymous readers see what anyone gets"
    );
}

#[tokio::test]
async fn the_manager_refuses_reserved_and_nul_types_from_every_entry_point() {
    use htmx_sse::Error;
    let manager = BroadcastManager::builder()
        .stream(
            htmx_sse::streaming::StreamConfig::new().close_message(
                htmx_sse::Event::builder()
                    .event("bye")
                    .data("")
                    .build()
                    .unwrap(),
            ),
        )
        .build();
    let (mut page, id) = {
        let (base, _) =
            common::serve(BroadcastRoutes::new(manager.clone()).install(Router::new())).await;
        common::open_connection(&format!("{base}/sse"), None).await
    };
    let user = UserId::new("u").unwrap();
    for name in ["close", "connection", "reset", "bye"] {
        let reserved = |r: Result<_, Error>| {
            assert!(
                matches!(r, Err(Error::ReservedEventName { .. })),
                "{name}: {r:?}"
            );
        };
        reserved(manager.broadcast(name, "x", None, &[]).await);
        reserved(manager.send_to(&id, name, "x", None).await);
        reserved(manager.send_to_user(&user, name, "x", None).await);
        reserved(
            manager
                .message(name, "x")
                .topics([htmx_sse::topics::Topic::new("t").unwrap()])
                .send()
                .await,
        );
        reserved(
            manager
                .message("fine", "x")
                .topics([htmx_sse::topics::Topic::new(name).unwrap()])
                .topic_as_type(true)
                .send()
                .await,
        );
    }
    for bad in ["a\0b", "a\nb", "a\rb"] {
        let r = manager.broadcast(bad, "x", None, &[]).await;
        assert!(
            matches!(r, Err(Error::InvalidField { .. })),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(manager.last_id().seq(), 0, "nothing was published");
    // The dedicated method sends it, and the page takes it as the close.
    manager
        .message("bye", "retired")
        .allow_reserved_type()
        .send()
        .await
        .unwrap();
    let ev = page.next_event_within(WAIT).await.unwrap();
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("bye", "retired"));
}

/// `manager`'s routes at `/sse` as the README installs them, served on
/// 127.0.0.1; the base URL.
async fn sse_routes(manager: &BroadcastManager) -> String {
    common::serve(setup_broadcast_routes(
        Router::new(),
        manager.clone(),
        "/sse",
    ))
    .await
    .0
}

#[tokio::test]
async fn bad_last_event_ids_get_a_fresh_id_and_the_reset_event() {
    let manager = BroadcastManager::new();
    let base = sse_routes(&manager).await;
    manager.broadcast("n", "before", None, &[]).await.unwrap();
    let epoch = manager.last_id().epoch();
    for bad in [
        "garbage".to_owned(),
        "\u{fffd}".to_owned(),
        format!("{epoch}-18446744073709551615.x"),
        format!("{epoch}-99.x"),
        "00000000-1.x".to_owned(),
        format!("{epoch}-1.{}", "a".repeat(65)),
    ] {
        let mut c = TestClient::get(format!("{base}/sse"))
            .last_event_id(&bad)
            .connect()
            .await
            .unwrap();
        assert_eq!(
            c.next_event_within(WAIT).await.unwrap().event,
            "connection",
            "{bad}"
        );
        let reset = c.next_event_within(WAIT).await.unwrap();
        assert_eq!(reset.event, "reset", "{bad}");
        let reason: Value = serde_json::from_str(&reset.data).unwrap();
        assert!(
            ["unrecognized", "restarted"].contains(&reason["reason"].as_str().unwrap()),
            "{bad}: {reason}"
        );
    }
    // A header that is not text at all.
    let mut sock = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    sock.write_all(b"GET /sse HTTP/1.1\r\nhost: x\r\nlast-event-id: \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("event: reset") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("unrecognized"));
}

#[tokio::test]
async fn slow_and_vanishing_clients_do_not_hold_up_the_others() {
    let manager = BroadcastManager::new();
    let base = sse_routes(&manager).await;
    let addr = base.trim_start_matches("http://").to_owned();
    // Slowloris: 50 connections that send half a request line and stop.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nho").await.unwrap();
        slow.push(s);
    }
    // A storm of 200 streams opened and dropped without reading.
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        drop(s);
    }
    // A real page still connects and gets what is published at once.
    let (mut page, _) = common::open_connection(&format!("{base}/sse"), None).await;
    manager.broadcast("n", "through", None, &[]).await.unwrap();
    assert_eq!(page.next_event_within(WAIT).await.unwrap().data, "through");
    // The dropped streams leave the registry: only the page stays.
    let t0 = std::time::Instant::now();
    while manager.connection_count() != 1 {
        assert!(
            t0.elapsed() < WAIT,
            "{} connections left",
            manager.connection_count()
        );
        manager.broadcast("n", "tick", None, &[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(slow);
}

#[tokio::test]
async fn a_known_connection_id_cannot_be_taken_over() {
    let manager = BroadcastManager::new();
    let base = sse_routes(&manager).await;
    let (mut victim, victim_id) = common::open_connection(&format!("{base}/sse"), None).await;
    let epoch = manager.last_id().epoch();
    let vid = victim_id.as_str();
    // The victim's id is known (it is in the victim's forms); its proof is
    // not. Each attempt gets a fresh id and the reset event.
    for forged in [
        format!("{epoch}-0.{vid}"),
        format!("{epoch}-0.{vid}.{}", "0".repeat(24)),
        format!("{epoch}-0.{vid}.{}", "f".repeat(24)),
        format!("{epoch}-0.{vid}.not-a-proof"),
        format!("{epoch}-0.{vid}."),
    ] {
        let mut thief = TestClient::get(format!("{base}/sse"))
            .last_event_id(&forged)
            .connect()
            .await
            .unwrap();
        let hello = thief.next_event_within(WAIT).await.unwrap();
        assert_eq!(hello.event, "connection");
        assert!(!hello.data.contains(vid), "{forged}: got the victim's id");
        assert!(!hello.last_event_id.contains(vid), "{forged}");
        let reset = thief.next_event_within(WAIT).await.unwrap();
        assert_eq!(
            (reset.event.as_str(), reset.data.as_str()),
            ("reset", r#"{"reason":"unrecognized"}"#),
            "{forged}"
        );
        // The victim keeps its stream and its messages; the thief gets none.
        let secret = format!("for the victim only, after {forged}");
        let sent = manager
            .send_to(&victim_id, "dm", secret.as_str(), None)
            .await
            .unwrap();
        assert_eq!(sent.delivered, 1);
        assert_eq!(victim.next_event_within(WAIT).await.unwrap().data, secret);
        manager.broadcast("n", "marker", None, &[]).await.unwrap();
        assert_eq!(
            thief.next_event_within(WAIT).await.unwrap().data,
            "marker",
            "{forged}"
        );
        assert_eq!(victim.next_event_within(WAIT).await.unwrap().data, "marker");
    }
    // The victim itself, with the id it was sent, gets its id back and
    // what was sent to it while it was away.
    let last = {
        manager
            .broadcast("n", "last seen", None, &[])
            .await
            .unwrap();
        victim.next_event_within(WAIT).await.unwrap().last_event_id
    };
    victim.close();
    let t0 = std::time::Instant::now();
    while manager.connection_count() > 5 {
        assert!(t0.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut back = TestClient::get(format!("{base}/sse"))
        .last_event_id(&last)
        .connect()
        .await
        .unwrap();
    let hello = back.next_event_within(WAIT).await.unwrap();
    assert!(hello.data.contains(vid), "{hello:?}");
    manager
        .send_to(&victim_id, "dm", "welcome back", None)
        .await
        .unwrap();
    assert_eq!(
        back.next_event_within(WAIT).await.unwrap().data,
        "welcome back"
    );
}

#[tokio::test]
async fn json_data_reaches_the_page_without_markup() {
    let mut s = servers().await;
    let http = reqwest::Client::new();
    let data = json!({"s": "<script>alert(1)</script>", "img": "<img src=x onerror=alert(2)>", "amp": "&lt;"});
    let res = http
        .post(format!("{}/sse/broadcast", s.open.base))
        .json(&json!({"type": "chat", "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ev = s.open.page.next_event_within(WAIT).await.unwrap();
    for c in ['<', '>', '&'] {
        assert!(!ev.data.contains(c), "{c:?} on the wire: {}", ev.data);
    }
    let back: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(back, data, "the same JSON value");
}

const XSS: &str = r#"<img src=x onerror="alert(1)"><script>alert(2)</script>"#;
const XSS_TEXT: &str =
    "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;";

#[tokio::test]
async fn strings_are_text_from_every_entry_point() {
    use htmx_sse::topics::Topic;
    // A user on the stream, so that `send_to_user` reaches it.
    let manager = BroadcastManager::new();
    let notifier = Notifier::with_manager(manager.clone());
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Tokens)
        .publish(Access::Anyone)
        .install(Router::new());
    let app = TopicRoutes::new(manager.clone())
        .publish(Access::Anyone)
        .install(app);
    let (base, _) = common::serve(app).await;
    let mut page = TestClient::get(format!("{base}/sse"))
        .header("authorization", "Bearer reader")
        .connect()
        .await
        .unwrap();
    let hello = page.next_event_within(WAIT).await.unwrap();
    let id: htmx_sse::connections::ConnectionId = hello
        .last_event_id
        .split('.')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut topic_page = TestClient::get(format!("{base}/hub?topic=x"))
        .connect()
        .await
        .unwrap();
    topic_page.next_event_within(WAIT).await.unwrap();
    let reader = UserId::new("reader").unwrap();
    let http = reqwest::Client::new();

    manager.broadcast("m", XSS, None, &[]).await.unwrap();
    manager
        .broadcast("m", XSS.to_owned(), None, &[])
        .await
        .unwrap();
    manager.send_to(&id, "m", XSS, None).await.unwrap();
    manager.send_to_user(&reader, "m", XSS, None).await.unwrap();
    manager
        .message("m", XSS)
        .to_user(reader.clone())
        .send()
        .await
        .unwrap();
    // `Event::from` a string: text as well.
    assert_eq!(
        htmx_sse::Event::from(XSS).as_bytes(),
        format!("data: {XSS_TEXT}\n\n").as_bytes()
    );
    for (path, body) in [
        (
            "/sse/broadcast".to_owned(),
            json!({"type": "m", "data": XSS}),
        ),
        (format!("/sse/send/{id}"), json!({"type": "m", "data": XSS})),
    ] {
        let res = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    // broadcast ×2, send_to, send_to_user, message().to_user, and the two
    // HTTP routes.
    for n in 0..7 {
        let ev = page.next_event_within(WAIT).await.unwrap();
        assert_eq!(ev.data, XSS_TEXT, "message {n}");
    }
    for (i, ev) in [
        manager
            .message("t", XSS)
            .topics([Topic::new("x").unwrap()])
            .send()
            .await
            .map(|_| ()),
        http.post(format!("{base}/hub"))
            .json(&json!({"topics": ["x"], "data": XSS}))
            .send()
            .await
            .map(|r| assert_eq!(r.status(), 200))
            .map_err(|e| htmx_sse::Error::Backend(e.to_string())),
    ]
    .into_iter()
    .enumerate()
    {
        ev.unwrap();
        let got = topic_page.next_event_within(WAIT).await.unwrap();
        assert_eq!(got.data, XSS_TEXT, "topic message {i}");
    }
    // The Notifier's toast shows the message as text.
    let mut toasts = TestClient::get(format!("{base}/hub?topic=ops"))
        .connect()
        .await
        .unwrap();
    toasts.next_event_within(WAIT).await.unwrap();
    assert_eq!(
        notifier
            .send("ops", XSS, htmx_sse::notify::Level::Error)
            .await
            .unwrap(),
        1
    );
    let toast = toasts.next_event_within(WAIT).await.unwrap();
    assert!(
        !toast.data.contains("<img") && !toast.data.contains("<script"),
        "{}",
        toast.data
    );
    assert!(
        toast.data.contains("&#60;img") || toast.data.contains("&lt;img"),
        "{}",
        toast.data
    );
    // And HTML goes out as HTML only through a type that says so.
    manager
        .broadcast("m", htmx_sse::Fragment::trusted("<b>bold</b>"), None, &[])
        .await
        .unwrap();
    assert_eq!(
        page.next_event_within(WAIT).await.unwrap().data,
        "<b>bold</b>"
    );
}

/// Tokens an attacker can make or replay, against publish routes that
/// trust a `JwtAuthorizer` with an audience and an issuer: each is a 401
/// with a JSON error, and nothing is published or delivered.
#[cfg(feature = "jwt")]
#[tokio::test]
async fn forged_expired_and_misaddressed_tokens_publish_nothing() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    const SECRET: &[u8] = b"a test secret of 32 bytes or more";
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let claims = |extra: Value| {
        let mut c = json!({
            "sub": "svc", "exp": now + 600, "aud": "htmx-sse-test", "iss": "https://auth.test",
            "mercure": {"publish": ["note"]}
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let token = |extra: Value, secret: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims(extra),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let b64 = |v: &Value| common::keys::base64url(v.to_string().as_bytes());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );

    let manager = BroadcastManager::new();
    let auth = htmx_sse::auth::JwtAuthorizer::hs256(SECRET)
        .unwrap()
        .audience(["htmx-sse-test"])
        .issuer(["https://auth.test"]);
    let (base, _) = common::serve(
        BroadcastRoutes::new(manager.clone())
            .authorizer(auth)
            .install(Router::new()),
    )
    .await;
    let (mut page, _) = common::open_connection(&format!("{base}/sse"), None).await;
    let http = reqwest::Client::new();
    let rows: Vec<(&str, String, u16)> = vec![
        (
            "signed with another secret",
            token(json!({}), b"another secret, also 32 bytes long"),
            401,
        ),
        (
            "expired an hour ago",
            token(json!({"exp": now - 3600}), SECRET),
            401,
        ),
        (
            "not valid for an hour yet",
            token(json!({"nbf": now + 3600}), SECRET),
            401,
        ),
        (
            "for another audience",
            token(json!({"aud": "another-app"}), SECRET),
            401,
        ),
        (
            "without an audience",
            token(json!({"aud": null}), SECRET),
            401,
        ),
        (
            "from another issuer",
            token(json!({"iss": "https://evil.test"}), SECRET),
            401,
        ),
        (
            "without an issuer",
            token(json!({"iss": null}), SECRET),
            401,
        ),
        ("alg none", unsigned, 401),
        ("not a token", "not.a.token".to_owned(), 401),
        (
            "valid, but only for the type note",
            token(json!({}), SECRET),
            403,
        ),
    ];
    for (name, token, status) in &rows {
        let res = http
            .post(format!("{base}/sse/broadcast"))
            .bearer_auth(token)
            .json(&json!({"type": "chat", "data": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), *status, "{name}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: {err}"
        );
    }
    assert_eq!(manager.last_id().seq(), 0, "nothing was published");
    // The control: the valid token publishes its type, and that is the
    // first thing the page reads.
    let res = http
        .post(format!("{base}/sse/broadcast"))
        .bearer_auth(token(json!({}), SECRET))
        .json(&json!({"type": "note", "data": "the first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        page.next_event_within(WAIT).await.unwrap().data,
        "the first"
    );
}

#[cfg(feature = "webpush")]
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/webpush.rs"]
mod webpush_example;

/// Subscriptions whose endpoint points into the server's own network,
/// posted to the `webpush` example's `/subscribe`: each is a 422 with a
/// generic error, nothing is stored, and a push service listening on
/// 127.0.0.1 is never contacted.
#[cfg(feature = "webpush")]
#[tokio::test]
async fn push_subscriptions_cannot_point_into_the_server_network() {
    use htmx_sse::webpush::{Dispatcher, EndpointPolicy, VapidKey, VapidSubject};
    let inside = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = inside.local_addr().unwrap().port();
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&contacted);
    tokio::spawn(async move {
        while let Ok((_sock, _)) = inside.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let push = Dispatcher::new(
        VapidKey::generate().unwrap(),
        VapidSubject::new("mailto:ops@example.com").unwrap(),
        Duration::from_secs(60),
    );
    let (base, _) = common::serve(webpush_example::router(push, EndpointPolicy::new())).await;
    let http = reqwest::Client::new();
    for endpoint in [
        format!("http://127.0.0.1:{port}/push"),
        format!("https://127.0.0.1:{port}/push"),
        "https://localhost/push".to_owned(),
        "https://push.localhost/push".to_owned(),
        "https://[::1]/push".to_owned(),
        "https://[::ffff:127.0.0.1]/push".to_owned(),
        "https://2130706433/push".to_owned(),
        "https://0x7f.1/push".to_owned(),
        "https://10.0.0.1/push".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://intranet/push".to_owned(),
        "https://user:secret@push.example.com/push".to_owned(),
        "ftp://push.example.com/push".to_owned(),
    ] {
        let sub = json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                "auth": "BTBZMqHH6r4Tts7J_aSIgg"
            }
        });
        let res = http
            .post(format!("{base}/subscribe"))
            .body(sub.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{endpoint}");
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("127.0.0.1") && !body.contains(&endpoint),
            "{endpoint}: {body}"
        );
    }
    // Nothing was stored, so a notification goes nowhere.
    let res = http
        .post(format!("{base}/notify"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("title=t&body=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(contacted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The admin routes taken apart and put behind the application's own
/// layer: the layer decides (401 without its key), the stream route stays
/// open, and nothing gets through the layer's refusal.
#[tokio::test]
async fn the_admin_router_behind_the_applications_own_layer() {
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    async fn admins_only(
        req: axum::extract::Request,
        next: Next,
    ) -> Result<axum::response::Response, StatusCode> {
        if req.headers().get("x-admin-key").is_some_and(|k| k == "k") {
            Ok(next.run(req).await)
        } else {
            Err(StatusCode::UNAUTHORIZED)
        }
    }
    let manager = BroadcastManager::new();
    let routes = BroadcastRoutes::new(manager.clone())
        .publish(Access::Anyone)
        .read(Access::Anyone);
    let app = Router::new().merge(routes.stream_router()).merge(
        routes
            .admin_router()
            .route_layer(middleware::from_fn(admins_only)),
    );
    let (base, _) = common::serve(app).await;
    let (mut page, _) = common::open_connection(&format!("{base}/sse"), None).await;
    let http = reqwest::Client::new();
    let publish = |key: Option<&'static str>| {
        let mut req = http
            .post(format!("{base}/sse/broadcast"))
            .json(&json!({"type": "note", "data": "from an admin"}));
        if let Some(k) = key {
            req = req.header("x-admin-key", k);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(publish(None).await, 401);
    assert_eq!(publish(Some("wrong")).await, 401);
    assert_eq!(manager.last_id().seq(), 0);
    assert_eq!(publish(Some("k")).await, 200);
    assert_eq!(
        page.next_event_within(WAIT).await.unwrap().data,
        "from an admin"
    );
    let status = http.get(format!("{base}/sse/status")).send().await.unwrap();
    assert_eq!(status.status(), 401);
}

/// A configured resume key: a page of one manager comes back to another
/// with the same key (another process after a restart, instances behind a
/// load balancer) and keeps its connection id; with another key it gets a
/// fresh one. Either way a new process is a new epoch: the reset event.
#[tokio::test]
async fn a_configured_resume_key_is_shared_by_processes_that_set_it() {
    let key = b"a resume key of 32 bytes or more!!";
    let serve = |k: &'static [u8]| async move {
        let m = BroadcastManager::builder().resume_key(k).build();
        common::serve(setup_broadcast_routes(Router::new(), m, "/sse"))
            .await
            .0
    };
    let first = serve(key).await;
    let (page, id) = common::open_connection(&format!("{first}/sse"), None).await;
    let last = page.last_event_id().to_owned();
    for (k, keeps) in [
        (&key[..], true),
        (&b"another key, also of 32 bytes!!!!"[..], false),
    ] {
        let other = serve(k).await;
        let mut back = TestClient::get(format!("{other}/sse"))
            .last_event_id(&last)
            .connect()
            .await
            .unwrap();
        let hello = back.next_event_within(WAIT).await.unwrap();
        assert_eq!(hello.data.contains(id.as_str()), keeps, "{hello:?}");
        let reset = back.next_event_within(WAIT).await.unwrap();
        assert_eq!(reset.event, "reset");
    }
}

#[test]
#[should_panic(expected = "resume key must be at least 32 bytes")]
fn a_short_resume_key_is_a_configuration_error() {
    let _ = BroadcastManager::builder().resume_key(b"too short");
}

/// A resume id in the query or the cookie can be any UTF-8 (the header is
/// ASCII only): a proof with a two-byte character where a masked proof is
/// split, or anywhere else, is refused like any wrong proof (a fresh id and
/// the reset event), never a panic.
#[tokio::test]
async fn a_non_ascii_proof_in_the_query_is_a_wrong_proof_not_a_panic() {
    let manager = BroadcastManager::new();
    let base = sse_routes(&manager).await;
    let first = manager.broadcast("n", "one", None, &[]).await.unwrap();
    manager.broadcast("n", "two", None, &[]).await.unwrap();
    for proof in [
        format!("{}%C3%A9{}", "a".repeat(23), "a".repeat(23)),
        format!("{}%C3%A9{}", "a".repeat(11), "a".repeat(11)),
        "%F0%9F%98%80".repeat(12),
    ] {
        let url = format!("{base}/sse?lastEventId={}.victim.{proof}", first.id);
        let mut c = TestClient::get(url).connect().await.unwrap();
        let hello = c.next_event_within(WAIT).await.unwrap();
        assert_eq!(hello.event, "connection", "{proof}");
        assert!(
            !hello.data.contains("value=\"victim\""),
            "{proof}: {}",
            hello.data
        );
        // A wrong proof: the id is not taken back, and the page is told.
        let next = c.next_event_within(WAIT).await.unwrap();
        assert_eq!(next.event, "reset", "{proof}");
    }
    // And the server still serves: a page that comes back from a point
    // gets what followed it.
    let mut c = TestClient::get(format!("{base}/sse?lastEventId={}", first.id))
        .connect()
        .await
        .unwrap();
    assert_eq!(c.next_event_within(WAIT).await.unwrap().event, "connection");
    let next = c.next_event_within(WAIT).await.unwrap();
    assert_eq!((next.event.as_str(), next.data.as_str()), ("n", "two"));
}
