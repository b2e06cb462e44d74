//! Presence as it changes: join and leave events debounced by a grace
//! period ([`BroadcastManager::watch_presence`], [`PresenceFeed`]), and the
//! live badge rendered from them ([`BroadcastManager::presence_badge`],
//! [`PresenceBadge`]).
//!
//! See [`PresenceFeed`] for the grace period and the cost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::engine::{AbortOnDrop, Engine};
use super::manager::BroadcastManager;
use super::presence::{Presence, PresenceScope, PresentUser};
use super::stage::Stored;
use super::subscription::Subscription;
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;
use crate::event::EventName;
use crate::fragment::{Fragment, IntoFragment};
use crate::topics::Topic;

/// A change of the debounced presence in one scope, from
/// [`PresenceFeed::changed`]: what it is now, who joined and who left
/// since the feed was last read.
///
/// ```
/// use htmx_sse::BroadcastManager;
/// use htmx_sse::broadcast::{PresenceScope, Subscription};
/// use htmx_sse::connections::UserId;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::new();
/// let mut feed = manager.watch_presence(PresenceScope::Everyone)?;
/// let ann = UserId::new("ann")?;
/// let _tab = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
/// let _visitor = manager.connect(None, serde_json::Value::Null)?;
/// let change = feed.changed().await.expect("the manager is here");
/// assert_eq!(change.scope, PresenceScope::Everyone);
/// assert_eq!((change.joined, change.left), (vec![ann], vec![]));
/// assert_eq!((change.presence.connections, change.presence.anonymous), (2, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PresenceChange {
    /// The scope watched.
    pub scope: PresenceScope,
    /// Who is here now (with the grace period: a connection gone for less
    /// than the grace still counts).
    pub presence: Presence,
    /// Users who were not here and are now (their first connection in the
    /// scope). A user who joined and left again between two reads is in
    /// neither list.
    pub joined: Vec<UserId>,
    /// Users who were here and are not now (their last connection left
    /// more than the grace period ago).
    pub left: Vec<UserId>,
}

/// One key's count in a watch: a user's, or the anonymous connections'.
#[derive(Debug)]
struct Tally {
    /// Live connections and ghosts.
    count: usize,
    /// When each ghost (a connection that left) stops counting, oldest
    /// first.
    ghosts: VecDeque<Instant>,
    /// When the key started counting.
    since: DateTime<Utc>,
}

/// One watch: its scope, its counts, and what changed since it was read.
#[derive(Debug)]
struct Slot {
    id: u64,
    scope: PresenceScope,
    tallies: HashMap<Option<UserId>, Tally>,
    /// Every ghost's end and key, in order (entries whose ghost was taken
    /// by a connection coming back are skipped when they come up).
    expiring: VecDeque<(Instant, Option<UserId>)>,
    joined: Vec<UserId>,
    left: Vec<UserId>,
    dirty: bool,
    notify: Arc<Notify>,
}

impl Slot {
    fn in_scope(&self, sub: &Subscription) -> bool {
        match &self.scope {
            PresenceScope::Everyone => true,
            PresenceScope::Topic(topic) => sub.listens_to(topic),
            PresenceScope::User(user) => sub.user.as_ref() == Some(user),
        }
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.notify.notify_one();
    }

    fn join(&mut self, user: Option<&UserId>) {
        if let Some(tally) = self.tallies.get_mut(&user.cloned()) {
            // Back within the grace: takes a ghost's place, no change.
            if tally.ghosts.pop_back().is_some() {
                return;
            }
            tally.count += 1;
        } else {
            self.tallies.insert(
                user.cloned(),
                Tally {
                    count: 1,
                    ghosts: VecDeque::new(),
                    since: Utc::now(),
                },
            );
            if let Some(user) = user {
                match self.left.iter().position(|u| u == user) {
                    Some(i) => {
                        self.left.swap_remove(i);
                    }
                    None => self.joined.push(user.clone()),
                }
            }
        }
        self.changed();
    }

    fn leave(&mut self, user: Option<&UserId>, until: Option<Instant>) {
        let key = user.cloned();
        let Some(tally) = self.tallies.get_mut(&key) else {
            return;
        };
        match until {
            Some(until) => {
                tally.ghosts.push_back(until);
                self.expiring.push_back((until, key));
            }
            None => {
                tally.count = tally.count.saturating_sub(1);
                self.settle(key);
                self.changed();
            }
        }
    }

    /// Forgets a key that no longer counts; a user's last connection left.
    fn settle(&mut self, key: Option<UserId>) {
        if self
            .tallies
            .get(&key)
            .is_some_and(|t| t.count == 0 && t.ghosts.is_empty())
        {
            self.tallies.remove(&key);
            if let Some(user) = key {
                match self.joined.iter().position(|u| *u == user) {
                    Some(i) => {
                        self.joined.swap_remove(i);
                    }
                    None => self.left.push(user),
                }
            }
        }
    }

