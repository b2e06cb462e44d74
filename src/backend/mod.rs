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
//!   with a `RedisConfig`.
//!
//! Both give the same API and the same guarantees (ids in one order,
//! exclusions, [`send_to`](crate::broadcast::BroadcastManager::send_to),
//! per-user and topic delivery, `Last-Event-ID` resume); the same test
//! suite (`tests/backend.rs`) runs against both.
//!
//! # How the Redis backend works
//!
//! - A message is rendered and encoded once by the instance that publishes
//!   it, then appended to one Redis stream (`XADD`, trimmed to the history
//!   length) by a Lua script that numbers it from a shared counter, so ids
//!   are in one order across instances. Redis pub/sub is not used: it drops
//!   what a subscriber misses while it reconnects, a stream does not.
//! - Every instance reads the stream (`XREAD BLOCK`) and delivers each
//!   message to its own connections, in id order, from the bytes the
//!   publisher encoded: no instance renders or encodes it again. Its local
//!   history mirrors the stream, so a page that reconnects to *another*
//!   instance resumes with nothing missed.
//! - The epoch lives in Redis too: ids stay valid across instances and
//!   server restarts, and change only when Redis loses its data (then pages
//!   get the reset event).
//! - Each instance records its connections in Redis (and a liveness key it
//!   renews), so `send_to` finds a connection on any instance and
//!   [`cluster_connection_count`](crate::broadcast::BroadcastManager::cluster_connection_count)
//!   counts all of them.
//!
//! # When Redis goes away
//!
//! Local streams stay open and keep their heartbeat; publishing returns
//! [`Error::Backend`](crate::Error::Backend) (HTTP 503 from the routes) and
//! nothing is buffered; the backend reconnects with backoff (100 ms up to
//! 5 s) and delivery resumes from where it stopped reading. If Redis comes
//! back without its data, the backend starts a new epoch, and puts back the
//! resume key the instances share (so that an instance started afterwards
//! still resumes the others' pages).

#[cfg(feature = "redis")]
pub(crate) mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisConfig;
