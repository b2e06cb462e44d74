//! Where a published message travels before it reaches connections.
//!
//! A [`BroadcastManager`](crate::broadcast::BroadcastManager) (and with it
//! the `Notifier` and the topic hub) has one of
//! two backends:
//!
//! - **in memory** (the default, nothing to set up): one server process;
//!   [`BroadcastBuilder::build`](crate::broadcast::BroadcastBuilder::build);
//! - **Redis** (feature `redis`): many server processes behind a load
//!   balancer act as one;
//!   `BroadcastBuilder::build_redis`
//!   with a `RedisConfig`;
//! - **NATS JetStream** (feature `nats`): the same, on a `nats-server`
//!   started with JetStream (`-js`);
//!   `BroadcastBuilder::build_nats` with a `NatsConfig`.
//!
//! All give the same API and the same guarantees (ids in one order,
//! exclusions, [`send_to`](crate::broadcast::BroadcastManager::send_to),
//! per-user and topic delivery, `Last-Event-ID` resume); the same test
//! suite (`tests/backend.rs`) runs against each.
//!
//! # How the Redis backend works
//!
//! - A message is rendered and encoded once by the instance that publishes
//!   it, then appended to one Redis stream (`XADD`, trimmed to the history
//!   length) by a Lua script that numbers it from a shared counter, so ids
//!   are in one order across instances. Redis pub/sub is not used: it drops
//!   what a subscriber misses while it reconnects, a stream does not.
//! - Publishes are queued when they are made
//!   ([`Message::submit`](crate::broadcast::Message::submit), or `send`
//!   when first polled) and a writer writes everything queued as one
//!   script call (one `INCRBY` for the batch, one `XADD` per message): a
//!   publisher that keeps a window of publishes in flight gets many into
//!   one round trip, in the order of its calls. A failed call fails every
//!   publish it carried, each with its [`Error::Backend`].
//! - Every instance reads the stream (`XREAD BLOCK`) and delivers each
//!   message to its own connections, in id order, from the bytes the
//!   publisher encoded: no instance renders or encodes it again. Its local
//!   history mirrors the stream, so a page that reconnects to *another*
//!   instance resumes with nothing missed.
//! - The epoch lives in Redis too: ids stay valid across instances and
//!   server restarts, and change only when Redis loses its data (then pages
//!   get the reset event).
//! - Each instance records its connections in Redis (and a liveness key it
//!   renews every quarter of the liveness, whatever else it is doing), so
//!   `send_to` finds a connection on any instance and
//!   [`cluster_connection_count`](crate::broadcast::BroadcastManager::cluster_connection_count)
//!   counts all of them. The live instances bury the dead (those whose
//!   key expired): their records are removed, so the registry stays
//!   bounded. After a failed registry write, a reconnect, or finding its
//!   key expired (another instance may have buried it), an instance
//!   writes all its connections again and removes those that left
//!   meanwhile.
//!
//! # When Redis goes away
//!
//! Local streams stay open and keep their heartbeat; publishing returns
//! [`Error::Backend`] (HTTP 503 from the routes) and
//! nothing is buffered; the backend reconnects with backoff (100 ms up to
//! 5 s) and delivery resumes from where it stopped reading. If Redis comes
//! back without its data, the backend starts a new epoch, and puts back the
//! resume key the instances share (so that an instance started afterwards
//! still resumes the others' pages).
//!
//! # How the NATS backend works
//!
//! - A message is rendered and encoded once by the instance that
//!   publishes it, then published to one JetStream stream (named as the
//!   prefix, keeping twice the history length, and at least 256 more, so
//!   that an instance that fell behind by less than that margin still
//!   reads everything). Its number is the
//!   stream sequence: the server appends every instance's publishes in one
//!   order, so ids are in one order across instances without a counter.
//! - The epoch is part of the stream's one subject (`PREFIX.log.EPOCH`).
//!   When NATS loses the stream, the first instance to notice makes it
//!   again under a new random epoch; a publish made in the old epoch finds
//!   no stream for its subject and fails (the epoch check and the append
//!   are one step), and the readers learn the new epoch (pages get the
//!   reset event).
//! - Every instance reads the stream with an ordered consumer of its own
//!   (ephemeral, unacknowledged, in stream order) and delivers each
//!   message to its own connections from the bytes the publisher encoded.
//! - Where each connection is lives in a key-value bucket
//!   (`PREFIX-where`), and each instance renews its connection count in
//!   `PREFIX-alive`, whose entries the server removes at the liveness age:
//!   a crashed instance's connections stop counting and stop being found,
//!   and the next liveness round of a live instance removes their records
//!   (every instance records itself in `PREFIX-meta` at start, beside the
//!   shared resume key, until it is buried so). Removed records leave no
//!   delete marker behind (their messages are purged up to their
//!   revision), so the buckets stay bounded under connection churn. An
//!   instance whose records NATS lost (it came back empty, or the
//!   instance's liveness ran out during an outage and another buried it)
//!   writes all its connections again.
//!
//! While NATS is away, local streams stay open with their heartbeat and
//! publishing returns [`Error::Backend`] (HTTP 503 from the routes);
//! the client reconnects by itself and the reader goes on from the last
//! number it delivered. If NATS comes back without its data, the stream,
//! the buckets and the resume key are made again, in a new epoch.

