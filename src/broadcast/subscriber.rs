//! [`Subscriber`]: one connection as the manager holds it: what it
//! listens to, its own queue (messages addressed to it alone), the flags
//! that end it, its waker, and its registry entry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use super::Subscription;
use super::stage::Stored;
use crate::connections::{ConnectionState, Entry, Listing};

/// One connection's own queue (messages addressed to it alone), what it
/// listens to, and the flags that end it: shared by the manager's map and
/// the connection's feed.
#[derive(Debug)]
pub(crate) struct Subscriber {
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
    /// What the manager decided about the connection ([`Subscriber::LAGGED`],
    /// [`Subscriber::REPLACED`], [`Subscriber::STOPPED`]): one word, so that the
    /// feed checks all three with one load per message.
    pub(crate) flags: AtomicU8,
    /// The fanout's tick when the connection last sent a frame: the timer task
    /// wakes it for a heartbeat when it has been quiet long enough.
    pub(crate) sent: AtomicU32,
    /// Where it stands with the fanout's list of connections waiting for the
    /// ring, in one word: off it, on it at an index, or woken by the push
    /// at a ring position (see `fanout::Place`).
    pub(crate) waiting: AtomicU64,
}

impl Subscriber {
    pub(crate) fn new(sub: Subscription, entry: Entry, tag: Arc<str>, tick: u32) -> Self {
        Subscriber {
            entry,
            tag,
            sub,
            sent: AtomicU32::new(tick),
            waiting: AtomicU64::new(OFF),
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            queued: AtomicU32::new(0),
        }
    }

    /// Queues `stored` for this connection alone, or flags it as lagging
    /// when `capacity` messages wait already; the caller wakes it.
    pub(crate) fn push(&self, stored: &Arc<Stored>, capacity: usize) {
        let mut queue = self.queue.lock();
        if queue.len() >= capacity {
            // Too far behind: close it; it resumes from history. No longer
            // counted active, even before its task runs again.
            self.flag(Subscriber::LAGGED);
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
    /// ([`BroadcastManager::disconnect`]).
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

impl Listing for Subscriber {
    fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// `Subscriber::waiting` of a connection never listed by the fanout.
pub(crate) const OFF: u64 = 0;

/// Every connection of a manager, as the fanout's timer walks them (under
/// the manager's lock): implemented by the engine, so that the fanout needs
/// nothing above it.
pub(crate) trait Roster: Send + Sync {
    /// Calls `f` with every connection of this instance.
    fn each_subscriber(&self, f: &mut dyn FnMut(&Arc<Subscriber>));
}
