//! `Fanout`: what every connection of a manager shares, and the one timer task
//! that gives all of them their heartbeats and the shutdown.
//!
//! A connection keeps no timer and no shutdown future of its own: the
//! manager's task counts *ticks*, a quarter of the heartbeat interval each,
//! and wakes the connections that have been quiet for [`BEATS`] ticks; on
//! shutdown it raises one flag and wakes them all. That keeps a `Sleep` and a
//! cancellation future (about 180 bytes) and their timer-wheel entries out of
//! every idle connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::stage::{Filter, Stored};
use super::subscriber::{OFF, Roster, Subscriber};
use crate::connections::ConnectionState;
use crate::event::Event;
use crate::streaming::{Shutdown, StreamConfig};

/// A connection quiet for this many ticks gets a heartbeat: with a tick of a
/// quarter of the interval, the quiet before a heartbeat is between ¾ of the
/// interval and the interval, and an idle connection gets one per interval.
pub(crate) const BEATS: u32 = 4;

/// Ticks without a frame written (three heartbeat intervals, two missed
/// heartbeats) after which a connection counts as stalled.
const STALLED: u32 = 3 * BEATS;

/// The shortest tick, however short the heartbeat interval.
const MIN_TICK: Duration = Duration::from_millis(1);

/// The stream settings and signals of a manager's connections.
pub(crate) struct Fanout {
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) close: Option<Event>,
    /// See `StreamConfig::retry_on_shutdown`.
    pub(crate) shutdown_retry: Option<Duration>,
    pub(crate) debug: bool,
    pub(crate) coalesce: bool,
    /// See `StreamConfig::compression`.
    #[cfg(feature = "compression")]
    pub(crate) compression: Option<crate::streaming::Compression>,
    pub(crate) filter: Option<Arc<Filter>>,
    /// What goes to everyone and to topics.
    pub(crate) ring: Ring,
    /// The connections waiting for a message in the ring.
    waiting: Waiting,
    /// Ticks since the timer task started (wrapping).
    tick: AtomicU32,
    /// The manager's shutdown signal was seen.
    shut: AtomicBool,
    /// What `htmx_sse::metrics` reports (off until registered).
    pub(crate) meter: super::meter::Meter,
}

impl Fanout {
    pub(crate) fn new(
        config: &StreamConfig,
        filter: Option<Arc<Filter>>,
        queue_capacity: usize,
    ) -> Self {
        Fanout {
            ring: Ring::new(queue_capacity),
            waiting: Waiting::default(),
            heartbeat: config.heartbeat,
            timeout: config.timeout,
            close: config.close.clone(),
            shutdown_retry: config.shutdown_retry,
            debug: config.debug,
            coalesce: config.coalesce,
            #[cfg(feature = "compression")]
            compression: config.compression,
            filter,
            tick: AtomicU32::new(0),
            shut: AtomicBool::new(false),
            meter: super::meter::Meter::default(),
        }
    }

    /// The current tick, to stamp a connection's last frame with.
    pub(crate) fn tick(&self) -> u32 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Whether a connection whose last frame went out at tick `sent` is due
    /// a heartbeat.
    pub(crate) fn heartbeat_due(&self, sent: u32) -> bool {
        self.heartbeat.is_some() && self.tick().wrapping_sub(sent) >= BEATS
    }

    /// Lists `subscriber` among the connections a message for them wakes
    /// (once, however often it is called before such a message). The
    /// caller has registered its waker and looks at the ring again
    /// afterwards.
    ///
    /// Returns, when it lists `subscriber`, the ring position from which every
    /// message is looked at for it while it stays listed; `None` when it
    /// was listed already (since the position returned then).
    pub(crate) fn wait_for_ring(&self, subscriber: &Arc<Subscriber>) -> Option<u64> {
        let mut w = self.waiting.list.lock();
        if let Place::Listed(_) = place(subscriber.waiting.load(Ordering::Relaxed)) {
            return None;
        }
        let at = w.subscribers.len();
        w.subscribers.push(Arc::clone(subscriber));
        subscriber.waiting.store(listed(at), Ordering::Relaxed);
        Some(w.passed)
    }

