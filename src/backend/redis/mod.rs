//! The Redis backend: see the [module docs](super).

mod config;
mod entry;
mod tasks;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Client, Script, Value};
use tokio::sync::{mpsc, oneshot};

pub use self::config::RedisConfig;
use self::entry::{decode, encode};
use self::tasks::{liveness_loop, read_loop, registry_loop, write_loop};
use super::registry::{MAX_BACKOFF, MIN_BACKOFF, renewal, times};
use super::{Backend, BoxFuture, Envelope, Epoch, Sink, Snapshot};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;

fn backend_error(what: &str, e: &redis::RedisError) -> Error {
    Error::Backend(format!("{what}: {e}"))
}

struct Keys {
    stream: String,
    seq: String,
    epoch: String,
    /// The key of resume proofs (see `broadcast::proof`).
    resume_key: String,
    /// Hash: connection id → instance id.
    place: String,
    /// Set of instance ids.
    instances: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            stream: format!("{prefix}:stream"),
            seq: format!("{prefix}:seq"),
            epoch: format!("{prefix}:epoch"),
            resume_key: format!("{prefix}:resume-key"),
            place: format!("{prefix}:where"),
            instances: format!("{prefix}:instances"),
            prefix: prefix.to_owned(),
        }
    }

    /// Hash: this instance's connection id → user id (or "").
    fn conns(&self, instance: &str) -> String {
        format!("{}:conns:{instance}", self.prefix)
    }

    /// Exists while the instance lives.
    fn alive(&self, instance: &str) -> String {
        format!("{}:alive:{instance}", self.prefix)
    }
}

/// Numbers a batch of messages and appends them, atomically: every
/// instance sees one order, and a batch is one round trip. `ARGV`: the
/// stream length, the epoch, how many messages, then per message its
/// field count and its fields. Returns the last number given. Fails (for
/// the whole batch, before any write) when the epoch in Redis is not the
/// publisher's (Redis lost its data and a reader has not caught up yet).
const PUBLISH: &str = r"
local e = redis.call('GET', KEYS[3])
if e ~= ARGV[2] then
  return redis.error_reply('EPOCH the Redis data was reset; retry')
end
local n = tonumber(ARGV[3])
local last = redis.call('INCRBY', KEYS[2], n)
local seq = last - n
local i = 4
for _ = 1, n do
  seq = seq + 1
  local k = tonumber(ARGV[i])
  local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. seq}
  for j = i + 1, i + 2 * k do args[#args + 1] = ARGV[j] end
  i = i + 1 + 2 * k
  redis.call(unpack(args))
end
return last
";

/// The most publishes one script call carries.
const MAX_BATCH: usize = 512;

/// The most bytes of message fields one script call carries (a batch
/// holds at least one message, whatever its size).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Forgets a connection, unless another instance took its id since.
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Removes everything a dead instance left, unless it is alive after all
/// (its liveness key, `KEYS[4]`, is there: it came back, or renewed it
/// since it was found missing): then returns -1.
const BURY: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
local ids = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(ids) do
  if redis.call('HGET', KEYS[1], id) == ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return #ids
";

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const BLOCK: Duration = Duration::from_secs(1);

/// A publish queued for the writer task: its fields, its epoch, and where
/// its number (or its error) goes.
struct Write {
    epoch: Epoch,
    fields: Vec<(String, Bytes)>,
    done: oneshot::Sender<Result<u64, Error>>,
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
    /// What Redis holds of this instance may be stale (a write failed,
    /// the reader reconnected, the liveness key had expired): write every
    /// local connection again and forget the departed ones.
    Resync,
}

/// The Redis side of a manager.
pub(crate) struct Shared {
    client: Client,
    keys: Keys,
    instance: String,
    commands: ConnectionManager,
    publish: Script,
    forget: Script,
    bury: Script,
    history: usize,
    timeout: Duration,
    liveness: Duration,
    registry: mpsc::UnboundedSender<RegOp>,
    /// Publishes, in the order they were made, to the writer task.
    writes: mpsc::UnboundedSender<Write>,
    reading: AtomicBool,
    /// How many times the reader connected: the writer connects again when
    /// this changed since it did.
    connections: AtomicU64,
    /// The resume key read from Redis at start, put back when Redis comes
    /// back without it (see `read_loop`).
    resume_key: String,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    what: &str,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(backend_error(what, &e)),
        Err(_) => Err(Error::Backend(format!(
            "{what}: no answer from Redis within {timeout:?}"
        ))),
    }
}

