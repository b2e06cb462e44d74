//! [`BroadcastBuilder`]: the options of a manager, and the two ways to
//! build one (in memory, or on a shared backend).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::engine::{Engine, Ledger, Transport};
use super::fanout::Fanout;
use super::listeners::Listeners;
use super::manager::BroadcastManager;
use super::message::{BroadcastMessage, Epoch};
use super::proof::{MIN_KEY_BYTES, ResumeKey};
use super::stage::{Filter, Outgoing, Recipient, Render};
use crate::backend::{Backend, Delivery, Sink};
use crate::connections::{ConnectionRegistry, Roll};
use crate::error::Error;
use crate::fragment::Fragment;
use crate::limits::Limits;
use crate::streaming::StreamConfig;

/// The longest [`BroadcastBuilder::presence_grace`]: a day.
const MAX_PRESENCE_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

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
    read_your_writes: bool,
    connection_event: bool,
    presence_grace: Duration,
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
            .field("read_your_writes", &self.read_your_writes)
            .field("connection_event", &self.connection_event)
            .field("presence_grace", &self.presence_grace)
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
            read_your_writes: true,
            connection_event: true,
            presence_grace: Duration::from_secs(3),
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

    /// How long a page that left still counts in watched presence
    /// ([`BroadcastManager::watch_presence`],
    /// [`BroadcastManager::presence_badge`]), default 3 s: a page back
    /// within it (a reload, a resume with `Last-Event-ID`, a dropped
    /// socket reopened) is neither a leave nor a join. Zero: every
    /// disconnect is a leave at once. [`BroadcastManager::presence`] is
    /// not debounced.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::broadcast::BroadcastManager;
    ///
    /// let manager = BroadcastManager::builder()
    ///     .presence_grace(Duration::from_secs(5))
    ///     .build();
    /// # let _ = manager;
    /// ```
    ///
    /// # Panics
    ///
    /// When `grace` is longer than a day: a page gone that long has left.
    #[track_caller]
    pub fn presence_grace(mut self, grace: Duration) -> Self {
        assert!(
            grace <= MAX_PRESENCE_GRACE,
            "presence_grace must be at most a day, got {grace:?}"
        );
        self.presence_grace = grace;
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

    /// With a shared backend: whether a publish returns once this instance
    /// delivered it to its own connections (`true`, the default: a page of
    /// this instance has it queued when `send()` returns, and
    /// [`Sent::delivered`](super::Sent::delivered) counts them), or as soon
    /// as the shared log has it (`false`: faster for concurrent
    /// publishers, one round trip less per publish; `delivered` is then
    /// 0, as the count is not known yet). Either way, a publish that
    /// returned `Ok` is in the shared log, in its one order, and reaches
    /// every instance. In memory a publish is delivered when it returns,
    /// whatever this says. Either way, a publisher that keeps several
    /// publishes in flight ([`Message::submit`](super::Message::submit))
    /// lets the Redis backend write them in one round trip.
    ///
    /// ```
    /// use htmx_sse::broadcast::BroadcastManager;
    ///
    /// let builder = BroadcastManager::builder().read_your_writes(false);
    /// # let _ = builder;
    /// ```
    pub fn read_your_writes(mut self, on: bool) -> Self {
        self.read_your_writes = on;
        self
    }

    /// Whether every stream opens with the `connection` event (default
    /// `true`): the hidden input with the connection id that a form swaps in
    /// so that a broadcast can exclude the tab that posted, and the first
    /// id a page could resume from. A page that posts nothing back (a
    /// dashboard) and is rendered with a
    /// [`resume_point`](BroadcastManager::resume_point) needs neither:
    /// without it, nothing is written when a stream opens, until its first
    /// message or heartbeat. Resume is unchanged: every message's id
    /// carries the connection id and its proof.
    ///
    /// ```
    /// use htmx_sse::broadcast::BroadcastManager;
    ///
    /// let dashboards = BroadcastManager::builder().connection_event(false).build();
    /// # let _ = dashboards;
    /// ```
    pub fn connection_event(mut self, on: bool) -> Self {
        self.connection_event = on;
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
    /// [`Shutdown`](crate::streaming::Shutdown) given here becomes the manager's own, so one signal ends
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
    /// ([`Data::Html`](super::Data::Html)) goes out as it is, without it. The default escapes
    /// text and writes JSON HTML-safe (see [`Data`](super::Data)).
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

    /// A manager on the NATS JetStream backend: many server processes
    /// sharing one NATS server (or cluster) act as one (see
    /// [`crate::backend`](crate::backend#how-the-nats-backend-works)).
    /// Makes or reads the stream, its epoch and the recent history, then
    /// starts reading new messages.
    ///
    /// ```no_run
    /// use htmx_sse::{backend::NatsConfig, broadcast::BroadcastManager};
    ///
    /// # async fn run() -> Result<(), htmx_sse::Error> {
    /// let url = std::env::var("NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    /// let manager = BroadcastManager::builder()
    ///     .build_nats(NatsConfig::new(url))
    ///     .await?;
    /// manager.message("chat", "<li>hi</li>").send().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] for a bad prefix, when NATS cannot be reached,
    /// has no JetStream (start it with `-js`), or answers with an error.
    #[cfg(feature = "nats")]
    pub async fn build_nats(
        self,
        config: crate::backend::NatsConfig,
    ) -> Result<BroadcastManager, Error> {
        let backend = crate::backend::NatsBackend::new(config)?;
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
        let first = start
            .recent
            .first()
            .map_or(last, |(s, _)| s.saturating_sub(1));
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
                inner.deliver_at(&mut core, seq, p);
            }
            core.note_gap(last + 1);
            core.seq = last;
        }
        let inner: Arc<dyn Delivery> = Arc::clone(&manager.inner) as Arc<dyn Delivery>;
        let sink = Sink::new(Arc::downgrade(&inner));
        drop(inner);
        // What the backend reads back is fanned out inside this span (see
        // `Engine::deliver_at`'s `htmx_sse.fanout`).
        let span = tracing::info_span!("htmx_sse.backend", backend = backend.name());
        tokio::spawn(tracing::Instrument::instrument(
            backend.run(sink, last),
            span,
        ));
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
        let engine = Arc::new(Engine {
            core: Mutex::new(Ledger {
                epoch,
                seq,
                history: VecDeque::with_capacity(self.history.min(4096)),
                history_bytes: 0,
                connections: HashSet::new(),
                users: HashMap::new(),
                listeners: Listeners::default(),
                missing_to: 0,
                unnumbered: 0,
            }),
            transport,
            origin: u64::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..8]
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("a UUID has 16 bytes")),
            ),
            nonce: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            read_your_writes: self.read_your_writes,
            connection_event: self.connection_event,
            published_seq: AtomicU64::new(0),
            registry: ConnectionRegistry::new(),
            history_limit: self.history,
            queue_capacity: self.queue_capacity,
            limits: self.limits,
            // No initial message: the `connection` event opens every
            // stream.
            fanout: Arc::new(Fanout::new(&self.stream, self.filter, self.queue_capacity)),
            timer: OnceLock::new(),
            kind: self.kind,
            render: self.render,
            shutdown,
            resume_key,
            presence: OnceLock::new(),
            presence_grace: self.presence_grace,
        });
        // The registry shows the engine's connections: one list of who is
        // connected, under the engine's lock.
        let roll: Weak<dyn Roll> = Arc::downgrade(&engine) as Weak<Engine>;
        engine.registry.show(roll);
        BroadcastManager { inner: engine }
    }
}

impl Default for BroadcastManager {
    fn default() -> Self {
        Self::new()
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
}