    /// Ends the ghosts whose grace has passed by `now`; returns when the
    /// next one ends.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut changed = false;
        while let Some((at, _)) = self.expiring.front() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.expiring.pop_front() else {
                break;
            };
            if let Some(tally) = self.tallies.get_mut(&key) {
                while tally.ghosts.front().is_some_and(|g| *g <= now) {
                    tally.ghosts.pop_front();
                    tally.count = tally.count.saturating_sub(1);
                    changed = true;
                }
                self.settle(key);
            }
        }
        if changed {
            self.changed();
        }
        self.expiring.front().map(|(at, _)| *at)
    }

    /// The presence, its users in no order: copied under the lock, sorted
    /// by [`sorted`] after it.
    fn unsorted(&self) -> Presence {
        let mut presence = Presence {
            connections: 0,
            users: Vec::with_capacity(self.tallies.len()),
            anonymous: 0,
        };
        for (key, tally) in &self.tallies {
            presence.connections += tally.count;
            match key {
                None => presence.anonymous += tally.count,
                Some(user) => presence.users.push(PresentUser {
                    user: user.clone(),
                    connections: tally.count,
                    since: tally.since,
                }),
            }
        }
        presence
    }
}

/// The users the longest here first, as [`BroadcastManager::presence`]
/// lists them.
fn sorted(mut presence: Presence) -> Presence {
    presence
        .users
        .sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.user.cmp(&b.user)));
    presence
}

/// A manager's watches, indexed by what a connection is in: a connect
/// or a disconnect looks at the watches of everyone, of its user, and (if
/// it listens to topics) of topics, not at every watch.
#[derive(Debug, Default)]
struct Watches {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    everyone: Vec<u64>,
    by_user: HashMap<UserId, Vec<u64>>,
    topics: Vec<u64>,
    /// When ghosts end, and in which watch, soonest first (an entry whose
    /// ghost was taken, or whose watch is gone, is skipped).
    expiry: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Watches {
    fn insert(&mut self, mut slot: Slot) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        slot.id = id;
        match &slot.scope {
            PresenceScope::Everyone => self.everyone.push(id),
            PresenceScope::User(user) => self.by_user.entry(user.clone()).or_default().push(id),
            PresenceScope::Topic(_) => self.topics.push(id),
        }
        self.slots.insert(id, slot);
        id
    }

    fn remove(&mut self, id: u64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        match &slot.scope {
            PresenceScope::Everyone => self.everyone.retain(|i| *i != id),
            PresenceScope::User(user) => {
                if let Some(ids) = self.by_user.get_mut(user) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.by_user.remove(user);
                    }
                }
            }
            PresenceScope::Topic(_) => self.topics.retain(|i| *i != id),
        }
    }

    /// The watches `sub` may be in (then checked with `Slot::in_scope`).
    fn candidates(&self, sub: &Subscription, out: &mut Vec<u64>) {
        out.extend_from_slice(&self.everyone);
        if let Some(user) = &sub.user
            && let Some(ids) = self.by_user.get(user)
        {
            out.extend_from_slice(ids);
        }
        if !sub.topic_selectors().is_empty() {
            out.extend_from_slice(&self.topics);
        }
    }
}

/// A manager's watches, made at the first [`BroadcastManager::watch_presence`].
/// Connects and disconnects reach it under the manager's lock, in order.
pub(crate) struct PresenceHub {
    grace: Duration,
    watches: Mutex<Watches>,
    /// Wakes the task that ends ghosts.
    wake: Arc<Notify>,
    task: std::sync::OnceLock<AbortOnDrop>,
    /// The manager is gone: feeds end.
    closed: AtomicBool,
    /// The latest render each live badge sent, for pages that resume.
    badges: Mutex<Vec<Arc<Latest>>>,
}

/// A badge's latest frame, set under the manager's lock when it is sent.
type Latest = Mutex<Option<Arc<Stored>>>;

impl fmt::Debug for PresenceHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceHub")
            .field("grace", &self.grace)
            .field("watches", &self.watches.lock().slots.len())
            .finish_non_exhaustive()
    }
}

impl PresenceHub {
    pub(crate) fn new(grace: Duration) -> Self {
        PresenceHub {
            grace,
            watches: Mutex::new(Watches::default()),
            wake: Arc::new(Notify::new()),
            task: std::sync::OnceLock::new(),
            closed: AtomicBool::new(false),
            badges: Mutex::new(Vec::new()),
        }
    }

    /// Adds to `replay` the latest frame of each badge that is for the
    /// connection `id` with `sub` (called under the manager's lock, for a
    /// page that resumes: badges are kept in no history).
    pub(crate) fn latest_badges(
        &self,
        id: &ConnectionId,
        sub: &Subscription,
        replay: &mut Vec<Arc<Stored>>,
    ) {
        for latest in self.badges.lock().iter() {
            if let Some(stored) = &*latest.lock()
                && stored.body_for(id, sub).is_some()
            {
                replay.push(Arc::clone(stored));
            }
        }
    }

    /// A connection came (called under the manager's lock).
    pub(crate) fn joined(&self, sub: &Subscription) {
        let mut watches = self.watches.lock();
        let mut ids = Vec::new();
        watches.candidates(sub, &mut ids);
        for id in ids {
            if let Some(slot) = watches.slots.get_mut(&id)
                && slot.in_scope(sub)
            {
                slot.join(sub.user.as_ref());
            }
        }
    }

    /// A connection went (called under the manager's lock).
    pub(crate) fn left(self: &Arc<Self>, sub: &Subscription) {
        let until = (!self.grace.is_zero()).then(|| grace_end(Instant::now(), self.grace));
        let mut watches = self.watches.lock();
        let mut any = false;
        let mut ids = Vec::new();
        watches.candidates(sub, &mut ids);
        for id in ids {
            if let Some(slot) = watches.slots.get_mut(&id)
                && slot.in_scope(sub)
            {
                slot.leave(sub.user.as_ref(), until);
                any = true;
                if let Some(until) = until {
                    watches.expiry.push(Reverse((until, id)));
                }
            }
        }
        drop(watches);
        if any && until.is_some() {
            self.start();
            self.wake.notify_one();
        }
    }

