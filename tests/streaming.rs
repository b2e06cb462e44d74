//! `SseStream` over real HTTP on 127.0.0.1: frames as they are produced,
//! headers, heartbeats, close, stop, producer cancellation, shutdown.
#![cfg(feature = "testing")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, extract::State, routing::get, routing::post};
use htmx_sse::streaming::{Shutdown, SseStream, StopHandle, StreamConfig};
use htmx_sse::testing::{ClientError, SseItem, TestClient};
use htmx_sse::{Event, Fragment};
use parking_lot::Mutex;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn frames_arrive_one_by_one_as_produced() {
    // The producer makes frame k+1 only after the client has read frame k:
    // if anything buffered the response, the test would time out.
    let (ack_tx, ack_rx) = mpsc::channel::<()>(1);
    let ack_rx = Arc::new(tokio::sync::Mutex::new(Some(ack_rx)));
    let app = Router::new().route(
        "/events",
        get(move || {
            let ack_rx = ack_rx.clone();
            async move {
                let mut acks = ack_rx.lock().await.take().unwrap();
                SseStream::spawn(1, move |tx| async move {
                    for n in 0..5 {
                        let html = Fragment::trusted(format!("<li>{n}</li>"));
                        tx.send(Event::from(html)).await.unwrap();
                        if acks.recv().await.is_none() {
                            return;
                        }
                    }
                })
                .config(StreamConfig::new().initial_message(None))
            }
        }),
    );
    let (base, _server) = common::serve(app).await;
    let mut sse = TestClient::get(format!("{base}/events"))
        .connect()
        .await
        .unwrap();
    for n in 0..5 {
        let ev = sse.next_event_within(Duration::from_secs(2)).await.unwrap();
        assert_eq!(ev.event, "message");
        assert_eq!(ev.data, format!("<li>{n}</li>"));
        ack_tx.send(()).await.unwrap();
    }
    let close = sse.next_event_within(WAIT).await.unwrap();
    assert_eq!(
        (close.event.as_str(), close.data.as_str()),
        ("close", "connection closed")
    );
    assert!(matches!(
        sse.next_item_within(WAIT).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn headers_are_sent_at_once() {
    // No initial message and a source that never yields: the headers must
    // still reach the client right away.
    let app = Router::new().route(
        "/idle",
        get(|| async {
            SseStream::new(tokio_stream::pending::<Event>())
                .config(StreamConfig::new().initial_message(None).no_heartbeat())
        }),
    );
    let (base, _server) = common::serve(app).await;
    let t0 = Instant::now();
    let sse = TestClient::get(format!("{base}/idle"))
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    let h = sse.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
}

#[tokio::test]
async fn heartbeats_on_an_idle_stream_and_items_between_them() {
    let (tx, rx) = mpsc::channel::<Event>(8);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new().route(
        "/hb",
        get(move || {
            let rx = rx.lock().take().unwrap();
            async move {
                SseStream::new(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .config(StreamConfig::new().heartbeat(Duration::from_millis(100)))
            }
        }),
    );
    let (base, _server) = common::serve(app).await;
    let mut sse = TestClient::get(format!("{base}/hb"))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        sse.next_item_within(WAIT).await.unwrap(),
        SseItem::Comment(" connected".into())
    );
    for _ in 0..3 {
        let t0 = Instant::now();
        assert_eq!(
            sse.next_item_within(Duration::from_secs(1)).await.unwrap(),
            SseItem::Comment(String::new())
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }
    // Items sent between heartbeats all arrive, in order, none lost.
    for n in 0..20 {
        tx.send(Event::message(format!("m{n}"))).await.unwrap();
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(130)).await;
        }
    }
    let mut got = Vec::new();
    let mut beats = 0;
    while got.len() < 20 {
        match sse.next_item_within(WAIT).await.unwrap() {
            SseItem::Event(e) => got.push(e.data),
            SseItem::Comment(_) => beats += 1,
        }
    }
    let want: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    assert_eq!(got, want);
    assert!(beats >= 1, "expected heartbeats while the items paused");
}

#[tokio::test]
async fn stop_handle_ends_the_stream_with_the_close_event() {
    let handles: Arc<Mutex<Vec<StopHandle>>> = Arc::default();
    let app = Router::new()
        .route(
            "/events",
            get(|State(h): State<Arc<Mutex<Vec<StopHandle>>>>| async move {
                let s = SseStream::new(tokio_stream::pending::<Event>());
                h.lock().push(s.stop_handle());
                s
            }),
        )
        .route(
            "/stop",
            post(|State(h): State<Arc<Mutex<Vec<StopHandle>>>>| async move {
                for s in h.lock().iter() {
                    s.stop();
                }
            }),
        )
        .with_state(handles);
    let (base, _server) = common::serve(app).await;
    let mut sse = TestClient::get(format!("{base}/events"))
        .connect()
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!("{base}/stop"))
        .send()
        .await
        .unwrap();
    let evs = sse.collect_until_closed(WAIT).await.unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event, "close");
}

