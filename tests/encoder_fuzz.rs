//! Fuzz-style property tests of every way the crate writes an SSE frame,
//! judged by the WHATWG parser (`htmx_sse::testing::parser`), itself judged
//! by a literal transcription of the spec's "interpret an event stream"
//! (issue 15, item 10, second half).
//!
//! Inputs are arbitrary Unicode salted with what breaks frames: CR, LF,
//! CRLF, NUL, BOM, colons, leading spaces, forged `data:`/`id:`/`retry:`
//! lines, empty strings, very long lines. For every encoder, either the
//! input is refused with the documented error, or the bytes, fed to the
//! parser in arbitrary chunks (one byte at a time, or cut anywhere: inside
//! multi-byte UTF-8, between fields), give exactly the intended events and
//! nothing else; several frames in a row give exactly that sequence.
//!
//! The encoders: `Event::builder` (event, id, retry from text, `u64` or
//! `Duration`, comment, data, `json_data`), `Event::message`,
//! `Event::from(&str | String)` (escaped), `Event::comment`,
//! `Event::HEARTBEAT`, `Event::from(Fragment)`, `Event::from(maud::Markup)`,
//! `OobStreamBuilder::build_event` (both flavours), the broadcast path
//! (`BroadcastManager::broadcast` / `send_to` with text, HTML and JSON, the
//! message encoded once and tagged per connection, the `connection` and
//! `reset` events, `connect_as` with a chosen id, `BroadcastMessage::to_event`)
//! and `SseStream` (initial and close messages, the shutdown `retry:` event).
//!
//! Each property runs `DEFAULT_CASES` (256) cases: the whole file takes
//! 1.1 s in a debug build on 2 idle cores (up to 3 s on a loaded machine).
//! For a longer hunt, set the cases per property (50,000 take about 4 min):
//!
//! ```text
//! PROPTEST_CASES=50000 cargo test --all-features --test encoder_fuzz
//! ```
//!
//! Failures print the minimal input; nothing is written to disk.
#![cfg(feature = "testing")]

use std::sync::LazyLock;
use std::time::Duration;

use axum::response::IntoResponse as _;
use futures_util::StreamExt as _;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::ConnectionId;
use htmx_sse::streaming::oob::{OobFlavor, OobStreamBuilder, Swap};
use htmx_sse::streaming::{Shutdown, SseStream, StreamConfig};
use htmx_sse::testing::parser::{Parser, ReceivedEvent, SseItem};
use htmx_sse::{Error, Event, Field, Fragment};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // The minimal failing input is printed; no files in tests/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Inputs.

/// Text meant to break a frame.
fn nasty() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => any::<char>().prop_map(String::from),
        3 => "[a-z0-9]{1,6}",
        2 => "[\u{80}-\u{10FFFF}]{1,3}",
        1 => Just("\r".to_owned()),
        1 => Just("\n".to_owned()),
        1 => Just("\r\n".to_owned()),
        1 => Just("\n\r".to_owned()),
        1 => Just("\0".to_owned()),
        1 => Just("\u{FEFF}".to_owned()),
        1 => Just(":".to_owned()),
        1 => Just(" ".to_owned()),
        1 => Just("\ndata: forged\n\n".to_owned()),
        1 => Just("\r\nid: forged\r\n".to_owned()),
        1 => Just("\revent: forged\r".to_owned()),
        1 => Just("\nretry: 1\n".to_owned()),
        1 => Just("\u{2028}\u{2029}\u{85}".to_owned()),
        1 => Just("<script>&amp;\"'</script>".to_owned()),
    ];
    prop_oneof![
        12 => proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat()),
        1 => Just(String::new()),
        // A very long line (and what follows it).
        1 => (any::<char>(), 1000usize..20_000, "[a-z\r\n]{0,4}")
            .prop_map(|(c, n, tail)| c.to_string().repeat(n) + &tail),
    ]
}

/// A name or id: often clean, sometimes nasty.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-zA-Z0-9 _:.-]{0,12}",
        2 => nasty(),
    ]
}

#[derive(Debug, Clone)]
enum RetryIn {
    Millis(u64),
    Duration(Duration),
    Text(String),
}

fn retry_in() -> impl Strategy<Value = RetryIn> {
    prop_oneof![
        any::<u64>().prop_map(RetryIn::Millis),
        (any::<u64>(), 0u32..1_000_000_000)
            .prop_map(|(s, n)| RetryIn::Duration(Duration::new(s, n))),
        "[0-9]{1,22}".prop_map(RetryIn::Text),
        nasty().prop_map(RetryIn::Text),
    ]
}

