//! `BroadcastManager`: numbering, history, and handing each message to the
//! connections it is for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::Subscription;
use super::data::{Data, IntoData};
use super::feed::{Feed, FeedBody, Intro};
use super::hub::{self, Hub};
use super::listeners::{Conn, Listeners};
use super::message::{BroadcastMessage, Epoch, MessageId, default_text};
use super::proof::{MIN_KEY_BYTES, ResumeKey};
use super::resume::ResumePoint;
use super::{CONNECTION_EVENT, Connection, RESET_EVENT, ResetReason};
use crate::backend::{Backend, Delivery, Envelope, Sink, Target};
use crate::connections::{
    ConnectionId, ConnectionRegistry, ConnectionState, Entry, Listing, RegistryStats, UserId,
};
use crate::error::Error;
use crate::event::{Event, EventName};
use crate::fragment::Fragment;
use crate::limits::{Limit, Limits};
use crate::streaming::{Shutdown, StreamConfig};
use crate::topics::{Topic, TopicSelector};

/// A message about to be published, as the renderer sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outgoing<'a> {
    /// Its type (the SSE event name).
    pub message_type: &'a EventName,
    /// Its data.
    pub data: &'a serde_json::Value,
    /// Its metadata.
    pub metadata: Option<&'a serde_json::Value>,
    /// When it is published.
    pub timestamp: DateTime<Utc>,
}

/// How long a publish through a shared backend waits for this instance to
/// read it back (then it returns with `delivered: 0` and a warning).
const OWN_DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

type Render = dyn Fn(&Outgoing<'_>) -> Result<Fragment, Error> + Send + Sync;

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The id the message got.
    pub id: MessageId,
    /// How many connections it was queued for.
    pub delivered: usize,
}

/// Where published messages travel: in memory (delivered at once, under
/// the lock: the fast path), or through a shared [`Backend`] and back.
#[derive(Debug)]
pub(crate) enum Transport {
    Memory,
    Shared(Arc<dyn Backend>),
}

/// A published message, encoded once, as every connection shares it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    /// `id: EPOCH-SEQ` (the receiving connection adds `.ID\n`).
    pub(crate) head: Bytes,
    /// `event: …\ndata: …\n\n`.
    pub(crate) body: Bytes,
    /// With the topic as event type: one body per topic, in topic order.
    pub(crate) topic_bodies: Option<Box<[Bytes]>>,
    pub(crate) target: Target,
    pub(crate) message: BroadcastMessage,
}

impl Stored {
    /// What it counts for in [`Limits::history_bytes`]: its encoded frames.
    fn weight(&self) -> usize {
        self.head.len()
            + self.body.len()
            + self
                .topic_bodies
                .as_deref()
                .map_or(0, |b| b.iter().map(Bytes::len).sum())
    }

    /// The body to send to this connection, or `None` when the message is
    /// not for it.
    pub(crate) fn body_for(&self, id: &ConnectionId, sub: &Subscription) -> Option<&Bytes> {
        let index = match &self.target {
            Target::All { exclude } => (!exclude.contains(id)).then_some(0),
            Target::One { to, user } => {
                (to == id && user.as_ref() == sub.user.as_ref()).then_some(0)
            }
            Target::Topics {
                topics,
                private,
                exclude,
            } => {
                if exclude.contains(id) {
                    None
                } else {
                    sub.wants(topics, *private)
                }
            }
            Target::User { user, exclude } => {
                (sub.user.as_ref() == Some(user) && !exclude.contains(id)).then_some(0)
            }
        }?;
        Some(match &self.topic_bodies {
            Some(bodies) => bodies.get(index).unwrap_or(&self.body),
            None => &self.body,
        })
    }
}

/// One connection's own queue (messages addressed to it alone), what it
/// listens to, and the flags that end it: shared by the manager's map and
/// the connection's feed.
#[derive(Debug)]
pub(crate) struct Direct {
    /// The connection as the registry lists it (its id among others).
    pub(crate) entry: Entry,
    /// `ID.PROOF`, written after `EPOCH-SEQ.` in every id it is sent.
    pub(crate) tag: Arc<str>,
    pub(crate) sub: Subscription,
    queue: Mutex<VecDeque<Arc<Stored>>>,
    /// How many messages wait in `queue`: changed under its lock, read
    /// without it, so that a connection with none (the usual case) does
    /// not take the lock for every message.
    queued: AtomicU32,
    pub(crate) waker: AtomicWaker,
    /// What the manager decided about the connection ([`Direct::LAGGED`],
    /// [`Direct::REPLACED`], [`Direct::STOPPED`]): one word, so that the
    /// feed checks all three with one load per message.
    pub(crate) flags: AtomicU8,
    /// The hub's tick when the connection last sent a frame: the timer task
    /// wakes it for a heartbeat when it has been quiet long enough.
    pub(crate) sent: AtomicU32,
    /// Where it stands with the hub's list of connections waiting for the
    /// ring, in one word: off it, on it at an index, or woken by the push
    /// at a ring position (see `hub::Place`).
    pub(crate) waiting: AtomicU64,
}

impl Direct {
    fn new(sub: Subscription, entry: Entry, tag: Arc<str>, tick: u32) -> Self {
        Direct {
            entry,
            tag,
            sub,
            sent: AtomicU32::new(tick),
            waiting: AtomicU64::new(hub::OFF),
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            queued: AtomicU32::new(0),
        }
    }

    /// Queues `stored` for this connection alone, or flags it as lagging
    /// when `capacity` messages wait already; the caller wakes it.
    fn push(&self, stored: &Arc<Stored>, capacity: usize) {
        let mut queue = self.queue.lock();
        if queue.len() >= capacity {
            // Too far behind: close it; it resumes from history. No longer
            // counted active, even before its task runs again.
            self.flag(Direct::LAGGED);
            self.entry.set_state(ConnectionState::Error);
        } else {
            queue.push_back(Arc::clone(stored));
            self.queued.store(
                u32::try_from(queue.len()).unwrap_or(u32::MAX),
                Ordering::Release,
            );
        }
    }

    /// How many messages wait for this connection alone.
    #[inline]
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// The next message for this connection alone, if one waits. A message
    /// queued before the caller's last acquire (a ring read, or registering
    /// its waker when the queuing woke it) is seen.
    pub(crate) fn pop(&self) -> Option<Arc<Stored>> {
        if self.queued() == 0 {
            return None;
        }
        let mut queue = self.queue.lock();
        let next = queue.pop_front();
        self.queued.store(
            u32::try_from(queue.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        next
    }

    /// The queue overflowed: the connection is closed and resumes.
    pub(crate) const LAGGED: u8 = 1;
    /// A newer connection with the same id took over.
    pub(crate) const REPLACED: u8 = 2;
    /// Ends the connection with the close message
    /// ([`BroadcastManager::unregister`]).
    pub(crate) const STOPPED: u8 = 4;

    /// Raises `flag`; the caller wakes the connection.
    pub(crate) fn flag(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Release);
    }

    /// The flags raised so far.
    #[inline]
    pub(crate) fn flags(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }
}

impl Listing for Direct {
    fn entry(&self) -> &Entry {
        &self.entry
    }
}

pub(crate) struct Core {
    epoch: Epoch,
    seq: u64,
    history: VecDeque<Arc<Stored>>,
    /// The bytes of the frames in `history` (see [`Stored::weight`]).
    history_bytes: usize,
    connections: HashSet<Conn>,
    users: HashMap<UserId, Vec<ConnectionId>>,
    /// The connections that listen to topics, by topic.
    listeners: Listeners,
    /// Messages numbered up to this one may be missing from the history
    /// (a gap was seen: entries trimmed before they were read, or that
    /// could not be read): a page resuming from before it gets the reset
    /// event (`history-gap`) instead of a replay over the hole. 0: none.
    missing_to: u64,
}

impl Core {
    /// Notes a hole before `seq`, the next message to go into the history.
    fn note_gap(&mut self, seq: u64) {
        if seq > self.seq + 1 {
            self.missing_to = self.missing_to.max(seq - 1);
        }
    }

