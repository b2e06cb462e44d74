//! `BroadcastManager`: numbering, history, and handing each message to the
//! connections it is for.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::feed::{Feed, Intro};
use super::message::{BroadcastMessage, Epoch, LastEventId, MessageId, default_text};
use super::{CONNECTION_EVENT, Connection, RESET_EVENT, ResetReason};
use crate::connections::{ConnectionId, ConnectionRegistry, RegistryStats};
use crate::error::Error;
use crate::event::{Event, EventName};
use crate::fragment::Fragment;
use crate::streaming::{Shutdown, StreamConfig};

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

/// Who a message is for.
#[derive(Debug)]
pub(crate) enum Target {
    /// Every connection but these.
    All { exclude: Box<[ConnectionId]> },
    /// Exactly this connection.
    One(ConnectionId),
}

/// A published message, encoded once, as every connection shares it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    /// `id: EPOCH-SEQ` (the receiving connection adds `.ID\n`).
    pub(crate) head: Bytes,
    /// `event: …\ndata: …\n\n`.
    pub(crate) body: Bytes,
    pub(crate) target: Target,
    pub(crate) message: BroadcastMessage,
}

impl Stored {
    pub(crate) fn is_for(&self, id: &ConnectionId) -> bool {
        match &self.target {
            Target::All { exclude } => !exclude.contains(id),
            Target::One(to) => to == id,
        }
    }
}

/// One connection's own queue: messages addressed to it alone.
#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) queue: Mutex<VecDeque<Arc<Stored>>>,
    pub(crate) waker: AtomicWaker,
    /// The queue overflowed: the connection is closed and resumes.
    pub(crate) lagged: AtomicBool,
    /// A newer connection with the same id took over.
    pub(crate) replaced: AtomicBool,
    /// Ends the connection with the close message.
    pub(crate) stop: CancellationToken,
}

impl Direct {
    fn new() -> Self {
        Direct {
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            lagged: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }
}

struct Core {
    seq: u64,
    history: VecDeque<Arc<Stored>>,
    connections: HashMap<ConnectionId, Arc<Direct>>,
}

pub(crate) struct Inner {
    epoch: Epoch,
    core: Mutex<Core>,
    ring: broadcast::Sender<Arc<Stored>>,
    registry: ConnectionRegistry,
    pub(crate) history_limit: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) stream: StreamConfig,
    kind: String,
    render: Option<Arc<Render>>,
    shutdown: Shutdown,
}

impl Inner {
    /// Forgets a connection's queue, unless a newer one took its id.
    pub(crate) fn remove(&self, id: &ConnectionId, direct: &Arc<Direct>) {
        let mut core = self.core.lock();
        if core
            .connections
            .get(id)
            .is_some_and(|d| Arc::ptr_eq(d, direct))
        {
            core.connections.remove(id);
        }
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
///
/// let manager = BroadcastManager::builder().history(100).build();
/// let sent = manager.broadcast("chat", "<li>hi</li>", None, &[])?;
/// assert_eq!(sent.delivered, 0); // nobody is connected yet
/// assert_eq!(manager.history(Some(10)).len(), 1);
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Clone)]
pub struct BroadcastManager {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for BroadcastManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = self.inner.core.lock();
        f.debug_struct("BroadcastManager")
            .field("epoch", &self.inner.epoch)
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
}

impl fmt::Debug for BroadcastBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastBuilder")
            .field("history", &self.history)
            .field("queue_capacity", &self.queue_capacity)
            .field("stream", &self.stream)
            .field("kind", &self.kind)
            .field("render", &self.render.is_some())
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
        }
    }
}

impl BroadcastBuilder {
    /// How many recent messages are kept for [`BroadcastManager::history`]
    /// and for clients that reconnect (default 1024). A client that missed
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
    pub fn stream(mut self, config: StreamConfig) -> Self {
        self.stream = config;
        self
    }