//!
//! # Writing a backend
//!
//! A shared backend is a [`Backend`]: it appends [`Envelope`]s to one log
//! in one order and gives each its number ([`publish`](Backend::publish)),
//! reads that log back to every instance in order
//! ([`run`](Backend::run), into a [`Sink`]), and may record where
//! connections are ([`connected`](Backend::connected),
//! [`locate`](Backend::locate), [`connection_count`](Backend::connection_count)).
//! The manager does the rest, the same for every backend: rendering and
//! encoding once, numbering ids, the history, gap detection (a number
//! skipped on the way means the pages resuming across it get the `reset`
//! event), new epochs (every open stream ends and resumes into a reset),
//! read-your-writes (a publish returns once this instance delivered it),
//! and the fast path in memory, which does not go through this trait.
//! Start a manager on one with
//! [`BroadcastBuilder::build_on`](crate::broadcast::BroadcastBuilder::build_on).
//! `tests/backend.rs` holds a complete backend over an in-process log,
//! and runs the same suite against it, memory and Redis.

mod envelope;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "redis", feature = "nats"))]
mod registry;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

pub use self::envelope::{Envelope, Epoch, InvalidEpoch, Target};
#[cfg(feature = "nats")]
pub use self::nats::{NatsBackend, NatsConfig};
#[cfg(feature = "redis")]
pub use self::redis::{RedisBackend, RedisConfig};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;

/// A boxed future, `Send`: what the [`Backend`] methods return, so that
/// the trait can be used as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`Backend`] found when a manager opened it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// The log's epoch (made and stored when it had none).
    pub epoch: Epoch,
    /// The last number given out in that epoch (0 before any).
    pub last_seq: u64,
    /// The most recent entries of this epoch, oldest first, at most the
    /// history length asked for: the manager's history starts from them.
    pub recent: Vec<(u64, Envelope)>,
    /// A resume key every instance on this backend shares (at least 32
    /// bytes), so that a page resumes with its connection id on any of
    /// them; `None`: each manager makes its own.
    pub resume_key: Option<Vec<u8>>,
}

impl Snapshot {
    /// A log at `last_seq` of `epoch`, with no recent entries and no
    /// shared resume key.
    ///
    /// ```
    /// use htmx_sse::backend::{Epoch, Snapshot};
    ///
    /// let s = Snapshot::new(Epoch::random(), 0);
    /// assert!(s.recent.is_empty() && s.resume_key.is_none());
    /// ```
    #[must_use]
    pub fn new(epoch: Epoch, last_seq: u64) -> Self {
        Snapshot {
            epoch,
            last_seq,
            recent: Vec::new(),
            resume_key: None,
        }
    }

    /// With these recent entries (oldest first).
    #[must_use]
    pub fn with_recent(mut self, recent: Vec<(u64, Envelope)>) -> Self {
        self.recent = recent;
        self
    }

    /// With a resume key shared by every instance.
    #[must_use]
    pub fn with_resume_key(mut self, key: Vec<u8>) -> Self {
        self.resume_key = Some(key);
        self
    }
}

