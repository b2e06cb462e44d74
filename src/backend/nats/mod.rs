//! The NATS JetStream backend: see the [module docs](super#how-the-nats-backend-works).

mod config;
mod entry;
mod tasks;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

pub use self::config::NatsConfig;
use self::entry::{decode, encode};
use self::tasks::{housekeeping_loop, liveness_loop, read_loop, registry_loop};
use super::registry::{MIN_BACKOFF, renewal, times};
use super::{Backend, BoxFuture, Envelope, Epoch, Sink, Snapshot};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;

/// How often the reader looks whether its manager is still there.
const CHECK: Duration = Duration::from_secs(1);
const RESUME_KEY: &str = "resume-key";
/// The meta bucket's key of an instance, before its id: it is there from
/// the instance's start until another buries it.
const INSTANCE: &str = "instance.";
/// How many messages the stream keeps beyond the history length, at least
/// (see [`kept`]).
const MARGIN: usize = 256;

/// How many messages the stream keeps for a history of `history`: a
/// margin above it (twice the history, and at least [`MARGIN`] more), so
/// that an instance whose reader fell behind by less than the margin (it
/// was slow, or lost NATS for a moment while others published) still
/// reads every message, rather than finding the oldest it missed trimmed
/// and its pages reset.
fn kept(history: usize) -> i64 {
    let history = history.max(1);
    let kept = history
        .saturating_mul(2)
        .max(history.saturating_add(MARGIN));
    i64::try_from(kept).unwrap_or(i64::MAX)
}

/// The names of what the backend keeps in JetStream.
struct Names {
    /// The stream of envelopes, named as the prefix.
    stream: String,
    /// Connection id → `instance\nuser`.
    place: String,
    /// Instance id → its connection count; entries expire at the liveness.
    alive: String,
    /// The resume key, and `instance.ID` for every instance not buried.
    meta: String,
    prefix: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Names {
            stream: prefix.to_owned(),
            place: format!("{prefix}-where"),
            alive: format!("{prefix}-alive"),
            meta: format!("{prefix}-meta"),
            prefix: prefix.to_owned(),
        }
    }

    /// The one subject of the stream in `epoch`: a publish made in another
    /// epoch finds no stream and fails, so that the epoch check and the
    /// append are one step.
    fn subject(&self, epoch: Epoch) -> String {
        format!("{}.log.{epoch}", self.prefix)
    }

    /// The epoch of a stream, read from its subject.
    fn epoch_of(&self, info: &stream::Info) -> Option<Epoch> {
        let start = format!("{}.log.", self.prefix);
        info.config
            .subjects
            .iter()
            .find_map(|s| s.strip_prefix(&start).and_then(Epoch::parse))
    }
}

/// The servers of a URL list (`nats://a:4222,nats://b:4222`).
fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, Error> {
    urls.split(',')
        .map(|u| {
            u.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::Backend(format!("bad NATS URL: {e}")))
        })
        .collect()
}

/// 1 to 32 ASCII letters, digits, `-` and `_`: a valid stream and bucket
/// name, and a subject token.
fn valid_prefix(prefix: &str) -> bool {
    (1..=32).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn backend_error(what: &str, e: impl fmt::Display) -> Error {
    Error::Backend(format!("{what}: {e}"))
}

async fn with_timeout<T, E: fmt::Display>(
    timeout: Duration,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(backend_error(what, e)),
        Err(_) => Err(Error::Backend(format!(
            "{what}: no answer from NATS within {timeout:?}"
        ))),
    }
}

enum RegOp {
    Add {
        id: ConnectionId,
        user: Option<UserId>,
        ready: oneshot::Sender<()>,
    },
    Remove {
        id: ConnectionId,
    },
}