    /// Takes `subscriber` off the waiting list (its connection is gone).
    pub(crate) fn stop_waiting(&self, subscriber: &Arc<Subscriber>) {
        let mut w = self.waiting.list.lock();
        if w.unlist(subscriber) {
            subscriber.waiting.store(OFF, Ordering::Relaxed);
        }
    }

    /// After a message for everyone was pushed at ring position `pos`:
    /// wakes the waiting connections it is for (`wants`: all but those it
    /// excludes); the others stay listed, and may skip it unread.
    ///
    /// Called for every push, in ring order (under the manager's lock).
    pub(crate) fn wake_ring_waiters(&self, pos: u64, wants: impl Fn(&Subscriber) -> bool) {
        let mut woken = self.waiting.spare.lock();
        {
            let mut w = self.waiting.list.lock();
            // Take the whole list (its room goes on as the spare), then put
            // back the ones it is not for.
            std::mem::swap(&mut w.subscribers, &mut *woken);
            woken.retain(|subscriber| {
                if wants(subscriber) {
                    subscriber.waiting.store(woken_at(pos), Ordering::Release);
                    true
                } else {
                    subscriber
                        .waiting
                        .store(listed(w.subscribers.len()), Ordering::Relaxed);
                    w.subscribers.push(Arc::clone(subscriber));
                    false
                }
            });
            w.passed = pos + 1;
        }
        for subscriber in woken.drain(..) {
            subscriber.waker.wake();
        }
    }

    /// After the message at ring position `pos` was pushed to topics: wakes
    /// those of the connections `each` names (the ones it is for) that are
    /// waiting. Nothing else on the list is looked at: a topic message costs
    /// what its listeners cost, however many connections wait for others.
    ///
    /// Called for every push, in ring order (under the manager's lock).
    pub(crate) fn wake_these(&self, pos: u64, each: impl FnOnce(&mut dyn FnMut(&Arc<Subscriber>))) {
        let mut woken = self.waiting.spare.lock();
        {
            let mut w = self.waiting.list.lock();
            each(&mut |subscriber| {
                if w.unlist(subscriber) {
                    subscriber.waiting.store(woken_at(pos), Ordering::Release);
                    woken.push(Arc::clone(subscriber));
                }
            });
            w.passed = pos + 1;
        }
        for subscriber in woken.drain(..) {
            subscriber.waker.wake();
        }
    }

    /// Where a connection woken by a push may read from instead of `pos`:
    /// the position of that push, when it was listed from `since` or
    /// before, so that it does not read through the messages for others
    /// pushed while it waited. Lock-free: `None` unless it was woken.
    pub(crate) fn woken_at(&self, subscriber: &Subscriber, pos: u64, since: u64) -> Option<u64> {
        match place(subscriber.waiting.load(Ordering::Acquire)) {
            Place::Woken(at) if pos >= since && at > pos => Some(at),
            _ => None,
        }
    }

    /// Where a connection that was listed from ring position `since` may
    /// read from instead of `pos` once `pos` has left the ring, skipping only
    /// messages that were not for it: those pushed while it was listed that
    /// did not wake it. `None` when nothing is known to be skippable (it was
    /// never listed, or `pos` is before `since`). Takes the list's lock: for
    /// the rare lag, where a woken connection has already jumped
    /// ([`woken_at`](Self::woken_at)) and a listed one was woken by
    /// something else (a heartbeat, a message for it alone).
    pub(crate) fn skippable(&self, subscriber: &Subscriber, pos: u64, since: u64) -> Option<u64> {
        if pos < since {
            return None;
        }
        let w = self.waiting.list.lock();
        match place(subscriber.waiting.load(Ordering::Acquire)) {
            Place::Listed(_) => Some(w.passed.max(pos)),
            Place::Woken(at) => Some(at.max(pos)),
            Place::Off => None,
        }
    }