    fn forget_user(&mut self, user: &UserId, id: &ConnectionId) {
        if let Some(ids) = self.users.get_mut(user) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.users.remove(user);
            }
        }
    }
}

/// Who a message is about to reach, as the recipient filter sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Recipient<'a> {
    /// The connection; `None` when the message is listed for a history
    /// reader ([`BroadcastManager::history_for`]) rather than sent.
    pub connection: Option<&'a ConnectionId>,
    /// The user it belongs to, if any.
    pub user: Option<&'a UserId>,
}

pub(crate) type Filter = dyn Fn(&BroadcastMessage, &Recipient<'_>) -> bool + Send + Sync;

pub(crate) struct Inner {
    core: Mutex<Core>,
    transport: Transport,
    /// This manager among those sharing a backend: set in the envelopes it
    /// publishes, so that it knows its own when they come back.
    origin: u64,
    /// Numbers this manager's publishes (the envelopes' `nonce`).
    nonce: AtomicU64,
    /// Publishes waiting until this instance delivered them (by nonce):
    /// each learns how many connections it reached.
    pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<usize>>>,
    registry: ConnectionRegistry,
    pub(crate) history_limit: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) limits: Limits,
    /// Shared with every connection.
    pub(crate) hub: Arc<Hub>,
    /// The hub's timer task, started by the first connection (a manager
    /// may be built outside a runtime); stopped with the manager.
    timer: OnceLock<AbortOnDrop>,
    kind: String,
    render: Option<Arc<Render>>,
    shutdown: Shutdown,
    /// Makes and checks the proofs in connection ids: see `proof`.
    resume_key: ResumeKey,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Inner {
    /// The manager is gone: every connection drains the ring and ends with
    /// the close message.
    fn drop(&mut self) {
        self.hub.ring.close();
        for conn in self.core.get_mut().connections.iter() {
            conn.direct.waker.wake();
        }
    }
}

impl Inner {
    /// Calls `f` with every connection of this instance, under the lock.
    pub(crate) fn each_connection(&self, mut f: impl FnMut(&Arc<Direct>)) {
        for conn in self.core.lock().connections.iter() {
            f(&conn.direct);
        }
    }

    /// Starts the hub's timer task once, if there is a runtime to run it
    /// (at the first connection, and again at its first poll, which always
    /// runs in one).
    pub(crate) fn start_timer(self: &Arc<Self>) {
        if self.timer.get().is_some() {
            return;
        }
        // A connection opened after the shutdown ends at once, before the
        // task has run.
        if self.shutdown.is_triggered() {
            self.hub.mark_shut();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.timer.get_or_init(|| {
                let task = Arc::clone(&self.hub).run(Arc::downgrade(self), self.shutdown.clone());
                AbortOnDrop(runtime.spawn(task).abort_handle())
            });
        }
    }

    /// How many connections are listed under exact topics and with
    /// patterns.
    #[cfg(test)]
    pub(crate) fn listener_counts(&self) -> (usize, usize) {
        self.core.lock().listeners.counts()
    }

    /// Forgets a connection's queue, unless a newer one took its id.
    pub(crate) fn remove(&self, id: &ConnectionId, direct: &Arc<Direct>) {
        let mut core = self.core.lock();
        if core
            .connections
            .get(id)
            .is_some_and(|c| Arc::ptr_eq(&c.direct, direct))
            && let Some(conn) = core.connections.take(id)
        {
            core.listeners.remove(&conn);
            if let Some(user) = &conn.direct.sub.user {
                core.forget_user(user, id);
            }
            drop(core);
            if let Transport::Shared(backend) = &self.transport {
                backend.disconnected(id);
            }
        }
    }

    /// Numbers `p` as `seq` of the current epoch, keeps it in the history and
    /// queues it for this process's connections; returns how many.
    fn deliver(&self, core: &mut Core, seq: u64, p: Envelope) -> (MessageId, usize) {
        // Where it goes besides the ring: one connection or a user's.
        let directs: Vec<Arc<Direct>> = match &p.target {
            Target::One { to, user } => core
                .connections
                .get(to)
                .filter(|c| c.direct.sub.user == *user)
                .map(|c| Arc::clone(&c.direct))
                .into_iter()
                .collect(),
            Target::User { user, exclude } => core
                .users
                .get(user)
                .into_iter()
                .flatten()
                .filter(|id| !exclude.contains(id))
                .filter_map(|id| core.connections.get(id))
                .map(|c| Arc::clone(&c.direct))
                .collect(),
            Target::All { .. } | Target::Topics { .. } => Vec::new(),
        };
        core.seq = seq;
        let id = MessageId {
            epoch: core.epoch,
            seq,
        };
        let mut head = BytesMut::with_capacity(24);
        head.put_slice(b"id: ");
        head.put_slice(id.to_string().as_bytes());
        let stored = Arc::new(Stored {
            seq,
            head: head.freeze(),
            body: p.body,
            topic_bodies: p.topic_bodies,
            target: p.target,
            message: BroadcastMessage {
                id,
                message_type: p.message_type,
                data: p.data,
                html: p.html,
                timestamp: p.timestamp,
                metadata: p.metadata,
            },
        });
        if self.history_limit > 0 {
            if core.history.len() == self.history_limit
                && let Some(old) = core.history.pop_front()
            {
                core.history_bytes -= old.weight();
            }
            // Bounded by size too; the newest message always stays.
            core.history_bytes += stored.weight();
            while core.history_bytes > self.limits.history_bytes && !core.history.is_empty() {
                if let Some(old) = core.history.pop_front() {
                    core.history_bytes -= old.weight();
                }
            }
            if core.history_bytes > self.limits.history_bytes {
                // Alone larger than the limit: kept, as nothing older is.
                tracing::debug!(bytes = stored.weight(), "message larger than history_bytes");
            }
            core.history.push_back(Arc::clone(&stored));
        }
        let delivered = match &stored.target {
            Target::One { .. } | Target::User { .. } => {
                for direct in &directs {
                    direct.push(&stored, self.queue_capacity);
                    direct.waker.wake();
                }
                directs.len()
            }
            Target::All { exclude } => {
                let excluded = exclude
                    .iter()
                    .filter(|id| core.connections.contains(*id))
                    .count();
                let pos = self.hub.ring.push(Arc::clone(&stored));
                self.hub
                    .wake_ring_waiters(pos, |d| !exclude.contains(d.entry.id()));
                core.connections.len().saturating_sub(excluded)
            }
            Target::Topics {
                topics,
                private,
                exclude,
            } => {
                let pos = self.hub.ring.push(Arc::clone(&stored));
                // Only the connections that listen to its topics are looked
                // at, and the waiting ones it is for are woken; the others
                // may skip it unread (see `Hub::skippable`).
                let mut delivered = 0;
                let listeners = &core.listeners;
                self.hub.wake_these(pos, |wake| {
                    listeners.each_candidate(topics, |direct, found_under| {
                        if exclude.contains(direct.entry.id()) {
                            return;
                        }
                        let Some(hit) = direct.sub.wants(topics, *private) else {
                            return;
                        };
                        // Counted (and woken) once, under its first match.
                        if found_under.is_none_or(|i| i == hit) {
                            delivered += 1;
                            wake(direct);
                        }
                    });
                });
                delivered
            }
        };
        (id, delivered)
    }
}

/// What a shared backend reads back, handled here the same for every
/// backend: order, gaps, epochs, and this instance's own publishes.
impl Delivery for Inner {
    /// Delivers a message another instance (or this one) numbered, read
    /// back from the backend in order.
    fn deliver(&self, epoch: Epoch, seq: u64, p: Envelope) -> usize {
        let own = (p.origin == self.origin).then_some(p.nonce);
        let mut core = self.core.lock();
        let delivered = if epoch != core.epoch || seq <= core.seq {
            // From an epoch this process left, or seen before.
            0
        } else {
            if seq != core.seq + 1 {
                // Messages were lost on the way (trimmed before this process
                // read them, or unreadable): every connection resumes, and
                // gets the reset event when its resume crosses the hole.
                tracing::warn!(from = core.seq, to = seq, "gap in the message stream");
                core.note_gap(seq);
                for conn in core.connections.iter() {
                    conn.direct.flag(Direct::LAGGED);
                    conn.direct.waker.wake();
                }
            }
            self.deliver(&mut core, seq, p).1
        };
        drop(core);
        if let Some(nonce) = own
            && let Some(waiting) = self.pending.lock().remove(&nonce)
        {
            let _ = waiting.send(delivered);
        }
        delivered
    }

    /// Moves to `epoch` (the backend lost its data): the history of the
    /// old one goes, and every open connection ends (without the close
    /// message) so that its page comes back with its old-epoch id and gets
    /// the reset event: the new epoch numbers from 1 again, and a
    /// connection left open would skip the new messages numbered below
    /// where it stood. Returns whether it changed.
    fn new_epoch(&self, epoch: Epoch) -> bool {
        let mut core = self.core.lock();
        if core.epoch == epoch {
            return false;
        }
        core.epoch = epoch;
        core.seq = 0;
        core.missing_to = 0;
        core.history.clear();
        core.history_bytes = 0;
        for conn in core.connections.iter() {
            conn.direct.flag(Direct::LAGGED);
            conn.direct.waker.wake();
        }
        true
    }

    /// This process's connections and their users.
    fn connections(&self) -> Vec<(ConnectionId, Option<UserId>)> {
        self.core
            .lock()
            .connections
            .iter()
            .map(|c| (c.id().clone(), c.direct.sub.user.clone()))
            .collect()
    }
}

/// Sends messages to every connected page, to all but some, or to one; keeps
/// a bounded history; lets a page that reconnects catch up.
///
/// Cheap to clone (all clones share one manager), `Send + Sync`. See the
/// [module docs](super) for ids, resume, lagging and closing.
///
/// ```
/// use htmx_sse::broadcast::BroadcastManager;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
///
/// let manager = BroadcastManager::builder().history(100).build();
/// let sent = manager.message("chat", "<li>hi</li>").send().await?;
/// assert_eq!(sent.delivered, 0); // nobody is connected yet
/// assert_eq!(manager.history(Some(10)).len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BroadcastManager {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for BroadcastManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = self.inner.core.lock();
        f.debug_struct("BroadcastManager")
            .field("transport", &self.inner.transport)
            .field("epoch", &core.epoch)
            .field("seq", &core.seq)
            .field("connections", &core.connections.len())
            .field("history", &core.history.len())
            .finish_non_exhaustive()
    }
}