/// The NATS side of a manager.
pub(crate) struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    instance: String,
    history: usize,
    timeout: Duration,
    liveness: Duration,
    place: kv::Store,
    alive: kv::Store,
    meta: kv::Store,
    registry: mpsc::UnboundedSender<RegOp>,
    reading: AtomicBool,
    /// The age at which the server removes a liveness entry, in
    /// nanoseconds: the liveness bucket's, which the instance that made
    /// it chose (not necessarily this one's configuration).
    age: AtomicU64,
    /// Set when NATS may have lost this instance's records (a write
    /// failed, the liveness entry had expired, NATS was away): the
    /// housekeeping task writes every local connection again.
    lost: AtomicBool,
    /// Connections whose removal failed to be written (NATS was away):
    /// the housekeeping task forgets them again when it writes the
    /// records again, unless they came back.
    unforgotten: parking_lot::Mutex<Vec<ConnectionId>>,
    /// Wakes the housekeeping task at once (`lost` was set).
    housekeep: Notify,
    /// Told when a publish found no stream for its epoch: the reader
    /// looks at the stream again.
    recheck: Notify,
    /// The resume key read at start, put back when NATS comes back
    /// without it (see `read_loop`).
    resume_key: String,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("prefix", &self.names.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The key-value bucket `name` (one value a key), made when it is not
/// there, its entries removed at `max_age` (zero: never).
///
/// Made as the stream a bucket is (`KV_name`, the layout every NATS client
/// reads) rather than with `create_key_value`, which first asks for the
/// account's limits in a form that servers before 2.10 (Debian's 2.9)
/// do not answer with.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        ..Default::default()
    };
    let made = js.create_stream(config).await.err();
    if made.as_ref().is_some_and(|e| {
        e.kind() == jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
    }) {
        return Err("the server has no JetStream (start nats-server with -js)".to_owned());
    }
    // Made here, or by another instance meanwhile.
    js.get_key_value(name).await.map_err(|e| match made {
        Some(made) => format!("making the bucket {name}: {made}"),
        None => format!("opening the bucket {name}: {e}"),
    })
}

/// The three buckets, made when missing (at start, and after NATS lost
/// its data).
async fn buckets(
    js: &jetstream::Context,
    names: &Names,
    liveness: Duration,
) -> Result<(kv::Store, kv::Store, kv::Store), String> {
    let place = bucket(
        js,
        &names.place,
        "htmx-sse: where each connection is",
        Duration::ZERO,
    )
    .await?;
    let alive = bucket(
        js,
        &names.alive,
        "htmx-sse: live instances and their connection counts",
        liveness,
    )
    .await?;
    let meta = bucket(
        js,
        &names.meta,
        "htmx-sse: the resume key and the instances",
        Duration::ZERO,
    )
    .await?;
    Ok((place, alive, meta))
}

/// The value of `key`, set to `candidate` first when it has none (of
/// several instances starting together, the first wins).
async fn set_once(store: &kv::Store, key: &str, candidate: &str) -> Result<String, String> {
    if store.create(key, candidate.to_owned().into()).await.is_ok() {
        return Ok(candidate.to_owned());
    }
    let value = store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the key is neither there nor can be made")?;
    String::from_utf8(value.to_vec()).map_err(|_| "the key is not text".to_owned())
}

