//! `htmx_sse::metrics` scraped after a scripted run over real HTTP on
//! 127.0.0.1: every count is the exact number the script produced (five
//! connections, one gone, one exact resume and two resets, four publishes
//! of two types and one failure, eight deliveries, every byte the clients
//! read).
#![cfg(all(feature = "testing", feature = "metrics"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use htmx_sse::auth::{AuthFuture, Authorizer, Subject, bearer};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::{ConnectionId, UserId};
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use prometheus_client::registry::Registry;

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

async fn client(base: &str, user: &str, last_event_id: Option<&str>) -> TestClient {
    let mut b =
        TestClient::get(format!("{base}/sse")).header("authorization", &format!("Bearer {user}"));
    if let Some(id) = last_event_id {
        b = b.last_event_id(id);
    }
    b.connect().await.unwrap()
}

/// The scrape, as text.
async fn scrape(base: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `line` starts (name and labels), or a failure
/// that shows the scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_scrape_after_a_scripted_run_has_the_exact_counts() {
    let manager = BroadcastManager::new();
    let mut registry = Registry::default();
    htmx_sse::metrics::register(&mut registry, &manager);
    let registry = Arc::new(registry);
    let app = BroadcastRoutes::new(manager.clone())
        .authorizer(Named)
        .install(Router::new())
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move { htmx_sse::metrics::text(&registry) }
            }),
        );
    let (base, _server) = common::serve(app).await;

    // Two pages; four messages of two types reach both; one publish fails.
    let mut a = client(&base, "alice", None).await;
    let mut b = client(&base, "bob", None).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.next_event().await.unwrap().event, "connection");
    }
    for n in 0..3 {
        manager
            .message("note", format!("n{n}"))
            .send()
            .await
            .unwrap();
    }
    manager.message("toast", "t").send().await.unwrap();
    for c in [&mut a, &mut b] {
        for want in ["note", "note", "note", "toast"] {
            assert_eq!(c.next_event().await.unwrap().event, want);
        }
    }
    let nobody = ConnectionId::new("nobody").unwrap();
    assert!(manager.send_to(&nobody, "note", "x", None).await.is_err());

    // A goes away; alice comes back with A's last id (an exact resume); a
    // page with an id from nowhere, and one from another epoch (a restart),
    // get the reset.
    let a_last = a.last_event_id().to_owned();
    let a_bytes = a.raw().len();
    a.close();
    let mut c = client(&base, "alice", Some(&a_last)).await;
    assert_eq!(c.next_event().await.unwrap().event, "connection");
    let mut d = client(&base, "carol", Some("not-an-id")).await;
    let mut e = client(&base, "dave", Some("00000000-1.forged.proof")).await;
    for page in [&mut d, &mut e] {
        let mut events = Vec::new();
        while events.last().map(String::as_str) != Some("reset") {
            events.push(page.next_event().await.unwrap().event);
        }
    }

    // A's end is seen when the server notices the socket closed.
    let mut text = scrape(&base).await;
    for _ in 0..100 {
        if sample(&text, r#"htmx_sse_disconnects_total{reason="client_gone"}"#) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(&base).await;
    }
    let expect = |series: &str, want: f64| {
        assert_eq!(sample(&text, series), want, "{series} in:\n{text}");
    };
    expect("htmx_sse_connects_total", 5.0);
    expect(r#"htmx_sse_disconnects_total{reason="client_gone"}"#, 1.0);
    expect(r#"htmx_sse_disconnects_total{reason="lagged"}"#, 0.0);
    expect(r#"htmx_sse_resumes_total{result="exact"}"#, 1.0);
    expect(r#"htmx_sse_resumes_total{result="unrecognized"}"#, 1.0);
    expect(r#"htmx_sse_resumes_total{result="restarted"}"#, 1.0);
    expect(r#"htmx_sse_resumes_total{result="history-gap"}"#, 0.0);
    expect(r#"htmx_sse_published_total{type="note"}"#, 3.0);
    expect(r#"htmx_sse_published_total{type="toast"}"#, 1.0);
    expect("htmx_sse_publish_failures_total", 1.0);
    expect("htmx_sse_publish_duration_seconds_count", 4.0);
    expect("htmx_sse_deliveries_total", 8.0);
    expect(
        r#"htmx_sse_connections{kind="broadcast",state="connected"}"#,
        4.0,
    );
    expect("htmx_sse_history_messages", 4.0);
    expect(r#"htmx_sse_backend_up{backend="memory"}"#, 1.0);
    // Every byte written is a byte a client read.
    let read = a_bytes + b.raw().len() + c.raw().len() + d.raw().len() + e.raw().len();
    #[allow(clippy::cast_precision_loss)]
    let read = read as f64;
    expect("htmx_sse_written_bytes_total", read);
    assert!(sample(&text, "htmx_sse_history_bytes") > 0.0);
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn nothing_is_counted_for_a_manager_not_registered() {
    let registered = BroadcastManager::new();
    let other = BroadcastManager::new();
    let mut registry = Registry::default();
    htmx_sse::metrics::register(&mut registry, &registered);
    other.message("note", "x").send().await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains(r#"type="note""#), "{text}");
    // Once the manager is dropped, its metrics go quiet rather than lie.
    drop(registered);
    let mut after = String::new();
    prometheus_client::encoding::text::encode(&mut after, &registry).unwrap();
    assert!(!after.contains("htmx_sse_connects_total"), "{after}");
}

/// Every metric the Grafana dashboard (`dashboards/htmx-sse.json`) queries
/// is one the crate exports: renaming a metric without the dashboard fails
/// here.
#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_crate_exports() {
    let manager = BroadcastManager::new();
    let mut registry = Registry::default();
    htmx_sse::metrics::register(&mut registry, &manager);
    manager.message("note", "x").send().await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/htmx-sse.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("htmx_sse_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push((panel["title"].as_str().unwrap().to_owned(), name));
            }
        }
    }
    assert!(queried.len() >= 12, "{queried:?}");
    for (panel, name) in &queried {
        assert!(
            exported.contains(name.as_str()),
            "panel {panel:?} queries {name}, which the crate does not export:\n{text}"
        );
    }
}