impl Default for BroadcastManager {
    fn default() -> Self {
        Self::new()
    }
}

/// Configures a [`BroadcastManager`].
#[must_use]
pub struct BroadcastBuilder {
    history: usize,
    queue_capacity: usize,
    stream: StreamConfig,
    kind: String,
    render: Option<Arc<Render>>,
    filter: Option<Arc<Filter>>,
    resume_key: Option<ResumeKey>,
    limits: Limits,
}

impl fmt::Debug for BroadcastBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastBuilder")
            .field("history", &self.history)
            .field("queue_capacity", &self.queue_capacity)
            .field("stream", &self.stream)
            .field("kind", &self.kind)
            .field("render", &self.render.is_some())
            .field("filter", &self.filter.is_some())
            .field("resume_key", &self.resume_key.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for BroadcastBuilder {
    fn default() -> Self {
        BroadcastBuilder {
            history: 1024,
            queue_capacity: 256,
            stream: StreamConfig::new(),
            kind: "broadcast".to_owned(),
            render: None,
            filter: None,
            resume_key: None,
            limits: Limits::new(),
        }
    }
}

impl BroadcastBuilder {
    /// The key that proves a reconnecting page's connection id was issued
    /// to it (default: a random key per process; with the Redis backend, a
    /// random key kept in Redis and shared by every instance).
    ///
    /// Every id a page is sent reads `EPOCH-SEQ.ID.PROOF`; `PROOF` is an
    /// HMAC-SHA256 under this key over the connection id and its user. A
    /// page that reconnects gets its connection id back (and the messages
    /// sent to it meanwhile) only when the proof holds for the user it
    /// presents now; otherwise it gets a fresh id and the
    /// [reset event](super::RESET_EVENT). Set the same key on every
    /// instance behind a load balancer that shares no Redis, or to keep
    /// ids across restarts. Keep it secret, like a session key.
    ///
    /// ```
    /// use htmx_sse::broadcast::BroadcastManager;
    ///
    /// let key = std::env::var("RESUME_KEY").unwrap_or_else(|_| "x".repeat(32));
    /// let manager = BroadcastManager::builder().resume_key(key.as_bytes()).build();
    /// ```
    ///
    /// # Panics
    ///
    /// When `key` is shorter than 32 bytes: a configuration error.
    #[track_caller]
    pub fn resume_key(mut self, key: &[u8]) -> Self {
        assert!(
            key.len() >= MIN_KEY_BYTES,
            "resume key must be at least {MIN_KEY_BYTES} bytes, got {}",
            key.len()
        );
        self.resume_key = Some(ResumeKey::new(key));
        self
    }

    /// The [`Limits`] of the manager and of the routes built on it:
    /// connections in all and per user, topics, exclusions, history bytes,
    /// body sizes. Without it, [`Limits::new`]'s defaults.
    ///
    /// ```
    /// use htmx_sse::{broadcast::BroadcastManager, limits::Limits};
    ///
    /// let manager = BroadcastManager::builder()
    ///     .limits(Limits::new().connections_per_user(4))
    ///     .build();
    /// # assert_eq!(manager.limits().connections_per_user, 4);
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How many recent messages are kept for [`BroadcastManager::history`]
    /// and for clients that reconnect (default 1024; their bytes are
    /// bounded too, by [`Limits::history_bytes`]). A client that missed
    /// more than this gets the reset event instead.
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages;
        self
    }

    /// How many messages one connection may have waiting before it counts
    /// as lagging and is closed (default 256). See *Lagging* in the module
    /// docs.
    ///
    /// # Panics
    ///
    /// When `messages` is zero: a programming error.
    #[track_caller]
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        assert!(messages > 0, "queue capacity must be at least 1");
        self.queue_capacity = messages;
        self
    }

    /// Heartbeat, timeout, close message and logging for every connection
    /// (the initial message is replaced by the `connection` event). A
    /// [`Shutdown`] given here becomes the manager's own, so one signal ends
    /// every stream of the server; without one the manager makes its own.
    ///
    /// The manager's connections share one timer: it ticks every quarter of
    /// the heartbeat interval, and a connection gets a heartbeat at the first
    /// tick at which it has been quiet for four ticks. So a connection is
    /// never quiet for longer than the interval, the quiet before a heartbeat
    /// is at least ¾ of it, and an idle connection gets one heartbeat per
    /// interval, as a stream with a timer of its own would; but no
    /// connection keeps a timer (or a future for the shutdown), which makes
    /// an idle connection smaller.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::{BroadcastManager, streaming::StreamConfig};
    ///
    /// let manager = BroadcastManager::builder()
    ///     .stream(StreamConfig::new().heartbeat(Duration::from_secs(20)))
    ///     .build();
    /// # let _ = manager;
    /// ```
    pub fn stream(mut self, config: StreamConfig) -> Self {
        self.stream = config;
        self
    }

    /// The kind connections are registered under (default `"broadcast"`).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// How a message's text or JSON data becomes its frame, usually HTML
    /// from askama or maud (which escape what they insert). Called once per
    /// message, whatever the number of connections; data published as HTML
    /// ([`Data::Html`]) goes out as it is, without it. The default escapes
    /// text and writes JSON HTML-safe (see [`Data`]).
    ///
    /// ```
    /// use htmx_sse::{broadcast::BroadcastManager, Fragment};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    ///
    /// let manager = BroadcastManager::builder()
    ///     .render(|msg| {
    ///         let text = msg.data["text"].as_str().unwrap_or_default();
    ///         Ok(Fragment::from(maud::html! { li { (text) } }))
    ///     })
    ///     .build();
    /// manager.message("chat", serde_json::json!({"text": "<b>hi</b>"})).send().await?;
    /// # Ok(()) }
    /// ```
    pub fn render<F>(mut self, f: F) -> Self
    where
        F: Fn(&Outgoing<'_>) -> Result<Fragment, Error> + Send + Sync + 'static,
    {
        self.render = Some(Arc::new(f));
        self
    }

    /// A last check before a message reaches a connection, like a
    /// `recipient_id` check: return `false` to withhold it. Called on the
    /// connection's own task for every message that is otherwise for it
    /// (replayed ones too); keep it quick. `delivered` counts are taken
    /// before this filter.
    ///
    /// ```
    /// use htmx_sse::broadcast::BroadcastManager;
    ///
    /// // Only messages whose metadata names the recipient's user, or none.
    /// let manager = BroadcastManager::builder()
    ///     .recipient_filter(|msg, to| {
    ///         match msg.metadata.as_ref().and_then(|m| m["recipient_id"].as_str()) {
    ///             Some(want) => to.user.is_some_and(|u| u.as_str() == want),
    ///             None => true,
    ///         }
    ///     })
    ///     .build();
    /// ```
    pub fn recipient_filter<F>(mut self, f: F) -> Self
    where
        F: Fn(&BroadcastMessage, &Recipient<'_>) -> bool + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(f));
        self
    }

    /// The manager.
    ///
    /// # Panics
    ///
    /// Never for data; see [`queue_capacity`](Self::queue_capacity).
    #[must_use]
    pub fn build(self) -> BroadcastManager {
        let key = self.resume_key.clone().unwrap_or_else(ResumeKey::random);
        self.build_with(Transport::Memory, Epoch::random(), 0, key)
    }

    /// A manager on the Redis backend: many server processes sharing one
    /// Redis act as one (see [`crate::backend`]). Reads the epoch and the
    /// recent history from Redis, then starts reading new messages.
    ///
    /// ```no_run
    /// use htmx_sse::{backend::RedisConfig, broadcast::BroadcastManager};
    ///
    /// # async fn run() -> Result<(), htmx_sse::Error> {
    /// let url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1/".into());
    /// let manager = BroadcastManager::builder()
    ///     .build_redis(RedisConfig::new(url))
    ///     .await?;
    /// manager.message("chat", "<li>hi</li>").send().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when Redis cannot be reached or answers with an
    /// error.
    #[cfg(feature = "redis")]
    pub async fn build_redis(
        self,
        config: crate::backend::RedisConfig,
    ) -> Result<BroadcastManager, Error> {
        let backend = crate::backend::RedisBackend::new(config)?;
        self.build_on(backend).await
    }

    /// A manager on a shared [`Backend`] (see
    /// [`crate::backend`](crate::backend#writing-a-backend)): opens it,
    /// takes its epoch, sequence and recent entries as the history, then
    /// starts its reader. `build_redis` (feature `redis`) is this with
    /// the Redis backend.
    ///
    /// # Errors
    ///
    /// What the backend's [`open`](Backend::open) fails with, usually
    /// [`Error::Backend`].
    pub async fn build_on<B: Backend>(self, backend: B) -> Result<BroadcastManager, Error> {
        let backend: Arc<B> = Arc::new(backend);
        let start = backend.open(self.history).await?;
        let last = start.last_seq;
        let first = start.recent.first().map_or(last, |(s, _)| s - 1);
        let key = match (&self.resume_key, &start.resume_key) {
            (Some(key), _) => key.clone(),
            (None, Some(shared)) if shared.len() >= MIN_KEY_BYTES => ResumeKey::new(shared),
            (None, Some(_)) => {
                return Err(Error::Backend(format!(
                    "the backend's shared resume key is shorter than {MIN_KEY_BYTES} bytes"
                )));
            }
            (None, None) => ResumeKey::random(),
        };
        let transport = Transport::Shared(Arc::clone(&backend) as Arc<dyn Backend>);
        let manager = self.build_with(transport, start.epoch, first, key);
        {
            let inner = &manager.inner;
            let mut core = inner.core.lock();
            for (seq, p) in start.recent {
                // Entries that could not be read leave holes: noted.
                core.note_gap(seq);
                inner.deliver(&mut core, seq, p);
            }
            core.note_gap(last + 1);
            core.seq = last;
        }
        let inner: Arc<dyn Delivery> = Arc::clone(&manager.inner) as Arc<dyn Delivery>;
        let sink = Sink::new(Arc::downgrade(&inner));
        drop(inner);
        tokio::spawn(backend.run(sink, last));
        Ok(manager)
    }

    fn build_with(
        self,
        transport: Transport,
        epoch: Epoch,
        seq: u64,
        resume_key: ResumeKey,
    ) -> BroadcastManager {
        // One signal for everything: the stream config's, if it has one.
        let shutdown = self.stream.shutdown.clone().unwrap_or_default();
        BroadcastManager {
            inner: Arc::new(Inner {
                core: Mutex::new(Core {
                    epoch,
                    seq,
                    history: VecDeque::with_capacity(self.history.min(4096)),
                    history_bytes: 0,
                    connections: HashSet::new(),
                    users: HashMap::new(),
                    listeners: Listeners::default(),
                    missing_to: 0,
                }),
                transport,
                origin: u64::from_le_bytes(
                    uuid::Uuid::new_v4().as_bytes()[..8]
                        .try_into()
                        .unwrap_or_else(|_| unreachable!("a UUID has 16 bytes")),
                ),
                nonce: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
                registry: ConnectionRegistry::new(),
                history_limit: self.history,
                queue_capacity: self.queue_capacity,
                limits: self.limits,
                // No initial message: the `connection` event opens every
                // stream.
                hub: Arc::new(Hub::new(&self.stream, self.filter, self.queue_capacity)),
                timer: OnceLock::new(),
                kind: self.kind,
                render: self.render,
                shutdown,
                resume_key,
            }),
        }
    }
}