/// The stream and its epoch; made, in a new epoch, when there is none
/// (at first start, and after NATS lost its data). Keeps at least
/// [`kept`] messages.
async fn open_stream(
    js: &jetstream::Context,
    names: &Names,
    history: usize,
) -> Result<(stream::Stream, Epoch), String> {
    let max = kept(history);
    for _ in 0..3 {
        match js.get_stream(&names.stream).await {
            Ok(s) => {
                // As read by `get_stream`.
                let info = s.cached_info().clone();
                let epoch = names
                    .epoch_of(&info)
                    .ok_or("the stream is not one of htmx-sse (no epoch subject)")?;
                if info.config.max_messages >= 0 && info.config.max_messages < max {
                    let mut config = info.config.clone();
                    config.max_messages = max;
                    js.update_stream(config).await.map_err(|e| e.to_string())?;
                }
                return Ok((s, epoch));
            }
            Err(e) if is_stream_not_found(&e) => {
                let config = stream::Config {
                    name: names.stream.clone(),
                    description: Some("htmx-sse: published messages".to_owned()),
                    subjects: vec![names.subject(Epoch::random())],
                    max_messages: max,
                    storage: stream::StorageType::File,
                    discard: stream::DiscardPolicy::Old,
                    ..Default::default()
                };
                // Of several instances making it at once, one wins; the
                // others read its epoch on the next round.
                if let Err(e) = js.create_stream(config).await {
                    tracing::debug!(error = %e, "making the stream failed; reading it again");
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the stream could neither be read nor made".to_owned())
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// An ordered consumer of the stream from `start` on (its messages in
/// stream order, none acknowledged; made again by the client after a gap
/// or a reconnection).
async fn consume(
    client: &async_nats::Client,
    stream: &stream::Stream,
    start: u64,
) -> Result<consumer::push::Ordered, String> {
    let deliver_policy = if start <= 1 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The messages of `epoch` numbered `from` to `to`, oldest first (fewer
/// when some are gone).
async fn read_range(
    client: &async_nats::Client,
    stream: &stream::Stream,
    epoch: Epoch,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<Vec<(u64, Envelope)>, String> {
    let mut entries = Vec::new();
    if from > to {
        return Ok(entries);
    }
    let mut messages = consume(client, stream, from).await?;
    loop {
        let message = match tokio::time::timeout(timeout, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            // What is left was removed while it was read.
            Ok(None) | Err(_) => break,
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Err(e.to_string()),
        };
        match decode(message.payload.clone()) {
            Ok((e, envelope)) if e == epoch => entries.push((seq, envelope)),
            Ok(_) => {}
            Err(e) => tracing::warn!(seq, error = %e, "skipping a stream message"),
        }
        if seq >= to || pending == 0 {
            break;
        }
    }
    Ok(entries)
}

/// Connects, makes or reads the stream and the buckets, the epoch, the
/// resume key and the recent history.
async fn connect(
    config: &NatsConfig,
    history: usize,
) -> Result<(Shared, Snapshot, mpsc::UnboundedReceiver<RegOp>), Error> {
    let client = with_timeout(
        times(config.timeout, 2),
        "connecting to NATS",
        async_nats::ConnectOptions::new()
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .name(format!("htmx-sse {}", config.prefix))
            .connect(servers(&config.url)?),
    )
    .await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.timeout);
    let names = Names::new(&config.prefix);
    let (place, alive, meta) = with_timeout(
        times(config.timeout, 2),
        "opening the key-value buckets",
        buckets(&js, &names, config.liveness),
    )
    .await?;
    let candidate: String = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .map(|u| u.simple().to_string())
        .collect();
    let resume_key = with_timeout(
        config.timeout,
        "reading the resume key",
        set_once(&meta, RESUME_KEY, &candidate),
    )
    .await?;
    if resume_key.len() < 32 {
        return Err(Error::Backend(
            "reading the resume key: shorter than 32 bytes".to_owned(),
        ));
    }
    let (mut stream, epoch) = with_timeout(
        times(config.timeout, 2),
        "opening the stream",
        open_stream(&js, &names, history),
    )
    .await?;
    let state = with_timeout(config.timeout, "reading the stream", stream.info())
        .await?
        .state
        .clone();
    let last = state.last_sequence;
    let from = state
        .first_sequence
        .max((last + 1).saturating_sub(u64::try_from(history).unwrap_or(u64::MAX)));
    let recent = if history == 0 || state.messages == 0 {
        Vec::new()
    } else {
        with_timeout(
            times(config.timeout, 4),
            "reading the history",
            read_range(&client, &stream, epoch, from, last, config.timeout),
        )
        .await?
    };
    // Alive before its first connection is recorded, so that no other
    // instance takes it for dead and forgets that connection.
    let instance = uuid::Uuid::new_v4().simple().to_string();
    with_timeout(config.timeout, "announcing this instance", async {
        alive.put(&instance, "0".into()).await?;
        meta.put(format!("{INSTANCE}{instance}"), bytes::Bytes::new())
            .await
    })
    .await?;
    let age = bucket_age(&alive, config.liveness).await;
    let (registry, registry_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        client,
        js,
        names,
        instance,
        history: history.max(1),
        timeout: config.timeout,
        liveness: config.liveness,
        place,
        alive,
        meta,
        registry,
        reading: AtomicBool::new(false),
        age: AtomicU64::new(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX)),
        lost: AtomicBool::new(false),
        unforgotten: parking_lot::Mutex::new(Vec::new()),
        housekeep: Notify::new(),
        recheck: Notify::new(),
        resume_key: resume_key.clone(),
    };
    let snapshot = Snapshot::new(epoch, last)
        .with_recent(recent)
        .with_resume_key(resume_key.into_bytes());
    Ok((shared, snapshot, registry_rx))
}

/// The NATS JetStream backend as a [`Backend`]: made by
/// [`BroadcastBuilder::build_nats`](crate::broadcast::BroadcastBuilder::build_nats),
/// or given to [`build_on`](crate::broadcast::BroadcastBuilder::build_on).
///
/// ```no_run
/// use htmx_sse::backend::{NatsBackend, NatsConfig};
/// use htmx_sse::broadcast::BroadcastManager;
///
/// # async fn run() -> Result<(), htmx_sse::Error> {
/// let backend = NatsBackend::new(NatsConfig::new("nats://127.0.0.1:4222"))?;
/// let manager = BroadcastManager::builder().build_on(backend).await?;
/// # Ok(()) }
/// ```
pub struct NatsBackend {
    config: NatsConfig,
    /// Set by `open`.
    shared: OnceLock<Arc<Shared>>,
    registry: Mutex<Option<mpsc::UnboundedReceiver<RegOp>>>,
}

impl fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shared.get() {
            Some(shared) => shared.fmt(f),
            None => f
                .debug_struct("Nats")
                .field("config", &self.config)
                .finish_non_exhaustive(),
        }
    }
}

impl NatsBackend {
    /// A backend for `config`; nothing is connected until a manager opens
    /// it.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] for a URL that is not a NATS URL (or list of
    /// them), or a prefix that is not 1 to 32 ASCII letters, digits, `-`
    /// and `_`.
    ///
    /// ```
    /// use htmx_sse::backend::{NatsBackend, NatsConfig};
    ///
    /// assert!(NatsBackend::new(NatsConfig::new("nats://127.0.0.1:4222").prefix("a.b")).is_err());
    /// ```
    pub fn new(config: NatsConfig) -> Result<Self, Error> {
        servers(&config.url)?;
        if !valid_prefix(&config.prefix) {
            return Err(Error::Backend(format!(
                "bad NATS prefix {:?}: 1 to 32 ASCII letters, digits, '-' and '_'",
                config.prefix.chars().take(40).collect::<String>()
            )));
        }
        Ok(NatsBackend {
            config,
            shared: OnceLock::new(),
            registry: Mutex::new(None),
        })
    }

    fn shared(&self) -> Result<&Arc<Shared>, Error> {
        self.shared
            .get()
            .ok_or_else(|| Error::Backend("the NATS backend is not open yet".to_owned()))
    }
}

impl Backend for NatsBackend {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn open(&self, history: usize) -> BoxFuture<'_, Result<Snapshot, Error>> {
        Box::pin(async move {
            let (shared, snapshot, registry) = connect(&self.config, history).await?;
            if self.shared.set(Arc::new(shared)).is_err() {
                return Err(Error::Backend(
                    "this NATS backend is open already: give each manager its own".to_owned(),
                ));
            }
            *self.registry.lock() = Some(registry);
            Ok(snapshot)
        })
    }

    fn publish<'a>(
        &'a self,
        epoch: Epoch,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move { self.shared()?.publish(epoch, envelope).await })
    }

    fn run(self: Arc<Self>, sink: Sink, after: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (Ok(shared), Some(registry)) = (self.shared(), self.registry.lock().take()) else {
                tracing::error!("the NATS backend runs only once, after it is opened");
                return;
            };
            let shared = Arc::clone(shared);
            tokio::join!(
                read_loop(sink.clone(), Arc::clone(&shared), after),
                registry_loop(sink.clone(), Arc::clone(&shared), registry),
                liveness_loop(sink.clone(), Arc::clone(&shared)),
                housekeeping_loop(sink, shared),
            );
        })
    }

    fn connected(&self, id: &ConnectionId, user: Option<&UserId>) -> BoxFuture<'static, ()> {
        // A manager opens its backend before its first connection.
        let Ok(shared) = self.shared() else {
            return Box::pin(async {});
        };
        let ready = shared.add(id.clone(), user.cloned());
        Box::pin(async move {
            // Recorded, or failed to be (then the sender is dropped): the
            // liveness task records every connection again.
            let _ = ready.await;
        })
    }

    fn disconnected(&self, id: &ConnectionId) {
        if let Ok(shared) = self.shared() {
            shared.remove(id.clone());
        }
    }

    fn locate<'a>(
        &'a self,
        id: &'a ConnectionId,
    ) -> BoxFuture<'a, Result<Option<Option<UserId>>, Error>> {
        Box::pin(async move { self.shared()?.lookup(id).await })
    }

    fn connection_count(&self) -> BoxFuture<'_, Result<Option<usize>, Error>> {
        Box::pin(async move { self.shared()?.cluster_count().await.map(Some) })
    }

    fn is_connected(&self) -> bool {
        self.shared().is_ok_and(|s| s.is_reading())
    }
}