    /// A connection took the place of another with the same id (a resume
    /// while the old one was still registered; called under the manager's
    /// lock): nothing changes where both are in scope for the same user,
    /// elsewhere the old one leaves and the new one joins.
    pub(crate) fn replaced(self: &Arc<Self>, old: &Subscription, new: &Subscription) {
        let until = (!self.grace.is_zero()).then(|| grace_end(Instant::now(), self.grace));
        let mut watches = self.watches.lock();
        let mut ghosts = false;
        let mut ids = Vec::new();
        watches.candidates(old, &mut ids);
        watches.candidates(new, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(slot) = watches.slots.get_mut(&id) else {
                continue;
            };
            let (was, is) = (slot.in_scope(old), slot.in_scope(new));
            if was && is && old.user == new.user {
                continue;
            }
            if was {
                slot.leave(old.user.as_ref(), until);
                if let Some(until) = until {
                    ghosts = true;
                    watches.expiry.push(Reverse((until, id)));
                }
            }
            if is && let Some(slot) = watches.slots.get_mut(&id) {
                slot.join(new.user.as_ref());
            }
        }
        drop(watches);
        if ghosts {
            self.start();
            self.wake.notify_one();
        }
    }

    /// The manager is gone: every feed ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in self.watches.lock().slots.values() {
            slot.notify.notify_one();
        }
    }

    /// Starts the task that ends ghosts, once, if there is a runtime.
    fn start(self: &Arc<Self>) {
        if self.task.get().is_some() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.task.get_or_init(|| {
                let task = expire_ghosts(Arc::downgrade(self), Arc::clone(&self.wake));
                AbortOnDrop::new(runtime.spawn(task).abort_handle())
            });
        }
    }
}

