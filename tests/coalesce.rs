//! `StreamConfig::coalesce_by_event` over real HTTP on 127.0.0.1: a reader
//! that falls behind gets the newest value of every event name, and every
//! unnamed frame, in order.
#![cfg(feature = "testing")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::{Router, routing::get};
use htmx_sse::Event;
use htmx_sse::streaming::{SseStream, StreamConfig};
use htmx_sse::testing::{ReceivedEvent, TestClient};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

fn update(name: &str, value: u64, pad: usize) -> Event {
    Event::builder()
        .event(name.to_owned())
        .data(format!("{value} {}", "x".repeat(pad)))
        .build()
        .unwrap()
}

/// Serves the receiving end of a channel at `/dash`, once.
async fn serve(rx: mpsc::Receiver<Event>, coalesce: bool) -> String {
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new().route(
        "/dash",
        get(move || {
            let rx = rx.lock().take().expect("one connection");
            async move {
                SseStream::new(ReceiverStream::new(rx)).config(
                    StreamConfig::new()
                        .initial_message(None)
                        .no_heartbeat()
                        .coalesce_by_event(coalesce),
                )
            }
        }),
    );
    common::serve(app).await.0
}

fn short(events: &[ReceivedEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect()
}

fn pair(event: &str, data: &str) -> (String, String) {
    (event.to_owned(), data.to_owned())
}

/// Everything below is queued while the server task cannot run (one
/// thread, no await between the sends): the reader is that far behind when
/// the stream next runs.
#[tokio::test(flavor = "current_thread")]
async fn a_reader_behind_gets_the_newest_value_per_event_name() {
    for coalesce in [true, false] {
        let (tx, rx) = mpsc::channel(16);
        let base = serve(rx, coalesce).await;
        let mut sse = TestClient::get(format!("{base}/dash"))
            .connect()
            .await
            .unwrap();
        for ev in [
            update("cpu", 1, 0),
            update("mem", 1, 0),
            Event::message("log a"),
            update("cpu", 2, 0),
            Event::message("log b"),
            update("mem", 2, 0),
            update("cpu", 3, 0),
        ] {
            tx.try_send(ev).unwrap();
        }
        drop(tx);
        let got = short(&sse.collect_until_closed(WAIT).await.unwrap());
        let close = pair("close", "connection closed");
        if coalesce {
            assert_eq!(
                got,
                [
                    pair("message", "log a"),
                    pair("message", "log b"),
                    pair("mem", "2 "),
                    pair("cpu", "3 "),
                    close,
                ]
            );
        } else {
            assert_eq!(got.len(), 8, "{got:?}");
            assert_eq!(got[0], pair("cpu", "1 "));
            assert_eq!(got[6], pair("cpu", "3 "));
        }
    }
}

/// A producer far faster than a reader that sleeps between events, with
/// frames big enough to fill the socket buffers: the connection is under
/// real backpressure.
#[tokio::test]
async fn a_slow_reader_loses_only_superseded_values() {
    const UPDATES: u64 = 200;
    const PAD: usize = 48 * 1024;
    let names = ["cpu", "mem", "disk"];
    let (tx, rx) = mpsc::channel(16);
    let base = serve(rx, true).await;
    let mut sse = TestClient::get(format!("{base}/dash"))
        .connect()
        .await
        .unwrap();
    let producer = tokio::spawn(async move {
        for n in 1..=UPDATES {
            let name = names[(n % 3) as usize];
            tx.send(update(name, n, PAD)).await.unwrap();
            if n % 10 == 0 {
                tx.send(Event::message(format!("log {n}"))).await.unwrap();
            }
        }
    });
    // Let the producer fill every buffer on the way.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut logs = Vec::new();
    let mut updates = 0;
    loop {
        let ev = sse.next_event_within(WAIT).await.unwrap();
        match ev.event.as_str() {
            "close" => break,
            "message" => logs.push(ev.data),
            name => {
                let (value, pad) = ev.data.split_once(' ').unwrap();
                assert_eq!(pad.len(), PAD, "a frame arrived whole");
                let value: u64 = value.parse().unwrap();
                assert_eq!(names[(value % 3) as usize], name);
                // Per name, values only go forward.
                let last = newest.insert(name.to_owned(), value);
                assert!(
                    last.is_none_or(|l| l < value),
                    "{name}: {last:?} then {value}"
                );
                updates += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    producer.await.unwrap();

    // Every unnamed frame, in order.
    let want: Vec<String> = (1..=UPDATES / 10)
        .map(|k| format!("log {}", k * 10))
        .collect();
    assert_eq!(logs, want);
    // The last value of every name.
    assert_eq!(newest["cpu"], 198);
    assert_eq!(newest["mem"], 199);
    assert_eq!(newest["disk"], 200);
    // And values in between were dropped, not queued.
    assert!(updates < UPDATES, "{updates} of {UPDATES} updates arrived");
}
