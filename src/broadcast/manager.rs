//! [`BroadcastManager`]: opening connections (with resume and the
//! limits), and what the manager says about them: counts, history, stats.
//! Publishing is in `publish`, the options in `builder`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Subscription;
use super::engine::{Engine, Ledger, Transport};
use super::feed::{Feed, FeedBody, Intro};
use super::listeners::Conn;
use super::message::{BroadcastMessage, Epoch, MessageId};
use super::resume::ResumePoint;
use super::stage::{Recipient, Stored};
use super::subscriber::Subscriber;
use super::{CONNECTION_EVENT, Connection, RESET_EVENT, ResetReason};
use crate::backend::Target;
use crate::connections::{ConnectionId, ConnectionRegistry, Listing, RegistryStats, UserId};
use crate::error::Error;
use crate::event::Event;
use crate::limits::{Limit, Limits};
use crate::streaming::Shutdown;
use crate::topics::{Topic, TopicSelector};

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
    pub(crate) inner: Arc<Engine>,
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

impl BroadcastManager {
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

    /// Opens a connection under an id the application chose (or a random
    /// one), without resume. Opening an id that is connected replaces that
    /// connection (the old stream ends without the close message).
    ///
    /// ```
    /// use htmx_sse::{BroadcastManager, connections::ConnectionId};
    ///
    /// let manager = BroadcastManager::new();
    /// let id = ConnectionId::new("worker-7")?;
    /// let conn = manager.connect_as(Some(id.clone()), serde_json::Value::Null)?;
    /// assert_eq!(conn.id(), &id);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_as(
        &self,
        id: Option<ConnectionId>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        self.open(id, Subscription::new(), None, metadata)
    }

    /// The former name of [`connect_as`](Self::connect_as).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[deprecated(since = "0.2.0", note = "renamed `connect_as`: it opens a connection")]
    pub fn register(
        &self,
        id: Option<ConnectionId>,
        metadata: serde_json::Value,
    ) -> Result<Connection, Error> {
        self.connect_as(id, metadata)
    }

    /// Where the stream stands now, to render into a page with its state:
    /// a stream opened from it (`?resumeFrom=EPOCH-SEQ` in its URL, which
    /// `SseElement::resume_from` (feature `askama`) writes, or as `Last-Event-ID`) gets every message published after it
    /// that is for it, exactly once, so that nothing published between the
    /// render and the connect is lost; or the `reset` event when the history
    /// no longer reaches back that far (or the server restarted). It names
    /// no connection: the stream gets a fresh connection id, and only what
    /// a fresh connection of this request's user may receive.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    ///
    /// let manager = BroadcastManager::new();
    /// let point = manager.resume_point();
    /// let url = format!("/sse?resumeFrom={point}");
    /// assert!(url.ends_with("-0"));
    /// ```
    #[must_use]
    pub fn resume_point(&self) -> MessageId {
        let core = self.inner.core.lock();
        // With a shared backend, a publish of this instance can have
        // returned before its reader delivered it (`read_your_writes(false)`,
        // or a read-back that took too long): the page may show it already.
        let published = self.inner.published_seq.load(Ordering::Relaxed);
        MessageId {
            epoch: core.epoch,
            seq: core.seq.max(published),
        }
    }

    /// The limits the manager and the routes built on it keep (see
    /// [`BroadcastBuilder::limits`](super::BroadcastBuilder::limits)).
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
        core: &Ledger,
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
        let proven = match &resume {
            Some(Ok(ResumePoint {
                connection: Some(c),
                proof: Some(p),
                ..
            })) => inner.resume_key.verify(c, sub.user.as_ref(), p),
            _ => false,
        };
        let mut core = inner.core.lock();
        let id = match (id, &resume) {
            (Some(id), _) => id,
            (
                None,
                Some(Ok(ResumePoint {
                    connection: Some(c),
                    ..
                })),
            ) if proven => c.clone(),
            (None, _) => ConnectionId::random(),
        };
        let replacing = core
            .connections
            .get(&id)
            .map(|c| c.subscriber.sub.user.as_ref());
        self.admit(&core, &sub, replacing)?;
        let tag = inner.resume_key.tag(&id, sub.user.as_ref());
        let oldest = core.history.front().map_or(core.seq + 1, |s| s.seq);
        let epoch = core.epoch;
        let resuming = resume.is_some();
        let (start, reset, mut replay) = match resume {
            None => (core.seq, None, Vec::new()),
            Some(Err(reason)) => (core.seq, Some(reason), Vec::new()),
            Some(Ok(lei)) if lei.epoch != epoch => {
                (core.seq, Some(ResetReason::Restarted), Vec::new())
            }
            // Not proven to be this client's: nothing of that id's. (A
            // point rendered into the page names no connection: what follows
            // it, for the fresh one.)
            Some(Ok(lei)) if lei.connection.is_some() && !proven => {
                (core.seq, Some(ResetReason::Unrecognized), Vec::new())
            }
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
        // A page that resumes may have missed badges (they are in no
        // history): the latest of each goes after the replay.
        if resuming && let Some(hub) = inner.presence.get() {
            hub.latest_badges(&id, &sub, &mut replay);
        }
        let ring = inner.fanout.ring.end();
        // The registry's entry lives in the `Subscriber`: one allocation.
        let entry = inner
            .registry
            .entry(Some(id.clone()), &inner.kind, metadata);
        let subscriber = Arc::new(Subscriber::new(
            sub,
            entry,
            Arc::clone(&tag),
            inner.fanout.tick(),
        ));
        let sub = &subscriber.sub;
        if let Some(user) = &sub.user {
            core.users.entry(user.clone()).or_default().push(id.clone());
        }
        let conn = Conn {
            subscriber: Arc::clone(&subscriber),
        };
        core.listeners.add(&conn);
        let replaced = core.connections.replace(conn);
        if let Some(old) = &replaced {
            core.listeners.remove(old);
            old.subscriber.flag(Subscriber::REPLACED);
            old.subscriber.waker.wake();
            if let Some(user) = &old.subscriber.sub.user {
                core.forget_user(user, &id);
                // The new entry's user was pushed before; keep it listed.
                if sub.user.as_ref() == Some(user) {
                    core.users.entry(user.clone()).or_default().push(id.clone());
                }
            }
        }
        if let Some(hub) = inner.presence.get() {
            match &replaced {
                Some(old) => hub.replaced(&old.subscriber.sub, sub),
                None => hub.joined(sub),
            }
        }
        drop(replaced);
        let seq_now = core.seq;
        drop(core);
        let ready = match &inner.transport {
            Transport::Memory => None,
            Transport::Shared(backend) => Some(backend.connected(&id, sub.user.as_ref())),
        };

        // Listed once, in the engine's connections, which the registry
        // shows: the registration only counts and sets states.
        let registration = inner
            .registry
            .shown(Arc::clone(&subscriber) as Arc<dyn Listing>);
        let intro = Intro {
            connection: inner
                .connection_event
                .then(|| connection_event(epoch, &id, &tag, start)),
            reset: reset.map(|r| reset_event(epoch, &tag, seq_now, r)),
            replay: replay.into(),
            after: start,
            ready,
        };
        if let Some(reason) = reset {
            tracing::debug!(connection = %id, ?reason, "resume impossible, sending reset");
        }
        // One span per connection, for its life: its id, its user, and
        // (recorded when it ends) why it ended; each delivery is a `trace`
        // event inside it with the message id.
        let span = tracing::info_span!(
            "htmx_sse.connection",
            connection.id = %id,
            user = tracing::field::Empty,
            resumed = last_event_id.is_some(),
            reset = reset.map(tracing::field::debug),
            end_reason = tracing::field::Empty,
        );
        if let Some(user) = &subscriber.sub.user {
            span.record("user", tracing::field::display(user));
        }
        inner.fanout.meter.connected(last_event_id.is_some(), reset);
        let feed = Feed::new(
            Arc::downgrade(&self.inner),
            ring,
            subscriber,
            intro,
            registration,
            span,
        );
        Ok(Connection {
            id,
            body: FeedBody::new(Arc::clone(&inner.fanout), feed),
            #[cfg(feature = "compression")]
            compression: inner.fanout.compression,
            #[cfg(feature = "compression")]
            accept: None,
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

    /// The backend's name: `"memory"`, or the shared backend's
    /// [`name`](crate::backend::Backend::name) (`"redis"`). `GET {prefix}/status` says it.
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

    /// The former name of [`disconnect`](Self::disconnect).
    #[deprecated(since = "0.2.0", note = "renamed `disconnect`: it ends a connection")]
    pub fn unregister(&self, connection_id: &ConnectionId) -> bool {
        self.disconnect(connection_id)
    }

    /// Ends a connection with the close message (the page stops listening
    /// if it matches the close event, so it does not reconnect). Returns
    /// whether it was connected.
    ///
    /// ```
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let conn = manager.connect(None, serde_json::Value::Null)?;
    /// assert!(manager.disconnect(conn.id()));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn disconnect(&self, connection_id: &ConnectionId) -> bool {
        match self.inner.core.lock().connections.get(connection_id) {
            Some(conn) => {
                conn.subscriber.flag(Subscriber::STOPPED);
                conn.subscriber.waker.wake();
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
                c.subscriber
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
    /// [recipient filter](super::BroadcastBuilder::recipient_filter) is asked with
    /// `connection: None` and this user, so what it withholds from them is
    /// not listed either. `GET {prefix}/history` answers with this list for
    /// the asker's user.
    #[must_use]
    pub fn history_for(
        &self,
        limit: Option<usize>,
        user: Option<&UserId>,
    ) -> Vec<BroadcastMessage> {
        let filter = self.inner.fanout.filter.as_deref();
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
fn ahead_limit(inner: &Engine) -> u64 {
    u64::try_from(inner.history_limit.max(inner.queue_capacity)).unwrap_or(u64::MAX)
}

fn connection_event(epoch: Epoch, id: &ConnectionId, tag: &str, seq: u64) -> Event {
    // The id is ASCII letters, digits, '-' and '_', the tag that and '.'
    // and hex: safe in the attribute and in the field.
    Event::builder()
        .event(CONNECTION_EVENT)
        .id(format!("{epoch}-{seq}.{}", super::proof::masked(tag)))
        .data(format!(
            "<input type=\"hidden\" name=\"connection_id\" value=\"{id}\">"
        ))
        .build()
        .unwrap_or_else(|_| Event::message(""))
}

fn reset_event(epoch: Epoch, tag: &str, seq: u64, reason: ResetReason) -> Event {
    Event::builder()
        .event(RESET_EVENT)
        .id(format!("{epoch}-{seq}.{}", super::proof::masked(tag)))
        .data(format!("{{\"reason\":\"{}\"}}", reason.as_str()))
        .build()
        .unwrap_or_else(|_| Event::message(""))
}