/// The keys under `filter` in `store` that hold a message (a value, or
/// the marker of a deleted one), read from the stream's subjects in one
/// answer of the server's. Not `kv::Store::keys`, whose consumer misses a
/// key written again while it lists (the liveness entries are, all the
/// time).
async fn keys(store: &kv::Store, filter: &str) -> Result<Vec<String>, String> {
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{}{filter}", store.prefix))
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.map_err(|e| e.to_string())?;
        if let Some(key) = subject.strip_prefix(&store.prefix) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// A connection's entry in the place bucket: `instance\nuser`.
fn place_value(instance: &str, user: Option<&UserId>) -> bytes::Bytes {
    format!("{instance}\n{}", user.map_or("", UserId::as_str)).into()
}

/// Removes `key` from `store` as it was at `revision`, leaving nothing
/// behind: the messages of the key's subject up to that revision are
/// purged from the bucket's stream, so no delete marker stays (a deleted
/// key's marker would, one per connection ever seen). A value written
/// since, by this instance or another, has a later revision and stays:
/// the removal is conditional on the revision, as `delete_expect_revision`
/// is. Returns whether something was removed.
async fn forget(store: &kv::Store, key: &str, revision: u64) -> Result<bool, String> {
    let purged = store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix))
        .sequence(revision.saturating_add(1))
        .await
        .map_err(|e| e.to_string())?;
    Ok(purged.purged > 0)
}