/// A JSON value holding nasty strings (keys included).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        nasty().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(nasty(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum DataIn {
    Text(String),
    Json(Value),
}

/// Every field of `Event::builder`, set in this order when present.
#[derive(Debug, Clone)]
struct Spec {
    comment: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<RetryIn>,
    data: Option<DataIn>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::weighted(0.3, nasty()),
        proptest::option::of(name()),
        proptest::option::of(name()),
        proptest::option::weighted(0.3, retry_in()),
        proptest::option::weighted(
            0.8,
            prop_oneof![
                4 => nasty().prop_map(DataIn::Text),
                1 => json().prop_map(DataIn::Json),
            ],
        ),
    )
        .prop_map(|(comment, event, id, retry, data)| Spec {
            comment,
            event,
            id,
            retry,
            data,
        })
}

/// One way of making a frame.
#[derive(Debug, Clone)]
enum Frame {
    Builder(Spec),
    Message(String),
    Escaped(String, bool),
    Comment(String),
    Heartbeat,
    Trusted(String),
    #[cfg(feature = "maud")]
    Maud(String),
    Oob {
        target: String,
        swap: Index,
        content: String,
        partial: bool,
    },
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        6 => spec().prop_map(Frame::Builder),
        2 => nasty().prop_map(Frame::Message),
        1 => (nasty(), any::<bool>()).prop_map(|(t, owned)| Frame::Escaped(t, owned)),
        1 => nasty().prop_map(Frame::Comment),
        1 => Just(Frame::Heartbeat),
        1 => nasty().prop_map(Frame::Trusted),
        1 => maud_frame(),
        2 => (
            prop_oneof!["[a-zA-Z_][a-zA-Z0-9_-]{0,8}", nasty()],
            any::<Index>(),
            nasty(),
            any::<bool>(),
        )
            .prop_map(|(target, swap, content, partial)| Frame::Oob {
                target,
                swap,
                content,
                partial,
            }),
    ]
}

#[cfg(feature = "maud")]
fn maud_frame() -> impl Strategy<Value = Frame> {
    nasty().prop_map(Frame::Maud)
}

#[cfg(not(feature = "maud"))]
fn maud_frame() -> impl Strategy<Value = Frame> {
    nasty().prop_map(Frame::Trusted)
}

// ---------------------------------------------------------------------------
// What each input must give.

/// What the data of a dispatched event must be.
#[derive(Debug, Clone, PartialEq)]
enum DataExp {
    /// Exactly this text.
    Exact(String),
    /// JSON text (one line, HTML-safe) that reads back as this value.
    Json(Value),
}

/// The event a frame must dispatch.
#[derive(Debug, Clone, PartialEq)]
struct EventExp {
    event: String,
    data: DataExp,
}

/// What the parser must see in one frame.
#[derive(Debug, Clone, Default)]
struct Expected {
    comment: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    event: Option<EventExp>,
}

/// The documented refusals.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    Field(Field, u8, usize),
    EmptyName,
    Retry(String),
    Target,
}

/// Line breaks as an EventSource reads them: CRLF, CR, LF all become LF.
fn normalise(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// The first byte of `forbidden` in `s`, as the refusal for `field`.
fn first_forbidden(s: &str, field: Field, forbidden: &[u8]) -> Option<Refusal> {
    s.bytes()
        .position(|b| forbidden.contains(&b))
        .map(|p| Refusal::Field(field, s.as_bytes()[p], p))
}

fn comment_item(text: &str) -> String {
    // `: text`, or `:` alone for an empty comment.
    if text.is_empty() {
        String::new()
    } else {
        format!(" {text}")
    }
}

fn expect_builder(spec: &Spec) -> Result<Expected, Refusal> {
    if let Some(c) = &spec.comment
        && let Some(r) = first_forbidden(c, Field::Comment, b"\r\n")
    {
        return Err(r);
    }
    if let Some(e) = &spec.event {
        if e.is_empty() {
            return Err(Refusal::EmptyName);
        }
        if let Some(r) = first_forbidden(e, Field::Event, b"\r\n\0") {
            return Err(r);
        }
    }
    if let Some(i) = &spec.id
        && let Some(r) = first_forbidden(i, Field::Id, b"\r\n\0")
    {
        return Err(r);
    }
    let retry = match &spec.retry {
        None => None,
        Some(RetryIn::Millis(ms)) => Some(*ms),
        Some(RetryIn::Duration(d)) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        Some(RetryIn::Text(t)) => {
            // Only a plain decimal integer that fits in u64.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Refusal::Retry(t.clone()));
            }
            match t.parse::<u64>() {
                Ok(ms) => Some(ms),
                Err(_) => return Err(Refusal::Retry(t.clone())),
            }
        }
    };
    let data = spec.data.as_ref().map(|d| match d {
        DataIn::Text(t) => DataExp::Exact(normalise(t)),
        DataIn::Json(v) => DataExp::Json(v.clone()),
    });
    let event = match (&spec.event, data) {
        (None, None) => None,
        (name, data) => Some(EventExp {
            event: name.clone().unwrap_or_else(|| "message".to_owned()),
            data: data.unwrap_or(DataExp::Exact(String::new())),
        }),
    };
    let nothing = spec.comment.is_none() && spec.id.is_none() && retry.is_none() && event.is_none();
    Ok(Expected {
        // An empty builder is an empty comment.
        comment: if nothing {
            Some(String::new())
        } else {
            spec.comment.as_deref().map(comment_item)
        },
        id: spec.id.clone(),
        retry,
        event,
    })
}