/// When a ghost that left at `now` stops counting: `now + grace`, or as
/// far as the clock goes (no panic, here under the manager's lock, for a
/// grace the builder would refuse).
fn grace_end(now: Instant, grace: Duration) -> Instant {
    now.checked_add(grace)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// About 30 years: later than any grace ends.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Ends ghosts as their grace passes, sleeping until the next one (or
/// until a leave makes one).
async fn expire_ghosts(hub: Weak<PresenceHub>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(hub) = hub.upgrade() else { return };
            let now = Instant::now();
            let mut watches = hub.watches.lock();
            while let Some(&Reverse((at, id))) = watches.expiry.peek() {
                if at > now {
                    break;
                }
                watches.expiry.pop();
                if let Some(slot) = watches.slots.get_mut(&id) {
                    slot.expire(now);
                }
            }
            watches.expiry.peek().map(|Reverse((at, _))| *at)
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The debounced presence of one scope as it changes: see
/// [`BroadcastManager::watch_presence`]. Dropping it stops the watch.
///
/// # Grace
///
/// A connection that leaves stays counted, as a *ghost*, for the
/// manager's [`presence_grace`](super::BroadcastBuilder::presence_grace)
/// (3 s by default). A connection that comes in the same scope for the
/// same user (or, anonymous, for anyone anonymous) within it takes the
/// ghost's place, and nothing changes: a reload, a resume with
/// `Last-Event-ID` (which keeps the connection id and its user), a dropped
/// socket the browser reopens. When the grace passes with no one back,
/// the count drops, and a user whose last connection it was has left.
/// Joins are not delayed.
///
/// The grace absorbs only a join that comes *after* the server saw the
/// leave (the old connection's stream ended): a page that reconnects
/// before the server noticed its old socket closed is, for a while, two
/// connections (a join), and one leave when the old one ends and its
/// grace passes; a resume with `Last-Event-ID` over a connection still
/// open takes its place and changes nothing.
///
/// # Cost
///
/// Nothing is kept per connection. Until the manager's first watch, a
/// connect or a disconnect costs one atomic load more; while watched,
/// each watch keeps a count per user present in its scope (one for the
/// anonymous connections, and an instant per ghost), and a connect or a
/// disconnect looks, under the manager's lock, only at the watches it may
/// be in: those of everyone, those of its user (found by a hash lookup,
/// however many users are watched), and, if it listens to topics, those
/// of topics (each matched against its selectors); each in scope is
/// updated with a hash lookup. Ghosts end from one queue for the manager
/// (soonest first), not by looking at every watch. 2,000 connects and
/// disconnects with 10,000 watches of other users cost about what they
/// cost with none. The [`Presence`] of a change is
/// built when the feed is read, once for however many changes happened
/// since: a copy of the counts under the watch's lock and a sort after it,
/// both in the number of users in the scope. Read at the pace the
/// application needs (a badge renders at most ten times a second): a
/// feed read after every single connect of 10,000 users, each their own,
/// costs about 10,000 copies per connect (see BENCHMARKS.md).
///
/// ```
/// use htmx_sse::BroadcastManager;
/// use htmx_sse::broadcast::PresenceScope;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::new();
/// let mut feed = manager.watch_presence(PresenceScope::Everyone)?;
/// // Usually in a task of its own, for as long as the application runs.
/// let watcher = tokio::spawn(async move {
///     let mut counts = Vec::new();
///     while let Some(change) = feed.changed().await {
///         counts.push(change.presence.connections);
///     }
///     counts // the manager is gone
/// });
/// let tab = manager.connect(None, serde_json::Value::Null)?;
/// tokio::task::yield_now().await;
/// drop((tab, manager));
/// assert_eq!(watcher.await.unwrap(), [1]);
/// # Ok(()) }
/// ```
#[must_use = "the watch stops when the feed is dropped"]
pub struct PresenceFeed {
    hub: Arc<PresenceHub>,
    id: u64,
    scope: PresenceScope,
    notify: Arc<Notify>,
}

impl fmt::Debug for PresenceFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceFeed")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl PresenceFeed {
    /// The scope watched.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::PresenceScope;
    /// use htmx_sse::connections::UserId;
    /// # fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// let ann = PresenceScope::User(UserId::new("ann")?);
    /// let feed = manager.watch_presence(ann.clone())?;
    /// assert_eq!(feed.scope(), &ann);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn scope(&self) -> &PresenceScope {
        &self.scope
    }

    /// Who is here now, with the grace period (a connection gone for less
    /// than the grace still counts). Reading it does not mark the changes
    /// as read.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::PresenceScope;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// let _page = manager.connect(None, serde_json::Value::Null)?;
    /// let feed = manager.watch_presence(PresenceScope::Everyone)?;
    /// assert_eq!(feed.current().connections, 1);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn current(&self) -> Presence {
        let watches = self.hub.watches.lock();
        let presence = watches.slots.get(&self.id).map_or_else(
            || Presence {
                connections: 0,
                users: Vec::new(),
                anonymous: 0,
            },
            Slot::unsorted,
        );
        drop(watches);
        sorted(presence)
    }

    /// Waits for the next change of the debounced presence, and returns
    /// it with every join and leave since the last call (changes that
    /// happen while nobody reads are gathered into one: a feed never lags
    /// and holds at most one entry per user). `None` once the manager is
    /// gone.
    ///
    /// Cancel-safe: a change is taken only when it is returned.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::{PresenceScope, Subscription};
    /// use htmx_sse::connections::UserId;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// let mut feed = manager.watch_presence(PresenceScope::Everyone)?;
    /// let ann = UserId::new("ann")?;
    /// let _tab = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
    /// let change = feed.changed().await.expect("the manager is here");
    /// assert_eq!(change.joined, [ann]);
    /// assert_eq!(change.presence.connections, 1);
    /// # Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> Option<PresenceChange> {
        loop {
            if self.hub.closed.load(Ordering::Acquire) {
                return None;
            }
            {
                let mut watches = self.hub.watches.lock();
                if let Some(slot) = watches.slots.get_mut(&self.id)
                    && slot.dirty
                {
                    slot.dirty = false;
                    let change = PresenceChange {
                        scope: self.scope.clone(),
                        presence: slot.unsorted(),
                        joined: std::mem::take(&mut slot.joined),
                        left: std::mem::take(&mut slot.left),
                    };
                    drop(watches);
                    return Some(PresenceChange {
                        presence: sorted(change.presence),
                        ..change
                    });
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for PresenceFeed {
    fn drop(&mut self) {
        self.hub.watches.lock().remove(self.id);
    }
}

impl BroadcastManager {
    /// Watches the presence of `scope` as it changes: join and leave
    /// events debounced by the
    /// [grace period](super::BroadcastBuilder::presence_grace), from the
    /// returned [`PresenceFeed`]. A page that reconnects within the grace
    /// (a reload, a resume with `Last-Event-ID`) is neither a leave nor a
    /// join. See [`PresenceFeed`] for how the grace works and what a watch
    /// costs: nothing while no feed is open.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::{PresenceScope, Subscription};
    /// use htmx_sse::connections::UserId;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::builder()
    ///     .presence_grace(Duration::from_secs(3))
    ///     .build();
    /// let ann = UserId::new("ann")?;
    /// let tab = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
    /// let mut feed = manager.watch_presence(PresenceScope::User(ann.clone()))?;
    /// assert_eq!(feed.current().connections, 1);
    ///
    /// // A reload: gone and back within the grace. No change.
    /// drop(tab);
    /// let tab = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
    /// tokio::time::sleep(Duration::from_secs(4)).await;
    /// assert_eq!(feed.current().connections, 1);
    ///
    /// // Gone for longer than the grace: ann left.
    /// drop(tab);
    /// let change = feed.changed().await.expect("the manager is here");
    /// assert_eq!((change.presence.connections, change.left), (0, vec![ann]));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] on a shared backend (Redis, NATS), as
    /// [`presence`](Self::presence).
    pub fn watch_presence(&self, scope: PresenceScope) -> Result<PresenceFeed, Error> {
        self.check_presence_local()?;
        let inner = &self.inner;
        let hub = Arc::clone(
            inner
                .presence
                .get_or_init(|| Arc::new(PresenceHub::new(inner.presence_grace))),
        );
        hub.start();
        let notify = Arc::new(Notify::new());
        // Counted and registered under the manager's lock: no connect or
        // disconnect falls between the two.
        let core = inner.core.lock();
        let mut slot = Slot {
            id: 0,
            scope: scope.clone(),
            tallies: HashMap::new(),
            expiring: VecDeque::new(),
            joined: Vec::new(),
            left: Vec::new(),
            dirty: false,
            notify: Arc::clone(&notify),
        };
        for conn in core.connections.iter() {
            let sub = &conn.subscriber.sub;
            if !slot.in_scope(sub) {
                continue;
            }
            let since = conn.subscriber.entry.created_at();
            let tally = slot.tallies.entry(sub.user.clone()).or_insert(Tally {
                count: 0,
                ghosts: VecDeque::new(),
                since,
            });
            tally.count += 1;
            tally.since = tally.since.min(since);
        }
        let id = hub.watches.lock().insert(slot);
        drop(core);
        Ok(PresenceFeed {
            hub,
            id,
            scope,
            notify,
        })
    }

    /// Sends a rendered presence badge to the pages of `scope` whenever
    /// its debounced presence changes (see
    /// [`watch_presence`](Self::watch_presence)): `render` is called once
    /// per change (at most ten times a second: changes meanwhile are
    /// gathered into one), and its fragment is sent once as an event of
    /// type `event`, rendered once, encoded once, delivered to all of
    /// them:
    ///
    /// - [`PresenceScope::Topic`]: to the connections listening to the
    ///   topic (see [`private_presence_badge`](Self::private_presence_badge)
    ///   for a topic whose listeners are not for everyone to know);
    /// - [`PresenceScope::User`]: to that user's connections;
    /// - [`PresenceScope::Everyone`]: to the **signed-in** connections
    ///   alone (those with a user: with the routes' authorizer, those whose
    ///   credentials it accepted), as `GET …/presence` answers only
    ///   credentials. Anonymous pages are counted but get nothing: for a
    ///   badge every page may see, counts only, use
    ///   [`public_presence_badge`](Self::public_presence_badge).
    ///
    /// Badges are not messages: they carry no id and are kept in no
    /// history, so however often they change, they neither take numbers
    /// from the messages nor push them out of the history (a page's
    /// `Last-Event-ID` stays on the last message it got). A page that
    /// resumes (with `Last-Event-ID` or a resume point) gets the latest
    /// badge it may see after its replay; a fresh page shows the one
    /// rendered into it. Pages swap it with `sse-swap="EVENT"` (htmx 2)
    /// or the crate's listener (htmx 4): `PresenceBadge::listener`
    /// (feature `askama`) writes the element for either, with the
    /// current badge inside, for the page's first render.
    ///
    /// The badge lives as long as the returned [`PresenceBadge`]: keep it
    /// (in the application's state). A render that fails or panics after
    /// the first is logged (`tracing::warn!`) and skipped: the badge
    /// shows the previous one until the next change.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::{Presence, PresenceScope};
    /// use htmx_sse::topics::Topic;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// let doc = Topic::new("docs/7")?;
    /// let badge = manager.presence_badge(PresenceScope::Topic(doc), "viewers", |p: &Presence| {
    ///     maud::html! { span.badge { (p.connections) " viewing" } }
    /// })?;
    /// assert_eq!(badge.render().as_str(), r#"<span class="badge">0 viewing</span>"#);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] on a shared backend (Redis, NATS), as
    /// [`presence`](Self::presence); the errors of [`EventName::new`] for
    /// a bad `event`, and [`Error::InvalidField`] for one with a comma or
    /// white space at either end (as `SseElement::swap_event`, feature
    /// `askama`: htmx splits `sse-swap` on commas and trims); [`Error::ReservedEventName`]
    /// for one of the crate's own event names; what `render` fails with for
    /// the current presence;
    /// [`Error::Unsupported`] outside a tokio runtime.
    pub fn presence_badge<T, F, R>(
        &self,
        scope: PresenceScope,
        event: T,
        render: F,
    ) -> Result<PresenceBadge, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        F: Fn(&Presence) -> R + Send + Sync + 'static,
        R: IntoFragment,
    {
        self.badge(scope, event, render, Audience::Scope)
    }

    /// A [`presence_badge`](Self::presence_badge) of everyone, sent to
    /// **every** page, anonymous ones included: the opt-in for a public
    /// badge. Render counts only (`p.connections`, `p.users.len()`,
    /// `p.anonymous`), never names: whoever opens the stream reads it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// use htmx_sse::broadcast::Presence;
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let badge = manager.public_presence_badge("online", |p: &Presence| {
    ///     format!("{} tabs open, {} users signed in", p.connections, p.users.len())
    /// })?;
    /// assert_eq!(badge.render().as_str(), "0 tabs open, 0 users signed in");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`presence_badge`](Self::presence_badge).
    pub fn public_presence_badge<T, F, R>(
        &self,
        event: T,
        render: F,
    ) -> Result<PresenceBadge, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        F: Fn(&Presence) -> R + Send + Sync + 'static,
        R: IntoFragment,
    {
        self.badge(PresenceScope::Everyone, event, render, Audience::Public)
    }

    /// A [`presence_badge`](Self::presence_badge) of `topic`'s listeners
    /// sent as a private message (see
    /// [`Message::private`](super::Message::private)): every listener of
    /// the topic is counted, but only the pages whose credentials allow the
    /// topic privately (the `private=1` streams of the topic hub) receive
    /// the badge. Use it when who reads a topic is itself not for everyone,
    /// or the render shows names.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// use htmx_sse::broadcast::Presence;
    /// use htmx_sse::topics::Topic;
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let badge = manager.private_presence_badge(Topic::new("boards/9")?, "editors", |p: &Presence| {
    ///     let names: Vec<&str> = p.users.iter().map(|u| u.user.as_str()).collect();
    ///     names.join(", ")
    /// })?;
    /// assert_eq!(badge.render().as_str(), "");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`presence_badge`](Self::presence_badge).
    pub fn private_presence_badge<T, F, R>(
        &self,
        topic: Topic,
        event: T,
        render: F,
    ) -> Result<PresenceBadge, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        F: Fn(&Presence) -> R + Send + Sync + 'static,
        R: IntoFragment,
    {
        self.badge(
            PresenceScope::Topic(topic),
            event,
            render,
            Audience::Private,
        )
    }

    fn badge<T, F, R>(
        &self,
        scope: PresenceScope,
        event: T,
        render: F,
        audience: Audience,
    ) -> Result<PresenceBadge, Error>
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
        F: Fn(&Presence) -> R + Send + Sync + 'static,
        R: IntoFragment,
    {
        let event: EventName = event.try_into().map_err(Into::into)?;
        // Pages name it in `sse-swap` (a comma-separated list): refused
        // now, not when the listener is rendered.
        crate::event::check_list_name(&event)?;
        self.refuse_reserved(event.as_str())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Unsupported {
            what: "a presence badge needs a tokio runtime: make it inside one",
        })?;
        let mut feed = self.watch_presence(scope)?;
        let first = render(&feed.current()).into_fragment()?;
        let shown = Arc::new(Mutex::new(first));
        let latest: Arc<Latest> = Arc::new(Mutex::new(None));
        feed.hub.badges.lock().push(Arc::clone(&latest));
        let hub = Arc::clone(&feed.hub);
        let manager: Weak<Engine> = Arc::downgrade(&self.inner);
        let task = {
            let shown = Arc::clone(&shown);
            let latest = Arc::clone(&latest);
            let event = event.clone();
            async move {
                while let Some(change) = feed.changed().await {
                    // A render that panics costs this change, not the badge.
                    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        render(&change.presence).into_fragment()
                    }));
                    let fragment = match rendered {
                        Ok(Ok(f)) => f,
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "presence badge: render failed");
                            continue;
                        }
                        Err(_) => {
                            tracing::warn!(event = %event, "presence badge: render panicked");
                            continue;
                        }
                    };
                    *shown.lock() = fragment.clone();
                    let Some(inner) = manager.upgrade() else {
                        return;
                    };
                    let manager = BroadcastManager { inner };
                    let message = manager.message(event.clone(), fragment);
                    let message = match &change.scope {
                        PresenceScope::Everyone => message,
                        PresenceScope::Topic(topic) => message
                            .topics([topic.clone()])
                            .private(audience == Audience::Private),
                        PresenceScope::User(user) => message.to_user(user.clone()),
                    };
                    let signed_in =
                        change.scope == PresenceScope::Everyone && audience != Audience::Public;
                    if let Err(error) = manager.send_unnumbered(message, signed_in, &latest) {
                        tracing::debug!(%error, "presence badge: send failed");
                    }
                    drop(manager);
                    // What changes meanwhile is gathered into the next one.
                    tokio::time::sleep(BADGE_INTERVAL).await;
                }
            }
        };
        Ok(PresenceBadge {
            event,
            shown,
            hub,
            latest,
            _task: AbortOnDrop::new(runtime.spawn(task).abort_handle()),
        })
    }

    fn check_presence_local(&self) -> Result<(), Error> {
        if self.is_distributed() {
            return Err(Error::Backend(format!(
                "presence across instances is not available on the {} backend yet",
                self.backend_name()
            )));
        }
        Ok(())
    }
}

/// Who a badge goes to, besides its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The scope's pages: a topic's listeners, a user's tabs, the
    /// signed-in connections for everyone.
    Scope,
    /// A topic's listeners allowed it privately.
    Private,
    /// Every page, anonymous ones included.
    Public,
}

