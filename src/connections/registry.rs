//! `ConnectionRegistry`: who is connected right now, and what they received.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use chrono::{DateTime, TimeZone as _, Utc};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::ConnectionId;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConnectionState {
    /// Registered, the response not yet started.
    Connecting,
    /// The stream is open and receiving.
    Connected,
    /// The stream ended. A registry entry in this state is being removed.
    Disconnected,
    /// The stream failed (for example it fell too far behind and was closed).
    Error,
    /// The client came back with `Last-Event-ID` and is catching up.
    Reconnecting,
}

impl ConnectionState {
    pub(crate) const ALL: [ConnectionState; 5] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Disconnected,
        ConnectionState::Error,
        ConnectionState::Reconnecting,
    ];

    /// The state as a lowercase word (`connected`, …).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Error => "error",
            ConnectionState::Reconnecting => "reconnecting",
        }
    }

    /// Whether the connection is delivering (connected or catching up).
    #[must_use]
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            ConnectionState::Connected | ConnectionState::Reconnecting
        )
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(ConnectionState::Error)
    }

    fn to_u8(self) -> u8 {
        match self {
            ConnectionState::Connecting => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Disconnected => 2,
            ConnectionState::Error => 3,
            ConnectionState::Reconnecting => 4,
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one connection, as the registry saw it when asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SseConnection {
    /// Its id.
    pub id: ConnectionId,
    /// What kind of connection the application said it is (`"broadcast"`,
    /// `"job"`, `"user"`, …).
    pub kind: String,
    /// Where it is in its life.
    pub state: ConnectionState,
    /// What the application attached when registering it.
    pub metadata: serde_json::Value,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last delivered a message (or was registered).
    pub last_activity: DateTime<Utc>,
    /// How many messages it delivered.
    pub message_count: u64,
}

/// Counts over the registry, as `GET /sse/status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Connections registered now.
    pub total: usize,
    /// Of those, how many are delivering.
    pub active: usize,
    /// Registered connections by kind.
    pub by_kind: BTreeMap<String, usize>,
    /// Messages delivered since the registry was made, by all connections,
    /// gone ones included.
    pub messages: u64,
}

/// What the registry knows of one connection. The broadcast manager keeps
/// it inside the connection's own state (one allocation per connection, not
/// two), so the registry lists entries through [`Listing`].
pub(crate) struct Entry {
    id: ConnectionId,
    kind: Arc<str>,
    /// `None` for `Value::Null` (most connections): a pointer, not the 32
    /// bytes of a `Value`, in every entry.
    metadata: Option<Box<serde_json::Value>>,
    created_at: DateTime<Utc>,
    last_activity_ms: AtomicI64,
    messages: AtomicU64,
    state: AtomicU8,
}

/// Something that holds an [`Entry`]: the entry itself, or a larger
/// per-connection state that embeds it.
pub(crate) trait Listing: Send + Sync + 'static {
    fn entry(&self) -> &Entry;
}

impl Listing for Entry {
    fn entry(&self) -> &Entry {
        self
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub(crate) fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    pub(crate) fn id(&self) -> &ConnectionId {
        &self.id
    }

    fn snapshot(&self) -> SseConnection {
        let ms = self.last_activity_ms.load(Ordering::Relaxed);
        SseConnection {
            id: self.id.clone(),
            kind: self.kind.to_string(),
            state: self.state(),
            metadata: self
                .metadata
                .as_deref()
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            created_at: self.created_at,
            last_activity: Utc
                .timestamp_millis_opt(ms)
                .single()
                .unwrap_or(self.created_at),
            message_count: self.messages.load(Ordering::Relaxed),
        }
    }

    fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves it to `state` (for the manager, which holds entries directly).
    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.state.store(state.to_u8(), Ordering::Relaxed);
    }
}

/// An entry as the registry lists it: found by its id, which it holds, so
/// the id is not kept a second time as a key.
struct Listed(Arc<dyn Listing>);

impl Listed {
    fn entry(&self) -> &Entry {
        self.0.entry()
    }
}

impl Borrow<ConnectionId> for Listed {
    fn borrow(&self) -> &ConnectionId {
        &self.entry().id
    }
}

impl Hash for Listed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the id hashes: lookups by `&ConnectionId` find it.
        self.entry().id.hash(state);
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.entry().id == other.entry().id
    }
}

impl Eq for Listed {}

/// Connections the registry shows without holding them: the broadcast
/// manager's, which it keeps in one place (its own set, under its own lock),
/// so that who is connected has one source of truth.
pub(crate) trait Roll: Send + Sync {
    /// Calls `f` with every entry.
    fn each_entry(&self, f: &mut dyn FnMut(&Entry));
    /// Calls `f` with the entry of `id`, if there is one; returns whether.
    fn with_entry(&self, id: &ConnectionId, f: &mut dyn FnMut(&Entry)) -> bool;
    /// How many entries there are.
    fn entry_count(&self) -> usize;
}