fn build(spec: &Spec) -> Result<Event, Error> {
    let mut b = Event::builder();
    if let Some(c) = &spec.comment {
        b = b.comment(c.clone());
    }
    if let Some(e) = &spec.event {
        b = b.event(e.as_str());
    }
    if let Some(i) = &spec.id {
        // Both the borrowed and the owned conversions.
        b = if i.len() % 2 == 0 {
            b.id(i.as_str())
        } else {
            b.id(i.clone())
        };
    }
    match &spec.retry {
        None => {}
        Some(RetryIn::Millis(ms)) => b = b.retry(*ms),
        Some(RetryIn::Duration(d)) => b = b.retry(*d),
        Some(RetryIn::Text(t)) => b = b.retry(t.as_str()),
    }
    match &spec.data {
        None => {}
        Some(DataIn::Text(t)) => b = b.data(t.clone()),
        Some(DataIn::Json(v)) => b = b.json_data(v),
    }
    b.build()
}

fn message(data: DataExp) -> Expected {
    Expected {
        event: Some(EventExp {
            event: "message".to_owned(),
            data,
        }),
        ..Expected::default()
    }
}

/// Encodes `frame` and says what it must give.
fn encode(frame: &Frame) -> (Result<Event, Error>, Result<Expected, Refusal>) {
    match frame {
        Frame::Builder(spec) => (build(spec), expect_builder(spec)),
        Frame::Message(t) => (
            Ok(Event::message(t)),
            Ok(message(DataExp::Exact(normalise(t)))),
        ),
        Frame::Escaped(t, owned) => {
            let ev = if *owned {
                Event::from(t.clone())
            } else {
                Event::from(t.as_str())
            };
            let escaped = Fragment::text(t).into_string();
            assert!(!escaped.contains(['<', '>']), "not escaped: {escaped:?}");
            (Ok(ev), Ok(message(DataExp::Exact(normalise(&escaped)))))
        }
        Frame::Comment(t) => (
            Event::comment(t.clone()),
            first_forbidden(t, Field::Comment, b"\r\n").map_or_else(
                || {
                    Ok(Expected {
                        comment: Some(comment_item(t)),
                        ..Expected::default()
                    })
                },
                Err,
            ),
        ),
        Frame::Heartbeat => (
            Ok(Event::HEARTBEAT),
            Ok(Expected {
                comment: Some(String::new()),
                ..Expected::default()
            }),
        ),
        Frame::Trusted(t) => (
            Ok(Event::from(Fragment::trusted(t.clone()))),
            Ok(message(DataExp::Exact(normalise(t)))),
        ),
        #[cfg(feature = "maud")]
        Frame::Maud(t) => (
            Ok(Event::from(maud::PreEscaped(t.clone()))),
            Ok(message(DataExp::Exact(normalise(t)))),
        ),
        Frame::Oob {
            target,
            swap,
            content,
            partial,
        } => {
            const SWAPS: [Swap; 11] = Swap::ALL;
            let flavor = if *partial {
                OobFlavor::Partial
            } else {
                OobFlavor::SwapOob
            };
            let builder = || {
                OobStreamBuilder::new().flavor(flavor).add(
                    target,
                    SWAPS[swap.index(SWAPS.len())],
                    Fragment::trusted(content.clone()),
                )
            };
            let valid = target
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && target
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let expected = if valid {
                // The markup is the builder's business; the frame must carry
                // it exactly.
                let html = builder().build().expect("a valid target").into_string();
                Ok(message(DataExp::Exact(normalise(&html))))
            } else {
                Err(Refusal::Target)
            };
            (builder().build_event(), expected)
        }
    }
}

