//! Micro-benchmarks (criterion): `cargo bench --bench micro`.
//!
//! Each of the crate's building blocks against the simplest hand-written
//! code that produces the same bytes:
//!
//! - frame encoding: `Event::builder()…build()` and `Event::message` against
//!   `format!("event: {}\nid: {}\ndata: {}\n\n", …)` and
//!   `format!("data: {}\n\n", …)` (which, unlike the crate, neither checks
//!   the name and id for CR/LF nor splits multi-line data);
//! - fragment rendering: an askama template and a maud `html!` through
//!   `htmx_sse::Fragment` against the engine's own `String` and a
//!   `format!` (without escaping: the inputs need none);
//! - out-of-band updates: `OobStreamBuilder` against a `format!` of the same
//!   HTML;
//! - a topic message among many idle connections (`topics`): 1,000 or
//!   10,000 connections in one process, ten on each topic, every one a
//!   task reading its response body; one message to one topic, timed until
//!   its ten listeners have it. The crate (`BroadcastManager` with
//!   `Subscription::topics`) against one `tokio::sync::broadcast` channel
//!   per topic under axum's `Sse`, the twenty lines a user would write
//!   (which cost nothing per connection that does not listen). What it
//!   shows is whether the crate's cost grows with the listeners or with
//!   every connection.
//!
//! Every pair is checked to produce the same bytes before it is timed. After
//! the run, the means are read back from criterion's `estimates.json` and
//! printed as ratios (crate ÷ hand-written), also written to
//! `target/bench/micro.md`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use askama::Template;
use criterion::Criterion;
use htmx_sse::streaming::{OobStreamBuilder, Swap};
use htmx_sse::{Event, Fragment};

/// 256 bytes of HTML on one line, as the fan-out benchmark sends.
fn html() -> String {
    let mut s = String::from("<li class=\"msg\" id=\"m-42\"><b>alice</b> ");
    while s.len() < 256 - 5 {
        s.push('x');
    }
    s.push_str("</li>");
    s
}

#[derive(Template)]
#[template(
    source = "<li class=\"item\" id=\"item-{{ id }}\"><b>{{ name }}</b> has {{ count }} new messages</li>",
    ext = "html"
)]
struct Item<'a> {
    id: u32,
    name: &'a str,
    count: u32,
}

fn maud_item(id: u32, name: &str, count: u32) -> maud::Markup {
    maud::html! {
        li class="item" id={ "item-" (id) } { b { (name) } " has " (count) " new messages" }
    }
}

fn hand_item(id: u32, name: &str, count: u32) -> String {
    format!("<li class=\"item\" id=\"item-{id}\"><b>{name}</b> has {count} new messages</li>")
}

fn oob_crate() -> Fragment {
    // HTML is a type: strings would go out as escaped text.
    OobStreamBuilder::new()
        .add("count", Swap::InnerHtml, "42")
        .add(
            "log",
            Swap::BeforeEnd,
            Fragment::trusted("<li>tick 42</li>"),
        )
        .add_unwrapped(
            "row-7",
            Swap::OuterHtml,
            Fragment::trusted("<tr id=\"row-7\"><td>seven</td></tr>"),
        )
        .build()
        .expect("valid ids")
}

htmx_sse::names! {
    /// The same targets, declared once (issue 21): typed targets must cost
    /// no more than strings.
    mod dash {
        events {}
        targets { COUNT = "count", LOG = "log", ROW = "row-7" }
    }
}

fn oob_typed() -> Fragment {
    OobStreamBuilder::new()
        .add(dash::COUNT, Swap::InnerHtml, "42")
        .add(
            dash::LOG,
            Swap::BeforeEnd,
            Fragment::trusted("<li>tick 42</li>"),
        )
        .add_unwrapped(
            dash::ROW,
            Swap::OuterHtml,
            Fragment::trusted("<tr id=\"row-7\"><td>seven</td></tr>"),
        )
        .build()
        .expect("valid ids")
}

fn oob_hand(count: &str, log: &str) -> String {
    format!(
        "<div id=\"count\" hx-swap-oob=\"innerHTML\">{count}</div>\
         <div id=\"log\" hx-swap-oob=\"beforeend\">{log}</div>\
         <tr hx-swap-oob=\"outerHTML:#row-7\" id=\"row-7\"><td>seven</td></tr>"
    )
}

/// The pairs: (group, crate's id, hand-written id).
const PAIRS: [(&str, &str, &str); 9] = [
    (
        "encode",
        "crate_builder_event_id_data",
        "format_event_id_data",
    ),
    ("encode", "crate_message", "format_data"),
    ("render", "askama_via_fragment", "format"),
    ("render", "maud_via_fragment", "format"),
    ("oob", "oob_stream_builder", "format"),
    ("oob", "oob_typed_targets", "oob_stream_builder"),
    ("topics", "crate_1k", "channels_1k"),
    ("topics", "crate_10k", "channels_10k"),
    ("topics", "crate_10k", "crate_1k"),
];

