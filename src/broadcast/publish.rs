//! Publishing: [`BroadcastManager::message`] and the [`Message`] builder,
//! the shortcuts (`broadcast`, `send_to`, `send_to_user`), and the path of
//! one message: checked, rendered and encoded once into an envelope, then
//! numbered and delivered in memory, or handed to the shared backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use chrono::Utc;

use super::CONNECTION_EVENT;
use super::data::{Data, IntoData};
use super::engine::{Engine, Transport};
use super::manager::BroadcastManager;
use super::message::{MessageId, default_text, named};
use super::stage::{Outgoing, Sent};
use crate::backend::{Backend, BoxFuture, Envelope, Target};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;
use crate::event::{Event, EventName};
use crate::limits::Limit;
use crate::topics::Topic;

/// How long a publish through a shared backend waits for this instance to
/// read it back (then it returns with `delivered: 0` and a warning).
const OWN_DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl BroadcastManager {
    /// Sends a message to every connection except those in `exclude`;
    /// returns its id and how many connections it was queued for.
    ///
    /// `message_type` becomes the SSE event name. `data`'s type decides how
    /// it is sent ([`IntoData`]): a string is text, escaped so that the page
    /// shows it as written; a [`Fragment`](crate::Fragment), maud `Markup` or askama template
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
    pub(crate) fn refuse_reserved(&self, name: &str) -> Result<(), Error> {
        let own_close = self.inner.fanout.close.as_ref().and_then(Event::name);
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

    /// Sends `m` without a number, in memory (see `Engine::deliver_unnumbered`;
    /// `signed_in`: only to connections with a user), and keeps it in
    /// `latest` under the manager's lock (so that a page resuming gets
    /// either it from the ring or it from `latest`, never neither); returns
    /// how many connections it was queued for.
    pub(crate) fn send_unnumbered(
        &self,
        m: Message<'_>,
        signed_in: bool,
        latest: &parking_lot::Mutex<Option<std::sync::Arc<super::stage::Stored>>>,
    ) -> Result<usize, Error> {
        let inner = &*self.inner;
        if !matches!(inner.transport, Transport::Memory) {
            return Err(Error::Unsupported {
                what: "unnumbered messages are sent in memory only",
            });
        }
        let envelope = self.prepare(m)?;
        let mut core = inner.core.lock();
        let (stored, delivered) = inner.deliver_unnumbered(&mut core, envelope, signed_in);
        *latest.lock() = Some(stored);
        drop(core);
        Ok(delivered)
    }

    /// Publishes inside an `htmx_sse.publish` span that records the
    /// message's type, its id, the backend and how many connections of
    /// this process it was queued for (see the module docs on tracing).
    /// In memory it is delivered before this returns; through a shared
    /// backend it is queued in the backend now, and the returned future
    /// gives its outcome.
    fn submit_message(&self, m: Message<'_>) -> Submitted {
        let span = tracing::info_span!(
            "htmx_sse.publish",
            "message.type" = tracing::field::Empty,
            message.id = tracing::field::Empty,
            backend = self.backend_name(),
            delivered = tracing::field::Empty,
        );
        let message_type = m
            .message_type
            .as_ref()
            .map_or("message", EventName::as_str)
            .to_owned();
        span.record("message.type", message_type.as_str());
        let started = std::time::Instant::now();
        match span.in_scope(|| self.start(m)) {
            Ok(Started::Done(sent)) => {
                let sent = Ok(sent);
                self.finish(&span, &message_type, started, &sent);
                Submitted(State::Done(Some(sent)))
            }
            Err(e) => {
                let sent = Err(e);
                self.finish(&span, &message_type, started, &sent);
                Submitted(State::Done(Some(sent)))
            }
            Ok(Started::Later(ack)) => {
                let manager = self.clone();
                Submitted(State::Waiting(Box::pin(async move {
                    let sent = tracing::Instrument::instrument(ack, span.clone()).await;
                    manager.finish(&span, &message_type, started, &sent);
                    sent
                })))
            }
        }
    }

    /// Records a publish's outcome in its span and the metrics.
    fn finish(
        &self,
        span: &tracing::Span,
        message_type: &str,
        started: std::time::Instant,
        sent: &Result<Sent, Error>,
    ) {
        self.inner
            .fanout
            .meter
            .published(message_type, started.elapsed(), sent.is_ok());
        match sent {
            Ok(s) => {
                span.record("message.id", tracing::field::display(&s.id));
                span.record("delivered", s.delivered);
            }
            Err(e) => {
                let _in = span.enter();
                tracing::debug!(error = %e, "publish failed");
            }
        }
    }

    /// Delivers `m` in memory, or queues it in the shared backend (after
    /// finding the user of a connection on another instance, for
    /// `to_connection`).
    fn start(&self, m: Message<'_>) -> Result<Started, Error> {
        let inner = &*self.inner;
        let mut envelope = self.prepare(m)?;
        match &inner.transport {
            Transport::Memory => {
                let mut core = inner.core.lock();
                if let Target::One { to, user } = &mut envelope.target {
                    match core.connections.get(to) {
                        Some(c) => user.clone_from(&c.subscriber.sub.user),
                        None => return Err(Error::UnknownConnection { id: to.to_string() }),
                    }
                }
                let seq = core.seq + 1;
                let (id, delivered) = inner.deliver_at(&mut core, seq, envelope);
                Ok(Started::Done(Sent { id, delivered }))
            }
            Transport::Shared(backend) => {
                let engine = Arc::clone(&self.inner);
                let backend = Arc::clone(backend);
                if let Target::One { to, user } = &mut envelope.target {
                    let local = inner
                        .core
                        .lock()
                        .connections
                        .get(to)
                        .map(|c| c.subscriber.sub.user.clone());
                    match local {
                        Some(u) => *user = u,
                        None => {
                            // On another instance, maybe: queued once found.
                            return Ok(Started::Later(Box::pin(async move {
                                if let Target::One { to, user } = &mut envelope.target {
                                    *user = backend.locate(to).await?.ok_or_else(|| {
                                        Error::UnknownConnection { id: to.to_string() }
                                    })?;
                                }
                                submit_shared(engine, backend, envelope).await
                            })));
                        }
                    }
                }
                Ok(Started::Later(submit_shared(engine, backend, envelope)))
            }
        }
    }
}

/// Queues `envelope` in the shared backend now; the future gives its id
/// once the log has it (and, with read-your-writes, once this instance
/// delivered it).
fn submit_shared(
    engine: Arc<Engine>,
    backend: Arc<dyn Backend>,
    mut envelope: Envelope,
) -> BoxFuture<'static, Result<Sent, Error>> {
    let nonce = engine.nonce.fetch_add(1, Ordering::Relaxed);
    envelope.nonce = nonce;
    let epoch = engine.core.lock().epoch;
    if !engine.read_your_writes {
        // Returned means in the shared log; this instance delivers it
        // when its reader gets there.
        let ack = backend.submit(epoch, envelope);
        return Box::pin(async move {
            let seq = ack.await?;
            engine.published(epoch, seq);
            let id = MessageId { epoch, seq };
            Ok(Sent { id, delivered: 0 })
        });
    }
    // Read-your-writes: this instance's connections have it queued when
    // the future is ready.
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.pending.lock().insert(nonce, tx);
    // Taken off again however this ends, the future dropped mid-publish
    // included.
    let waiting = Waiting {
        engine: Arc::clone(&engine),
        nonce,
    };
    let ack = backend.submit(epoch, envelope);
    Box::pin(async move {
        let _waiting = waiting;
        let seq = ack.await?;
        engine.published(epoch, seq);
        let id = MessageId { epoch, seq };
        let delivered = if let Ok(Ok(n)) = tokio::time::timeout(OWN_DELIVERY_WAIT, rx).await {
            n
        } else {
            tracing::warn!(%id, "published, but this instance has not read it back yet");
            0
        };
        Ok(Sent { id, delivered })
    })
}