/// A shared log that makes many server instances act as one; see the
/// [module docs](self#writing-a-backend).
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for status pages (`GET {prefix}/status` says it as
    /// `backend`), such as `"redis"`.
    fn name(&self) -> &'static str;

    /// Connects and reads where the log stands; `history` is how many
    /// recent entries the manager keeps (and how many the log needs to
    /// keep, at least).
    fn open(&self, history: usize) -> BoxFuture<'_, Result<Snapshot, Error>>;

    /// Appends `envelope` to the log in `epoch` and returns its number:
    /// one more than the last, in one order across every instance. Fails
    /// with [`Error::Backend`] when the log cannot be reached (nothing is
    /// appended then), or when the log is in another epoch.
    fn publish<'a>(
        &'a self,
        epoch: Epoch,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<u64, Error>>;

    /// Appends `envelope` as [`publish`](Self::publish) does, but queued
    /// when called, not when the future is first polled: a caller that
    /// submits several publishes before awaiting any (a window of
    /// publishes in flight) gets them into the log in the order of its
    /// calls, and a backend may send them in one round trip. The Redis
    /// backend queues here and writes everything queued in one script
    /// call; the default calls `publish` at the first poll (the order of
    /// first polls, then).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use htmx_sse::backend::{Backend, Envelope, Epoch};
    ///
    /// // Any backend: the future owns what it needs and can be spawned.
    /// fn submit_later(b: Arc<dyn Backend>, e: Epoch, envelope: Envelope) {
    ///     let ack = b.submit(e, envelope);
    ///     tokio::spawn(async move { ack.await });
    /// }
    /// # let _ = submit_later;
    /// ```
    fn submit(
        self: Arc<Self>,
        epoch: Epoch,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<u64, Error>> {
        Box::pin(async move { self.publish(epoch, &envelope).await })
    }

    /// Reads the log after number `after`, in order, into `sink`, until
    /// the sink is closed (the manager is gone); reconnects by itself.
    /// When the log turns out to be in another epoch (it lost its data),
    /// it calls [`Sink::new_epoch`] and reads that epoch from its start.
    /// The manager spawns it once.
    fn run(self: Arc<Self>, sink: Sink, after: u64) -> BoxFuture<'static, ()>;

    /// Records a connection of this instance (for [`locate`](Self::locate)
    /// from other instances). The stream's first event waits for the
    /// returned future, so that a `send_to` made after it finds it.
    fn connected(&self, id: &ConnectionId, user: Option<&UserId>) -> BoxFuture<'static, ()> {
        let _ = (id, user);
        Box::pin(async {})
    }

    /// Forgets a connection of this instance.
    fn disconnected(&self, id: &ConnectionId) {
        let _ = id;
    }

    /// The user of a connection on any live instance (`Some(None)`: one
    /// without a user), or `None` when no instance has it.
    fn locate<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<Option<UserId>>, Error>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }

    /// Connections on every live instance, when the backend knows them
    /// (`None`: the manager answers with its own count).
    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, Error>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether this instance is reading the log now.
    fn is_connected(&self) -> bool {
        true
    }
}

/// What the manager does with what the log holds; implemented by the
/// manager, reached through a [`Sink`].
pub(crate) trait Delivery: Send + Sync {
    fn deliver(&self, epoch: Epoch, seq: u64, envelope: Envelope) -> usize;
    fn new_epoch(&self, epoch: Epoch) -> bool;
    fn connections(&self) -> Vec<(ConnectionId, Option<UserId>)>;
}

/// Where a [`Backend`] delivers what it reads: the manager, held weakly, so
/// that a backend's tasks end when the manager is gone.
#[derive(Clone)]
pub struct Sink {
    manager: Weak<dyn Delivery>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Sink {
    pub(crate) fn new(manager: Weak<dyn Delivery>) -> Self {
        Sink { manager }
    }

    /// Whether the manager is still there (a backend's tasks stop when it
    /// is not).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.manager.strong_count() > 0
    }

    /// Hands the log's entry number `seq` of `epoch` to the manager, which
    /// delivers it to this instance's connections (and keeps it in its
    /// history). Entries must come in order; a number skipped (an entry
    /// that could not be read, or was trimmed before it was read) makes
    /// every page that resumes across it get the `reset` event. Entries
    /// of another epoch than the manager's, or seen before, are ignored.
    /// Returns how many connections it was queued for, or `None` when the
    /// manager is gone.
    pub fn deliver(&self, epoch: Epoch, seq: u64, envelope: Envelope) -> Option<usize> {
        self.manager
            .upgrade()
            .map(|m| m.deliver(epoch, seq, envelope))
    }

    /// The log is in `epoch` now (it lost its data and started again):
    /// the manager drops its history, ends every open stream so that the
    /// pages come back and get the `reset` event, and numbers from 1.
    /// Returns whether it was a change, or `None` when the manager is gone.
    pub fn new_epoch(&self, epoch: Epoch) -> Option<bool> {
        self.manager.upgrade().map(|m| m.new_epoch(epoch))
    }

    /// This instance's connections and their users, for a backend that
    /// records them again after it lost them; `None` when the manager is
    /// gone.
    #[must_use]
    pub fn connections(&self) -> Option<Vec<(ConnectionId, Option<UserId>)>> {
        self.manager.upgrade().map(|m| m.connections())
    }
}
