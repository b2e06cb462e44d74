//! The README's quick start, as a user copies it: the README's code block
//! is `examples/quickstart.rs` (checked here, so the two cannot drift), and
//! its app, served on 127.0.0.1, refuses an anonymous publish.
#![cfg(feature = "maud")]

mod common;

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

use htmx_sse::BroadcastManager;

/// The example file without its `//!` header, which the README leaves out.
fn example_body() -> String {
    let file = include_str!("../examples/quickstart.rs");
    file.lines()
        .skip_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_quick_start_is_the_example() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Quick start")
        .expect("README has a Quick start section");
    let block = readme[start..]
        .split("```rust")
        .nth(1)
        .and_then(|b| b.split_once('\n'))
        .and_then(|(_, b)| b.split("```").next())
        .expect("a rust code block in the quick start");
    assert_eq!(
        block.trim_end(),
        example_body().trim_end(),
        "README's quick start and examples/quickstart.rs differ"
    );
}

#[tokio::test]
async fn the_quick_start_refuses_anonymous_publishing() {
    let manager = BroadcastManager::new();
    let (base, _) = common::serve(quickstart::app(manager.clone())).await;
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "/sse/broadcast",
            serde_json::json!({"type": "tick", "data": "<script>x</script>"}),
        ),
        (
            "/sse/broadcast",
            serde_json::json!({"type": "close", "data": ""}),
        ),
        (
            "/sse/send/anyone",
            serde_json::json!({"type": "tick", "data": "x"}),
        ),
    ] {
        let res = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert_eq!(err["error"], "credentials required");
    }
    for path in ["/sse/status", "/sse/history"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
    }
    assert_eq!(manager.last_id().seq(), 0, "nothing was published");
    // The page and its stream work.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert!(page.text().await.unwrap().contains(r#"sse-connect="/sse""#));
    #[cfg(feature = "testing")]
    {
        let (mut c, _) = common::open_connection(&format!("{base}/sse"), None).await;
        manager
            .broadcast("tick", "Ticks since start: <strong>1</strong>", None, &[])
            .await
            .unwrap();
        let ev = c
            .next_event_within(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ev.event, "tick");
    }
}