/// What [`BroadcastManager::start`] did.
enum Started {
    /// Delivered (in memory).
    Done(Sent),
    /// Queued in the shared backend: the outcome comes later.
    Later(BoxFuture<'static, Result<Sent, Error>>),
}

/// A publish made by [`Message::submit`]: it is in the backend's queue
/// (in memory: delivered) already, in the order of the `submit` calls,
/// and this future gives its outcome, as [`Message::send`] does. Keeping
/// several in flight before awaiting them (a window) lets the Redis
/// backend write them in one round trip. Dropping it does not withdraw
/// the publish; its outcome is then unknown.
///
/// One exception to the call order: a message
/// [`to_connection`](Message::to_connection) for a connection that is
/// not on this instance is queued once the backend has found where it is
/// (one more round trip), so a publish submitted after it may come first.
///
/// ```
/// use htmx_sse::broadcast::BroadcastManager;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::new();
/// let window: Vec<_> = (0..3).map(|i| manager.message("n", i.to_string()).submit()).collect();
/// let mut last = None;
/// for submitted in window {
///     let sent = submitted.await?;
///     assert!(last < Some(sent.id), "in the order of the calls");
///     last = Some(sent.id);
/// }
/// # Ok(()) }
/// ```
#[must_use = "the publish is made; only awaiting this tells whether it succeeded"]
pub struct Submitted(State);

enum State {
    Done(Option<Result<Sent, Error>>),
    Waiting(BoxFuture<'static, Result<Sent, Error>>),
}

impl fmt::Debug for Submitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            State::Done(Some(_)) => "done",
            State::Done(None) => "taken",
            State::Waiting(_) => "waiting",
        };
        f.debug_tuple("Submitted").field(&state).finish()
    }
}