#[tokio::test]
async fn timeout_really_ends_the_stream() {
    let app = Router::new().route(
        "/short",
        get(|| async {
            SseStream::new(tokio_stream::pending::<Event>())
                .config(StreamConfig::new().timeout(Duration::from_millis(300)))
        }),
    );
    let (base, _server) = common::serve(app).await;
    let t0 = Instant::now();
    let mut sse = TestClient::get(format!("{base}/short"))
        .connect()
        .await
        .unwrap();
    let evs = sse.collect_until_closed(WAIT).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(evs.last().unwrap().event, "close");
}

/// Sets a flag when dropped: stands for the producer's resources.
struct Alive(Arc<AtomicBool>);
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

async fn producer_is_cancelled_on_disconnect(heartbeat: Option<Duration>) {
    let alive = Arc::new(AtomicBool::new(false));
    let flag = alive.clone();
    let app = Router::new().route(
        "/work",
        get(move || {
            let flag = flag.clone();
            async move {
                let config = match heartbeat {
                    Some(every) => StreamConfig::new().heartbeat(every),
                    None => StreamConfig::new().no_heartbeat(),
                };
                SseStream::spawn(4, move |tx| async move {
                    flag.store(true, Ordering::SeqCst);
                    let _alive = Alive(flag);
                    let mut n = 0u64;
                    loop {
                        // A producer that does not check `send` errors often:
                        // it only stops because it is aborted.
                        let _ = tx.send(Event::message(format!("tick {n}"))).await;
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .config(config)
            }
        }),
    );
    let (base, _server) = common::serve(app).await;
    let mut sse = TestClient::get(format!("{base}/work"))
        .connect()
        .await
        .unwrap();
    assert_eq!(sse.next_event_within(WAIT).await.unwrap().data, "tick 0");
    assert!(alive.load(Ordering::SeqCst));
    sse.close();
    let t0 = Instant::now();
    while alive.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "producer still running a second after the client left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn producer_is_cancelled_within_a_second_of_disconnect() {
    producer_is_cancelled_on_disconnect(Some(Duration::from_secs(15))).await;
}

#[tokio::test]
async fn producer_is_cancelled_on_disconnect_without_heartbeats() {
    producer_is_cancelled_on_disconnect(None).await;
}

#[tokio::test]
async fn idle_stream_notices_disconnect_without_writing() {
    // No producer traffic, no heartbeat within the test: the body must still
    // be dropped when the client leaves (hyper sees the socket close).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/idle",
        get(move || {
            let tx = tx.clone();
            async move {
                SseStream::new(tokio_stream::pending::<Event>())
                    .on_end(move |reason| {
                        let _ = tx.send(reason);
                    })
                    .config(StreamConfig::new().heartbeat(Duration::from_secs(60)))
            }
        }),
    );
    let (base, _server) = common::serve(app).await;
    let mut sse = TestClient::get(format!("{base}/idle"))
        .connect()
        .await
        .unwrap();
    sse.next_item_within(WAIT).await.unwrap();
    sse.close();
    let reason = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("stream not dropped within a second of the client leaving")
        .unwrap();
    assert_eq!(reason, htmx_sse::streaming::EndReason::ClientGone);
}

#[tokio::test]
async fn graceful_shutdown_returns_promptly_with_open_streams() {
    let shutdown = Shutdown::new();
    let config = StreamConfig::new().shutdown(&shutdown);
    let app = Router::new().route(
        "/events",
        get(move || {
            let config = config.clone();
            async move { SseStream::new(tokio_stream::pending::<Event>()).config(config) }
        }),
    );
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (base, server) = common::serve_with_shutdown(
        app,
        shutdown.clone().after(async move {
            let _ = go_rx.await;
        }),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut sse = TestClient::get(format!("{base}/events"))
            .connect()
            .await
            .unwrap();
        sse.next_item_within(WAIT).await.unwrap();
        clients.push(sse);
    }
    let t0 = Instant::now();
    go_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("server still running 2 s after shutdown with streams open")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    for mut sse in clients {
        // The stream ends cleanly and without the close event, so a browser
        // reconnects to the next server process.
        let evs = sse.collect_until_closed(WAIT).await.unwrap();
        assert!(evs.is_empty(), "{evs:?}");
    }
}

#[tokio::test]
async fn bad_answers_are_reported_by_the_test_client() {
    let app = Router::new().route("/html", get(|| async { "<p>not sse</p>" }));
    let (base, _server) = common::serve(app).await;
    match TestClient::get(format!("{base}/html")).connect().await {
        Err(ClientError::NotAnEventStream {
            status,
            content_type,
            body,
        }) => {
            assert_eq!(status, 200);
            assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
            assert_eq!(body, "<p>not sse</p>");
        }
        other => panic!("expected NotAnEventStream, got {other:?}"),
    }
    match TestClient::get(format!("{base}/missing")).connect().await {
        Err(ClientError::NotAnEventStream { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn without_the_shutdown_signal_graceful_shutdown_waits_for_streams() {
    // The control for the test above: the hang is real, and `Shutdown` is
    // what ends it.
    let app = Router::new().route(
        "/events",
        get(|| async { SseStream::new(tokio_stream::pending::<Event>()) }),
    );
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (base, mut server) = common::serve_with_shutdown(app, async move {
        let _ = go_rx.await;
    })
    .await;
    let mut sse = TestClient::get(format!("{base}/events"))
        .connect()
        .await
        .unwrap();
    sse.next_item_within(WAIT).await.unwrap();
    go_tx.send(()).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut server)
            .await
            .is_err(),
        "graceful shutdown returned although a stream was open"
    );
    sse.close();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}

/// An `SseStream` ended by a shutdown tells its page when to come back
/// when `retry_on_shutdown` is set, and adds nothing otherwise.
#[tokio::test]
async fn an_sse_stream_ended_by_shutdown_carries_the_retry_delay() {
    use htmx_sse::streaming::{Shutdown, SseStream, StreamConfig};
    for window in [Some(Duration::from_millis(700)), None] {
        let shutdown = Shutdown::new();
        let mut config = StreamConfig::new()
            .shutdown(&shutdown)
            .initial_message(None);
        if let Some(w) = window {
            config = config.retry_on_shutdown(w);
        }
        let app = axum::Router::new().route(
            "/s",
            axum::routing::get(move || {
                let config = config.clone();
                async move {
                    SseStream::new(futures_util::stream::pending::<htmx_sse::Event>())
                        .config(config)
                }
            }),
        );
        let (base, _) = common::serve(app).await;
        let mut c = htmx_sse::testing::TestClient::get(format!("{base}/s"))
            .connect()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.trigger();
        let evs = c
            .collect_until_closed(Duration::from_secs(5))
            .await
            .unwrap();
        match window {
            Some(_) => {
                assert_eq!(evs.len(), 1, "{evs:?}");
                assert_eq!(evs[0].event, "htmx-sse-retry");
                assert!(c.retry().is_some_and(|d| d <= 700), "{:?}", c.retry());
            }
            None => {
                assert!(evs.is_empty(), "{evs:?}");
                assert_eq!(c.retry(), None);
            }
        }
    }
}

/// HTTP/2 forbids connection-specific headers (RFC 9113, section 8.2.2):
/// the stream responses the crate builds (`SseStream` and a manager's
/// stream, both made by one function) carry none, so they are the same
/// over HTTP/1.1 and HTTP/2. Read from the router itself, before hyper,
/// whose HTTP/2 server would drop such headers with a warning per stream.
#[tokio::test]
async fn stream_responses_carry_no_connection_specific_headers() {
    use axum::body::Body;
    use axum::http::Request;
    use hyper::service::Service as _;

    let manager = htmx_sse::BroadcastManager::new();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { SseStream::new(tokio_stream::pending::<Event>()) }),
        )
        .merge(htmx_sse::routes(manager));
    let service = hyper_util::service::TowerToHyperService::new(app);
    for path in ["/stream", "/sse"] {
        let res = service
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "text/event-stream", "{path}");
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            assert!(
                !res.headers().contains_key(name),
                "{path} sends {name}: {:?}",
                res.headers()
            );
        }
    }
}