    /// Marks the manager as shutting down; the caller wakes the connections.
    pub(crate) fn mark_shut(&self) {
        self.shut.store(true, Ordering::Release);
    }

    /// Whether the manager is shutting down.
    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Acquire)
    }

    /// The timer task: ticks (with a heartbeat) and the shutdown. Ends when
    /// the manager is gone or once it has shut every connection.
    pub(crate) async fn run(self: Arc<Self>, manager: Weak<dyn Roster>, shutdown: Shutdown) {
        let mut ticks = self.heartbeat.map(|every| {
            let period = (every / BEATS).max(MIN_TICK);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            // A late tick is not made up for with a burst of heartbeats.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        let mut due: Vec<Arc<Subscriber>> = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.triggered() => {
                    self.mark_shut();
                    if let Some(inner) = manager.upgrade() {
                        inner.each_subscriber(&mut |subscriber| due.push(Arc::clone(subscriber)));
                    }
                    tracing::debug!(connections = due.len(), "shutdown: ending every connection");
                    for subscriber in due.drain(..) {
                        subscriber.waker.wake();
                    }
                    return;
                }
                () = next_tick(ticks.as_mut()) => {
                    let tick = self.tick.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                    let Some(inner) = manager.upgrade() else { return };
                    // Collected under the manager's lock, woken after it.
                    inner.each_subscriber(&mut |subscriber| {
                        let quiet = tick.wrapping_sub(subscriber.sent.load(Ordering::Relaxed));
                        if quiet >= STALLED && subscriber.flags() & Subscriber::LAGGED == 0 {
                            // Woken for a heartbeat every interval and still
                            // nothing written: its socket takes nothing (the
                            // client stopped reading). Closed as lagging (it
                            // resumes from the history if it reads again),
                            // and not counted active from now on.
                            tracing::debug!(connection = %subscriber.entry.id(), "stalled: closing");
                            subscriber.flag(Subscriber::LAGGED);
                            subscriber.entry.set_state(ConnectionState::Error);
                        }
                        if quiet >= BEATS {
                            due.push(Arc::clone(subscriber));
                        }
                    });
                    drop(inner);
                    for subscriber in due.drain(..) {
                        subscriber.waker.wake();
                    }
                }
            }
        }
    }
}

/// The connections waiting for a message in the ring. Each connection's
/// `Subscriber` knows where it stands (`Subscriber::waiting`, see [`Place`]), so it
/// is listed once and leaves in O(1). A push wakes the listed connections
/// it is for and keeps the others; its position tells a woken connection
/// that every message before it, since it was listed, was not for it.
#[derive(Default)]
struct Waiting {
    list: Mutex<WaitList>,
    /// The connections the last push woke, emptied: its room is kept for
    /// the next.
    spare: Mutex<Vec<Arc<Subscriber>>>,
}

#[derive(Default)]
struct WaitList {
    subscribers: Vec<Arc<Subscriber>>,
    /// Every push before this ring position has woken whom it was for.
    passed: u64,
}

impl WaitList {
    /// Takes `subscriber` off the list if it is on it (the caller marks it).
    fn unlist(&mut self, subscriber: &Arc<Subscriber>) -> bool {
        let Place::Listed(at) = place(subscriber.waiting.load(Ordering::Relaxed)) else {
            return false;
        };
        if at >= self.subscribers.len() || !Arc::ptr_eq(&self.subscribers[at], subscriber) {
            return false;
        }
        self.subscribers.swap_remove(at);
        if let Some(moved) = self.subscribers.get(at) {
            moved.waiting.store(listed(at), Ordering::Relaxed);
        }
        true
    }
}

/// Where a connection stands with the waiting list, in one word
/// (`Subscriber::waiting`). It changes only under the list's lock, and a woken
/// mark only when the connection lists itself again: so the connection
/// reads its own woken mark without the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Not listed, and not woken by a push since it last was.
    Off,
    /// Listed, at this index.
    Listed(usize),
    /// Woken by the push at this ring position: the first message, since
    /// it was listed, that was for it.
    Woken(u64),
}