fn refusal_of(e: &Error) -> Option<Refusal> {
    match e {
        Error::InvalidField {
            field,
            byte,
            position,
        } => Some(Refusal::Field(*field, *byte, *position)),
        Error::EmptyEventName => Some(Refusal::EmptyName),
        Error::InvalidRetry { value } => Some(Refusal::Retry(value.clone())),
        Error::InvalidTarget { .. } => Some(Refusal::Target),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Reading.

/// Feeds `bytes` to `parser` cut at `cuts` (or one byte at a time).
fn feed_split(parser: &mut Parser, bytes: &[u8], cuts: &[Index], bytewise: bool) -> Vec<SseItem> {
    let mut items = Vec::new();
    if bytewise {
        for b in bytes {
            items.extend(parser.feed(std::slice::from_ref(b)));
        }
        return items;
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(bytes.len());
    at.sort_unstable();
    let mut start = 0;
    for end in at {
        items.extend(parser.feed(&bytes[start..end]));
        start = end;
    }
    items
}

/// A browser's state across frames, and what it must have seen.
#[derive(Debug, Default)]
struct Browser {
    last_event_id: String,
    retry: Option<u64>,
}

impl Browser {
    /// What `exp` must give, in this state, as parser items (data as the
    /// expectation says).
    fn apply(&mut self, exp: &Expected, out: &mut Vec<(SseItem, Option<Value>)>) {
        if let Some(c) = &exp.comment {
            out.push((SseItem::Comment(c.clone()), None));
        }
        if let Some(id) = &exp.id {
            id.clone_into(&mut self.last_event_id);
        }
        if exp.retry.is_some() {
            self.retry = exp.retry;
        }
        if let Some(ev) = &exp.event {
            let (data, json) = match &ev.data {
                DataExp::Exact(d) => (d.clone(), None),
                DataExp::Json(v) => (String::new(), Some(v.clone())),
            };
            out.push((
                SseItem::Event(ReceivedEvent {
                    event: ev.event.clone(),
                    data,
                    last_event_id: self.last_event_id.clone(),
                }),
                json,
            ));
        }
    }
}

/// Checks `got` against `want`: the same items in the same order; JSON data
/// compared as values, and checked to be one HTML-safe line.
fn check_items(got: &[SseItem], want: &[(SseItem, Option<Value>)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "got {:#?}\nwant {:#?}", got, want);
    for (g, (w, json)) in got.iter().zip(want) {
        match (g, w, json) {
            (SseItem::Event(g), SseItem::Event(w), Some(v)) => {
                prop_assert_eq!(&g.event, &w.event);
                prop_assert_eq!(&g.last_event_id, &w.last_event_id);
                prop_assert!(
                    !g.data
                        .contains(['\n', '<', '>', '&', '\u{2028}', '\u{2029}']),
                    "JSON data not one HTML-safe line: {:?}",
                    g.data
                );
                let back: Value = serde_json::from_str(&g.data)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {:?}", g.data)))?;
                prop_assert_eq!(&back, v);
            }
            (g, w, _) => prop_assert_eq!(g, w),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The spec, transcribed: a reference for the parser.

/// WHATWG HTML 9.2.6 "Interpreting an event stream", on a whole stream at
/// once, as literally as the spec says it: UTF-8 decode (one leading BOM
/// stripped, errors replaced), lines ended by CRLF, lone LF or lone CR,
/// the last incomplete line and event discarded. Returns the items, the
/// last event ID string and the reconnection time.
fn interpret(stream: &[u8]) -> (Vec<SseItem>, String, Option<u64>) {
    let decoded = String::from_utf8_lossy(stream);
    let mut rest = decoded.strip_prefix('\u{FEFF}').unwrap_or(&decoded);
    let mut items = Vec::new();
    let (mut data, mut event_type, mut id_buffer) = (String::new(), String::new(), String::new());
    let (mut last_event_id, mut retry) = (String::new(), None);
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        rest = &rest[end
            + if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            }..];
        if line.is_empty() {
            // Dispatch the event.
            last_event_id.clone_from(&id_buffer);
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            items.push(SseItem::Event(ReceivedEvent {
                event: if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event_type)
                },
                data: std::mem::take(&mut data),
                last_event_id: last_event_id.clone(),
            }));
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(SseItem::Comment(comment.to_owned()));
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Beyond u64: ignored (as Chromium does).
                if let Ok(ms) = value.parse() {
                    retry = Some(ms);
                }
            }
            _ => {}
        }
    }
    (items, last_event_id, retry)
}

/// Raw bytes meant to break a parser.
fn raw_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xEF\xBB".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event".to_vec()),
        Just(b"id".to_vec()),
        Just(b"retry".to_vec()),
        Just(b"Data".to_vec()),
        "[0-9]{1,22}".prop_map(String::into_bytes),
        any::<char>().prop_map(|c| c.to_string().into_bytes()),
        any::<u8>().prop_map(|b| vec![b]),
        Just(b"\xE2\x82".to_vec()),
        Just(b"\xFF".to_vec()),
    ];
    // Often a BOM or two (or part of one) first: only one is stripped.
    let start = prop_oneof![
        2 => Just(Vec::new()),
        1 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => Just(b"\xEF\xBB\xBF\xEF\xBB\xBF".to_vec()),
        1 => Just(b"\xEF\xBB".to_vec()),
    ];
    (start, proptest::collection::vec(piece, 0..40))
        .prop_map(|(start, v)| [start, v.concat()].concat())
}