impl BroadcastManager {
    /// A manager with the defaults: history 1024, queue 256 per connection,
    /// heartbeat 15 s.
    #[must_use]
    pub fn new() -> Self {
        BroadcastBuilder::default().build()
    }

    /// Configures a manager.
    pub fn builder() -> BroadcastBuilder {
        BroadcastBuilder::default()
    }

    /// Opens a connection for a client, resuming from `last_event_id` (the
    /// `Last-Event-ID` header) when given: see *Resume* in the module docs.
    /// Turn the result into the response (`Connection` is
    /// `IntoResponse`, and so is the error); it unregisters itself when the
    /// client goes away.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use htmx_sse::BroadcastManager;
    ///
    /// async fn events(manager: BroadcastManager) -> impl IntoResponse {
    ///     // 503 with Retry-After when the server is full.
    ///     manager.connect(None, serde_json::Value::Null)
    /// }
    /// # let _ = events;
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] when the process has
    /// [`Limits::connections`] open already (a page resuming its own
    /// connection replaces it and is not refused).
    pub fn connect(
        &self,
        last_event_id: Option<&str>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        self.open(None, Subscription::new(), last_event_id, metadata)
    }

    /// Opens a connection that also receives what `subscription` asks for
    /// (topics, its user's messages, private topics), resuming from
    /// `last_event_id` like [`connect`](Self::connect).
    ///
    /// A `Last-Event-ID` names a connection id and carries the proof that
    /// it was issued to this client; the id (and what was sent to it) is
    /// taken back only when the proof holds for `subscription`'s user, so a
    /// forged or borrowed `Last-Event-ID` reveals nothing of another
    /// page's: it gets a fresh id and the reset event.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] when the process has
    /// [`Limits::connections`] open already, when the subscription's user
    /// has [`Limits::connections_per_user`] (a page resuming its own
    /// connection replaces it and is not refused), or when it asks for more
    /// than [`Limits::topics_per_connection`] topics.
    pub fn subscribe(
        &self,
        subscription: Subscription,
        last_event_id: Option<&str>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        self.open(None, subscription, last_event_id, metadata)
    }

    /// Opens a connection under a chosen id (or a random one), without
    /// resume. Registering an id that is connected replaces that connection.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn register(
        &self,
        id: Option<ConnectionId>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        self.open(id, Subscription::new(), None, metadata)
    }

    /// The limits the manager and the routes built on it keep (see
    /// [`BroadcastBuilder::limits`]).
    ///
    /// ```
    /// let manager = htmx_sse::BroadcastManager::new();
    /// assert_eq!(manager.limits().connections_per_user, 32);
    /// ```
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Refuses a connection over the limits before anything changes:
    /// `replacing` is the user of the connection with the same id, when
    /// one is open (it leaves as this one comes).
    fn admit(
        &self,
        core: &Core,
        sub: &Subscription,
        replacing: Option<Option<&UserId>>,
    ) -> Result<(), Error> {
        let limits = &self.inner.limits;
        if replacing.is_none() && core.connections.len() >= limits.connections {
            tracing::warn!(
                max = limits.connections,
                "connection refused: Limits::connections reached"
            );
            return Err(Error::LimitExceeded {
                limit: Limit::Connections,
                max: limits.connections,
                retry_after: Some(limits.retry_after),
            });
        }
        if let Some(user) = &sub.user {
            let open = core.users.get(user).map_or(0, Vec::len);
            let replaced = usize::from(replacing == Some(Some(user)));
            if open - replaced.min(open) >= limits.connections_per_user {
                tracing::debug!(%user, max = limits.connections_per_user, "connection refused: Limits::connections_per_user reached");
                return Err(Error::LimitExceeded {
                    limit: Limit::ConnectionsPerUser,
                    max: limits.connections_per_user,
                    retry_after: Some(limits.retry_after),
                });
            }
        }
        Ok(())
    }

    fn open(
        &self,
        id: Option<ConnectionId>,
        sub: Subscription,
        last_event_id: Option<&str>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        let inner = &self.inner;
        if sub.topics.as_deref().map_or(0, <[_]>::len) > inner.limits.topics_per_connection {
            return Err(Error::LimitExceeded {
                limit: Limit::TopicsPerConnection,
                max: inner.limits.topics_per_connection,
                retry_after: None,
            });
        }
        let resume = last_event_id
            .filter(|s| !s.is_empty())
            .map(|s| ResumePoint::parse(s).ok_or(ResetReason::Unrecognized));
        inner.start_timer();
        // A connection id is taken back only with the proof that it was
        // issued to this client (same user): else a fresh id and the reset.
        let proven = matches!(&resume, Some(Ok(lei)) if lei.proof.as_deref().is_some_and(|p| {
            inner.resume_key.verify(&lei.connection, sub.user.as_ref(), p)
        }));
        let mut core = inner.core.lock();
        let id = match (id, &resume) {
            (Some(id), _) => id,
            (None, Some(Ok(lei))) if proven => lei.connection.clone(),
            (None, _) => ConnectionId::random(),
        };
        let replacing = core
            .connections
            .get(&id)
            .map(|c| c.direct.sub.user.as_ref());
        self.admit(&core, &sub, replacing)?;
        let tag = inner.resume_key.tag(&id, sub.user.as_ref());
        let oldest = core.history.front().map_or(core.seq + 1, |s| s.seq);
        let epoch = core.epoch;
        let (start, reset, replay) = match resume {
            None => (core.seq, None, Vec::new()),
            Some(Err(reason)) => (core.seq, Some(reason), Vec::new()),
            Some(Ok(lei)) if lei.epoch != epoch => {
                (core.seq, Some(ResetReason::Restarted), Vec::new())
            }
            // Not proven to be this client's: nothing of that id's.
            Some(Ok(_)) if !proven => (core.seq, Some(ResetReason::Unrecognized), Vec::new()),
            // Another instance numbered it and this one has not read it
            // yet: start after it (what comes up to it is skipped). Only a
            // little ahead: further than a history's worth (or a queue's,
            // for tiny histories), no instance behind by that little gave
            // it out, and a stream waiting for it would wait silently.
            Some(Ok(lei))
                if lei.seq > core.seq
                    && self.is_distributed()
                    && lei.seq - core.seq <= ahead_limit(inner) =>
            {
                (lei.seq, None, Vec::new())
            }
            Some(Ok(lei)) if lei.seq > core.seq => {
                (core.seq, Some(ResetReason::Unrecognized), Vec::new())
            }
            // The resume crosses a hole in the history.
            Some(Ok(lei)) if lei.seq < core.missing_to => {
                (core.seq, Some(ResetReason::HistoryGap), Vec::new())
            }
            Some(Ok(lei)) if lei.seq + 1 < oldest => {
                (core.seq, Some(ResetReason::HistoryGap), Vec::new())
            }
            Some(Ok(lei)) => {
                let replay: Vec<Arc<Stored>> = core
                    .history
                    .iter()
                    .filter(|s| s.seq > lei.seq && s.body_for(&id, &sub).is_some())
                    .cloned()
                    .collect();
                (lei.seq, None, replay)
            }
        };
        let ring = inner.hub.ring.end();
        // The registry's entry lives in the `Direct`: one allocation.
        let entry = inner
            .registry
            .entry(Some(id.clone()), &inner.kind, metadata);
        let direct = Arc::new(Direct::new(sub, entry, Arc::clone(&tag), inner.hub.tick()));
        let sub = &direct.sub;
        if let Some(user) = &sub.user {
            core.users.entry(user.clone()).or_default().push(id.clone());
        }
        let conn = Conn {
            direct: Arc::clone(&direct),
        };
        core.listeners.add(&conn);
        if let Some(old) = core.connections.replace(conn) {
            core.listeners.remove(&old);
            old.direct.flag(Direct::REPLACED);
            old.direct.waker.wake();
            if let Some(user) = &old.direct.sub.user {
                core.forget_user(user, &id);
                // The new entry's user was pushed before; keep it listed.
                if sub.user.as_ref() == Some(user) {
                    core.users.entry(user.clone()).or_default().push(id.clone());
                }
            }
        }
        let seq_now = core.seq;
        drop(core);
        let ready = match &inner.transport {
            Transport::Memory => None,
            Transport::Shared(backend) => Some(backend.connected(&id, sub.user.as_ref())),
        };

        let registration = inner.registry.list(Arc::clone(&direct) as Arc<dyn Listing>);
        let intro = Intro {
            connection: connection_event(epoch, &id, &tag, start),
            reset: reset.map(|r| reset_event(epoch, &tag, seq_now, r)),
            replay: replay.into(),
            after: start,
            ready,
        };
        if let Some(reason) = reset {
            tracing::debug!(connection = %id, ?reason, "resume impossible, sending reset");
        }
        let feed = Feed::new(
            Arc::downgrade(&self.inner),
            ring,
            direct,
            intro,
            registration,
        );
        Ok(Connection {
            id,
            body: FeedBody::new(Arc::clone(&inner.hub), feed),
        })
    }

    /// Whether messages travel through a backend shared with other server
    /// processes (Redis).
    ///
    /// ```
    /// let manager = htmx_sse::BroadcastManager::new();
    /// assert!(!manager.is_distributed()); // in memory
    /// ```
    #[must_use]
    pub fn is_distributed(&self) -> bool {
        !matches!(self.inner.transport, Transport::Memory)
    }

    /// Sends a message to every connection except those in `exclude`;
    /// returns its id and how many connections it was queued for.
    ///
    /// `message_type` becomes the SSE event name. `data`'s type decides how
    /// it is sent ([`IntoData`]): a string is text, escaped so that the page
    /// shows it as written; a [`Fragment`], maud `Markup` or askama template
    /// is HTML, sent as it is; `axum::Json(value)` and other JSON go out
    /// HTML-safe (or through the manager's renderer). For topics, users
    /// and the other options, see [`message`](Self::message).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] or [`Error::EmptyEventName`] for a bad type,
    /// [`Error::ReservedEventName`] for one of the crate's own types
    /// (`connection`, `reset`, `close`: see
    /// [`Message::allow_reserved_type`]),
    /// [`Error::Json`] when `data` does not serialise, or the renderer's
    /// error. Nothing is published then.
    pub async fn broadcast<T, D>(
        &self,
        message_type: T,
        data: D,
        metadata: Option<serde_json::Value>,
        exclude: &[ConnectionId],
    ) -> Result<Sent, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: IntoData,
    {
        self.message(message_type, data)
            .metadata(metadata)
            .exclude(exclude)
            .send()
            .await
    }

    /// Sends a message to exactly one connection.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] when no connection has this id (nothing
    /// is published), and the errors of [`broadcast`](Self::broadcast).
    pub async fn send_to<T, D>(
        &self,
        connection_id: &ConnectionId,
        message_type: T,
        data: D,
        metadata: Option<serde_json::Value>,
    ) -> Result<Sent, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: IntoData,
    {
        self.message(message_type, data)
            .metadata(metadata)
            .to_connection(connection_id.clone())
            .send()
            .await
    }

    /// Sends a message to every connection (every tab) of `user`, and to
    /// nobody else. Kept in the history, so a tab of that user that
    /// reconnects with `Last-Event-ID` catches up on it.
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub async fn send_to_user<T, D>(
        &self,
        user: &UserId,
        message_type: T,
        data: D,
        metadata: Option<serde_json::Value>,
    ) -> Result<Sent, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: IntoData,
    {
        self.message(message_type, data)
            .metadata(metadata)
            .to_user(user.clone())
            .send()
            .await
    }

    /// Prepares a message with every option: topics, private delivery, a
    /// user, one connection, exclusions, metadata, the topic as event type.
    ///
    /// ```
    /// use htmx_sse::{broadcast::BroadcastManager, topics::Topic};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///
    /// let manager = BroadcastManager::new();
    /// let sent = manager
    ///     .message("update", "<li>milk</li>")
    ///     .topics([Topic::new("lists/7")?])
    ///     .private(true)
    ///     .send().await?;
    /// assert_eq!(sent.delivered, 0);
    /// # Ok(()) }
    /// ```
    pub fn message<T, D>(&self, message_type: T, data: D) -> Message<'_>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: IntoData,
    {
        let mut error = None;
        let message_type = match message_type.try_into() {
            Ok(t) => Some(t),
            Err(e) => {
                error = Some(e.into());
                None
            }
        };
        let data = match data.into_data() {
            Ok(d) => d,
            Err(e) => {
                error.get_or_insert(e);
                Data::Json(serde_json::Value::Null)
            }
        };
        Message {
            manager: self,
            message_type,
            data,
            metadata: None,
            exclude: Vec::new(),
            dest: Dest::All,
            private: false,
            topic_as_type: false,
            allow_reserved: false,
            error,
        }
    }

    /// [`Error::ReservedEventName`] when pages would take `name` for one of
    /// the crate's own events.
    fn refuse_reserved(&self, name: &str) -> Result<(), Error> {
        let own_close = self.inner.hub.close.as_ref().and_then(Event::name);
        if super::RESERVED_EVENTS.iter().any(|r| r.as_str() == name) || own_close == Some(name) {
            return Err(Error::ReservedEventName {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Renders and encodes a message once, outside any lock.
    fn prepare(&self, m: Message<'_>) -> Result<Envelope, Error> {
        let inner = &*self.inner;
        if let Some(e) = m.error {
            return Err(e);
        }
        let limits = &inner.limits;
        if m.exclude.len() > limits.exclude {
            return Err(Error::LimitExceeded {
                limit: Limit::Exclude,
                max: limits.exclude,
                retry_after: None,
            });
        }
        if let Dest::Topics(topics) = &m.dest
            && topics.len() > limits.topics_per_publish
        {
            return Err(Error::LimitExceeded {
                limit: Limit::TopicsPerPublish,
                max: limits.topics_per_publish,
                retry_after: None,
            });
        }
        let message_type = m.message_type.unwrap_or(CONNECTION_EVENT);
        if !m.allow_reserved {
            self.refuse_reserved(message_type.as_str())?;
            if m.topic_as_type
                && let Dest::Topics(topics) = &m.dest
            {
                for t in topics {
                    self.refuse_reserved(t.as_str())?;
                }
            }
        }
        let metadata = m.metadata;
        let timestamp = Utc::now();
        // HTML goes out as it is; text and JSON through the renderer, or
        // escaped (see `Data`).
        let (text, data, html) = match m.data {
            Data::Html(f) => {
                let html = f.into_string();
                (html.clone(), serde_json::Value::String(html), true)
            }
            Data::Text(t) => (String::new(), serde_json::Value::String(t), false),
            Data::Json(v) => (String::new(), v, false),
        };
        let text = match (&inner.render, html) {
            (_, true) => text,
            (Some(render), false) => render(&Outgoing {
                message_type: &message_type,
                data: &data,
                metadata: metadata.as_ref(),
                timestamp,
            })?
            .into_string(),
            (None, false) => default_text(&data),
        };
        let exclude: Box<[ConnectionId]> = m.exclude.into();
        // Encoded once (once per topic with the topic as type); only the id
        // is per message.
        let mut topic_bodies = None;
        let target = match m.dest {
            Dest::All => Target::All { exclude },
            Dest::One(to) => Target::One { to, user: None },
            Dest::User(user) => Target::User { user, exclude },
            Dest::Topics(topics) => {
                if topics.is_empty() {
                    return Err(Error::InvalidTopic(crate::topics::InvalidTopic {
                        value: String::new(),
                        reason: "a topic message needs at least one topic",
                    }));
                }
                if m.topic_as_type {
                    let mut bodies = Vec::with_capacity(topics.len());
                    for t in &topics {
                        bodies.push(
                            Event::builder()
                                .event(t.as_str())
                                .data(text.clone())
                                .build()?
                                .into_bytes(),
                        );
                    }
                    topic_bodies = Some(bodies.into_boxed_slice());
                }
                Target::Topics {
                    topics: topics.into(),
                    private: m.private,
                    exclude,
                }
            }
        };
        let body = named(&message_type).data(text).build()?.into_bytes();
        Ok(Envelope {
            format: Envelope::FORMAT,
            body,
            topic_bodies,
            target,
            message_type,
            data,
            html,
            metadata,
            timestamp,
            origin: inner.origin,
            nonce: 0,
        })
    }

    async fn publish(&self, m: Message<'_>) -> Result<Sent, Error> {
        let inner = &*self.inner;
        let mut envelope = self.prepare(m)?;
        match &inner.transport {
            Transport::Memory => {
                let mut core = inner.core.lock();
                if let Target::One { to, user } = &mut envelope.target {
                    match core.connections.get(to) {
                        Some(c) => user.clone_from(&c.direct.sub.user),
                        None => return Err(Error::UnknownConnection { id: to.to_string() }),
                    }
                }
                let seq = core.seq + 1;
                let (id, delivered) = inner.deliver(&mut core, seq, envelope);
                Ok(Sent { id, delivered })
            }
            Transport::Shared(backend) => {
                if let Target::One { to, user } = &mut envelope.target {
                    let local = inner
                        .core
                        .lock()
                        .connections
                        .get(to)
                        .map(|c| c.direct.sub.user.clone());
                    *user = match local {
                        Some(u) => u,
                        None => backend
                            .locate(to)
                            .await?
                            .ok_or_else(|| Error::UnknownConnection { id: to.to_string() })?,
                    };
                }
                // Read-your-writes: this instance's connections have it
                // queued when publishing returns.
                let nonce = inner.nonce.fetch_add(1, Ordering::Relaxed);
                envelope.nonce = nonce;
                let (tx, rx) = tokio::sync::oneshot::channel();
                inner.pending.lock().insert(nonce, tx);
                let epoch = inner.core.lock().epoch;
                let seq = match backend.publish(epoch, &envelope).await {
                    Ok(seq) => seq,
                    Err(e) => {
                        inner.pending.lock().remove(&nonce);
                        return Err(e);
                    }
                };
                let id = MessageId { epoch, seq };
                let delivered = if let Ok(Ok(n)) = tokio::time::timeout(OWN_DELIVERY_WAIT, rx).await
                {
                    n
                } else {
                    inner.pending.lock().remove(&nonce);
                    tracing::warn!(%id, "published, but this instance has not read it back yet");
                    0
                };
                Ok(Sent { id, delivered })
            }
        }
    }

    /// The backend's name: `"memory"`, or the shared backend's
    /// [`name`](Backend::name) (`"redis"`). `GET {prefix}/status` says it.
    ///
    /// ```
    /// assert_eq!(htmx_sse::BroadcastManager::new().backend_name(), "memory");
    /// ```
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        match &self.inner.transport {
            Transport::Memory => "memory",
            Transport::Shared(backend) => backend.name(),
        }
    }

    /// Whether the backend can be reached now: always in memory; with
    /// Redis, whether this process is reading the shared stream (`GET
    /// {prefix}/status` reports it as `backend_connected`).
    ///
    /// ```
    /// let manager = htmx_sse::BroadcastManager::new();
    /// assert!(manager.backend_connected());
    /// ```
    #[must_use]
    pub fn backend_connected(&self) -> bool {
        match &self.inner.transport {
            Transport::Memory => true,
            Transport::Shared(backend) => backend.is_connected(),
        }
    }

    /// Connections open on every server process sharing this manager's
    /// backend: with the Redis backend, every live instance's; in memory,
    /// the same as [`connection_count`](Self::connection_count).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let _page = manager.connect(None, serde_json::Value::Null);
    /// assert_eq!(manager.cluster_connection_count().await?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when Redis cannot be reached.
    pub async fn cluster_connection_count(&self) -> Result<usize, Error> {
        match &self.inner.transport {
            Transport::Memory => Ok(self.connection_count()),
            Transport::Shared(backend) => Ok(backend
                .connection_count()
                .await?
                .unwrap_or_else(|| self.connection_count())),
        }
    }

    /// Ends a connection with the close message (the page stops listening
    /// if it matches the close event). Returns whether it was connected.
    pub fn unregister(&self, connection_id: &ConnectionId) -> bool {
        match self.inner.core.lock().connections.get(connection_id) {
            Some(conn) => {
                conn.direct.flag(Direct::STOPPED);
                conn.direct.waker.wake();
                true
            }
            None => false,
        }
    }

    /// How many open connections listen to `topic` (through any selector
    /// that matches it).
    #[must_use]
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.inner.core.lock().listeners.count(topic)
    }

    /// The exact topics open connections subscribed to (selectors without
    /// a pattern), sorted, each once.
    #[must_use]
    pub fn subscribed_topics(&self) -> Vec<Topic> {
        let core = self.inner.core.lock();
        let mut topics: Vec<Topic> = core
            .connections
            .iter()
            .flat_map(|c| {
                c.direct
                    .sub
                    .topic_selectors()
                    .iter()
                    .filter_map(TopicSelector::as_topic)
            })
            .collect();
        drop(core);
        topics.sort();
        topics.dedup();
        topics
    }

    /// How many open connections belong to `user`.
    #[must_use]
    pub fn user_connection_count(&self, user: &UserId) -> usize {
        self.inner.core.lock().users.get(user).map_or(0, Vec::len)
    }

    /// How many connections are open.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.inner.core.lock().connections.len()
    }

    /// The most recent messages sent to everyone (up to `limit`, all kept
    /// when `None`), oldest first, as an anonymous page would have received
    /// them: see [`history_for`](Self::history_for).
    ///
    /// ```
    /// use htmx_sse::broadcast::BroadcastManager;
    /// use htmx_sse::connections::UserId;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///
    /// let manager = BroadcastManager::new();
    /// manager.message("news", "for everyone").send().await?;
    /// manager.message("dm", "for ann").to_user(UserId::new("ann")?).send().await?;
    /// let listed: Vec<_> = manager.history(None).iter().map(|m| m.data.clone()).collect();
    /// assert_eq!(listed, ["for everyone"]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn history(&self, limit: Option<usize>) -> Vec<BroadcastMessage> {
        self.history_for(limit, None)
    }

    /// The most recent messages sent to everyone that a page of `user`
    /// would have received (up to `limit`, all kept when `None`), oldest
    /// first.
    ///
    /// Only what every page is sent is listed: messages for one connection,
    /// one user or a topic are kept for resume but never listed, and a
    /// [recipient filter](BroadcastBuilder::recipient_filter) is asked with
    /// `connection: None` and this user, so what it withholds from them is
    /// not listed either. `GET {prefix}/history` answers with this list for
    /// the asker's user.
    #[must_use]
    pub fn history_for(
        &self,
        limit: Option<usize>,
        user: Option<&UserId>,
    ) -> Vec<BroadcastMessage> {
        let filter = self.inner.hub.filter.as_deref();
        let reader = Recipient {
            connection: None,
            user,
        };
        let to_all: Vec<Arc<Stored>> = self
            .inner
            .core
            .lock()
            .history
            .iter()
            .filter(|s| matches!(s.target, Target::All { .. }))
            .cloned()
            .collect();
        // The filter is the application's code: asked outside the lock.
        let listed: Vec<&Arc<Stored>> = to_all
            .iter()
            .filter(|s| filter.is_none_or(|f| f(&s.message, &reader)))
            .collect();
        let skip = limit.map_or(0, |l| listed.len().saturating_sub(l));
        listed[skip..].iter().map(|s| s.message.clone()).collect()
    }

    /// The id the next message will follow: the last one published (with
    /// sequence 0 before any).
    #[must_use]
    pub fn last_id(&self) -> MessageId {
        let core = self.inner.core.lock();
        MessageId {
            epoch: core.epoch,
            seq: core.seq,
        }
    }

    /// The registry of this manager's connections: states, counters, stats.
    #[must_use]
    pub fn registry(&self) -> &ConnectionRegistry {
        &self.inner.registry
    }

    /// Shorthand for `registry().stats()`.
    #[must_use]
    pub fn stats(&self) -> RegistryStats {
        self.inner.registry.stats()
    }

    /// Ends every connection without the close message, so that browsers
    /// reconnect (to the next server process). Call it from the shutdown
    /// signal given to `with_graceful_shutdown`; see
    /// [`shutdown_signal`](Self::shutdown_signal).
    pub fn shutdown(&self) {
        self.inner.shutdown.trigger();
    }

    /// The manager's shutdown signal, to share with other streams.
    #[must_use]
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.inner.shutdown
    }
}