/// Marks a woken connection; the rest of the word is the ring position.
const WOKEN: u64 = 1 << 63;

fn listed(index: usize) -> u64 {
    index as u64 + 1
}

fn woken_at(pos: u64) -> u64 {
    WOKEN | pos
}

fn place(word: u64) -> Place {
    if word & WOKEN != 0 {
        Place::Woken(word & !WOKEN)
    } else if word == OFF {
        Place::Off
    } else {
        Place::Listed(usize::try_from(word - 1).unwrap_or(usize::MAX))
    }
}

/// The messages for everyone and for topics, newest last, each shared by
/// every connection: a connection keeps only its position in the ring, and
/// is woken through its `Subscriber` when a message is added. One that falls
/// `capacity` messages behind has lagged (it is closed and resumes from the
/// history).
pub(crate) struct Ring {
    buf: RwLock<RingBuf>,
    capacity: usize,
}

struct RingBuf {
    items: VecDeque<Arc<Stored>>,
    /// The position of `items[0]`: how many messages left the ring.
    start: u64,
    /// The manager is gone: nothing more will be added.
    closed: bool,
}

/// What a connection finds at its position in the ring.
pub(crate) enum Read {
    Message(Arc<Stored>),
    /// Nothing yet.
    Empty,
    /// This many messages left the ring before the connection read them.
    Lagged(u64),
    /// Nothing more will come.
    Closed,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Ring {
            buf: RwLock::new(RingBuf {
                items: VecDeque::with_capacity(capacity.min(4096)),
                start: 0,
                closed: false,
            }),
            capacity,
        }
    }

    /// The position of the next message added: where a new connection
    /// starts.
    pub(crate) fn end(&self) -> u64 {
        let buf = self.buf.read();
        buf.start + buf.items.len() as u64
    }

    /// Adds a message and returns its position; the caller wakes the
    /// connections.
    pub(crate) fn push(&self, stored: Arc<Stored>) -> u64 {
        let mut buf = self.buf.write();
        if buf.items.len() == self.capacity {
            buf.items.pop_front();
            buf.start += 1;
        }
        buf.items.push_back(stored);
        buf.start + buf.items.len() as u64 - 1
    }

    /// The message at position `pos`.
    pub(crate) fn read(&self, pos: u64) -> Read {
        let buf = self.buf.read();
        if pos < buf.start {
            return Read::Lagged(buf.start - pos);
        }
        let at = usize::try_from(pos - buf.start).unwrap_or(usize::MAX);
        match buf.items.get(at) {
            Some(stored) => Read::Message(Arc::clone(stored)),
            None if buf.closed => Read::Closed,
            None => Read::Empty,
        }
    }

    /// Hands `f` the messages from position `pos` on, in order, under one
    /// read of the ring, until `f` returns `false` or the ring ends;
    /// returns how many `f` took. None when `pos` has left the ring (the
    /// caller's [`read`](Self::read) tells it so).
    pub(crate) fn run(&self, pos: u64, mut f: impl FnMut(&Stored) -> bool) -> u64 {
        let buf = self.buf.read();
        let Some(from) = pos
            .checked_sub(buf.start)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|&at| at < buf.items.len())
        else {
            return 0;
        };
        let mut taken = 0;
        for stored in buf.items.range(from..) {
            if !f(stored) {
                break;
            }
            taken += 1;
        }
        taken
    }

    /// Nothing more will be added; the caller wakes the connections.
    pub(crate) fn close(&self) {
        self.buf.write().closed = true;
    }
}