// ---------------------------------------------------------------------------
// The async encoders.

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

/// Reads `body` until `parser` has given `n` items (events and comments)
/// of which `events` events; returns the bytes read and the items.
async fn read_items(
    body: &mut axum::body::BodyDataStream,
    parser: &mut Parser,
    n: usize,
    events: usize,
) -> (Vec<u8>, Vec<SseItem>) {
    let mut bytes = Vec::new();
    let mut items = Vec::new();
    let count = |items: &[SseItem]| {
        items
            .iter()
            .filter(|i| matches!(i, SseItem::Event(_)))
            .count()
    };
    while items.len() < n || count(&items) < events {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the stream went quiet")
            .expect("the stream ended")
            .expect("a body error");
        bytes.extend_from_slice(&chunk);
        items.extend(parser.feed(&chunk));
    }
    (bytes, items)
}

/// Reads `body` to its end.
async fn read_to_end(body: &mut axum::body::BodyDataStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the stream did not end")
    {
        bytes.extend_from_slice(&chunk.expect("a body error"));
    }
    bytes
}

#[derive(Debug, Clone)]
enum Publish {
    Text(String),
    Html(String),
    Json(Value),
}

fn publish() -> impl Strategy<Value = (String, Publish, bool)> {
    (
        prop_oneof![
            3 => name(),
            1 => prop_oneof![Just("message"), Just("connection"), Just("reset"), Just("close")]
                .prop_map(str::to_owned),
        ],
        prop_oneof![
            nasty().prop_map(Publish::Text),
            nasty().prop_map(Publish::Html),
            json().prop_map(Publish::Json),
        ],
        any::<bool>(),
    )
}

/// How a connection is opened: `connect` with this `Last-Event-ID`, or
/// `connect_as` with this id.
#[derive(Debug, Clone)]
enum Open {
    Connect(Option<String>),
    Register(String),
}

fn open() -> impl Strategy<Value = Open> {
    prop_oneof![
        Just(Open::Connect(None)),
        nasty().prop_map(|s| Open::Connect(Some(s))),
        // Well formed, another process's epoch (or, once in 2^32, ours).
        ("[0-9a-f]{8}", 0u64..5, "[A-Za-z0-9_-]{1,12}")
            .prop_map(|(e, s, c)| Open::Connect(Some(format!("{e}-{s}.{c}")))),
        prop_oneof!["[A-Za-z0-9_-]{1,64}", nasty()].prop_map(Open::Register),
    ]
}

// ---------------------------------------------------------------------------
// The checks.

