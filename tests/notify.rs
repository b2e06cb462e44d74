//! `Notifier` over real HTTP on 127.0.0.1: channels that come and go with
//! their listeners, `"all"`, counts, escaped toasts.
#![cfg(all(feature = "testing", feature = "askama"))]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use htmx_sse::notify::{Level, Notifier};
use htmx_sse::testing::TestClient;

const WAIT: Duration = Duration::from_secs(5);

async fn listen(base: &str, channel: &str) -> TestClient {
    let mut c = TestClient::get(format!("{base}/notifications/{channel}"))
        .connect()
        .await
        .unwrap();
    assert_eq!(c.next_event_within(WAIT).await.unwrap().event, "connection");
    c
}

async fn wait_for(notifier: &Notifier, clients: usize) {
    let t0 = Instant::now();
    while notifier.client_count(None) != clients {
        assert!(t0.elapsed() < WAIT, "expected {clients} listeners");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn channels_live_as_long_as_their_listeners() {
    let notifier = Notifier::new();
    let (base, _) = common::serve(
        notifier
            .routes()
            .listen(htmx_sse::auth::Access::Anyone)
            .install(Router::new()),
    )
    .await;
    assert!(notifier.active_channels().is_empty());
    assert_eq!(
        notifier
            .send("admin", "nobody hears this", Level::Info)
            .await
            .unwrap(),
        0
    );
    assert!(
        notifier.manager().history(None).is_empty(),
        "a no-op keeps nothing"
    );

    let mut admin1 = listen(&base, "admin").await;
    let mut admin2 = listen(&base, "admin").await;
    let mut users = listen(&base, "users").await;
    assert_eq!(notifier.active_channels(), ["admin", "users"]);
    assert_eq!(notifier.client_count(None), 3);
    assert_eq!(notifier.client_count(Some("admin")), 2);
    assert_eq!(notifier.client_count(Some("nobody")), 0);

    assert_eq!(
        notifier
            .send("admin", "deploy done", Level::Success)
            .await
            .unwrap(),
        2
    );
    for c in [&mut admin1, &mut admin2] {
        let ev = c.next_event_within(WAIT).await.unwrap();
        // Unnamed, so htmx 2 (sse-swap="message") and htmx 4 both swap it.
        assert_eq!(ev.event, "message");
        assert_eq!(
            ev.data,
            "<div class=\"alert alert-success\" role=\"status\" data-level=\"success\"><strong>Success:</strong> <span>deploy done</span></div>"
        );
    }
    assert_eq!(
        notifier
            .send("all", "maintenance <soon>", Level::Warning)
            .await
            .unwrap(),
        3
    );
    assert_eq!(notifier.send_all("twice", Level::Error).await.unwrap(), 3);
    for c in [&mut admin1, &mut admin2, &mut users] {
        let ev = c.next_event_within(WAIT).await.unwrap();
        assert!(
            ev.data.contains("maintenance &#60;soon&#62;"),
            "{}",
            ev.data
        );
        assert!(ev.data.contains("role=\"alert\""));
        assert!(
            c.next_event_within(WAIT)
                .await
                .unwrap()
                .data
                .contains("twice")
        );
    }
    // The admin toast never reached the users channel.
    assert_eq!(
        notifier.send("users", "marker", Level::Info).await.unwrap(),
        1
    );
    assert!(
        users
            .next_event_within(WAIT)
            .await
            .unwrap()
            .data
            .contains("marker")
    );

    drop(users);
    wait_for(&notifier, 2).await;
    assert_eq!(notifier.active_channels(), ["admin"]);
    assert_eq!(
        notifier.send("users", "gone", Level::Info).await.unwrap(),
        0
    );
    drop((admin1, admin2));
    wait_for(&notifier, 0).await;
    assert!(notifier.active_channels().is_empty());
}

#[tokio::test]
async fn custom_path_and_bad_channels() {
    let notifier = Notifier::new();
    let app = notifier
        .routes()
        .path("/sse/{channel}")
        .listen(htmx_sse::auth::Access::Anyone)
        .install(Router::new());
    let (base, _) = common::serve(app).await;
    let mut c = TestClient::get(format!("{base}/sse/ops"))
        .connect()
        .await
        .unwrap();
    c.next_event_within(WAIT).await.unwrap();
    assert_eq!(notifier.send("ops", "hi", Level::Info).await.unwrap(), 1);
    assert!(c.next_event_within(WAIT).await.unwrap().data.contains("hi"));
    match TestClient::get(format!("{base}/sse/a%20b")).connect().await {
        Err(htmx_sse::testing::ClientError::NotAnEventStream {
            status: 400, body, ..
        }) => {
            assert!(body.contains("white space"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert!(notifier.send("a b", "x", Level::Info).await.is_err());
}
