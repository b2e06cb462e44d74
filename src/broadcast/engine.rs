//! The delivery core: [`Engine`], what every clone of a manager shares
//! (the numbering and history under one lock, the [`Ledger`], the
//! connections, the fanout, the transport), and [`Engine::deliver`], the
//! one place a numbered message reaches connections. Messages from a
//! shared backend enter here too ([`Delivery`]), where gaps and new epochs
//! are handled for every backend.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;

use super::fanout::Fanout;
use super::listeners::{Conn, Listeners};
use super::message::{BroadcastMessage, Epoch, MessageId};
use super::proof::ResumeKey;
use super::stage::{Render, Stored, Unnumbered};
use super::subscriber::{Roster, Subscriber};
use super::watch::PresenceHub;
use crate::backend::{Backend, Delivery, Envelope, Target};
use crate::connections::{ConnectionId, ConnectionRegistry, Entry, Roll, UserId};
use crate::limits::Limits;
use crate::streaming::Shutdown;

/// Where published messages travel: in memory (delivered at once, under
/// the lock: the fast path), or through a shared [`Backend`] and back.
#[derive(Debug)]
pub(crate) enum Transport {
    Memory,
    Shared(Arc<dyn Backend>),
}

/// What changes with every message and connection, under one lock.
pub(crate) struct Ledger {
    pub(crate) epoch: Epoch,
    pub(crate) seq: u64,
    pub(crate) history: VecDeque<Arc<Stored>>,
    /// The bytes of the frames in `history` (see [`Stored::weight`]).
    pub(crate) history_bytes: usize,
    pub(crate) connections: HashSet<Conn>,
    pub(crate) users: HashMap<UserId, Vec<ConnectionId>>,
    /// The connections that listen to topics, by topic.
    pub(crate) listeners: Listeners,
    /// Messages numbered up to this one may be missing from the history
    /// (a gap was seen: entries trimmed before they were read, or that
    /// could not be read): a page resuming from before it gets the reset
    /// event (`history-gap`) instead of a replay over the hole. 0: none.
    pub(crate) missing_to: u64,
    /// How many unnumbered messages were sent (see `Unnumbered`).
    pub(crate) unnumbered: u64,
}

impl Ledger {
    /// Notes a hole before `seq`, the next message to go into the history.
    pub(crate) fn note_gap(&mut self, seq: u64) {
        if seq > self.seq + 1 {
            self.missing_to = self.missing_to.max(seq - 1);
        }
    }

    pub(crate) fn forget_user(&mut self, user: &UserId, id: &ConnectionId) {
        if let Some(ids) = self.users.get_mut(user) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.users.remove(user);
            }
        }
    }
}

/// What every clone of a manager shares.
pub(crate) struct Engine {
    pub(crate) core: Mutex<Ledger>,
    pub(crate) transport: Transport,
    /// This manager among those sharing a backend: set in the envelopes it
    /// publishes, so that it knows its own when they come back.
    pub(crate) origin: u64,
    /// Numbers this manager's publishes (the envelopes' `nonce`).
    pub(crate) nonce: AtomicU64,
    /// Publishes waiting until this instance delivered them (by nonce):
    /// each learns how many connections it reached.
    pub(crate) pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<usize>>>,
    /// Whether a publish through a shared backend waits until this
    /// instance delivered it (see `BroadcastBuilder::read_your_writes`).
    pub(crate) read_your_writes: bool,
    /// Whether a stream opens with the `connection` event.
    pub(crate) connection_event: bool,
    /// The highest number a shared backend gave one of this instance's
    /// publishes in the current epoch, which its reader may not have
    /// delivered yet: a resume point rendered after such a publish must
    /// not be behind it (see `BroadcastManager::resume_point`).
    pub(crate) published_seq: AtomicU64,
    pub(crate) registry: ConnectionRegistry,
    pub(crate) history_limit: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) limits: Limits,
    /// Shared with every connection.
    pub(crate) fanout: Arc<Fanout>,
    /// The fanout's timer task, started by the first connection (a manager
    /// may be built outside a runtime); stopped with the manager.
    pub(crate) timer: OnceLock<AbortOnDrop>,
    pub(crate) kind: String,
    pub(crate) render: Option<Arc<Render>>,
    pub(crate) shutdown: Shutdown,
    /// Makes and checks the proofs in connection ids: see `proof`.
    pub(crate) resume_key: ResumeKey,
    /// The presence watches, made at the first one (see `watch`): until
    /// then a connect or a disconnect pays one load for them.
    pub(crate) presence: OnceLock<Arc<PresenceHub>>,
    /// How long a connection that left still counts in watched presence.
    pub(crate) presence_grace: std::time::Duration,
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::AbortHandle);

