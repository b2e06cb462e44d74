//! The Redis backend: see the [module docs](super).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Script, Value};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, BoxFuture, Envelope, Epoch, Sink, Snapshot, Target};
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;
use crate::event::EventName;
use crate::topics::Topic;

/// Where the Redis backend connects and under which key prefix it keeps its
/// data.
///
/// ```no_run
/// use htmx_sse::{backend::RedisConfig, broadcast::BroadcastManager};
///
/// # async fn run() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::builder()
///     .history(500)
///     .build_redis(RedisConfig::new("redis://127.0.0.1:6379/").prefix("chat"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    url: String,
    prefix: String,
    timeout: Duration,
    liveness: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: show only where it points.
        let shown = match self.url.rsplit_once('@') {
            Some((_, host)) => format!("redis://…@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &shown)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("liveness", &self.liveness)
            .finish()
    }
}

impl RedisConfig {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`), key prefix
    /// `htmx-sse`, command timeout 2 s, liveness 15 s.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "htmx-sse".to_owned(),
            timeout: Duration::from_secs(2),
            liveness: Duration::from_secs(15),
        }
    }

    /// The prefix of every key (default `htmx-sse`). Managers that share a
    /// prefix share messages; give each manager of an application its own
    /// (`chat`, `notifications`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a publish waits for Redis before it fails (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an instance that stopped renewing its liveness key (it
    /// crashed, or lost Redis) still counts as alive (default 15 s; at least
    /// 300 ms). Each instance renews its key every third of this, and the
    /// others then forget its connections: `send_to` answers unknown and
    /// [`cluster_connection_count`](crate::broadcast::BroadcastManager::cluster_connection_count)
    /// leaves them out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::backend::RedisConfig;
    ///
    /// let config = RedisConfig::new("redis://:secret@127.0.0.1:6379/")
    ///     .timeout(Duration::from_millis(500))
    ///     .liveness(Duration::from_secs(5));
    /// let shown = format!("{config:?}");
    /// assert!(shown.contains("liveness: 5s") && !shown.contains("secret"));
    /// ```
    pub fn liveness(mut self, liveness: Duration) -> Self {
        self.liveness = liveness.max(Duration::from_millis(300));
        self
    }
}

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

/// Numbers a message and appends it, atomically: every instance sees one
/// order. Fails when the epoch in Redis is not the publisher's (Redis lost
/// its data and a reader has not caught up yet).
const PUBLISH: &str = r"
local e = redis.call('GET', KEYS[3])
if e ~= ARGV[2] then
  return redis.error_reply('EPOCH the Redis data was reset; retry')
end
local seq = redis.call('INCR', KEYS[2])
local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-' .. seq}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
return seq
";

/// Forgets a connection, unless another instance took its id since.
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Removes everything a dead instance left.
const BURY: &str = r"
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

const BLOCK: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    reading: AtomicBool,
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