#[derive(Default)]
struct Shared {
    /// Entries added with [`ConnectionRegistry::add`].
    map: RwLock<HashSet<Listed>>,
    /// The manager's connections, when this is a manager's registry.
    roll: OnceLock<Weak<dyn Roll>>,
    messages: AtomicU64,
    /// The kind last registered, shared by every entry of that kind (one
    /// allocation less per connection; most registries see one kind).
    last_kind: Mutex<Option<Arc<str>>>,
}

impl Shared {
    /// Calls `f` with every entry: the roll's, then the added ones.
    fn each(&self, f: &mut dyn FnMut(&Entry)) {
        if let Some(roll) = self.roll.get().and_then(Weak::upgrade) {
            roll.each_entry(f);
        }
        for e in self.map.read().iter() {
            f(e.entry());
        }
    }

    fn kind(&self, kind: &str) -> Arc<str> {
        let mut last = self.last_kind.lock();
        match &*last {
            Some(k) if &**k == kind => Arc::clone(k),
            _ => Arc::clone(last.insert(Arc::from(kind))),
        }
    }
}

/// Every open connection, with its state and counters.
///
/// Cheap to clone (all clones share one registry). Entries are added with
/// [`add`](Self::add) and removed when the returned [`Registration`] is
/// dropped, which happens when the response body is dropped: a client that
/// goes away never stays listed as alive.
///
/// ```
/// use htmx_sse::connections::{ConnectionRegistry, ConnectionState};
///
/// let registry = ConnectionRegistry::new();
/// let reg = registry.add(None, "job", serde_json::json!({"job": 7}));
/// reg.set_state(ConnectionState::Connected);
/// reg.record_message();
/// assert_eq!(registry.stats().active, 1);
/// assert_eq!(registry.get(reg.id()).unwrap().message_count, 1);
/// drop(reg);
/// assert!(registry.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct ConnectionRegistry {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("connections", &self.len())
            .finish()
    }
}