/// The age of the entries of the liveness bucket, as the server keeps it;
/// `fallback` when it cannot be read or is unlimited.
async fn bucket_age(alive: &kv::Store, fallback: Duration) -> Duration {
    match alive.stream.get_info().await {
        Ok(info) if !info.config.max_age.is_zero() => info.config.max_age,
        _ => fallback,
    }
}

impl Shared {
    /// Appends `envelope` to the stream in `epoch`; returns its number.
    async fn publish(&self, epoch: Epoch, envelope: &Envelope) -> Result<u64, Error> {
        // Not handed to a client that is reconnecting: it would send it
        // once connected, after this publish had failed.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::Backend(
                "publishing: NATS is not connected".to_owned(),
            ));
        }
        let payload = encode(envelope, epoch).map_err(|e| backend_error("publishing", e))?;
        let sent = with_timeout(self.timeout, "publishing", async {
            self.js
                .publish(self.names.subject(epoch), payload)
                .await?
                .await
        })
        .await;
        match sent {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => {
                // No stream for this epoch's subject: NATS lost its data or
                // another instance started a new epoch; the reader looks.
                self.recheck.notify_one();
                Err(e)
            }
        }
    }

    /// The user of a connection on any instance, or `None` when no live
    /// instance has it.
    async fn lookup(&self, id: &ConnectionId) -> Result<Option<Option<UserId>>, Error> {
        let what = "looking up a connection";
        let Some(value) = with_timeout(self.timeout, what, self.place.get(id.as_str())).await?
        else {
            return Ok(None);
        };
        let value = String::from_utf8_lossy(&value);
        let Some((instance, user)) = value.split_once('\n') else {
            return Ok(None);
        };
        let alive = with_timeout(self.timeout, what, self.alive.get(instance)).await?;
        Ok(match (alive, user) {
            (None, _) => None,
            (Some(_), "") => Some(None),
            (Some(_), user) => UserId::new(user).ok().map(Some),
        })
    }

    /// Connections on every live instance: the counts they renew.
    async fn cluster_count(&self) -> Result<usize, Error> {
        let what = "counting connections";
        with_timeout(times(self.timeout, 2), what, async {
            let mut total = 0;
            for key in keys(&self.alive, ">").await? {
                if let Some(v) = self.alive.get(&key).await.map_err(|e| e.to_string())? {
                    total += std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                        .unwrap_or(0);
                }
            }
            Ok::<_, String>(total)
        })
        .await
    }

    /// Records a new local connection; `ready` fires once NATS knows it
    /// (or failed to learn it).
    fn add(&self, id: ConnectionId, user: Option<UserId>) -> oneshot::Receiver<()> {
        let (ready, rx) = oneshot::channel();
        let _ = self.registry.send(RegOp::Add { id, user, ready });
        rx
    }

    /// Forgets a local connection.
    fn remove(&self, id: ConnectionId) {
        let _ = self.registry.send(RegOp::Remove { id });
    }

    /// Renews this instance's liveness entry with its connection count;
    /// returns whether the entry was there before (else NATS forgot this
    /// instance, or it is the first round).
    async fn renew(&self, count: usize) -> Result<bool, String> {
        let existed = self
            .alive
            .get(&self.instance)
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        self.alive
            .put(&self.instance, count.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        Ok(existed)
    }

    /// Whether the reader is reading the stream now.
    fn is_reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// The age of liveness entries (see `age`).
    fn age(&self) -> Duration {
        Duration::from_nanos(self.age.load(Ordering::Relaxed))
    }

    /// Reads the liveness bucket's age again (it may have been made again,
    /// by another instance, after NATS lost its data).
    async fn read_age(&self) {
        let age = bucket_age(&self.alive, self.liveness).await;
        self.age.store(
            u64::try_from(age.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// NATS may have lost this instance's records: the housekeeping task
    /// writes them again, now.
    fn records_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
        self.housekeep.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_of_duration_max_waits_without_panicking() {
        let got = with_timeout(times(Duration::MAX, 4), "waiting", async {
            Ok::<_, String>(7)
        })
        .await;
        assert_eq!(got.ok(), Some(7));
    }

    #[test]
    fn the_stream_keeps_a_margin_above_the_history() {
        assert_eq!(kept(0), 1 + 256);
        assert_eq!(kept(10), 10 + 256);
        assert_eq!(kept(1000), 2000);
        assert_eq!(kept(usize::MAX), i64::MAX);
        for history in [1, 50, 256, 257, 10_000] {
            let kept = usize::try_from(kept(history)).unwrap();
            assert!(kept >= history + MARGIN && kept >= 2 * history);
        }
    }
}
