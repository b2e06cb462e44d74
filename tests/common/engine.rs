//! The shared engine of the multi-instance tests (`tests/cluster.rs`):
//! a real `redis-server` or `nats-server -js` on a free loopback port,
//! the managers (server instances) built on it, and what a test does to
//! the engine itself (stop it, start it again with or without its data,
//! write an entry into its log that no instance can read).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use htmx_sse::Error;
use htmx_sse::backend::{NatsConfig, RedisConfig};
use htmx_sse::broadcast::{BroadcastBuilder, BroadcastManager};
use htmx_sse::connections::ConnectionId;
use htmx_sse::streaming::StreamConfig;

pub use super::Instance;
use super::nats::{self, NatsServer};
use super::proxy::Proxy;
use super::redis::RedisServer;

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

/// One engine server, killed (by its PID) when dropped.
pub enum Engine {
    Redis(RedisServer),
    Nats(NatsServer),
}

/// Where and how an instance connects: the engine's URL, the prefix
/// (`htmx-sse` unless set), the liveness (the engine's default unless
/// set), a 500 ms timeout. `Clone + 'static`, so that an instance can be
/// built on a runtime of its own.
#[derive(Debug, Clone)]
pub struct Endpoint {
    kind: Kind,
    url: String,
    prefix: Option<String>,
    liveness: Option<Duration>,
}

impl Endpoint {
    /// With this prefix.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// With this liveness.
    pub fn liveness(mut self, liveness: Duration) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Through `proxy` (in front of the engine) rather than straight to
    /// the engine: a test can cut this instance off alone.
    pub fn through(mut self, proxy: &Proxy) -> Self {
        let (scheme, _) = self.url.split_once("://").unwrap();
        self.url = format!("{scheme}://127.0.0.1:{}", proxy.port());
        if self.kind == Kind::Redis {
            self.url.push('/');
        }
        self
    }

    /// Builds a manager on the engine.
    pub async fn try_build(&self, builder: BroadcastBuilder) -> Result<BroadcastManager, Error> {
        // The two configurations have the same three settings.
        macro_rules! configured {
            ($config:expr) => {{
                let mut c = $config.timeout(Duration::from_millis(500));
                if let Some(p) = &self.prefix {
                    c = c.prefix(p.clone());
                }
                if let Some(l) = self.liveness {
                    c = c.liveness(l);
                }
                c
            }};
        }
        match self.kind {
            Kind::Redis => {
                builder
                    .build_redis(configured!(RedisConfig::new(&self.url)))
                    .await
            }
            Kind::Nats => {
                builder
                    .build_nats(configured!(NatsConfig::new(&self.url)))
                    .await
            }
        }
    }

    /// Builds a manager on the engine; panics when it cannot connect.
    pub async fn build(&self, builder: BroadcastBuilder) -> BroadcastManager {
        self.try_build(builder)
            .await
            .unwrap_or_else(|e| panic!("connects to the test {:?} server: {e}", self.kind))
    }
}

impl Engine {
    /// Starts a server of `kind` that keeps its data across
    /// [`restart`](Self::restart).
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::Redis => Engine::Redis(RedisServer::start(true)),
            Kind::Nats => Engine::Nats(NatsServer::start()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Engine::Redis(_) => Kind::Redis,
            Engine::Nats(_) => Kind::Nats,
        }
    }

    /// What it says in errors ("Redis", "NATS").
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Redis(_) => "Redis",
            Engine::Nats(_) => "NATS",
        }
    }

    pub fn url(&self) -> String {
        match self {
            Engine::Redis(s) => s.url(),
            Engine::Nats(s) => s.url(),
        }
    }

    /// A proxy in front of the engine (see [`Endpoint::through`]).
    pub async fn proxy(&self) -> Proxy {
        let url = self.url();
        let (_, address) = url.split_once("://").unwrap();
        Proxy::start(address.trim_end_matches('/').to_owned()).await
    }

    /// Where instances connect, with the defaults.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            kind: self.kind(),
            url: self.url(),
            prefix: None,
            liveness: None,
        }
    }

    /// A server instance (its own manager, history 100, and HTTP port)
    /// with this heartbeat.
    pub async fn instance(&self, heartbeat: Duration) -> Instance {
        let builder = BroadcastManager::builder()
            .history(100)
            .stream(StreamConfig::new().heartbeat(heartbeat));
        Instance::serve(self.endpoint().build(builder).await).await
    }

    /// Kills the server (as a crash or an outage would).
    pub fn stop(&mut self) {
        match self {
            Engine::Redis(s) => s.stop(),
            Engine::Nats(s) => s.stop(),
        }
    }

    /// Starts it again on the same port, with its data.
    pub fn restart(&mut self) {
        match self {
            Engine::Redis(s) => s.restart(),
            Engine::Nats(s) => s.restart(),
        }
    }

    /// Starts it again on the same port without its data.
    pub fn restart_empty(&mut self) {
        match self {
            Engine::Redis(s) => s.restart_empty(),
            Engine::Nats(s) => s.restart_empty(),
        }
    }

    /// Appends to the shared log of the default prefix an entry that this
    /// crate cannot read (written by something else, or damaged), numbered
    /// `seq`, the next number, as the engine numbers entries.
    pub async fn write_unreadable(&self, manager: &BroadcastManager, seq: u64) {
        match self {
            Engine::Redis(s) => {
                use redis::AsyncCommands as _;
                let mut con = s.connection().await;
                let got: u64 = con.incr("htmx-sse:seq", 1).await.unwrap();
                assert_eq!(got, seq);
                let _: String = redis::cmd("XADD")
                    .arg("htmx-sse:stream")
                    .arg(format!("0-{seq}"))
                    .arg("garbage")
                    .arg("1")
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
            Engine::Nats(s) => {
                // The stream numbers it.
                let subject = format!("htmx-sse.log.{}", manager.last_id().epoch());
                nats::raw_publish(s, &subject, b"garbage").await;
            }
        }
    }

    /// Whether the registry of `prefix` holds a record of the connection
    /// `id` (a deleted one's marker is no record).
    pub async fn recorded(&self, prefix: &str, id: &ConnectionId) -> bool {
        match self {
            Engine::Redis(s) => {
                let mut con = s.connection().await;
                redis::cmd("HEXISTS")
                    .arg(format!("{prefix}:where"))
                    .arg(id.as_str())
                    .query_async(&mut con)
                    .await
                    .unwrap()
            }
            Engine::Nats(s) => nats::place_entry(s, prefix, id).await == nats::Place::Recorded,
        }
    }

    /// How many instances the engine keeps a record of under `prefix`,
    /// live or waiting to be buried (for NATS: the meta bucket's messages
    /// but the resume key, delete markers counted).
    pub async fn instances_recorded(&self, prefix: &str) -> u64 {
        match self {
            Engine::Redis(s) => {
                let mut con = s.connection().await;
                redis::cmd("SCARD")
                    .arg(format!("{prefix}:instances"))
                    .query_async(&mut con)
                    .await
                    .unwrap()
            }
            Engine::Nats(s) => nats::bucket_messages(s, &format!("{prefix}-meta")).await - 1,
        }
    }
}