/// The shortest time between two renders of a badge: a burst of
/// connects (a deploy, a popular page) is one render, not one per tab.
const BADGE_INTERVAL: Duration = Duration::from_millis(100);

/// A live presence badge: see [`BroadcastManager::presence_badge`].
/// Dropping it stops the badge.
///
/// ```
/// use std::sync::Arc;
/// use htmx_sse::BroadcastManager;
/// use htmx_sse::broadcast::{Presence, PresenceBadge};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
/// // Made once, kept in the application's state, rendered into each page.
/// struct AppState { manager: BroadcastManager, online: Arc<PresenceBadge> }
/// let manager = BroadcastManager::new();
/// let online = manager.public_presence_badge("online", |p: &Presence| {
///     maud::html! { span { (p.connections) " online" } }
/// })?;
/// let state = AppState { manager, online: Arc::new(online) };
/// let page = format!("<p>{}</p>", state.online.render().as_str());
/// assert_eq!(page, "<p><span>0 online</span></p>");
/// # drop(state.manager);
/// # Ok(()) }
/// ```
#[must_use = "the badge stops when it is dropped"]
pub struct PresenceBadge {
    event: EventName,
    shown: Arc<Mutex<Fragment>>,
    hub: Arc<PresenceHub>,
    latest: Arc<Latest>,
    _task: AbortOnDrop,
}