fn check_frames(frames: &[Frame], cuts: &[Index], bytewise: bool) -> Result<(), TestCaseError> {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    let mut browser = Browser::default();
    for frame in frames {
        let (got, expected) = encode(frame);
        let expected = match (got, expected) {
            (Err(e), Err(refusal)) => {
                prop_assert_eq!(refusal_of(&e), Some(refusal), "{}", e);
                continue;
            }
            (Ok(ev), Ok(expected)) => {
                let bytes = ev.as_bytes();
                // LF line ends only: no CR ever reaches the wire.
                prop_assert!(!bytes.contains(&b'\r'), "CR in {:?}", ev);
                prop_assert!(bytes.ends_with(b"\n\n"), "unterminated {:?}", ev);
                // Alone, in a fresh stream.
                let mut alone = Vec::new();
                Browser::default().apply(&expected, &mut alone);
                let mut parser = Parser::new();
                check_items(&feed_split(&mut parser, bytes, cuts, bytewise), &alone)?;
                prop_assert_eq!(parser.last_event_id(), expected.id.as_deref().unwrap_or(""));
                prop_assert_eq!(parser.retry(), expected.retry);
                // Nothing pending: more blank lines dispatch nothing.
                prop_assert_eq!(parser.feed(b"\n\n"), vec![]);
                stream.extend_from_slice(bytes);
                expected
            }
            (Err(e), Ok(expected)) => {
                return Err(TestCaseError::fail(format!(
                    "refused: {e}; expected {expected:?}"
                )));
            }
            (Ok(ev), Err(refusal)) => {
                return Err(TestCaseError::fail(format!(
                    "accepted {ev:?}; expected {refusal:?}"
                )));
            }
        };
        browser.apply(&expected, &mut want);
    }
    // All of them in a row.
    let mut parser = Parser::new();
    check_items(&feed_split(&mut parser, &stream, cuts, bytewise), &want)?;
    prop_assert_eq!(parser.last_event_id(), browser.last_event_id.as_str());
    prop_assert_eq!(parser.retry(), browser.retry);
    prop_assert_eq!(parser.feed(b"\n\n"), vec![]);
    Ok(())
}