fn check_same_bytes() {
    let h = html();
    let built = Event::builder()
        .event("chat")
        .id("42")
        .data(h.clone())
        .build()
        .expect("valid");
    assert_eq!(
        built.as_bytes(),
        format!("event: chat\nid: 42\ndata: {h}\n\n").as_bytes()
    );
    assert_eq!(
        Event::message(&h).as_bytes(),
        format!("data: {h}\n\n").as_bytes()
    );
    let item = Item {
        id: 7,
        name: "alice",
        count: 3,
    };
    assert_eq!(
        Fragment::render(&item).expect("renders").as_str(),
        hand_item(7, "alice", 3)
    );
    assert_eq!(
        Fragment::from(maud_item(7, "alice", 3)).as_str(),
        hand_item(7, "alice", 3)
    );
    assert_eq!(oob_crate().as_str(), oob_hand("42", "<li>tick 42</li>"));
    assert_eq!(oob_typed().as_str(), oob_crate().as_str());
}

fn benches(c: &mut Criterion) {
    let h = html();

    let mut g = c.benchmark_group("encode");
    g.bench_function("crate_builder_event_id_data", |b| {
        b.iter(|| {
            Event::builder()
                .event(black_box("chat"))
                .id(black_box("42"))
                .data(black_box(h.as_str()).to_owned())
                .build()
                .expect("valid")
        });
    });
    g.bench_function("format_event_id_data", |b| {
        b.iter(|| {
            format!(
                "event: {}\nid: {}\ndata: {}\n\n",
                black_box("chat"),
                black_box("42"),
                black_box(h.as_str())
            )
        });
    });
    g.bench_function("crate_message", |b| {
        b.iter(|| Event::message(black_box(h.as_str())));
    });
    g.bench_function("format_data", |b| {
        b.iter(|| format!("data: {}\n\n", black_box(h.as_str())));
    });
    g.finish();

    let mut g = c.benchmark_group("render");
    g.bench_function("askama_via_fragment", |b| {
        b.iter(|| {
            let item = Item {
                id: black_box(7),
                name: black_box("alice"),
                count: black_box(3),
            };
            Fragment::render(&item).expect("renders")
        });
    });
    g.bench_function("askama_direct", |b| {
        b.iter(|| {
            let item = Item {
                id: black_box(7),
                name: black_box("alice"),
                count: black_box(3),
            };
            item.render().expect("renders")
        });
    });
    g.bench_function("maud_via_fragment", |b| {
        b.iter(|| Fragment::from(maud_item(black_box(7), black_box("alice"), black_box(3))));
    });
    g.bench_function("maud_direct", |b| {
        b.iter(|| maud_item(black_box(7), black_box("alice"), black_box(3)).into_string());
    });
    g.bench_function("format", |b| {
        b.iter(|| hand_item(black_box(7), black_box("alice"), black_box(3)));
    });
    g.finish();

    let mut g = c.benchmark_group("oob");
    g.bench_function("oob_stream_builder", |b| b.iter(|| black_box(oob_crate())));
    g.bench_function("oob_typed_targets", |b| b.iter(|| black_box(oob_typed())));
    g.bench_function("format", |b| {
        b.iter(|| oob_hand(black_box("42"), black_box("<li>tick 42</li>")));
    });
    g.finish();

    // One runtime thread, as a server with one core: every poll counts.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("topics");
    for (name, total) in [("1k", 1_000), ("10k", 10_000)] {
        let mut publish = crate_topics(total);
        g.bench_function(format!("crate_{name}"), |b| b.iter(|| publish(&rt, &h)));
        drop(publish);
        let mut publish = channel_topics(total);
        g.bench_function(format!("channels_{name}"), |b| b.iter(|| publish(&rt, &h)));
    }
    g.finish();
}

/// Listeners on each topic in the `topics` group.
const PER_TOPIC: usize = 10;

/// Connection bodies, each read by a task once the first message is timed
/// (so that building them is not timed), reporting every chunk it reads.
struct Readers {
    bodies: Option<Vec<axum::body::Body>>,
    /// The bodies start with a chunk of their own (the crate's
    /// `connection` event): read before the first message.
    opening: bool,
    chunks: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

impl Readers {
    fn new(bodies: Vec<axum::body::Body>, opening: bool) -> Self {
        Readers {
            bodies: Some(bodies),
            opening,
            chunks: None,
        }
    }