/// How far ahead of this instance's sequence a resumed id may be (another
/// instance numbered it, this one has not read it yet).
fn ahead_limit(inner: &Inner) -> u64 {
    u64::try_from(inner.history_limit.max(inner.queue_capacity)).unwrap_or(u64::MAX)
}

fn connection_event(epoch: Epoch, id: &ConnectionId, tag: &str, seq: u64) -> Event {
    // The id is ASCII letters, digits, '-' and '_', the tag that and '.'
    // and hex: safe in the attribute and in the field.
    Event::builder()
        .event(CONNECTION_EVENT)
        .id(format!("{epoch}-{seq}.{tag}"))
        .data(format!(
            "<input type=\"hidden\" name=\"connection_id\" value=\"{id}\">"
        ))
        .build()
        .unwrap_or_else(|_| Event::message(""))
}

fn reset_event(epoch: Epoch, tag: &str, seq: u64, reason: ResetReason) -> Event {
    Event::builder()
        .event(RESET_EVENT)
        .id(format!("{epoch}-{seq}.{tag}"))
        .data(format!("{{\"reason\":\"{}\"}}", reason.as_str()))
        .build()
        .unwrap_or_else(|_| Event::message(""))
}

/// A builder for a frame of this type: `message` is sent unnamed (the same
/// to an `EventSource`, and the only kind htmx 4 swaps).
pub(crate) fn named(message_type: &EventName) -> crate::event::EventBuilder {
    let b = Event::builder();
    if message_type.as_str() == "message" {
        b
    } else {
        b.event(message_type.clone())
    }
}