async fn check_broadcast(
    open: Open,
    messages: Vec<(String, Publish, bool)>,
    cuts: Vec<Index>,
) -> Result<(), TestCaseError> {
    let manager = BroadcastManager::builder().history(8).build();
    let (connection, reset) = match &open {
        Open::Connect(lei) => (
            manager.connect(lei.as_deref(), Value::Null),
            lei.as_deref().is_some_and(|s| !s.is_empty()),
        ),
        Open::Register(id) => match ConnectionId::new(id) {
            Ok(id) => (manager.connect_as(Some(id), Value::Null), false),
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidConnectionId { .. }), "{}", e);
                prop_assert!(
                    id.is_empty()
                        || id.len() > 64
                        || !id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                );
                (manager.connect(None, Value::Null), false)
            }
        },
    };
    // Under the limits (one connection): opening never fails here.
    let connection = connection.expect("one connection is within the limits");
    let connection_id = connection.id().clone();
    if let Open::Register(id) = &open
        && ConnectionId::new(id).is_ok()
    {
        prop_assert_eq!(connection_id.as_str(), id.as_str());
    }
    let mut body = connection.into_response().into_body().into_data_stream();
    let mut parser = Parser::new();
    let intro = 1 + usize::from(reset);
    let (mut bytes, mut items) = read_items(&mut body, &mut parser, 0, intro).await;
    let events: Vec<&ReceivedEvent> = items
        .iter()
        .filter_map(|i| match i {
            SseItem::Event(e) => Some(e),
            SseItem::Comment(_) => None,
        })
        .collect();
    prop_assert_eq!(events.len(), intro, "{:?}", items);
    prop_assert_eq!(events[0].event.as_str(), "connection");
    prop_assert_eq!(
        &events[0].data,
        &format!(
            "<input type=\"hidden\" name=\"connection_id\" value=\"{}\">",
            connection_id.as_str()
        )
    );
    // EPOCH-SEQ.ID.MASKED: the opening event's proof is masked, 48 hex
    // digits: a mask, then the proof xor the mask. The messages carry the
    // plain tag, ID.PROOF.
    let (_, masked_tag) = events[0]
        .last_event_id
        .split_once('.')
        .expect("EPOCH-SEQ.TAG");
    let (tag_id, masked) = masked_tag.rsplit_once('.').expect("ID.PROOF");
    prop_assert_eq!(tag_id, connection_id.as_str());
    prop_assert_eq!(masked.len(), 48, "{}", masked_tag);
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let (mask, hidden) = masked.split_at(24);
    let proof: String = hex(mask)
        .iter()
        .zip(hex(hidden))
        .map(|(m, h)| format!("{:02x}", m ^ h))
        .collect();
    let tag = format!("{tag_id}.{proof}");
    if reset {
        prop_assert_eq!(events[1].event.as_str(), "reset");
        let reason: Value = serde_json::from_str(&events[1].data).expect("JSON");
        prop_assert!(
            ["unrecognized", "restarted", "history-gap"]
                .iter()
                .any(|r| reason == serde_json::json!({ "reason": r })),
            "{}",
            events[1].data
        );
    }
    let mut want: Vec<(SseItem, Option<Value>)> =
        items.iter().cloned().map(|i| (i, None)).collect();
    let mut sent = 0;
    for (i, (message_type, data, to_one)) in messages.iter().enumerate() {
        // A JSON string is text (see `Data`): escaped, not JSON.
        let (escaped, json) = match data {
            Publish::Text(t) | Publish::Json(Value::String(t)) => {
                (Some(Fragment::text(t).into_string()), None)
            }
            Publish::Html(h) => (Some(h.clone()), None),
            Publish::Json(v) => (None, Some(v.clone())),
        };
        let result = match (data, to_one) {
            (Publish::Text(t), false) => {
                manager
                    .broadcast(message_type.as_str(), t.as_str(), None, &[])
                    .await
            }
            (Publish::Text(t), true) => {
                manager
                    .send_to(&connection_id, message_type.as_str(), t.clone(), None)
                    .await
            }
            (Publish::Html(h), false) => {
                manager
                    .broadcast(
                        message_type.as_str(),
                        Fragment::trusted(h.clone()),
                        None,
                        &[],
                    )
                    .await
            }
            (Publish::Html(h), true) => {
                manager
                    .send_to(
                        &connection_id,
                        message_type.as_str(),
                        Fragment::trusted(h.clone()),
                        None,
                    )
                    .await
            }
            (Publish::Json(v), false) => {
                manager
                    .broadcast(message_type.as_str(), v.clone(), None, &[])
                    .await
            }
            (Publish::Json(v), true) => {
                manager
                    .send_to(
                        &connection_id,
                        message_type.as_str(),
                        axum::Json(v.clone()),
                        None,
                    )
                    .await
            }
        };
        let refusal = if message_type.is_empty() {
            Some("empty")
        } else if message_type.contains(['\r', '\n', '\0']) {
            Some("field")
        } else if ["connection", "reset", "close"].contains(&message_type.as_str()) {
            Some("reserved")
        } else {
            None
        };
        match (result, refusal) {
            (Err(Error::EmptyEventName), Some("empty"))
            | (
                Err(Error::InvalidField {
                    field: Field::Event,
                    ..
                }),
                Some("field"),
            )
            | (Err(Error::ReservedEventName { .. }), Some("reserved")) => continue,
            (Ok(s), None) => {
                prop_assert_eq!(s.delivered, 1);
                sent += 1;
                let event = if message_type == "message" {
                    "message"
                } else {
                    message_type
                };
                want.push((
                    SseItem::Event(ReceivedEvent {
                        event: event.to_owned(),
                        data: escaped.as_deref().map(normalise).unwrap_or_default(),
                        last_event_id: format!("{}.{tag}", s.id),
                    }),
                    json.clone(),
                ));
                // The history's frame (broadcasts are listed): the
                // message id alone.
                if !to_one {
                    let history = manager.history(Some(1));
                    prop_assert_eq!(history.len(), 1);
                    prop_assert_eq!(history[0].id, s.id);
                    let mut w = Vec::new();
                    Browser::default().apply(
                        &Expected {
                            id: Some(s.id.to_string()),
                            event: Some(EventExp {
                                event: event.to_owned(),
                                data: match &json {
                                    Some(v) => DataExp::Json(v.clone()),
                                    None => DataExp::Exact(
                                        escaped.as_deref().map(normalise).unwrap_or_default(),
                                    ),
                                },
                            }),
                            ..Expected::default()
                        },
                        &mut w,
                    );
                    check_items(&Parser::new().feed(history[0].to_event().as_bytes()), &w)?;
                }
            }
            (result, refusal) => {
                return Err(TestCaseError::fail(format!(
                    "message {i} ({message_type:?}): got {result:?}, expected {refusal:?}"
                )));
            }
        }
    }
    let (more, more_items) = read_items(&mut body, &mut parser, 0, sent).await;
    bytes.extend_from_slice(&more);
    items.extend(more_items);
    check_items(&items, &want)?;
    // The same bytes, cut anywhere.
    let mut again = Parser::new();
    check_items(&feed_split(&mut again, &bytes, &cuts, false), &want)?;
    prop_assert!(!bytes.contains(&b'\r'));
    Ok(())
}