impl ConnectionRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a connection in state [`ConnectionState::Connecting`] under
    /// `id`, or a fresh random id. Registering an id that is already listed
    /// replaces that entry (a client that came back takes its place); the
    /// old [`Registration`] then removes nothing when dropped.
    pub fn add(
        &self,
        id: Option<ConnectionId>,
        kind: &str,
        metadata: serde_json::Value,
    ) -> Registration {
        self.list(Arc::new(self.entry(id, kind, metadata)))
    }

    /// A new entry in state [`ConnectionState::Connecting`], not yet listed.
    pub(crate) fn entry(
        &self,
        id: Option<ConnectionId>,
        kind: &str,
        metadata: serde_json::Value,
    ) -> Entry {
        let now = Utc::now();
        Entry {
            id: id.unwrap_or_else(ConnectionId::random),
            kind: self.shared.kind(kind),
            metadata: (!metadata.is_null()).then(|| Box::new(metadata)),
            created_at: now,
            last_activity_ms: AtomicI64::new(now.timestamp_millis()),
            messages: AtomicU64::new(0),
            state: AtomicU8::new(ConnectionState::Connecting.to_u8()),
        }
    }

    /// Lists `listing`'s entry, replacing one of the same id.
    pub(crate) fn list(&self, listing: Arc<dyn Listing>) -> Registration {
        self.shared
            .map
            .write()
            .replace(Listed(Arc::clone(&listing)));
        Registration {
            shared: Arc::clone(&self.shared),
            entry: listing,
            held: true,
        }
    }

    /// Shows the entries of `roll` too, without holding them (once; the
    /// broadcast manager's registry shows its connections this way).
    pub(crate) fn show(&self, roll: Weak<dyn Roll>) {
        let _ = self.shared.roll.set(roll);
    }

    /// A registration for an entry that the roll shows: it counts
    /// messages and sets states, and lists or unlists nothing.
    pub(crate) fn shown(&self, listing: Arc<dyn Listing>) -> Registration {
        Registration {
            shared: Arc::clone(&self.shared),
            entry: listing,
            held: false,
        }
    }

    /// The connection with this id, if registered.
    #[must_use]
    pub fn get(&self, id: &ConnectionId) -> Option<SseConnection> {
        let mut found = None;
        if let Some(roll) = self.shared.roll.get().and_then(Weak::upgrade) {
            roll.with_entry(id, &mut |e| found = Some(e.snapshot()));
        }
        found.or_else(|| self.shared.map.read().get(id).map(|e| e.entry().snapshot()))
    }

    /// Whether a connection with this id is registered.
    #[must_use]
    pub fn contains(&self, id: &ConnectionId) -> bool {
        let shown = self
            .shared
            .roll
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|roll| roll.with_entry(id, &mut |_| {}));
        shown || self.shared.map.read().contains(id)
    }

    /// All connections, or those of one kind, oldest first.
    #[must_use]
    pub fn connections(&self, kind: Option<&str>) -> Vec<SseConnection> {
        self.collect(|e| kind.is_none_or(|k| &*e.kind == k))
    }

    /// Connections that are delivering, or those of one kind, oldest first.
    #[must_use]
    pub fn active(&self, kind: Option<&str>) -> Vec<SseConnection> {
        self.collect(|e| e.state().is_active() && kind.is_none_or(|k| &*e.kind == k))
    }

    fn collect(&self, keep: impl Fn(&Entry) -> bool) -> Vec<SseConnection> {
        let mut out: Vec<SseConnection> = Vec::new();
        self.shared.each(&mut |e| {
            if keep(e) {
                out.push(e.snapshot());
            }
        });
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// Counts: total, active, by kind, messages delivered.
    #[must_use]
    pub fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats {
            messages: self.shared.messages.load(Ordering::Relaxed),
            ..RegistryStats::default()
        };
        // Counted by kind without a `String` per connection.
        let mut kinds: Vec<(Arc<str>, usize)> = Vec::new();
        self.shared.each(&mut |e| {
            stats.total += 1;
            if e.state().is_active() {
                stats.active += 1;
            }
            match kinds
                .iter_mut()
                .find(|(k, _)| Arc::ptr_eq(k, &e.kind) || **k == *e.kind)
            {
                Some((_, n)) => *n += 1,
                None => kinds.push((Arc::clone(&e.kind), 1)),
            }
        });
        for (kind, n) in kinds {
            *stats.by_kind.entry(kind.to_string()).or_default() += n;
        }
        stats
    }

    /// Open connections counted by kind and state, and the messages
    /// delivered since the registry was made: what `htmx_sse::metrics`
    /// reports.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn census(&self) -> (Vec<(Arc<str>, ConnectionState, usize)>, u64) {
        let mut counts: Vec<(Arc<str>, ConnectionState, usize)> = Vec::new();
        self.shared.each(&mut |e| {
            let state = e.state();
            match counts
                .iter_mut()
                .find(|(k, s, _)| *s == state && (Arc::ptr_eq(k, &e.kind) || **k == *e.kind))
            {
                Some((_, _, n)) => *n += 1,
                None => counts.push((Arc::clone(&e.kind), state, 1)),
            }
        });
        (counts, self.shared.messages.load(Ordering::Relaxed))
    }

    /// How many connections are registered.
    #[must_use]
    pub fn len(&self) -> usize {
        let shown = self
            .shared
            .roll
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |roll| roll.entry_count());
        shown + self.shared.map.read().len()
    }

    /// Whether no connection is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One registered connection; dropping it removes the entry.
///
/// Kept by the connection's response body, so the entry lives exactly as long
/// as the connection.
pub struct Registration {
    shared: Arc<Shared>,
    entry: Arc<dyn Listing>,
    /// Whether the registry's own map holds the entry (else a roll shows
    /// it, and its owner takes it off).
    held: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.entry.entry().id)
            .field("state", &self.entry.entry().state())
            .finish()
    }
}

impl Registration {
    /// The connection's id.
    #[must_use]
    pub fn id(&self) -> &ConnectionId {
        &self.entry.entry().id
    }

    /// Its current state.
    #[must_use]
    pub fn state(&self) -> ConnectionState {
        self.entry.entry().state()
    }

    /// Moves it to `state`.
    pub fn set_state(&self, state: ConnectionState) {
        self.entry
            .entry()
            .state
            .store(state.to_u8(), Ordering::Relaxed);
    }

    /// Counts one delivered message and marks the connection active now.
    pub fn record_message(&self) {
        self.record_messages(1);
    }