/// The value of `key`, set to `candidate` first when it has none (one
/// round trip; of several instances starting together, the first wins).
async fn set_once<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    key: &str,
    candidate: &str,
) -> redis::RedisResult<String> {
    let (current,): (String,) = redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg(candidate)
        .arg("NX")
        .ignore()
        .get(key)
        .query_async(con)
        .await?;
    Ok(current)
}

/// The epoch in Redis, made (as a fresh random one) when there is none.
async fn epoch<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Epoch> {
    let current = set_once(con, &keys.epoch, &Epoch::random().to_string()).await?;
    Epoch::parse(&current).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the epoch key does not hold an epoch",
            current,
        ))
    })
}

/// The resume key in Redis (64 hex digits), made when there is none, so
/// that a page resumes with its connection id on any instance.
async fn resume_key<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Vec<u8>> {
    let candidate: String = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .map(|u| u.simple().to_string())
        .collect();
    let current = set_once(con, &keys.resume_key, &candidate).await?;
    if current.len() < 32 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the resume key is shorter than 32 bytes",
        )));
    }
    Ok(current.into_bytes())
}

/// How the backend's command connections time out and reconnect.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(MAX_BACKOFF)
}

/// Connects, reads the epoch and the recent history.
async fn connect(
    config: &RedisConfig,
    history: usize,
) -> Result<(Shared, Snapshot, Receivers), Error> {
    let client = Client::open(config.url.as_str())
        .map_err(|e| Error::Backend(format!("bad Redis URL: {e}")))?;
    let mut commands = with_timeout(
        times(config.timeout, 2),
        "connecting to Redis",
        client.get_connection_manager_with_config(manager_config(config.timeout)),
    )
    .await?;
    let keys = Keys::new(&config.prefix);
    let epoch = with_timeout(
        config.timeout,
        "reading the epoch",
        epoch(&mut commands, &keys),
    )
    .await?;
    let resume_key = with_timeout(
        config.timeout,
        "reading the resume key",
        resume_key(&mut commands, &keys),
    )
    .await?;
    let reply: StreamRangeReply = with_timeout(
        config.timeout,
        "reading the history",
        commands.xrevrange_count(&keys.stream, "+", "-", history.max(1)),
    )
    .await?;
    let mut entries = Vec::with_capacity(reply.ids.len());
    for entry in reply.ids.iter().rev() {
        match decode(entry) {
            Ok(d) if d.epoch == epoch => entries.push((d.seq, d.envelope)),
            Ok(_) => {}
            Err(e) => tracing::warn!(id = %entry.id, error = %e, "skipping a stream entry"),
        }
    }
    let counter: Option<u64> = with_timeout(
        config.timeout,
        "reading the sequence",
        commands.get(&keys.seq),
    )
    .await?;
    let seq = entries.last().map(|(s, _)| *s).max(counter).unwrap_or(0);
    if history == 0 {
        entries.clear();
    }
    let (registry, registry_rx) = mpsc::unbounded_channel();
    let (writes, writes_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        client,
        keys,
        instance: uuid::Uuid::new_v4().simple().to_string(),
        commands,
        publish: Script::new(PUBLISH),
        forget: Script::new(FORGET),
        bury: Script::new(BURY),
        history: history.max(1),
        timeout: config.timeout,
        liveness: config.liveness,
        registry,
        writes,
        reading: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        resume_key: String::from_utf8_lossy(&resume_key).into_owned(),
    };
    let snapshot = Snapshot::new(epoch, seq)
        .with_recent(entries)
        .with_resume_key(resume_key);
    Ok((
        shared,
        snapshot,
        Receivers {
            registry: registry_rx,
            writes: writes_rx,
        },
    ))
}

/// The receiving ends of the channels to the backend's tasks, kept from
/// `open` until `run`.
struct Receivers {
    registry: mpsc::UnboundedReceiver<RegOp>,
    writes: mpsc::UnboundedReceiver<Write>,
}

/// The Redis backend as a [`Backend`]: made by
/// [`BroadcastBuilder::build_redis`](crate::broadcast::BroadcastBuilder::build_redis),
/// or given to [`build_on`](crate::broadcast::BroadcastBuilder::build_on).
///
/// ```no_run
/// use htmx_sse::backend::{RedisBackend, RedisConfig};
/// use htmx_sse::broadcast::BroadcastManager;
///
/// # async fn run() -> Result<(), htmx_sse::Error> {
/// let backend = RedisBackend::new(RedisConfig::new("redis://127.0.0.1:6379/"))?;
/// let manager = BroadcastManager::builder().build_on(backend).await?;
/// # Ok(()) }
/// ```
pub struct RedisBackend {
    config: RedisConfig,
    /// Set by `open`.
    shared: OnceLock<Arc<Shared>>,
    receivers: Mutex<Option<Receivers>>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shared.get() {
            Some(shared) => shared.fmt(f),
            None => f
                .debug_struct("Redis")
                .field("config", &self.config)
                .finish_non_exhaustive(),
        }
    }
}