impl Drop for PresenceBadge {
    fn drop(&mut self) {
        self.hub
            .badges
            .lock()
            .retain(|l| !Arc::ptr_eq(l, &self.latest));
    }
}

impl fmt::Debug for PresenceBadge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceBadge")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl PresenceBadge {
    /// The event type the badge is sent as.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// use htmx_sse::broadcast::{Presence, PresenceScope};
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let badge = manager.presence_badge(PresenceScope::Everyone, "online", |p: &Presence| p.connections.to_string())?;
    /// assert_eq!(badge.event().as_str(), "online");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn event(&self) -> &EventName {
        &self.event
    }

    /// The badge as last rendered (for the debounced presence now): put it
    /// in the page when it is rendered, so that it shows before the first
    /// change.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// use htmx_sse::broadcast::{Presence, PresenceScope};
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let _page = manager.connect(None, serde_json::Value::Null)?;
    /// let badge = manager.presence_badge(PresenceScope::Everyone, "online", |p: &Presence| p.connections.to_string())?;
    /// assert_eq!(badge.render().as_str(), "1");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn render(&self) -> Fragment {
        self.shown.lock().clone()
    }

    /// The element that shows the badge in a page for `flavor`: an
    /// [`SseListener`](crate::connections::scripts::SseListener) for the
    /// badge's event (`sse-swap` in htmx 2; in htmx 4 the crate's script
    /// that swaps named events), with the current badge inside and the id
    /// `id`. Put it inside the page's `SseElement`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// use htmx_sse::Flavor;
    /// use htmx_sse::broadcast::{Presence, PresenceScope};
    /// let manager = htmx_sse::BroadcastManager::new();
    /// let badge = manager.presence_badge(PresenceScope::Everyone, "online", |p: &Presence| p.connections.to_string())?;
    /// let el = badge.listener(Flavor::Htmx2, "online").render()?;
    /// assert_eq!(el.as_str(), r#"<div id="online" sse-swap="online">0</div>"#);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "askama")]
    pub fn listener(
        &self,
        flavor: crate::Flavor,
        id: &str,
    ) -> crate::connections::scripts::SseListener {
        crate::connections::scripts::SseListener::new(flavor)
            .id(id)
            .event(self.event.clone())
            .children(self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub watching `scope`, as `watch_presence` registers one.
    fn watched(grace: Duration, scope: PresenceScope) -> (Arc<PresenceHub>, u64) {
        let hub = Arc::new(PresenceHub::new(grace));
        let mut watches = hub.watches.lock();
        let id = watches.insert(Slot {
            id: 0,
            scope,
            tallies: HashMap::new(),
            expiring: VecDeque::new(),
            joined: Vec::new(),
            left: Vec::new(),
            dirty: false,
            notify: Arc::new(Notify::new()),
        });
        drop(watches);
        (hub, id)
    }

    fn count(hub: &PresenceHub, id: u64) -> usize {
        let watches = hub.watches.lock();
        let slot = watches.slots.get(&id).expect("watched");
        slot.unsorted().connections
    }

    #[tokio::test(start_paused = true)]
    async fn a_grace_past_the_clock_ends_never_and_does_not_panic() {
        let now = Instant::now();
        assert!(grace_end(now, Duration::MAX) > now + Duration::from_secs(86_400));
        let (hub, id) = watched(Duration::MAX, PresenceScope::Everyone);
        let page = Subscription::new();
        hub.joined(&page);
        hub.left(&page);
        tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
        assert_eq!(count(&hub, id), 1);
    }

    #[tokio::test]
    async fn a_badges_event_name_is_checked_when_it_is_made() {
        let manager = BroadcastManager::new();
        let render = |p: &Presence| p.connections.to_string();
        for bad in ["a,b", " a", "a ", "a\nb"] {
            let made = manager.presence_badge(PresenceScope::Everyone, bad, render);
            assert!(made.is_err(), "{bad:?} accepted");
            let made = manager.public_presence_badge(bad, render);
            assert!(made.is_err(), "{bad:?} accepted");
        }
        // As `swap_event`: htmx trims each name of the list, inner spaces stay.
        let badge = manager.public_presence_badge("a b", render).unwrap();
        assert_eq!(badge.event().as_str(), "a b");
    }

    #[tokio::test]
    async fn a_render_that_panics_costs_one_change_not_the_badge() {
        let manager = BroadcastManager::builder()
            .presence_grace(Duration::ZERO)
            .build();
        let badge = manager
            .public_presence_badge("online", |p: &Presence| {
                assert_ne!(p.connections, 1, "a bug in the application's render");
                p.connections.to_string()
            })
            .unwrap();
        let first = manager.connect(None, serde_json::Value::Null).unwrap();
        // The panicking render comes and goes; the badge keeps the last one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(badge.render().as_str(), "0");
        let _second = manager.connect(None, serde_json::Value::Null).unwrap();
        for _ in 0..100 {
            if badge.render().as_str() == "2" {
                drop(first);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the badge died: {}", badge.render().as_str());
    }

    const GRACE: Duration = Duration::from_secs(3);

    fn manager() -> BroadcastManager {
        BroadcastManager::builder().presence_grace(GRACE).build()
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    /// A page of `user`, listening to `topic` if given.
    fn page(
        manager: &BroadcastManager,
        user: Option<&UserId>,
        topic: Option<&str>,
    ) -> crate::broadcast::Connection {
        let mut sub = Subscription::new();
        if let Some(user) = user {
            sub = sub.user(user.clone());
        }
        if let Some(topic) = topic {
            sub = sub.topics(vec![crate::topics::TopicSelector::new(topic).unwrap()]);
        }
        manager
            .subscribe(sub, None, serde_json::Value::Null)
            .unwrap()
    }

    /// Nothing changes for `within`.
    async fn quiet(feed: &mut PresenceFeed, within: Duration) {
        let change = tokio::time::timeout(within, feed.changed()).await;
        assert!(change.is_err(), "a change: {change:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn back_within_the_grace_is_nothing_gone_longer_is_one_leave_at_its_end() {
        let manager = manager();
        let ann = user("ann");
        let tab = page(&manager, Some(&ann), None);
        let mut feed = manager.watch_presence(PresenceScope::Everyone).unwrap();
        drop(tab);
        tokio::time::sleep(GRACE - Duration::from_millis(100)).await;
        let tab = page(&manager, Some(&ann), None);
        quiet(&mut feed, GRACE * 2).await;
        assert_eq!(feed.current().connections, 1);

        drop(tab);
        let gone = Instant::now();
        let change = feed.changed().await.unwrap();
        assert_eq!(gone.elapsed(), GRACE);
        assert_eq!((change.joined, change.left), (vec![], vec![ann]));
        assert_eq!(change.presence.connections, 0);
        quiet(&mut feed, GRACE * 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn one_users_ghost_is_not_taken_by_another_user() {
        let manager = manager();
        let (ann, bob) = (user("ann"), user("bob"));
        let tab = page(&manager, Some(&ann), None);
        let mut feed = manager.watch_presence(PresenceScope::Everyone).unwrap();
        drop(tab);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _bob = page(&manager, Some(&bob), None);
        let change = feed.changed().await.unwrap();
        assert_eq!((change.joined, change.left), (vec![bob.clone()], vec![]));
        // ann's ghost still counts, bob's tab too.
        assert_eq!(change.presence.connections, 2);
        let change = feed.changed().await.unwrap();
        assert_eq!((change.joined, change.left), (vec![], vec![ann]));
        assert_eq!(change.presence.connections, 1);
        // Anonymous pages are one key: not anyone's ghost either.
        let anon = page(&manager, None, None);
        let _ = feed.changed().await.unwrap();
        drop(anon);
        let _bobs_second = page(&manager, Some(&bob), None);
        let change = feed.changed().await.unwrap();
        assert_eq!(change.presence.connections, 3, "{change:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ghost_in_one_topic_is_not_taken_by_a_join_in_another() {
        let manager = manager();
        let ann = user("ann");
        let on_a = page(&manager, Some(&ann), Some("a"));
        let mut a = manager
            .watch_presence(PresenceScope::Topic(Topic::new("a").unwrap()))
            .unwrap();
        let mut b = manager
            .watch_presence(PresenceScope::Topic(Topic::new("b").unwrap()))
            .unwrap();
        drop(on_a);
        let _on_b = page(&manager, Some(&ann), Some("b"));
        let joined_b = b.changed().await.unwrap();
        assert_eq!(joined_b.joined, std::slice::from_ref(&ann));
        let left_a = a.changed().await.unwrap();
        assert_eq!((left_a.joined, left_a.left), (vec![], vec![ann]));
        assert_eq!(left_a.presence.connections, 0);
        assert_eq!(b.current().connections, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_ends_when_the_manager_is_gone() {
        let manager = manager();
        let tab = page(&manager, None, None);
        let mut feed = manager.watch_presence(PresenceScope::Everyone).unwrap();
        drop(tab);
        drop(manager);
        assert_eq!(feed.changed().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_connects_ends_on_a_badge_of_all_of_them() {
        let manager = manager();
        let badge = manager
            .public_presence_badge("online", |p: &Presence| p.connections.to_string())
            .unwrap();
        let mut watcher = manager.watch_presence(PresenceScope::Everyone).unwrap();
        let pages: Vec<_> = (0..50).map(|_| page(&manager, None, None)).collect();
        let change = watcher.changed().await.unwrap();
        assert_eq!(change.presence.connections, 50);
        tokio::time::sleep(BADGE_INTERVAL * 3).await;
        assert_eq!(badge.render().as_str(), "50");
        drop(pages);
        tokio::time::sleep(GRACE + BADGE_INTERVAL * 3).await;
        assert_eq!(badge.render().as_str(), "0");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_watch_leaves_the_index_and_the_others_still_see() {
        let manager = manager();
        let ann = user("ann");
        let gone = manager
            .watch_presence(PresenceScope::User(ann.clone()))
            .unwrap();
        let mut kept = manager
            .watch_presence(PresenceScope::User(ann.clone()))
            .unwrap();
        let mut topic = manager
            .watch_presence(PresenceScope::Topic(Topic::new("a").unwrap()))
            .unwrap();
        drop(gone);
        let tab = page(&manager, Some(&ann), Some("a"));
        assert_eq!(
            kept.changed().await.unwrap().joined,
            std::slice::from_ref(&ann)
        );
        assert_eq!(
            topic.changed().await.unwrap().joined,
            std::slice::from_ref(&ann)
        );
        drop(tab);
        assert_eq!(
            kept.changed().await.unwrap().left,
            std::slice::from_ref(&ann)
        );
        assert_eq!(topic.changed().await.unwrap().left, [ann]);
        let hub = Arc::clone(&kept.hub);
        drop((kept, topic));
        let watches = hub.watches.lock();
        assert!(watches.slots.is_empty() && watches.by_user.is_empty());
        assert!(watches.topics.is_empty() && watches.everyone.is_empty());
    }

    #[test]
    #[should_panic(expected = "presence_grace must be at most a day")]
    fn the_builder_refuses_a_grace_longer_than_a_day() {
        let _ = BroadcastManager::builder().presence_grace(Duration::from_secs(86_401));
    }

    #[test]
    fn the_builder_takes_a_grace_of_a_day() {
        let _ = BroadcastManager::builder().presence_grace(Duration::from_secs(86_400));
    }
}