async fn next_tick(ticks: Option<&mut tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::response::IntoResponse as _;
    use tokio::time::Instant;
    use tokio_stream::StreamExt as _;

    use crate::BroadcastManager;
    use crate::streaming::StreamConfig;

    type Body = axum::body::BodyDataStream;

    fn manager(heartbeat: Duration) -> BroadcastManager {
        BroadcastManager::builder()
            .stream(StreamConfig::new().heartbeat(heartbeat))
            .build()
    }

    fn open(manager: &BroadcastManager) -> (crate::connections::ConnectionId, Body) {
        let c = manager.connect(None, serde_json::Value::Null).unwrap();
        let id = c.id().clone();
        (id, c.into_response().into_body().into_data_stream())
    }

    /// Asserts that the stream ends (within 5 s) with nothing more.
    async fn assert_ends(body: &mut Body) {
        let end = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
        let end = end.expect("the stream did not end");
        assert!(end.is_none(), "{end:?}");
    }

    async fn next(body: &mut Body) -> String {
        let chunk = body.next().await.unwrap().unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gets_one_heartbeat_per_interval() {
        let m = manager(Duration::from_secs(1));
        let (_, mut body) = open(&m);
        let t0 = Instant::now();
        assert!(next(&mut body).await.starts_with("event: connection\n"));
        for n in 1..=3 {
            assert_eq!(next(&mut body).await, ":\n\n");
            assert_eq!(t0.elapsed(), Duration::from_secs(n));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_postpones_the_heartbeat_by_three_quarters_to_one_interval() {
        let m = manager(Duration::from_secs(1));
        let (_, mut body) = open(&m);
        next(&mut body).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        m.broadcast("n", "1", None, &[]).await.unwrap();
        assert!(next(&mut body).await.contains("data: 1\n"));
        let sent = Instant::now();
        assert_eq!(next(&mut body).await, ":\n\n");
        let quiet = sent.elapsed();
        assert!(
            quiet >= Duration::from_millis(750) && quiet <= Duration::from_secs(1),
            "{quiet:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_gets_no_heartbeat_while_a_quiet_one_does() {
        let m = manager(Duration::from_secs(1));
        let (busy_id, mut busy) = open(&m);
        let (_, mut quiet) = open(&m);
        next(&mut busy).await;
        next(&mut quiet).await;
        let t0 = Instant::now();
        // Both bodies are read as hyper reads them: all along.
        let read = |mut body: Body| {
            tokio::spawn(async move {
                let mut chunks = Vec::new();
                while let Ok(Some(chunk)) =
                    tokio::time::timeout_at(t0 + Duration::from_millis(3100), body.next()).await
                {
                    let chunk = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
                    chunks.push((t0.elapsed(), chunk));
                }
                chunks
            })
        };
        let (busy, quiet) = (read(busy), read(quiet));
        for n in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            m.send_to(&busy_id, "n", n, None).await.unwrap();
        }
        let busy = busy.await.unwrap();
        assert_eq!(busy.len(), 10, "{busy:?}");
        assert!(busy.iter().all(|(_, c)| c.contains("data: ")), "{busy:?}");
        let secs = Duration::from_secs;
        let heartbeat = ":\n\n".to_owned();
        assert_eq!(
            quiet.await.unwrap(),
            [
                (secs(1), heartbeat.clone()),
                (secs(2), heartbeat.clone()),
                (secs(3), heartbeat)
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_ends_open_and_later_connections_without_the_close_message() {
        let m = manager(Duration::from_secs(15));
        let (_, mut open_before) = open(&m);
        next(&mut open_before).await;
        m.shutdown();
        assert_ends(&mut open_before).await;
        let (_, mut after) = open(&m);
        assert_ends(&mut after).await;
        assert_eq!(m.connection_count(), 0);
    }

    #[tokio::test]
    async fn the_timer_task_ends_with_the_manager() {
        let m = manager(Duration::from_millis(10));
        let (_, body) = open(&m);
        let fanout = std::sync::Arc::downgrade(&m.inner.fanout);
        drop(body);
        drop(m);
        for _ in 0..100 {
            if fanout.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fanout outlived its manager");
    }

    #[tokio::test]
    async fn a_connection_lags_when_more_than_the_queue_capacity_is_waiting() {
        // Three, not a power of two: the ring keeps exactly the capacity.
        let m = BroadcastManager::builder().queue_capacity(3).build();
        let (_, mut body) = open(&m);
        next(&mut body).await;
        for n in 0..3 {
            m.broadcast("n", n, None, &[]).await.unwrap();
        }
        // Three waiting: all arrive, in one chunk.
        let chunk = next(&mut body).await;
        assert_eq!(chunk.matches("data: ").count(), 3, "{chunk}");
        for n in 3..7 {
            m.broadcast("n", n, None, &[]).await.unwrap();
        }
        // Four waiting: the connection ends, without the close message.
        assert_ends(&mut body).await;
        assert_eq!(m.connection_count(), 0);
    }

    #[tokio::test]
    async fn dropping_the_manager_ends_its_connections_after_what_was_sent() {
        let m = manager(Duration::from_secs(15));
        let (_, mut body) = open(&m);
        next(&mut body).await;
        m.broadcast("n", "last", None, &[]).await.unwrap();
        drop(m);
        let wait = Duration::from_secs(5);
        let rest = tokio::time::timeout(wait, async {
            let mut rest = String::new();
            while let Some(chunk) = body.next().await {
                rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            }
            rest
        })
        .await
        .unwrap();
        assert!(rest.contains("data: last\n\n"), "{rest}");
        assert!(
            rest.ends_with("event: close\ndata: connection closed\n\n"),
            "{rest}"
        );
    }

    #[test]
    fn a_connection_opened_outside_a_runtime_still_gets_heartbeats() {
        let m = manager(Duration::from_secs(1));
        let (_, mut body) = open(&m);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let t0 = Instant::now();
            assert!(next(&mut body).await.starts_with("event: connection\n"));
            let beat = tokio::time::timeout(Duration::from_secs(5), next(&mut body)).await;
            assert_eq!(beat.expect("no heartbeat: no timer task"), ":\n\n");
            assert_eq!(t0.elapsed(), Duration::from_secs(1));
        });
    }

    #[tokio::test]
    async fn the_ring_wakes_only_waiting_connections_and_forgets_those_gone() {
        use futures_util::FutureExt as _;
        let m = manager(Duration::from_secs(15));
        let waiting = || m.inner.fanout.waiting.list.lock().subscribers.len();
        let mut bodies: Vec<Body> = (0..3).map(|_| open(&m).1).collect();
        for body in &mut bodies {
            assert!(next(body).await.starts_with("event: connection\n"));
            // Nothing more: the connection waits, listed once however
            // often it is polled.
            assert!(body.next().now_or_never().is_none());
            assert!(body.next().now_or_never().is_none());
        }
        assert_eq!(waiting(), 3);
        // Gone while waiting: off the list at once (the last one moves into
        // the first one's place, and leaves from there).
        let last = bodies.pop().unwrap();
        drop(bodies.remove(0));
        assert_eq!(waiting(), 2);
        drop(last);
        assert_eq!(waiting(), 1);
        // A push wakes (and unlists) the one left, which gets the message.
        m.broadcast("n", "1", None, &[]).await.unwrap();
        assert_eq!(waiting(), 0);
        assert!(next(&mut bodies[0]).await.contains("data: 1\n"));
        assert!(bodies[0].next().now_or_never().is_none());
        assert_eq!(waiting(), 1);
    }

    /// A manager whose connections may have 4 messages waiting, a plain
    /// connection and one on topic `t`, both past their connection event.
    async fn plain_and_listener(
        heartbeat: Option<Duration>,
    ) -> (
        BroadcastManager,
        crate::connections::ConnectionId,
        Body,
        Body,
    ) {
        use crate::broadcast::Subscription;
        use crate::topics::TopicSelector;
        let config = match heartbeat {
            Some(every) => StreamConfig::new().heartbeat(every),
            None => StreamConfig::new().no_heartbeat(),
        };
        let m = BroadcastManager::builder()
            .queue_capacity(4)
            .stream(config)
            .build();
        let (id, mut plain) = open(&m);
        let sub = Subscription::new().topics(vec![TopicSelector::new("t").unwrap()]);
        let c = m.subscribe(sub, None, serde_json::Value::Null).unwrap();
        let mut listener = c.into_response().into_body().into_data_stream();
        next(&mut plain).await;
        next(&mut listener).await;
        (m, id, plain, listener)
    }

    /// Sends `n` messages on topic `t`, each read by `listener` before the
    /// next.
    async fn topic_messages(m: &BroadcastManager, listener: &mut Body, n: usize) {
        for i in 0..n {
            m.message("t", i)
                .topics([crate::topics::Topic::new("t").unwrap()])
                .send()
                .await
                .unwrap();
            assert!(next(listener).await.contains(&format!("data: {i}\n")));
        }
    }

    #[tokio::test]
    async fn a_topic_message_wakes_only_the_waiting_connections_it_is_for() {
        use futures_util::FutureExt as _;
        let (m, _, mut plain, mut listener) = plain_and_listener(None).await;
        let waiting = || m.inner.fanout.waiting.list.lock().subscribers.len();
        assert!(plain.next().now_or_never().is_none());
        assert!(listener.next().now_or_never().is_none());
        assert_eq!(waiting(), 2);
        m.message("t", "1")
            .topics([crate::topics::Topic::new("t").unwrap()])
            .send()
            .await
            .unwrap();
        // The listener was woken and left the list; the plain connection
        // is still listed: the message did not touch it.
        assert_eq!(waiting(), 1);
        assert!(next(&mut listener).await.contains("data: 1\n"));
        assert!(listener.next().now_or_never().is_none());
        assert_eq!(waiting(), 2);
        assert!(plain.next().now_or_never().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_after_skipped_topic_messages_is_not_a_lag() {
        let (m, _, mut plain, mut listener) =
            plain_and_listener(Some(Duration::from_secs(1))).await;
        // Ten messages for the other connection: more than the plain one
        // may have waiting, none for it, none woke it.
        topic_messages(&m, &mut listener, 10).await;
        // The timer wakes it while it is still listed: a heartbeat, not
        // the end of the stream.
        assert_eq!(next(&mut plain).await, ":\n\n");
        m.broadcast("all", "x", None, &[]).await.unwrap();
        assert!(next(&mut plain).await.contains("data: x\n"));
        assert_eq!(m.connection_count(), 2);
    }

    #[tokio::test]
    async fn a_message_to_one_after_skipped_topic_messages_is_not_a_lag() {
        let (m, plain_id, mut plain, mut listener) = plain_and_listener(None).await;
        topic_messages(&m, &mut listener, 10).await;
        m.send_to(&plain_id, "direct", "d", None).await.unwrap();
        assert!(next(&mut plain).await.contains("data: d\n"));
        m.broadcast("all", "x", None, &[]).await.unwrap();
        assert!(next(&mut plain).await.contains("data: x\n"));
        assert_eq!(m.connection_count(), 2);
    }

    #[tokio::test]
    async fn broadcasts_that_exclude_a_waiting_connection_do_not_make_it_lag() {
        let m = BroadcastManager::builder()
            .queue_capacity(4)
            .stream(StreamConfig::new().no_heartbeat())
            .build();
        let (me, mut mine) = open(&m);
        let (_, mut other) = open(&m);
        next(&mut mine).await;
        next(&mut other).await;
        for n in 0..10 {
            m.broadcast("n", n, None, std::slice::from_ref(&me))
                .await
                .unwrap();
            assert!(next(&mut other).await.contains(&format!("data: {n}\n")));
        }
        m.broadcast("n", "all", None, &[]).await.unwrap();
        let chunk = next(&mut mine).await;
        assert_eq!(chunk.matches("data: ").count(), 1, "{chunk}");
        assert!(chunk.contains("data: all\n"), "{chunk}");
        assert_eq!(m.connection_count(), 2);
    }

    #[tokio::test]
    async fn frames_are_the_same_written_in_place_logged_or_coalesced() {
        // Without logging or coalescing the feed writes each frame into the
        // chunk itself; with either, it hands the frame over in parts.
        let configs = [
            StreamConfig::new(),
            StreamConfig::new().debug(true),
            StreamConfig::new().coalesce_by_event(true),
        ];
        for config in configs {
            let m = BroadcastManager::builder()
                .stream(config.no_heartbeat())
                .build();
            let (id, mut body) = open(&m);
            let opening = next(&mut body).await;
            let start = opening
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap()
                .to_owned();
            let epoch = start.split('-').next().unwrap().to_owned();
            // `ID.PROOF`, the same in every id of the connection.
            let tag = start.split_once('.').unwrap().1.to_owned();
            assert!(tag.starts_with(&format!("{id}.")), "{start}");
            assert_eq!(start, format!("{epoch}-0.{tag}"));
            m.send_to(&id, "b", "2", None).await.unwrap();
            for (name, data) in [("a", "1"), ("c", "3")] {
                m.broadcast(name, data, None, &[]).await.unwrap();
            }
            let mut text = String::new();
            while text.matches("data: ").count() < 3 {
                text.push_str(&next(&mut body).await);
            }
            assert_eq!(
                text,
                format!(
                    "id: {epoch}-1.{tag}\nevent: b\ndata: 2\n\n\
                     id: {epoch}-2.{tag}\nevent: a\ndata: 1\n\n\
                     id: {epoch}-3.{tag}\nevent: c\ndata: 3\n\n"
                )
            );
        }
    }

    #[tokio::test]
    async fn a_message_to_one_between_broadcasts_goes_out_in_its_place() {
        let m = manager(Duration::from_secs(15));
        let (id, mut body) = open(&m);
        next(&mut body).await;
        // All five wait before the connection is polled again: the run of
        // broadcasts written in place must stop at the message for it alone.
        m.broadcast("n", "1", None, &[]).await.unwrap();
        m.broadcast("n", "2", None, &[]).await.unwrap();
        m.send_to(&id, "n", "3", None).await.unwrap();
        m.broadcast("n", "4", None, &[]).await.unwrap();
        m.send_to(&id, "n", "5", None).await.unwrap();
        let mut text = String::new();
        while text.matches("data: ").count() < 5 {
            text.push_str(&next(&mut body).await);
        }
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data, ["1", "2", "3", "4", "5"], "{text}");
    }

    #[tokio::test]
    async fn topic_messages_for_others_do_not_make_a_connection_lag() {
        use crate::topics::Topic;
        // Room for 4 waiting messages; 10 go by on a topic that only the
        // second connection listens to.
        let (m, _, plain, listener) = plain_and_listener(None).await;
        let read_all = |body: Body| {
            tokio::spawn(async move {
                let mut body = body;
                let mut text = String::new();
                while let Ok(Some(chunk)) =
                    tokio::time::timeout(Duration::from_millis(500), body.next()).await
                {
                    text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
                }
                (text, body)
            })
        };
        let plain = read_all(plain);
        let listener = read_all(listener);
        for n in 0..10 {
            m.message("t", n)
                .topics([Topic::new("t").unwrap()])
                .send()
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        m.broadcast("all", "x", None, &[]).await.unwrap();
        let (plain, _open) = plain.await.unwrap();
        let (listener, _still_open) = listener.await.unwrap();
        // The first connection got the broadcast, and nothing else: it was
        // not closed for the topic messages it skipped.
        assert_eq!(plain.matches("data: ").count(), 1, "{plain}");
        assert!(plain.ends_with("data: x\n\n"), "{plain}");
        assert_eq!(listener.matches("data: ").count(), 11, "{listener}");
        assert_eq!(m.connection_count(), 2);
    }
}
