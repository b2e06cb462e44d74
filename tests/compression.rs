//! Compressed streams (`StreamConfig::compression`) over real HTTP on
//! 127.0.0.1: negotiated from `Accept-Encoding`, decoded back into the
//! same frames as identity, each event decodable as soon as it is written,
//! heartbeats compressed, identity for `q=0` and unknown encodings, HEAD
//! and errors unaffected.
#![cfg(all(feature = "compression", feature = "testing"))]

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use axum::{Router, routing::get};
use htmx_sse::limits::Limits;
use htmx_sse::streaming::{Compression, OobStreamBuilder, SseStream, StreamConfig, Swap};
use htmx_sse::{BroadcastManager, Event, Fragment};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, VARY};

const WAIT: Duration = Duration::from_secs(5);

fn compressing() -> StreamConfig {
    StreamConfig::new().compression(Compression::new())
}

/// A manager whose streams compress, with its routes at `/sse`.
async fn broadcast_server(config: StreamConfig) -> (BroadcastManager, String) {
    let manager = BroadcastManager::builder().stream(config).build();
    let app = common::open_routes(Router::new(), manager.clone(), "/sse");
    let (base, _server) = common::serve(app).await;
    (manager, format!("{base}/sse"))
}

/// One response read incrementally, decoded as its `Content-Encoding`
/// says with streaming decoders that are flushed after every chunk.
struct Wire {
    response: reqwest::Response,
    decoder: Decoder,
    /// Everything decoded so far.
    text: String,
    /// Bytes received, as sent (compressed or not).
    raw: Vec<u8>,
}

enum Decoder {
    Identity(Vec<u8>),
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let out = match self {
            Decoder::Identity(out) => {
                out.extend_from_slice(chunk);
                out
            }
            Decoder::Gzip(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_mut()
            }
            Decoder::Brotli(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_mut()
            }
        };
        std::mem::take(out)
    }
}

impl Wire {
    async fn open(url: &str, accept: Option<&str>) -> Wire {
        let mut req = reqwest::Client::new().get(url);
        if let Some(accept) = accept {
            req = req.header(ACCEPT_ENCODING, accept);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let decoder = match content_encoding(&response) {
            None => Decoder::Identity(Vec::new()),
            Some("gzip") => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            Some("br") => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Some(other) => panic!("unexpected Content-Encoding {other}"),
        };
        Wire {
            response,
            decoder,
            text: String::new(),
            raw: Vec::new(),
        }
    }

    fn encoding(&self) -> Option<&str> {
        content_encoding(&self.response)
    }

    /// Reads until the decoded text contains `needle`.
    async fn until(&mut self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.text.contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within {within:?}: {:?}", self.text))
                .unwrap()
                .unwrap_or_else(|| panic!("the stream ended before {needle:?}: {:?}", self.text));
            self.raw.extend_from_slice(&chunk);
            let out = self.decoder.feed(&chunk);
            self.text.push_str(std::str::from_utf8(&out).unwrap());
        }
    }

    /// Reads the rest of the body as it was sent.
    async fn rest(mut self) -> Vec<u8> {
        while let Some(chunk) = tokio::time::timeout(WAIT, self.response.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            self.raw.extend_from_slice(&chunk);
        }
        self.raw
    }
}

fn content_encoding(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap())
}

fn vary(response: &reqwest::Response) -> Option<&str> {
    response.headers().get(VARY).map(|v| v.to_str().unwrap())
}

