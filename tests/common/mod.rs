//! Shared helpers for the integration tests: a real server on 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

#[cfg(all(feature = "testing", feature = "redis", feature = "nats"))]
pub mod engine;
pub mod example;
pub mod keys;
pub mod nats;
pub mod proxy;
pub mod redis;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The broadcast routes of `manager` under `prefix`, with publishing and
/// reading opened to anyone, and string data taken as HTML: these tests
/// publish HTML over HTTP from 127.0.0.1 on purpose (the closed, escaping
/// defaults have their own tests in `tests/hostile.rs`).
pub fn open_routes(router: Router, manager: htmx_sse::BroadcastManager, prefix: &str) -> Router {
    htmx_sse::routes::BroadcastRoutes::new(manager)
        .prefix(prefix)
        .publish(htmx_sse::auth::Access::Anyone)
        .read(htmx_sse::auth::Access::Anyone)
        .trust_publisher_html()
        .install(router)
}

/// Serves `app` on a free port of 127.0.0.1; returns its base URL.
pub async fn serve(app: Router) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Serves `app` with graceful shutdown on `signal`; the task ends when the
/// server has shut down.
pub async fn serve_with_shutdown<F>(app: Router, signal: F) -> (String, JoinHandle<()>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
            .unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Opens an SSE connection to a broadcast stream at `url` (resuming from
/// `last_event_id` when given) and reads its first event, the
/// `connection` event; returns the client and its connection id.
#[cfg(feature = "testing")]
pub async fn open_connection(
    url: &str,
    last_event_id: Option<&str>,
) -> (
    htmx_sse::testing::TestClient,
    htmx_sse::connections::ConnectionId,
) {
    let mut b = htmx_sse::testing::TestClient::get(url);
    if let Some(id) = last_event_id {
        b = b.last_event_id(id);
    }
    let mut c = b.connect().await.unwrap();
    let ev = c
        .next_event_within(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ev.event, "connection", "{ev:?}");
    let id = ev
        .data
        .split("value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        ev.data,
        format!("<input type=\"hidden\" name=\"connection_id\" value=\"{id}\">")
    );
    // `EPOCH-SEQ.ID.PROOF`: the opening event's proof is masked, 48 hex
    // digits (a fresh mask; the messages carry the plain 24).
    let (_, tag) = ev.last_event_id.split_once('.').unwrap();
    let (tag_id, proof) = tag.split_once('.').unwrap();
    assert_eq!(tag_id, id, "{}", ev.last_event_id);
    assert!(
        proof.len() == 48 && proof.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        ev.last_event_id
    );
    (c, htmx_sse::connections::ConnectionId::new(&id).unwrap())
}

#[cfg(feature = "testing")]
/// One server instance: its own manager, its own HTTP port, the
/// broadcast routes open under `/sse`.
pub struct Instance {
    pub base: String,
    pub manager: htmx_sse::BroadcastManager,
    pub task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "testing")]
impl Instance {
    /// Serves `manager`'s open routes on a free port.
    pub async fn serve(manager: htmx_sse::BroadcastManager) -> Self {
        let app = open_routes(Router::new(), manager.clone(), "/sse");
        let (base, task) = serve(app).await;
        Instance {
            base,
            manager,
            task,
        }
    }

    /// Opens a page's stream (resuming from `last_event_id`).
    pub async fn open(
        &self,
        last_event_id: Option<&str>,
    ) -> (
        htmx_sse::testing::TestClient,
        htmx_sse::connections::ConnectionId,
    ) {
        open_connection(&format!("{}/sse", self.base), last_event_id).await
    }

    /// POSTs `body` as JSON to `path`; the status and the JSON answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

/// How long the helpers below wait for what they wait for.
#[cfg(feature = "testing")]
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Cuts `proxy`, and waits until `manager`, behind it, says it lost its
/// engine.
#[cfg(feature = "testing")]
pub async fn cut_off(proxy: &proxy::Proxy, manager: &htmx_sse::BroadcastManager) {
    proxy.cut();
    let deadline = std::time::Instant::now() + HELPER_WAIT;
    while manager.backend_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "still says it reads its engine"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `send_to` from `b` finds the connection `id` within 10 s (retrying
/// while it is unknown), and the page gets the message; panics with the
/// last error when it never does.
#[cfg(feature = "testing")]
pub async fn reaches(
    b: &Instance,
    id: &htmx_sse::connections::ConnectionId,
    page: &mut htmx_sse::testing::TestClient,
    what: &str,
) {
    use htmx_sse::testing::SseItem;
    let deadline = std::time::Instant::now() + HELPER_WAIT;
    loop {
        match b.manager.send_to(id, "dm", what, None).await {
            Ok(_) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{what}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    loop {
        match page.next_item_within(HELPER_WAIT).await.unwrap() {
            SseItem::Comment(_) => {}
            SseItem::Event(ev) => {
                assert_eq!(ev.data, what);
                break;
            }
        }
    }
}

/// A runtime of its own for an instance that a test crashes: shutting it
/// down ([`crash`](Self::crash)) ends every task on it at once, with no
/// clean-up.
pub struct Crashable(tokio::runtime::Runtime);

impl Crashable {
    pub fn start() -> Self {
        Crashable(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    /// Runs `f` (which starts the instance) on this runtime; its answer.
    pub async fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.0.spawn(f).await.unwrap()
    }

    /// Every task of the instance ends, at once.
    pub fn crash(self) {
        self.0.shutdown_background();
    }
}