impl RedisBackend {
    /// A backend for `config`; nothing is connected until a manager opens
    /// it.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] for a URL that is not a Redis URL.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        Client::open(config.url.as_str())
            .map_err(|e| Error::Backend(format!("bad Redis URL: {e}")))?;
        Ok(RedisBackend {
            config,
            shared: OnceLock::new(),
            receivers: Mutex::new(None),
        })
    }

    fn shared(&self) -> Result<&Arc<Shared>, Error> {
        self.shared
            .get()
            .ok_or_else(|| Error::Backend("the Redis backend is not open yet".to_owned()))
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn open(&self, history: usize) -> BoxFuture<'_, Result<Snapshot, Error>> {
        Box::pin(async move {
            let (shared, snapshot, receivers) = connect(&self.config, history).await?;
            if self.shared.set(Arc::new(shared)).is_err() {
                return Err(Error::Backend(
                    "this Redis backend is open already: give each manager its own".to_owned(),
                ));
            }
            *self.receivers.lock() = Some(receivers);
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

    fn submit(
        self: Arc<Self>,
        epoch: Epoch,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<u64, Error>> {
        let queued = self.shared().map(|s| s.enqueue(epoch, &envelope));
        Box::pin(async move { queued?.await })
    }

    fn run(self: Arc<Self>, sink: Sink, after: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let taken = self.receivers.lock().take();
            let (Ok(shared), Some(receivers)) = (self.shared(), taken) else {
                tracing::error!("the Redis backend runs only once, after it is opened");
                return;
            };
            let shared = Arc::clone(shared);
            // Its own task, so that it writes while the reader delivers;
            // it ends with this one (then pending publishes fail).
            let writer = AbortOnDrop(tokio::spawn(write_loop(
                Arc::clone(&shared),
                receivers.writes,
            )));
            tokio::join!(
                read_loop(sink.clone(), Arc::clone(&shared), after),
                registry_loop(sink.clone(), Arc::clone(&shared), receivers.registry),
                liveness_loop(sink, shared),
            );
            drop(writer);
        })
    }

    fn connected(&self, id: &ConnectionId, user: Option<&UserId>) -> BoxFuture<'static, ()> {
        // A manager opens its backend before its first connection.
        let Ok(shared) = self.shared() else {
            return Box::pin(async {});
        };
        let ready = shared.add(id.clone(), user.cloned());
        // Not while Redis is away: the registry task records it with every
        // other connection once Redis is back.
        let wait = shared.is_reading();
        Box::pin(async move {
            // Recorded, or failed to be (then the sender is dropped): the
            // registry task records every connection again.
            if wait {
                let _ = ready.await;
            }
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

impl Shared {
    /// Appends `envelope` to the stream in `epoch`; returns its number.
    async fn publish(&self, epoch: Epoch, envelope: &Envelope) -> Result<u64, Error> {
        self.enqueue(epoch, envelope).await
    }

    /// Queues `envelope` for the writer task now (so that publishes reach
    /// the stream in the order of these calls); the future gives its
    /// number, or the error of the script call that carried it.
    fn enqueue(
        &self,
        epoch: Epoch,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let write = Write {
            epoch,
            fields: encode(envelope, epoch),
            done,
        };
        let queued = self.writes.send(write).is_ok();
        async move {
            if !queued {
                return Err(Error::Backend(
                    "the Redis backend has stopped (its manager is gone)".to_owned(),
                ));
            }
            answer.await.unwrap_or_else(|_| {
                Err(Error::Backend(
                    "the Redis backend stopped before it wrote the message".to_owned(),
                ))
            })
        }
    }

    /// Writes `batch` (one epoch) in one script call and answers each of
    /// its publishes: its number, or the call's error.
    async fn write_batch(&self, con: &mut ConnectionManager, batch: Vec<Write>) {
        let Some(first) = batch.first() else {
            return;
        };
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(&self.keys.stream)
            .key(&self.keys.seq)
            .key(&self.keys.epoch)
            .arg(self.history)
            .arg(first.epoch.to_string())
            .arg(batch.len());
        for write in &batch {
            invocation.arg(write.fields.len());
            for (name, value) in &write.fields {
                invocation.arg(name.as_str()).arg(value.as_ref());
            }
        }
        let result: Result<u64, Error> =
            with_timeout(self.timeout, "publishing", invocation.invoke_async(con)).await;
        match result {
            Ok(last) => {
                let n = batch.len() as u64;
                for (i, write) in (0..n).zip(batch) {
                    let _ = write.done.send(Ok(last - n + 1 + i));
                }
            }
            Err(e) => {
                let reason = match &e {
                    Error::Backend(r) => r.clone(),
                    other => other.to_string(),
                };
                for write in batch {
                    let _ = write.done.send(Err(Error::Backend(reason.clone())));
                }
            }
        }
    }

    /// The user of a connection on any instance, or `None` when no live
    /// instance has it.
    async fn lookup(&self, id: &ConnectionId) -> Result<Option<Option<UserId>>, Error> {
        let mut con = self.commands.clone();
        let instance: Option<String> = with_timeout(
            self.timeout,
            "looking up a connection",
            con.hget(&self.keys.place, id.as_str()),
        )
        .await?;
        let Some(instance) = instance else {
            return Ok(None);
        };
        let (alive, user): (bool, Option<String>) = with_timeout(
            self.timeout,
            "looking up a connection",
            redis::pipe()
                .exists(self.keys.alive(&instance))
                .hget(self.keys.conns(&instance), id.as_str())
                .query_async(&mut con),
        )
        .await?;
        Ok(match (alive, user) {
            (true, Some(user)) if user.is_empty() => Some(None),
            (true, Some(user)) => UserId::new(&user).ok().map(Some),
            _ => None,
        })
    }

    /// Connections on every live instance.
    async fn cluster_count(&self) -> Result<usize, Error> {
        let mut con = self.commands.clone();
        let instances: Vec<String> = with_timeout(
            self.timeout,
            "counting connections",
            con.smembers(&self.keys.instances),
        )
        .await?;
        let mut pipe = redis::pipe();
        for i in &instances {
            pipe.exists(self.keys.alive(i)).hlen(self.keys.conns(i));
        }
        let counts: Vec<(bool, usize)> = if instances.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<Value> = with_timeout(
                self.timeout,
                "counting connections",
                pipe.query_async(&mut con),
            )
            .await?;
            flat.chunks(2)
                .map(|c| {
                    let alive = redis::from_redis_value::<bool>(c[0].clone()).unwrap_or(false);
                    let n = redis::from_redis_value::<usize>(c[1].clone()).unwrap_or(0);
                    (alive, n)
                })
                .collect()
        };
        Ok(counts
            .iter()
            .filter(|(alive, _)| *alive)
            .map(|(_, n)| n)
            .sum())
    }

    /// Records a new local connection; `ready` fires once Redis knows it
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

    /// Adds to `pipe` the writes that record a connection of this
    /// instance: where it is, and whose it is.
    fn record(&self, pipe: &mut redis::Pipeline, id: &ConnectionId, user: Option<&UserId>) {
        pipe.hset(&self.keys.place, id.as_str(), &self.instance)
            .ignore()
            .hset(
                self.keys.conns(&self.instance),
                id.as_str(),
                user.map_or("", UserId::as_str),
            )
            .ignore();
    }

    /// How this backend's command connections time out and reconnect.
    fn manager_config(&self) -> ConnectionManagerConfig {
        manager_config(self.timeout)
    }

    /// Whether the reader is connected to Redis now.
    fn is_reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// What Redis holds of this instance may be stale: the registry task
    /// writes every local connection again (see [`RegOp::Resync`]).
    fn records_lost(&self) {
        let _ = self.registry.send(RegOp::Resync);
    }

    /// Adds to `pipe` the removal of a connection of this instance (its
    /// place stays when another instance took the id since). The FORGET
    /// script must be loaded first (a pipeline runs it by EVALSHA).
    fn unrecord(&self, pipe: &mut redis::Pipeline, id: &str) {
        let mut forget = self.forget.prepare_invoke();
        forget
            .key(&self.keys.place)
            .key(self.keys.conns(&self.instance))
            .arg(id)
            .arg(&self.instance);
        pipe.invoke_script(&forget).ignore();
    }

    /// Adds to `pipe` (which should be atomic) the renewal of this
    /// instance's liveness key and its place in the set of instances, the
    /// first reply being whether the key was there before.
    fn renew_into(&self, pipe: &mut redis::Pipeline) {
        let alive = self.keys.alive(&self.instance);
        let ttl = u64::try_from(self.liveness.as_millis()).unwrap_or(u64::MAX);
        pipe.exists(&alive)
            .pset_ex(&alive, 1, ttl)
            .ignore()
            .sadd(&self.keys.instances, &self.instance)
            .ignore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_of_duration_max_waits_without_panicking() {
        let got = with_timeout(times(Duration::MAX, 2), "waiting", async {
            Ok::<_, redis::RedisError>(7)
        })
        .await;
        assert_eq!(got.ok(), Some(7));
    }
}