    /// The kind connections are registered under (default `"broadcast"`).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// How a message becomes the text of its frame, usually HTML from
    /// askama or maud. Called once per message, whatever the number of
    /// connections. The default sends a JSON string as its text and any
    /// other JSON value as compact JSON.
    ///
    /// ```
    /// use htmx_sse::{broadcast::BroadcastManager, Fragment};
    ///
    /// let manager = BroadcastManager::builder()
    ///     .render(|msg| {
    ///         let text = msg.data["text"].as_str().unwrap_or_default();
    ///         Ok(Fragment::from(maud::html! { li { (text) } }))
    ///     })
    ///     .build();
    /// manager.broadcast("chat", serde_json::json!({"text": "<b>hi</b>"}), None, &[])?;
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn render<F>(mut self, f: F) -> Self
    where
        F: Fn(&Outgoing<'_>) -> Result<Fragment, Error> + Send + Sync + 'static,
    {
        self.render = Some(Arc::new(f));
        self
    }

    /// The manager.
    ///
    /// # Panics
    ///
    /// Never for data; see [`queue_capacity`](Self::queue_capacity).
    #[must_use]
    pub fn build(self) -> BroadcastManager {
        // One signal for everything: the stream config's, if it has one.
        let shutdown = self.stream.shutdown.clone().unwrap_or_default();
        let (ring, _) = broadcast::channel(self.queue_capacity);
        BroadcastManager {
            inner: Arc::new(Inner {
                epoch: Epoch::random(),
                core: Mutex::new(Core {
                    seq: 0,
                    history: VecDeque::with_capacity(self.history.min(4096)),
                    connections: HashMap::new(),
                }),
                ring,
                registry: ConnectionRegistry::new(),
                history_limit: self.history,
                queue_capacity: self.queue_capacity,
                stream: self.stream.shutdown(&shutdown).initial_message(None),
                kind: self.kind,
                render: self.render,
                shutdown,
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
    /// `IntoResponse`); it unregisters itself when the client goes away.
    pub fn connect(&self, last_event_id: Option<&str>, metadata: serde_json::Value) -> Connection {
        self.open(None, last_event_id, metadata)
    }

    /// Opens a connection under a chosen id (or a random one), without
    /// resume. Registering an id that is connected replaces that connection.
    pub fn register(&self, id: Option<ConnectionId>, metadata: serde_json::Value) -> Connection {
        self.open(id, None, metadata)
    }

    fn open(
        &self,
        id: Option<ConnectionId>,
        last_event_id: Option<&str>,
        metadata: serde_json::Value,
    ) -> Connection {
        let inner = &self.inner;
        let resume = last_event_id
            .filter(|s| !s.is_empty())
            .map(|s| LastEventId::parse(s).ok_or(ResetReason::Unrecognized));
        let id = match (id, &resume) {
            (Some(id), _) => id,
            (None, Some(Ok(lei))) => lei.connection.clone(),
            (None, _) => ConnectionId::random(),
        };
        let direct = Arc::new(Direct::new());
        let mut core = inner.core.lock();
        let oldest = core.history.front().map_or(core.seq + 1, |s| s.seq);
        let (start, reset, replay) = match resume {
            None => (core.seq, None, Vec::new()),
            Some(Err(reason)) => (core.seq, Some(reason), Vec::new()),
            Some(Ok(lei)) if lei.epoch != inner.epoch => {
                (core.seq, Some(ResetReason::Restarted), Vec::new())
            }
            Some(Ok(lei)) if lei.seq > core.seq => {
                (core.seq, Some(ResetReason::Unrecognized), Vec::new())
            }
            Some(Ok(lei)) if lei.seq + 1 < oldest => {
                (core.seq, Some(ResetReason::HistoryGap), Vec::new())
            }
            Some(Ok(lei)) => {
                let replay: Vec<Arc<Stored>> = core
                    .history
                    .iter()
                    .filter(|s| s.seq > lei.seq && s.is_for(&id))
                    .cloned()
                    .collect();
                (lei.seq, None, replay)
            }
        };
        let ring = inner.ring.subscribe();
        if let Some(old) = core.connections.insert(id.clone(), Arc::clone(&direct)) {
            old.replaced.store(true, Ordering::Release);
            old.waker.wake();
        }
        let seq_now = core.seq;
        drop(core);

        let registration = inner.registry.add(Some(id.clone()), &inner.kind, metadata);
        let suffix = {
            let mut b = BytesMut::with_capacity(id.as_str().len() + 2);
            b.put_u8(b'.');
            b.put_slice(id.as_str().as_bytes());
            b.put_u8(b'\n');
            b.freeze()
        };
        let intro = Intro {
            connection: self.connection_event(&id, start),
            reset: reset.map(|r| self.reset_event(&id, seq_now, r)),
            replay: replay.into(),
        };
        if let Some(reason) = reset {
            tracing::debug!(connection = %id, ?reason, "resume impossible, sending reset");
        }
        let stop = direct.stop.clone();
        let feed = Feed::new(
            id.clone(),
            Arc::downgrade(&self.inner),
            ring,
            direct,
            suffix,
            intro,
            registration,
        );
        Connection {
            id,
            feed,
            config: inner.stream.clone(),
            stop,
        }
    }

    fn connection_event(&self, id: &ConnectionId, seq: u64) -> Event {
        // The id is ASCII letters, digits, '-' and '_': safe in the
        // attribute and in the field.
        Event::builder()
            .event(CONNECTION_EVENT)
            .id(format!("{}-{}.{}", self.inner.epoch, seq, id))
            .data(format!(
                "<input type=\"hidden\" name=\"connection_id\" value=\"{id}\">"
            ))
            .build()
            .unwrap_or_else(|_| Event::message(""))
    }

    fn reset_event(&self, id: &ConnectionId, seq: u64, reason: ResetReason) -> Event {
        Event::builder()
            .event(RESET_EVENT)
            .id(format!("{}-{}.{}", self.inner.epoch, seq, id))
            .data(format!("{{\"reason\":\"{}\"}}", reason.as_str()))
            .build()
            .unwrap_or_else(|_| Event::message(""))
    }

    /// Sends a message to every connection except those in `exclude`;
    /// returns its id and how many connections it was queued for.
    ///
    /// `message_type` becomes the SSE event name; `data` is any
    /// `Serialize` value, rendered by the manager's renderer (by default a
    /// string is sent as its text, HTML included).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] or [`Error::EmptyEventName`] for a bad type,
    /// [`Error::Json`] when `data` does not serialise, or the renderer's
    /// error. Nothing is published then.
    pub fn broadcast<T, D>(
        &self,
        message_type: T,
        data: D,
        metadata: Option<serde_json::Value>,
        exclude: &[ConnectionId],
    ) -> Result<Sent, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: serde::Serialize,
    {
        self.publish(
            message_type.try_into().map_err(Into::into)?,
            serde_json::to_value(data)?,
            metadata,
            Target::All {
                exclude: exclude.into(),
            },
        )
    }

    /// Sends a message to exactly one connection.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] when no connection has this id (nothing
    /// is published), and the errors of [`broadcast`](Self::broadcast).
    pub fn send_to<T, D>(
        &self,
        connection_id: &ConnectionId,
        message_type: T,
        data: D,
        metadata: Option<serde_json::Value>,
    ) -> Result<Sent, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        D: serde::Serialize,
    {
        self.publish(
            message_type.try_into().map_err(Into::into)?,
            serde_json::to_value(data)?,
            metadata,
            Target::One(connection_id.clone()),
        )
    }

    fn publish(
        &self,
        message_type: EventName,
        data: serde_json::Value,
        metadata: Option<serde_json::Value>,
        target: Target,
    ) -> Result<Sent, Error> {
        let inner = &*self.inner;
        let timestamp = Utc::now();
        let text = match &inner.render {
            Some(render) => render(&Outgoing {
                message_type: &message_type,
                data: &data,
                metadata: metadata.as_ref(),
                timestamp,
            })?
            .into_string(),
            None => default_text(&data),
        };
        // Encoded once, outside the lock; only the id is per message.
        let body = Event::builder()
            .event(message_type.clone())
            .data(text)
            .build()?
            .into_bytes();

        let mut core = inner.core.lock();
        let direct = match &target {
            Target::One(to) => match core.connections.get(to) {
                Some(d) => Some(Arc::clone(d)),
                None => {
                    return Err(Error::UnknownConnection { id: to.to_string() });
                }
            },
            Target::All { .. } => None,
        };
        core.seq += 1;
        let id = MessageId {
            epoch: inner.epoch,
            seq: core.seq,
        };
        let mut head = BytesMut::with_capacity(24);
        head.put_slice(b"id: ");
        head.put_slice(id.to_string().as_bytes());
        let stored = Arc::new(Stored {
            seq: core.seq,
            head: head.freeze(),
            body,
            target,
            message: BroadcastMessage {
                id,
                message_type,
                data,
                timestamp,
                metadata,
            },
        });
        if inner.history_limit > 0 {
            if core.history.len() == inner.history_limit {
                core.history.pop_front();
            }
            core.history.push_back(Arc::clone(&stored));
        }
        let delivered = match direct {
            Some(direct) => {
                let mut queue = direct.queue.lock();
                if queue.len() >= inner.queue_capacity {
                    // Too far behind: close it; it resumes from history.
                    direct.lagged.store(true, Ordering::Release);
                } else {
                    queue.push_back(Arc::clone(&stored));
                }
                drop(queue);
                direct.waker.wake();
                1
            }
            None => {
                let excluded = match &stored.target {
                    Target::All { exclude } => exclude
                        .iter()
                        .filter(|id| core.connections.contains_key(*id))
                        .count(),
                    Target::One(_) => 0,
                };
                let receivers = inner.ring.send(stored).unwrap_or(0);
                receivers.saturating_sub(excluded)
            }
        };
        drop(core);
        Ok(Sent { id, delivered })
    }

    /// Ends a connection with the close message (the page stops listening
    /// if it matches the close event). Returns whether it was connected.
    pub fn unregister(&self, connection_id: &ConnectionId) -> bool {
        match self.inner.core.lock().connections.get(connection_id) {
            Some(direct) => {
                direct.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// How many connections are open.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.inner.core.lock().connections.len()
    }

    /// The most recent messages addressed to everyone (up to `limit`, all
    /// kept when `None`), oldest first. Messages sent to one connection are
    /// kept for its resume but never listed here.
    #[must_use]
    pub fn history(&self, limit: Option<usize>) -> Vec<BroadcastMessage> {
        let core = self.inner.core.lock();
        let public: Vec<&Arc<Stored>> = core
            .history
            .iter()
            .filter(|s| matches!(s.target, Target::All { .. }))
            .collect();
        let skip = limit.map_or(0, |l| public.len().saturating_sub(l));
        public[skip..].iter().map(|s| s.message.clone()).collect()
    }

    /// The id the next message will follow: the last one published (with
    /// sequence 0 before any).
    #[must_use]
    pub fn last_id(&self) -> MessageId {
        MessageId {
            epoch: self.inner.epoch,
            seq: self.inner.core.lock().seq,
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