/// Decodes a whole body; the decoders fail on a stream that was not
/// finished (no gzip trailer, no last brotli block).
fn decode_whole(encoding: Option<&str>, body: &[u8]) -> String {
    let mut text = String::new();
    match encoding {
        None => text = String::from_utf8(body.to_vec()).unwrap(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut text)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_string(&mut text)
                .unwrap();
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    text
}

/// The events of a broadcast stream as a page sees them: name and data,
/// without the `id:` lines (each connection's own) and the `connection`
/// event (its own id).
fn events(text: &str) -> Vec<(String, String)> {
    let mut parser = htmx_sse::testing::Parser::new();
    parser
        .feed(text.as_bytes())
        .into_iter()
        .filter_map(|item| match item {
            htmx_sse::testing::SseItem::Event(e) if e.event != "connection" => {
                Some((e.event, e.data))
            }
            _ => None,
        })
        .collect()
}

/// A dashboard update like the demo's: four regions out of band.
fn dashboard(n: u32) -> Fragment {
    OobStreamBuilder::new()
        .add("clock", Swap::InnerHtml, format!("12:00:{n:02}"))
        .add("cpu", Swap::InnerHtml, format!("{}%", 40 + n))
        .add("rps", Swap::InnerHtml, format!("{}", 1200 + 7 * n))
        .add("uptime", Swap::InnerHtml, format!("0:00:{n:02}"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_stream_decodes_to_the_same_bytes_as_identity() {
    // The same finite stream three times: each encoding's body, decoded
    // whole, is the identity body byte for byte, and ends as a finished
    // compressed stream (the decoders reject a truncated one).
    let app = Router::new().route(
        "/events",
        get(|headers: axum::http::HeaderMap| async move {
            let frames = (0..20).map(|n| {
                Event::builder()
                    .event(if n % 2 == 0 { "even" } else { "odd" })
                    .data(dashboard(n))
                    .build()
                    .unwrap()
            });
            SseStream::new(tokio_stream::iter(frames))
                .config(compressing())
                .accept_encoding(&headers)
        }),
    );
    let (base, _server) = common::serve(app).await;
    let url = format!("{base}/events");
    let identity = Wire::open(&url, None).await;
    assert_eq!(identity.encoding(), None);
    assert_eq!(vary(&identity.response), Some("accept-encoding"));
    let plain = identity.rest().await;
    let plain = String::from_utf8(plain).unwrap();
    assert!(plain.starts_with(": connected\n\nevent: even\n"), "{plain}");
    assert!(plain.ends_with("event: close\ndata: connection closed\n\n"));
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("gzip, deflate, br, zstd", "br"),
    ] {
        let wire = Wire::open(&url, Some(accept)).await;
        assert_eq!(wire.encoding(), Some(expected), "{accept}");
        assert_eq!(vary(&wire.response), Some("accept-encoding"));
        let body = wire.rest().await;
        assert!(
            body.len() < plain.len() / 4,
            "{} of {}",
            body.len(),
            plain.len()
        );
        assert_eq!(decode_whole(Some(expected), &body), plain, "{accept}");
    }
}

#[tokio::test]
async fn broadcast_streams_decode_to_the_same_events_as_identity() {
    let (manager, url) = broadcast_server(compressing()).await;
    let mut plain = Wire::open(&url, None).await;
    let mut gzip = Wire::open(&url, Some("gzip")).await;
    let mut br = Wire::open(&url, Some("gzip, deflate, br, zstd")).await;
    assert_eq!(
        (plain.encoding(), gzip.encoding(), br.encoding()),
        (None, Some("gzip"), Some("br"))
    );
    for wire in [&mut plain, &mut gzip, &mut br] {
        wire.until("event: connection", WAIT).await;
    }
    for n in 0..10 {
        manager
            .message("dashboard", dashboard(n))
            .send()
            .await
            .unwrap();
    }
    for wire in [&mut plain, &mut gzip, &mut br] {
        wire.until("12:00:09", WAIT).await;
    }
    let expected = events(&plain.text);
    assert_eq!(expected.len(), 10);
    assert_eq!(expected[3].0, "dashboard");
    assert!(expected[3].1.contains("43%"), "{:?}", expected[3]);
    assert_eq!(events(&gzip.text), expected);
    assert_eq!(events(&br.text), expected);
    // The window is kept across events: after the first, an update costs
    // a fraction of its size.
    assert!(
        br.raw.len() * 4 < plain.raw.len() && gzip.raw.len() * 4 < plain.raw.len(),
        "identity {} gzip {} br {}",
        plain.raw.len(),
        gzip.raw.len(),
        br.raw.len()
    );
}

#[tokio::test]
async fn each_event_is_decodable_before_the_next_is_published() {
    // Nothing waits in the compressor: event n is decoded from what has
    // arrived before event n + 1 exists.
    let (manager, url) = broadcast_server(compressing().no_heartbeat()).await;
    for accept in ["gzip", "br"] {
        let mut wire = Wire::open(&url, Some(accept)).await;
        assert_eq!(wire.encoding(), Some(accept));
        wire.until("event: connection", WAIT).await;
        for n in 0..5 {
            let html = format!("<p>update {n}</p>");
            manager
                .message("tick", Fragment::trusted(html.clone()))
                .send()
                .await
                .unwrap();
            wire.until(&html, WAIT).await;
            assert!(!wire.text.contains(&format!("update {}", n + 1)));
        }
    }
}

#[tokio::test]
async fn heartbeats_arrive_compressed() {
    // A manager's heartbeats (its one timer) and an SseStream's (its own).
    let (_manager, url) = broadcast_server(
        compressing()
            .heartbeat(Duration::from_millis(100))
            .initial_message(None),
    )
    .await;
    for accept in ["gzip", "br"] {
        let mut wire = Wire::open(&url, Some(accept)).await;
        wire.until("event: connection", WAIT).await;
        let at = wire.text.len();
        let before = wire.raw.len();
        let mut heard = false;
        for _ in 0..50 {
            wire.until(":\n\n", WAIT).await;
            if wire.text[at..].contains(":\n\n") {
                heard = true;
                break;
            }
        }
        assert!(heard, "{:?}", wire.text);
        // It came compressed (in the stream's encoding, flushed): what
        // arrived is not the comment itself.
        assert!(wire.raw.len() > before);
        assert_ne!(&wire.raw[before..], b":\n\n");
    }

    let app = Router::new().route(
        "/idle",
        get(|headers: axum::http::HeaderMap| async move {
            SseStream::new(tokio_stream::pending::<Event>())
                .config(
                    compressing()
                        .initial_message(None)
                        .heartbeat(Duration::from_millis(100)),
                )
                .accept_encoding(&headers)
        }),
    );
    let (base, _server) = common::serve(app).await;
    for accept in ["gzip", "br"] {
        let mut wire = Wire::open(&format!("{base}/idle"), Some(accept)).await;
        assert_eq!(wire.encoding(), Some(accept));
        wire.until(":\n\n:\n\n", WAIT).await;
        assert_eq!(wire.text, ":\n\n:\n\n");
        assert!(!wire.raw.starts_with(b":"));
    }
}

#[tokio::test]
async fn q0_and_unknown_encodings_get_identity() {
    let (_manager, url) = broadcast_server(compressing()).await;
    for accept in [
        None,
        Some("gzip;q=0, br;q=0"),
        Some("br;q=0.0, gzip;q=0.000, *;q=0"),
        Some("deflate, zstd"),
        Some("identity"),
        Some("br;q=0, zstd"),
    ] {
        let mut wire = Wire::open(&url, accept).await;
        assert_eq!(wire.encoding(), None, "{accept:?}");
        assert_eq!(vary(&wire.response), Some("accept-encoding"));
        wire.until("event: connection", WAIT).await;
        assert!(wire.raw.starts_with(b"event: connection\n"), "{accept:?}");
    }
    // q values choose between the two.
    for (accept, expected) in [
        ("br;q=0, gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.8", "gzip"),
        ("br;q=0.8, gzip;q=0.5", "br"),
        ("*", "br"),
        ("*;q=0.1, br;q=0", "gzip"),
    ] {
        let wire = Wire::open(&url, Some(accept)).await;
        assert_eq!(wire.encoding(), Some(expected), "{accept}");
    }
    // Without `compression`, nothing changes: no encoding, no Vary.
    let (_plain, url) = broadcast_server(StreamConfig::new()).await;
    let mut wire = Wire::open(&url, Some("gzip, deflate, br, zstd")).await;
    assert_eq!((wire.encoding(), vary(&wire.response)), (None, None));
    wire.until("event: connection", WAIT).await;
    assert!(wire.raw.starts_with(b"event: connection\n"));
}

#[tokio::test]
async fn head_and_errors_are_unaffected() {
    let manager = BroadcastManager::builder()
        .stream(compressing())
        .limits(Limits::new().connections(1))
        .build();
    let app = common::open_routes(Router::new(), manager.clone(), "/sse");
    let (base, _server) = common::serve(app).await;
    let url = format!("{base}/sse");
    let client = reqwest::Client::new();

    // HEAD: the headers of the GET (the encoding it would use), no body.
    let head = tokio::time::timeout(
        WAIT,
        client.head(&url).header(ACCEPT_ENCODING, "gzip, br").send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(content_encoding(&head), Some("br"));
    let body = tokio::time::timeout(WAIT, head.bytes())
        .await
        .unwrap()
        .unwrap();
    assert!(body.is_empty());

    // A refused connection: the error as JSON, not compressed.
    let mut first = Wire::open(&url, Some("br")).await;
    first.until("event: connection", WAIT).await;
    let refused = client
        .get(&url)
        .header(ACCEPT_ENCODING, "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(content_encoding(&refused), None);
    let json: serde_json::Value = refused.json().await.unwrap();
    assert!(json["error"].is_string(), "{json}");

    // The status route is not a stream: not compressed either.
    let status = client
        .get(format!("{url}/status"))
        .header(ACCEPT_ENCODING, "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    assert_eq!(content_encoding(&status), None);
    let json: serde_json::Value = status.json().await.unwrap();
    assert_eq!(json["total"], 1);
    drop(first);
}

#[tokio::test]
async fn a_stream_stopped_by_the_client_leaves_the_manager() {
    // The compressing wrapper passes the client's going away on.
    let (manager, url) = broadcast_server(compressing()).await;
    let mut wire = Wire::open(&url, Some("br")).await;
    wire.until("event: connection", WAIT).await;
    assert_eq!(manager.connection_count(), 1);
    drop(wire);
    for _ in 0..100 {
        manager
            .message("tick", Fragment::trusted("<p>x</p>"))
            .send()
            .await
            .unwrap();
        if manager.connection_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection is still counted");
}

#[tokio::test]
async fn the_topic_hub_negotiates_too() {
    // `TopicRoutes` passes the request's headers like the broadcast routes.
    let manager = BroadcastManager::builder().stream(compressing()).build();
    let routes =
        htmx_sse::topics::TopicRoutes::new(manager.clone()).publish(htmx_sse::auth::Access::Anyone);
    let (base, _server) = common::serve(routes.install(Router::new())).await;
    let url = format!("{base}/hub?topic=news");
    let mut wire = Wire::open(&url, Some("gzip")).await;
    assert_eq!(wire.encoding(), Some("gzip"));
    assert_eq!(vary(&wire.response), Some("accept-encoding"));
    wire.until("event: connection", WAIT).await;
    manager
        .message("message", Fragment::trusted("<p>news</p>"))
        .topics([htmx_sse::topics::Topic::new("news").unwrap()])
        .send()
        .await
        .unwrap();
    wire.until("data: <p>news</p>", WAIT).await;
    let plain = Wire::open(&url, None).await;
    assert_eq!(plain.encoding(), None);
}