enum Dest {
    All,
    One(ConnectionId),
    User(UserId),
    Topics(Vec<Topic>),
}

/// A message being prepared: see [`BroadcastManager::message`]. Nothing is
/// sent until [`send`](Self::send).
#[must_use = "a message is only sent by `send()`"]
pub struct Message<'a> {
    manager: &'a BroadcastManager,
    message_type: Option<EventName>,
    data: Data,
    metadata: Option<serde_json::Value>,
    exclude: Vec<ConnectionId>,
    dest: Dest,
    private: bool,
    topic_as_type: bool,
    allow_reserved: bool,
    error: Option<Error>,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("message_type", &self.message_type)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

impl Message<'_> {
    /// Attaches metadata (kept with the message, listed in the history).
    pub fn metadata(mut self, metadata: Option<serde_json::Value>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Leaves these connections out.
    pub fn exclude(mut self, ids: &[ConnectionId]) -> Self {
        self.exclude.extend_from_slice(ids);
        self
    }

    /// Sends to this connection alone (an error at `send` when it is not
    /// connected).
    pub fn to_connection(mut self, id: ConnectionId) -> Self {
        self.dest = Dest::One(id);
        self
    }

    /// Sends to every connection of this user alone.
    pub fn to_user(mut self, user: UserId) -> Self {
        self.dest = Dest::User(user);
        self
    }

    /// Sends to the connections subscribed to one of these topics.
    pub fn topics(mut self, topics: impl IntoIterator<Item = Topic>) -> Self {
        self.dest = Dest::Topics(topics.into_iter().collect());
        self
    }

    /// Private topic message: only connections authorized for one of its
    /// topics receive it (no effect without topics).
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// Uses the topic as the SSE event type, so one page listening to
    /// several topics can route each to its own element (`sse-swap="TOPIC"`
    /// in htmx 2). A subscriber gets the name of the first of the message's
    /// topics it subscribed to.
    pub fn topic_as_type(mut self, on: bool) -> Self {
        self.topic_as_type = on;
        self
    }

    /// Lets this message use a type the crate gives a meaning to
    /// ([`RESERVED_EVENTS`](super::RESERVED_EVENTS): `connection`, `reset`,
    /// `close`, or the manager's own close event), which is refused
    /// otherwise. Pages take it for the crate's own event: a `close` sent
    /// to everyone stops every page from reconnecting.
    ///
    /// ```
    /// use htmx_sse::{broadcast::BroadcastManager, Error};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let manager = BroadcastManager::new();
    /// let refused = manager.message("close", "").send().await;
    /// assert!(matches!(refused, Err(Error::ReservedEventName { .. })));
    ///
    /// // Every page stops listening: meant, and visible in review.
    /// manager.message("close", "service retired").allow_reserved_type().send().await?;
    /// # Ok(()) }
    /// ```
    pub fn allow_reserved_type(mut self) -> Self {
        self.allow_reserved = true;
        self
    }

    /// Publishes it.
    ///
    /// # Errors
    ///
    /// A bad type (CR, LF or NUL, empty, or reserved: see
    /// [`allow_reserved_type`](Self::allow_reserved_type)), data that does
    /// not serialise, the renderer's error, a topic message without topics,
    /// an unknown connection for
    /// [`to_connection`](Self::to_connection). Nothing is published then.
    pub async fn send(self) -> Result<Sent, Error> {
        self.manager.publish(self).await
    }
}