    /// Runs `publish` on `rt` and waits until [`PER_TOPIC`] chunks arrived.
    fn publish(&mut self, rt: &tokio::runtime::Runtime, publish: impl Future<Output = ()>) {
        let bodies = &mut self.bodies;
        let opening = self.opening;
        let chunks = self
            .chunks
            .get_or_insert_with(|| spawn_readers(rt, bodies.take().unwrap_or_default(), opening));
        rt.block_on(async {
            publish.await;
            for _ in 0..PER_TOPIC {
                chunks.recv().await.expect("a reader ended");
            }
        });
    }
}

/// Makes every body a task on `rt` that reads it and reports each chunk on
/// the returned channel; with `opening`, waits for the first chunk of each.
fn spawn_readers(
    rt: &tokio::runtime::Runtime,
    bodies: Vec<axum::body::Body>,
    opening: bool,
) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio_stream::StreamExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let total = bodies.len();
    rt.block_on(async {
        for body in bodies {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut body = body.into_data_stream();
                while let Some(Ok(_)) = body.next().await {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        if opening {
            for _ in 0..total {
                rx.recv().await.expect("a reader ended");
            }
        }
    });
    rx
}

/// The crate: `total` connections through `BroadcastManager::subscribe`,
/// [`PER_TOPIC`] on each topic.
fn crate_topics(total: usize) -> impl FnMut(&tokio::runtime::Runtime, &str) + use<> {
    use axum::response::IntoResponse as _;
    use htmx_sse::BroadcastManager;
    use htmx_sse::broadcast::Subscription;
    use htmx_sse::streaming::StreamConfig;
    use htmx_sse::topics::{Topic, TopicSelector};
    let topics: Vec<Topic> = (0..total / PER_TOPIC)
        .map(|t| Topic::new(&format!("room/{t}")).expect("valid"))
        .collect();
    let manager = BroadcastManager::builder()
        .stream(StreamConfig::new().no_heartbeat())
        .build();
    let bodies = (0..total)
        .map(|n| {
            let selector = TopicSelector::exact(&topics[n / PER_TOPIC]);
            let sub = Subscription::new().topics(vec![selector]);
            manager
                .subscribe(sub, None, serde_json::Value::Null)
                .into_response()
                .into_body()
        })
        .collect();
    let mut readers = Readers::new(bodies, true);
    let mut next = 0;
    move |rt, html| {
        let topic = topics[next % topics.len()].clone();
        next += 1;
        readers.publish(rt, async {
            let message = manager
                .message("message", htmx_sse::Fragment::trusted(html))
                .topics([topic]);
            message.send().await.expect("sent");
        });
    }
}

/// The baseline: a `tokio::sync::broadcast` channel per topic, each
/// connection axum's `Sse` over a `BroadcastStream` of its topic's channel.
fn channel_topics(total: usize) -> impl FnMut(&tokio::runtime::Runtime, &str) + use<> {
    use std::convert::Infallible;

    use axum::response::IntoResponse as _;
    use axum::response::sse::{Event as AxumEvent, Sse};
    use tokio_stream::StreamExt as _;
    use tokio_stream::wrappers::BroadcastStream;
    let senders: Vec<tokio::sync::broadcast::Sender<String>> = (0..total / PER_TOPIC)
        .map(|_| tokio::sync::broadcast::channel(256).0)
        .collect();
    let bodies = (0..total)
        .map(|n| {
            let stream = BroadcastStream::new(senders[n / PER_TOPIC].subscribe())
                .filter_map(Result::ok)
                .map(|msg| Ok::<_, Infallible>(AxumEvent::default().data(msg)));
            Sse::new(stream).into_response().into_body()
        })
        .collect();
    let mut readers = Readers::new(bodies, false);
    let mut next = 0;
    move |rt, html| {
        let sender = &senders[next % senders.len()];
        next += 1;
        readers.publish(rt, async {
            sender.send(html.to_owned()).expect("listeners");
        });
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The mean time of one benchmark, in nanoseconds, from criterion's output.
fn mean_ns(dir: &std::path::Path, group: &str, id: &str) -> Option<f64> {
    let path = dir.join(group).join(id).join("new").join("estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    check_same_bytes();
    let criterion_dir = target_dir().join("criterion");
    let mut c = Criterion::default()
        .output_directory(&criterion_dir)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    // Under `cargo test --benches` criterion runs each function once and
    // writes no estimates: nothing to compare.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut md = String::from(
        "| group | crate | hand-written | crate ns | hand-written ns | crate ÷ hand-written |\n|---|---|---|---|---|---|\n",
    );
    let mut rows = PAIRS.to_vec();
    rows.push(("render", "askama_via_fragment", "askama_direct"));
    rows.push(("render", "maud_via_fragment", "maud_direct"));
    for (group, ours, theirs) in rows {
        let (Some(a), Some(b)) = (
            mean_ns(&criterion_dir, group, ours),
            mean_ns(&criterion_dir, group, theirs),
        ) else {
            continue;
        };
        md.push_str(&format!(
            "| {group} | {ours} | {theirs} | {a:.1} | {b:.1} | {:.2}× |\n",
            a / b
        ));
    }
    println!("\n{md}");
    let out = target_dir().join("bench");
    if std::fs::create_dir_all(&out).is_ok() && std::fs::write(out.join("micro.md"), &md).is_ok() {
        println!("micro: table {}", out.join("micro.md").display());
    }
}