impl Future for Submitted {
    type Output = Result<Sent, Error>;

    /// # Panics
    ///
    /// When polled again after it was ready (a programmer error, as for
    /// any future).
    #[track_caller]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Done(outcome) => Poll::Ready(
                outcome
                    .take()
                    .expect("`Submitted` polled after it was ready"),
            ),
            State::Waiting(ack) => ack.as_mut().poll(cx),
        }
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
        self.submit().await
    }

    /// Publishes it now, without waiting: in memory it is delivered when
    /// this returns; through a shared backend it is queued (in the order of
    /// these calls, across every task of this instance), and the returned
    /// [`Submitted`] gives the outcome [`send`](Self::send) would have. A
    /// publisher that keeps a window of submits in flight and awaits the
    /// oldest (rather than awaiting each before the next) lets the Redis
    /// backend write many in one round trip, at the same guarantees: one
    /// id order across instances, an error per publish that failed, and
    /// with [`read_your_writes`](super::BroadcastBuilder::read_your_writes)
    /// (the default) each ready once this instance delivered it.
    ///
    /// A message [`to_connection`](Self::to_connection) held by another
    /// instance is queued once that instance is found (one round trip):
    /// after the calls made meanwhile.
    ///
    /// ```
    /// use std::collections::VecDeque;
    /// use htmx_sse::broadcast::BroadcastManager;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// let mut window = VecDeque::new();
    /// for i in 0..100 {
    ///     window.push_back(manager.message("tick", i.to_string()).submit());
    ///     if window.len() == 16 {
    ///         window.pop_front().unwrap().await?;
    ///     }
    /// }
    /// for submitted in window {
    ///     submitted.await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`send`](Self::send), from the returned future.
    pub fn submit(self) -> Submitted {
        self.manager.submit_message(self)
    }
}

/// A publish waiting to be read back: its entry in the engine's pending
/// map goes when it does.
struct Waiting {
    engine: Arc<Engine>,
    nonce: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.engine.pending.lock().remove(&self.nonce);
    }
}