async fn check_sse_stream(
    frames: Vec<Frame>,
    window: u64,
    shutdown: bool,
    cuts: Vec<Index>,
) -> Result<(), TestCaseError> {
    let mut events = Vec::new();
    let mut want = vec![(SseItem::Comment(" connected".to_owned()), None)];
    let mut browser = Browser::default();
    for frame in &frames {
        if let (Ok(ev), Ok(expected)) = encode(frame) {
            events.push(ev);
            browser.apply(&expected, &mut want);
        }
    }
    let signal = Shutdown::new();
    let source = futures_util::stream::iter(events);
    let mut body = if shutdown {
        // The source never ends: only the shutdown ends the stream.
        SseStream::new(source.chain(futures_util::stream::pending()))
            .config(
                StreamConfig::new()
                    .no_heartbeat()
                    .shutdown(&signal)
                    .retry_on_shutdown(Duration::from_millis(window)),
            )
            .into_response()
    } else {
        SseStream::new(source)
            .config(StreamConfig::new().no_heartbeat())
            .into_response()
    }
    .into_body()
    .into_data_stream();
    let mut bytes = if shutdown {
        // Everything sent before the shutdown cuts the stream.
        let (bytes, _) = read_items(&mut body, &mut Parser::new(), want.len(), 0).await;
        signal.trigger();
        bytes
    } else {
        Vec::new()
    };
    bytes.extend(read_to_end(&mut body).await);
    let last = if shutdown {
        EventExp {
            event: "htmx-sse-retry".to_owned(),
            data: DataExp::Exact(String::new()),
        }
    } else {
        EventExp {
            event: "close".to_owned(),
            data: DataExp::Exact("connection closed".to_owned()),
        }
    };
    browser.apply(
        &Expected {
            event: Some(last),
            ..Expected::default()
        },
        &mut want,
    );
    let mut parser = Parser::new();
    check_items(&feed_split(&mut parser, &bytes, &cuts, false), &want)?;
    prop_assert!(!bytes.contains(&b'\r'));
    if shutdown {
        let retry = parser.retry().expect("a retry: field");
        prop_assert!(retry <= window, "{} > {}", retry, window);
    } else {
        prop_assert_eq!(parser.retry(), browser.retry);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// The parser, fed in any chunks, says what the spec says of any bytes.
    #[test]
    fn the_parser_is_the_spec_in_any_chunks(
        stream in raw_stream(),
        cuts in proptest::collection::vec(any::<Index>(), 0..12),
        bytewise in proptest::bool::weighted(0.2),
    ) {
        let (items, last_event_id, retry) = interpret(&stream);
        let mut parser = Parser::new();
        let got = feed_split(&mut parser, &stream, &cuts, bytewise);
        prop_assert_eq!(&got, &items);
        prop_assert_eq!(parser.last_event_id(), last_event_id.as_str());
        prop_assert_eq!(parser.retry(), retry);
    }

    /// Every encoder, alone and several in a row: refused as documented,
    /// or exactly the intended events, and nothing else.
    #[test]
    fn every_frame_reads_back_exactly(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(any::<Index>(), 0..16),
        bytewise in proptest::bool::weighted(0.1),
    ) {
        check_frames(&frames, &cuts, bytewise)?;
    }

    /// The broadcast path: the connection (and reset) event, then each
    /// published message, encoded once and tagged with the connection's id,
    /// exactly; refused types are refused as documented.
    #[test]
    fn broadcast_frames_read_back_exactly(
        open in open(),
        messages in proptest::collection::vec(publish(), 1..4),
        cuts in proptest::collection::vec(any::<Index>(), 0..16),
    ) {
        RUNTIME.block_on(check_broadcast(open, messages, cuts))?;
    }

    /// `SseStream`: its initial comment, the frames, then the close event; or,
    /// ended by a shutdown with `retry_on_shutdown`, the retry event with a
    /// delay within the window.
    #[test]
    fn sse_stream_frames_read_back_exactly(
        frames in proptest::collection::vec(frame(), 0..4),
        window in prop_oneof![0u64..10_000, any::<u64>()],
        shutdown in any::<bool>(),
        cuts in proptest::collection::vec(any::<Index>(), 0..16),
    ) {
        RUNTIME.block_on(check_sse_stream(frames, window, shutdown, cuts))?;
    }
}