/// Connects, reads the epoch and the recent history.
async fn connect(
    config: &RedisConfig,
    history: usize,
) -> Result<(Shared, Snapshot, mpsc::UnboundedReceiver<RegOp>), Error> {
    let client = Client::open(config.url.as_str())
        .map_err(|e| Error::Backend(format!("bad Redis URL: {e}")))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(2)
        .set_max_delay(MAX_BACKOFF);
    let mut commands = with_timeout(
        config.timeout * 2,
        "connecting to Redis",
        client.get_connection_manager_with_config(manager_config),
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
        reading: AtomicBool::new(false),
        resume_key: String::from_utf8_lossy(&resume_key).into_owned(),
    };
    let snapshot = Snapshot::new(epoch, seq)
        .with_recent(entries)
        .with_resume_key(resume_key);
    Ok((shared, snapshot, registry_rx))
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
    registry: Mutex<Option<mpsc::UnboundedReceiver<RegOp>>>,
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
            registry: Mutex::new(None),
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
            let (shared, snapshot, registry) = connect(&self.config, history).await?;
            if self.shared.set(Arc::new(shared)).is_err() {
                return Err(Error::Backend(
                    "this Redis backend is open already: give each manager its own".to_owned(),
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
                tracing::error!("the Redis backend runs only once, after it is opened");
                return;
            };
            let shared = Arc::clone(shared);
            tokio::join!(
                read_loop(sink.clone(), Arc::clone(&shared), after),
                registry_loop(sink.clone(), Arc::clone(&shared), registry),
                liveness_loop(sink, shared),
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

impl Shared {
    /// Appends `envelope` to the stream in `epoch`; returns its number.
    async fn publish(&self, epoch: Epoch, envelope: &Envelope) -> Result<u64, Error> {
        let fields = encode(envelope, epoch);
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(&self.keys.stream)
            .key(&self.keys.seq)
            .key(&self.keys.epoch)
            .arg(self.history)
            .arg(epoch.to_string());
        for (name, value) in &fields {
            invocation.arg(name.as_str()).arg(value.as_ref());
        }
        let mut con = self.commands.clone();
        with_timeout(
            self.timeout,
            "publishing",
            invocation.invoke_async(&mut con),
        )
        .await
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

    /// Whether the reader is connected to Redis now.
    fn is_reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Entries: how a prepared message is kept in the stream.

struct Decoded {
    seq: u64,
    epoch: Epoch,
    envelope: Envelope,
}

fn ids(ids: &[ConnectionId]) -> Vec<&str> {
    ids.iter().map(ConnectionId::as_str).collect()
}

fn encode(p: &Envelope, epoch: Epoch) -> Vec<(String, Bytes)> {
    let target = match &p.target {
        Target::All { exclude } => json!({"k": "all", "x": ids(exclude)}),
        Target::One { to, user } => json!({
            "k": "one", "to": to.as_str(), "u": user.as_ref().map(UserId::as_str)
        }),
        Target::Topics {
            topics,
            private,
            exclude,
        } => json!({
            "k": "topics",
            "t": topics.iter().map(Topic::as_str).collect::<Vec<_>>(),
            "p": private,
            "x": ids(exclude),
        }),
        Target::User { user, exclude } => {
            json!({"k": "user", "u": user.as_str(), "x": ids(exclude)})
        }
    };
    let meta = json!({
        "target": target,
        "type": p.message_type.as_str(),
        "data": p.data,
        "html": p.html,
        "ts": p.timestamp.to_rfc3339(),
        "meta": p.metadata,
    });
    let mut fields = vec![
        ("v".to_owned(), Bytes::from(p.format.to_string())),
        ("e".to_owned(), Bytes::from(epoch.to_string())),
        ("o".to_owned(), Bytes::from(p.origin.to_string())),
        ("n".to_owned(), Bytes::from(p.nonce.to_string())),
        ("m".to_owned(), Bytes::from(meta.to_string())),
        ("b".to_owned(), p.body.clone()),
    ];
    if let Some(bodies) = &p.topic_bodies {
        for (i, b) in bodies.iter().enumerate() {
            fields.push((format!("t{i}"), b.clone()));
        }
    }
    fields
}

fn field_bytes(entry: &StreamId, name: &str) -> Option<Vec<u8>> {
    match entry.map.get(name)? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn field_str(entry: &StreamId, name: &str) -> Option<String> {
    String::from_utf8(field_bytes(entry, name)?).ok()
}

fn id_list(v: &serde_json::Value) -> Result<Box<[ConnectionId]>, String> {
    v.as_array()
        .ok_or("exclusions are not a list")?
        .iter()
        .map(|i| {
            i.as_str()
                .and_then(|s| ConnectionId::new(s).ok())
                .ok_or_else(|| "bad connection id".to_owned())
        })
        .collect()
}

fn decode(entry: &StreamId) -> Result<Decoded, String> {
    let seq = entry
        .id
        .strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or("not an id of ours")?;
    let epoch = field_str(entry, "e")
        .and_then(|e| Epoch::parse(&e))
        .ok_or("no epoch")?;
    // Entries written before origins were numbers are nobody's own.
    let origin = field_str(entry, "o")
        .ok_or("no origin")?
        .parse()
        .unwrap_or(0);
    let nonce = field_str(entry, "n")
        .and_then(|n| n.parse().ok())
        .ok_or("no nonce")?;
    let meta: serde_json::Value = field_str(entry, "m")
        .and_then(|m| serde_json::from_str(&m).ok())
        .ok_or("no message")?;
    let body = Bytes::from(field_bytes(entry, "b").ok_or("no body")?);
    let t = &meta["target"];
    let user = |v: &serde_json::Value| -> Result<Option<UserId>, String> {
        match v.as_str() {
            None => Ok(None),
            Some(u) => UserId::new(u).map(Some).map_err(|e| e.to_string()),
        }
    };
    let target = match t["k"].as_str() {
        Some("all") => Target::All {
            exclude: id_list(&t["x"])?,
        },
        Some("one") => Target::One {
            to: t["to"]
                .as_str()
                .and_then(|s| ConnectionId::new(s).ok())
                .ok_or("bad connection id")?,
            user: user(&t["u"])?,
        },
        Some("topics") => Target::Topics {
            topics: t["t"]
                .as_array()
                .ok_or("topics are not a list")?
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| Topic::new(s).ok())
                        .ok_or_else(|| "bad topic".to_owned())
                })
                .collect::<Result<_, _>>()?,
            private: t["p"].as_bool().unwrap_or(false),
            exclude: id_list(&t["x"])?,
        },
        Some("user") => Target::User {
            user: user(&t["u"])?.ok_or("no user")?,
            exclude: id_list(&t["x"])?,
        },
        _ => return Err("unknown target".to_owned()),
    };
    let mut bodies = Vec::new();
    while let Some(b) = field_bytes(entry, &format!("t{}", bodies.len())) {
        bodies.push(Bytes::from(b));
    }
    let envelope = Envelope {
        format: field_str(entry, "v")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        body,
        topic_bodies: (!bodies.is_empty()).then(|| bodies.into_boxed_slice()),
        target,
        message_type: meta["type"]
            .as_str()
            .and_then(|s| EventName::new(s.to_owned()).ok())
            .ok_or("bad type")?,
        data: meta["data"].clone(),
        html: meta["html"].as_bool().unwrap_or(false),
        metadata: (!meta["meta"].is_null()).then(|| meta["meta"].clone()),
        timestamp: meta["ts"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
        origin,
        nonce,
    };
    if envelope.format > Envelope::FORMAT {
        return Err(format!(
            "format {} is newer than this instance reads ({})",
            envelope.format,
            Envelope::FORMAT
        ));
    }
    Ok(Decoded {
        seq,
        epoch,
        envelope,
    })
}

// ---------------------------------------------------------------------------
// Background tasks.

fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(MAX_BACKOFF)
}

async fn reader_connection(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(BLOCK + shared.timeout));
    shared
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Reads the stream and delivers each message to this instance's
/// connections, in order; reconnects with backoff.
async fn read_loop(sink: Sink, shared: Arc<Shared>, mut last: u64) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        if !sink.is_open() {
            return;
        }
        let mut con = match reader_connection(&shared).await {
            Ok(con) => con,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Redis unreachable; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        // Redis may have come back without its data. It lost the resume key
        // too: put back the one every running instance holds, before the new
        // epoch (an instance started from now on reads this key, not a new
        // one of its own, under which no page of the others could resume).
        match set_once(&mut con, &shared.keys.resume_key, &shared.resume_key).await {
            Ok(current) if current != shared.resume_key => tracing::warn!(
                "the resume key in Redis is not the one this instance started with: \
                 pages moving to or from it get the reset event (unrecognized)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "restoring the resume key failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        }
        // Then a new epoch, read from the start of the new stream.
        match epoch(&mut con, &shared.keys).await {
            Ok(e) => {
                let Some(changed) = sink.new_epoch(e) else {
                    return;
                };
                if changed {
                    tracing::warn!(epoch = %e, "Redis lost its data: new epoch");
                    last = 0;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the epoch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        }
        if failing {
            tracing::info!("Redis reachable again; delivery resumes");
        }
        backoff = MIN_BACKOFF;
        shared.reading.store(true, Ordering::Relaxed);
        let options = StreamReadOptions::default()
            .count(1024)
            .block(usize::try_from(BLOCK.as_millis()).unwrap_or(1000));
        loop {
            if !sink.is_open() {
                return;
            }
            let from = format!("0-{last}");
            let reply: redis::RedisResult<Option<StreamReadReply>> = con
                .xread_options(&[&shared.keys.stream], &[&from], &options)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading from Redis failed; reconnecting");
                    failing = true;
                    break;
                }
            };
            for entry in reply.iter().flat_map(|r| &r.keys).flat_map(|k| &k.ids) {
                match decode(entry) {
                    Ok(d) => {
                        last = d.seq;
                        if sink.deliver(d.epoch, d.seq, d.envelope).is_none() {
                            return;
                        }
                    }
                    Err(e) => {
                        if let Some(seq) = entry.id.strip_prefix("0-").and_then(|s| s.parse().ok())
                        {
                            last = seq;
                        }
                        tracing::warn!(id = %entry.id, error = %e, "skipping a stream entry");
                    }
                }
            }
        }
        shared.reading.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

/// Writes connection arrivals and departures to Redis, in batches.
async fn registry_loop(sink: Sink, shared: Arc<Shared>, mut ops: mpsc::UnboundedReceiver<RegOp>) {
    let conns = shared.keys.conns(&shared.instance);
    let mut batch = Vec::new();
    while ops.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        let mut readies = Vec::new();
        for op in batch.drain(..) {
            match op {
                RegOp::Add { id, user, ready } => {
                    shared.record(&mut pipe, &id, user.as_ref());
                    readies.push(ready);
                }
                RegOp::Remove { id } => {
                    let mut forget = shared.forget.prepare_invoke();
                    forget
                        .key(&shared.keys.place)
                        .key(&conns)
                        .arg(id.as_str())
                        .arg(&shared.instance);
                    pipe.invoke_script(&forget).ignore();
                }
            }
        }
        let mut con = shared.commands.clone();
        // Scripts in a pipeline run by EVALSHA: load it first.
        let loaded: redis::RedisResult<()> = shared
            .forget
            .prepare_invoke()
            .load_async(&mut con)
            .await
            .map(|_| ());
        let result = match loaded {
            Ok(()) => {
                with_timeout(
                    shared.timeout,
                    "recording connections",
                    pipe.query_async::<()>(&mut con),
                )
                .await
            }
            Err(e) => Err(backend_error("recording connections", &e)),
        };
        if let Err(e) = result {
            // The liveness task writes every local connection again once
            // Redis is back.
            tracing::warn!(error = %e, "could not record connections in Redis");
        }
        drop(readies);
        if !sink.is_open() {
            return;
        }
    }
}

/// Renews this instance's liveness key, writes its connections again when
/// Redis forgot them, and buries instances that died.
async fn liveness_loop(sink: Sink, shared: Arc<Shared>) {
    let alive = shared.keys.alive(&shared.instance);
    let mut tick = tokio::time::interval(shared.liveness / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !sink.is_open() {
            return;
        }
        let mut con = shared.commands.clone();
        let step = async {
            let existed: bool = con.exists(&alive).await?;
            let ttl = u64::try_from(shared.liveness.as_millis()).unwrap_or(u64::MAX);
            let _: () = redis::pipe()
                .pset_ex(&alive, 1, ttl)
                .ignore()
                .sadd(&shared.keys.instances, &shared.instance)
                .ignore()
                .query_async(&mut con)
                .await?;
            if !existed {
                // First round, or Redis forgot us: write every local
                // connection again.
                let local = sink.connections().unwrap_or_default();
                if !local.is_empty() {
                    let mut pipe = redis::pipe();
                    for (id, user) in &local {
                        shared.record(&mut pipe, id, user.as_ref());
                    }
                    let _: () = pipe.query_async(&mut con).await?;
                }
            }
            let instances: Vec<String> = con.smembers(&shared.keys.instances).await?;
            for other in instances.iter().filter(|i| **i != shared.instance) {
                let live: bool = con.exists(shared.keys.alive(other)).await?;
                if !live {
                    let n: usize = shared
                        .bury
                        .key(&shared.keys.place)
                        .key(shared.keys.conns(other))
                        .key(&shared.keys.instances)
                        .arg(other)
                        .invoke_async(&mut con)
                        .await?;
                    tracing::info!(instance = %other, connections = n, "buried a dead instance");
                }
            }
            redis::RedisResult::Ok(())
        };
        let result = with_timeout(shared.timeout * 2, "renewing liveness", step).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "liveness renewal failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn entry(fields: Vec<(String, Bytes)>, seq: u64) -> StreamId {
        StreamId {
            id: format!("0-{seq}"),
            map: fields
                .into_iter()
                .map(|(k, v)| (k, Value::BulkString(v.to_vec())))
                .collect(),
            ..StreamId::default()
        }
    }

    fn envelope(body: Bytes, target: Target) -> Envelope {
        Envelope {
            format: Envelope::FORMAT,
            body,
            topic_bodies: None,
            target,
            message_type: EventName::new("message".to_owned()).unwrap(),
            data: json!("x"),
            html: false,
            metadata: None,
            timestamp: Utc::now(),
            origin: 7,
            nonce: 1,
        }
    }

    #[test]
    fn entries_round_trip() {
        let body = Event::builder()
            .event("chat")
            .data("<li>hi</li>")
            .build()
            .unwrap()
            .into_bytes();
        let mut sent = envelope(
            body,
            Target::Topics {
                topics: vec![Topic::new("lists/7").unwrap()].into(),
                private: true,
                exclude: vec![ConnectionId::new("c1").unwrap()].into(),
            },
        );
        sent.topic_bodies = Some(vec![Bytes::from_static(b"event: a\ndata: x\n\n")].into());
        sent.message_type = EventName::new("chat".to_owned()).unwrap();
        sent.data = json!({"text": "hi"});
        sent.html = true;
        sent.metadata = Some(json!({"by": "ann"}));
        sent.origin = 0xfeed;
        sent.nonce = 9;
        let epoch = Epoch(0x1234_abcd);
        let d = decode(&entry(encode(&sent, epoch), 42)).unwrap();
        assert_eq!((d.seq, d.epoch), (42, epoch));
        let mut back = d.envelope;
        // Redis keeps times to the microsecond or better; RFC 3339 keeps
        // nanoseconds: the same instant.
        assert_eq!(back.timestamp, sent.timestamp);
        back.timestamp = sent.timestamp;
        assert_eq!(back, sent, "every field crosses Redis");
    }

    #[test]
    fn bad_entries_are_refused_not_panicked_on() {
        let good = envelope(
            Bytes::from_static(b"data: x\n\n"),
            Target::All {
                exclude: Box::new([]),
            },
        );
        let fields = encode(&good, Epoch(1));
        assert!(decode(&entry(fields.clone(), 1)).is_ok());
        for drop in ["e", "o", "n", "m", "b"] {
            let fewer = fields.iter().filter(|(k, _)| k != drop).cloned().collect();
            assert!(decode(&entry(fewer, 1)).is_err(), "without {drop}");
        }
        let meta = fields.iter().position(|(k, _)| k == "m").unwrap();
        let mut bad_target = fields.clone();
        bad_target[meta].1 = Bytes::from(r#"{"target":{"k":"one","to":"a\nb"},"type":"x"}"#);
        assert!(decode(&entry(bad_target, 1)).is_err());
        // From a newer version of the crate: refused, not misread.
        let mut newer = fields.clone();
        newer[0].1 = Bytes::from((Envelope::FORMAT + 1).to_string());
        assert!(decode(&entry(newer, 1)).is_err());
        let mut bad_id = entry(fields, 1);
        bad_id.id = "1700000000000-0".to_owned();
        assert!(decode(&bad_id).is_err());
    }

    #[test]
    fn config_debug_hides_the_password() {
        let c = RedisConfig::new("redis://:s3cret@127.0.0.1:6379/0");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379"), "{shown}");
    }
}