impl AbortOnDrop {
    pub(crate) fn new(handle: tokio::task::AbortHandle) -> Self {
        AbortOnDrop(handle)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Engine {
    /// The manager is gone: every connection drains the ring and ends with
    /// the close message.
    fn drop(&mut self) {
        self.fanout.ring.close();
        if let Some(hub) = self.presence.get() {
            hub.close();
        }
        for conn in self.core.get_mut().connections.iter() {
            conn.subscriber.waker.wake();
        }
    }
}

impl Engine {
    /// Notes that the shared backend numbered one of this instance's
    /// publishes `seq` in `epoch` (kept only while that is the current
    /// epoch, checked under the lock a new epoch is set under).
    pub(crate) fn published(&self, epoch: Epoch, seq: u64) {
        let core = self.core.lock();
        if core.epoch == epoch {
            self.published_seq.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// Starts the fanout's timer task once, if there is a runtime to run it
    /// (at the first connection, and again at its first poll, which always
    /// runs in one).
    pub(crate) fn start_timer(self: &Arc<Self>) {
        if self.timer.get().is_some() {
            return;
        }
        // A connection opened after the shutdown ends at once, before the
        // task has run.
        if self.shutdown.is_triggered() {
            self.fanout.mark_shut();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.timer.get_or_init(|| {
                let roster: Weak<dyn Roster> = Arc::downgrade(self) as Weak<Engine>;
                let task = Arc::clone(&self.fanout).run(roster, self.shutdown.clone());
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
    pub(crate) fn remove(&self, id: &ConnectionId, subscriber: &Arc<Subscriber>) {
        let mut core = self.core.lock();
        if core
            .connections
            .get(id)
            .is_some_and(|c| Arc::ptr_eq(&c.subscriber, subscriber))
            && let Some(conn) = core.connections.take(id)
        {
            core.listeners.remove(&conn);
            if let Some(user) = &conn.subscriber.sub.user {
                core.forget_user(user, id);
            }
            if let Some(hub) = self.presence.get() {
                hub.left(&conn.subscriber.sub);
            }
            drop(core);
            if let Transport::Shared(backend) = &self.transport {
                backend.disconnected(id);
            }
        }
    }

    /// Numbers `p` as `seq` of the current epoch, keeps it in the history and
    /// queues it for this process's connections; returns how many.
    pub(crate) fn deliver_at(
        &self,
        core: &mut Ledger,
        seq: u64,
        p: Envelope,
    ) -> (MessageId, usize) {
        core.seq = seq;
        let id = MessageId {
            epoch: core.epoch,
            seq,
        };
        // Within the publish span (in memory) or the backend's reader
        // span (shared); the message id ties the two together.
        let span = tracing::debug_span!(
            "htmx_sse.fanout",
            message.id = %id,
            delivered = tracing::field::Empty
        );
        let _fanout = span.enter();
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
            unnumbered: None,
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
        let delivered = self.fan_out(core, &stored);
        span.record("delivered", delivered);
        (id, delivered)
    }

    /// Queues `p` for this process's connections without a number: no
    /// `id:` line, nothing in the history, no number taken from the
    /// messages (see [`Unnumbered`]); `signed_in`: only for connections
    /// with a user. Returns it (for a page that resumes later) and how many
    /// connections it was queued for. In memory only.
    pub(crate) fn deliver_unnumbered(
        &self,
        core: &mut Ledger,
        p: Envelope,
        signed_in: bool,
    ) -> (Arc<Stored>, usize) {
        core.unnumbered += 1;
        let stored = Arc::new(Stored {
            seq: core.seq,
            head: bytes::Bytes::new(),
            body: p.body,
            topic_bodies: p.topic_bodies,
            target: p.target,
            message: BroadcastMessage {
                id: MessageId {
                    epoch: core.epoch,
                    seq: core.seq,
                },
                message_type: p.message_type,
                data: p.data,
                html: p.html,
                timestamp: p.timestamp,
                metadata: p.metadata,
            },
            unnumbered: Some(Unnumbered {
                order: core.unnumbered,
                signed_in,
            }),
        });
        let delivered = self.fan_out(core, &stored);
        (stored, delivered)
    }

    /// Queues `stored` for the connections it is for (their own queues, or
    /// the ring, waking those waiting for it); returns how many.
    fn fan_out(&self, core: &Ledger, stored: &Arc<Stored>) -> usize {
        match &stored.target {
            Target::One { to, user } => {
                let subscriber = core
                    .connections
                    .get(to)
                    .filter(|c| c.subscriber.sub.user == *user)
                    .map(|c| &c.subscriber);
                for subscriber in subscriber.iter().copied() {
                    subscriber.push(stored, self.queue_capacity);
                    subscriber.waker.wake();
                }
                usize::from(subscriber.is_some())
            }
            Target::User { user, exclude } => {
                let mut delivered = 0;
                for subscriber in core
                    .users
                    .get(user)
                    .into_iter()
                    .flatten()
                    .filter(|id| !exclude.contains(id))
                    .filter_map(|id| core.connections.get(id))
                    .map(|c| &c.subscriber)
                {
                    subscriber.push(stored, self.queue_capacity);
                    subscriber.waker.wake();
                    delivered += 1;
                }
                delivered
            }
            Target::All { exclude } => {
                let signed_in = stored.unnumbered.is_some_and(|u| u.signed_in);
                let pos = self.fanout.ring.push(Arc::clone(stored));
                self.fanout.wake_ring_waiters(pos, |d| {
                    !exclude.contains(d.entry.id()) && (!signed_in || d.sub.user.is_some())
                });
                if signed_in {
                    core.connections
                        .iter()
                        .filter(|c| c.subscriber.sub.user.is_some() && !exclude.contains(c.id()))
                        .count()
                } else {
                    let excluded = exclude
                        .iter()
                        .filter(|id| core.connections.contains(*id))
                        .count();
                    core.connections.len().saturating_sub(excluded)
                }
            }
            Target::Topics {
                topics,
                private,
                exclude,
            } => {
                let pos = self.fanout.ring.push(Arc::clone(stored));
                // Only the connections that listen to its topics are looked
                // at, and the waiting ones it is for are woken; the others
                // may skip it unread (see `Fanout::skippable`).
                let mut delivered = 0;
                let listeners = &core.listeners;
                self.fanout.wake_these(pos, |wake| {
                    listeners.each_candidate(topics, |subscriber, found_under| {
                        if exclude.contains(subscriber.entry.id()) {
                            return;
                        }
                        let Some(hit) = subscriber.sub.wants(topics, *private) else {
                            return;
                        };
                        // Counted (and woken) once, under its first match.
                        if found_under.is_none_or(|i| i == hit) {
                            delivered += 1;
                            wake(subscriber);
                        }
                    });
                });
                delivered
            }
        }
    }
}

/// The registry's view of the connections ([`ConnectionRegistry`] shows
/// these rather than listing them again).
impl Roll for Engine {
    fn each_entry(&self, f: &mut dyn FnMut(&Entry)) {
        for conn in self.core.lock().connections.iter() {
            f(&conn.subscriber.entry);
        }
    }

    fn with_entry(&self, id: &ConnectionId, f: &mut dyn FnMut(&Entry)) -> bool {
        match self.core.lock().connections.get(id) {
            Some(conn) => {
                f(&conn.subscriber.entry);
                true
            }
            None => false,
        }
    }

    fn entry_count(&self) -> usize {
        self.core.lock().connections.len()
    }
}

impl Roster for Engine {
    fn each_subscriber(&self, f: &mut dyn FnMut(&Arc<Subscriber>)) {
        for conn in self.core.lock().connections.iter() {
            f(&conn.subscriber);
        }
    }
}

/// What a shared backend reads back, handled here the same for every
/// backend: order, gaps, epochs, and this instance's own publishes.
impl Delivery for Engine {
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
                    conn.subscriber.flag(Subscriber::LAGGED);
                    conn.subscriber.waker.wake();
                }
            }
            self.deliver_at(&mut core, seq, p).1
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
        self.published_seq.store(0, Ordering::Relaxed);
        core.history.clear();
        core.history_bytes = 0;
        for conn in core.connections.iter() {
            conn.subscriber.flag(Subscriber::LAGGED);
            conn.subscriber.waker.wake();
        }
        true
    }

    /// This process's connections and their users.
    fn connections(&self) -> Vec<(ConnectionId, Option<UserId>)> {
        self.core
            .lock()
            .connections
            .iter()
            .map(|c| (c.id().clone(), c.subscriber.sub.user.clone()))
            .collect()
    }
}