    /// Counts `n` delivered messages and marks the connection active now
    /// (nothing for `n == 0`).
    ///
    /// This reads the clock and touches a counter every connection shares:
    /// a stream that delivers many messages at once should count them
    /// together (the broadcast feed counts once per batch of ready
    /// messages), not call [`record_message`](Self::record_message) for each.
    ///
    /// ```
    /// use htmx_sse::connections::ConnectionRegistry;
    ///
    /// let registry = ConnectionRegistry::new();
    /// let reg = registry.add(None, "job", serde_json::Value::Null);
    /// reg.record_messages(3);
    /// reg.record_messages(0);
    /// assert_eq!(registry.get(reg.id()).unwrap().message_count, 3);
    /// assert_eq!(registry.stats().messages, 3);
    /// ```
    pub fn record_messages(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.entry.entry().messages.fetch_add(n, Ordering::Relaxed);
        self.shared.messages.fetch_add(n, Ordering::Relaxed);
        self.entry
            .entry()
            .last_activity_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Whether this registration is still the one listed under its id (a
    /// newer registration of the same id replaces it).
    #[must_use]
    pub fn is_current(&self) -> bool {
        if !self.held {
            let mut same = false;
            if let Some(roll) = self.shared.roll.get().and_then(Weak::upgrade) {
                roll.with_entry(&self.entry.entry().id, &mut |e| {
                    same = std::ptr::eq(e, self.entry.entry());
                });
            }
            return same;
        }
        self.shared
            .map
            .read()
            .get(&self.entry.entry().id)
            .is_some_and(|e| Arc::ptr_eq(&e.0, &self.entry))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.set_state(ConnectionState::Disconnected);
        if !self.held {
            return;
        }
        let mut map = self.shared.map.write();
        if map
            .get(&self.entry.entry().id)
            .is_some_and(|e| Arc::ptr_eq(&e.0, &self.entry))
        {
            map.remove(&self.entry.entry().id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_and_stats() {
        let r = ConnectionRegistry::new();
        let a = r.add(None, "broadcast", json!(null));
        let b = r.add(
            Some(ConnectionId::new("tab-b").unwrap()),
            "job",
            json!({"j": 1}),
        );
        let c = r.add(None, "job", json!(null));
        a.set_state(ConnectionState::Connected);
        b.set_state(ConnectionState::Reconnecting);
        c.set_state(ConnectionState::Error);
        b.record_messages(3);
        a.record_message();

        assert_eq!(r.len(), 3);
        assert_eq!(r.connections(Some("job")).len(), 2);
        assert_eq!(r.active(None).len(), 2);
        assert_eq!(r.active(Some("job")).len(), 1);
        let snap = r.get(b.id()).unwrap();
        assert_eq!(snap.kind, "job");
        assert_eq!(snap.metadata, json!({"j": 1}));
        assert_eq!(snap.message_count, 3);
        assert_eq!(snap.state, ConnectionState::Reconnecting);
        let stats = r.stats();
        assert_eq!((stats.total, stats.active, stats.messages), (3, 2, 4));
        assert_eq!(stats.by_kind["job"], 2);
        assert_eq!(
            serde_json::to_value(&stats).unwrap(),
            json!({"total": 3, "active": 2, "by_kind": {"broadcast": 1, "job": 2}, "messages": 4})
        );
        drop((a, b, c));
        assert!(r.is_empty());
        // Messages from connections that left still count.
        assert_eq!(r.stats().messages, 4);
    }

    #[test]
    fn entries_of_one_kind_share_its_name() {
        let r = ConnectionRegistry::new();
        let (a, b) = (r.add(None, "k", json!(null)), r.add(None, "k", json!(null)));
        let c = r.add(None, "other", json!(null));
        assert!(Arc::ptr_eq(&a.entry.entry().kind, &b.entry.entry().kind));
        assert_eq!(&*c.entry.entry().kind, "other");
        let d = r.add(None, "k", json!(null));
        assert_eq!(&*d.entry.entry().kind, "k");
        assert_eq!(
            r.stats().by_kind,
            BTreeMap::from([("k".to_owned(), 3), ("other".to_owned(), 1)])
        );
    }

    #[test]
    fn a_replaced_registration_removes_nothing() {
        let r = ConnectionRegistry::new();
        let id = ConnectionId::new("same").unwrap();
        let old = r.add(Some(id.clone()), "k", json!(null));
        let new = r.add(Some(id.clone()), "k", json!(null));
        assert!(!old.is_current());
        assert!(new.is_current());
        drop(old);
        assert!(r.contains(&id));
        drop(new);
        assert!(!r.contains(&id));
    }

    #[test]
    fn thousands_of_connects_and_disconnects_leave_it_empty() {
        let r = ConnectionRegistry::new();
        let mut held = Vec::new();
        for i in 0..5000 {
            held.push(r.add(None, "k", json!(i)));
            if i % 3 == 0 {
                held.swap_remove(i % held.len());
            }
        }
        assert!(!r.is_empty());
        held.clear();
        assert!(r.is_empty());
        assert_eq!(r.stats(), RegistryStats::default());
    }

    #[test]
    fn registry_is_send_sync() {
        fn assert<T: Send + Sync + Clone>() {}
        assert::<ConnectionRegistry>();
        fn assert_send<T: Send + Sync>() {}
        assert_send::<Registration>();
    }
}
