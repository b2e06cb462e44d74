//! Limits: how much one server, one user, one request may take.
//!
//! Every limit has a default that keeps a small server safe on a network,
//! and every one answers clearly when it is reached: nothing is dropped or
//! cut short without the client being told.
//!
//! | limit | default | where it is checked | answer when reached |
//! | --- | --- | --- | --- |
//! | [`connections`](Limits::connections) | 20,000 per process | opening a stream | **503** with `Retry-After` |
//! | [`connections_per_user`](Limits::connections_per_user) | 32 per user and process | opening a stream with a user | **429** with `Retry-After` |
//! | [`topics_per_connection`](Limits::topics_per_connection) | 32 | opening a stream ([`Subscription`](crate::broadcast::Subscription) topics) | 400 from the hub's route, [`Error::LimitExceeded`](crate::Error::LimitExceeded) from the manager |
//! | [`topics_per_publish`](Limits::topics_per_publish) | 32 | a publish to topics | 422 |
//! | [`exclude`](Limits::exclude) | 1,000 ids | a publish with an exclusion list | 422 |
//! | [`history_bytes`](Limits::history_bytes) | 8 MiB of frames | keeping history | the oldest messages leave the history (a page resuming from before them gets the `reset` event, `history-gap`) |
//! | [`history_response_bytes`](Limits::history_response_bytes) | 1 MiB | `GET {prefix}/history` | the newest messages that fit; the header `X-History-Truncated: true` says some were left out |
//! | [`body`](Limits::body) | 64 KiB | a publish request body | **413** |
//!
//! The number of messages kept is [`BroadcastBuilder::history`](crate::broadcast::BroadcastBuilder::history)
//! (1024 by default); `history_bytes` bounds the same history by size, so
//! that 1024 large messages cannot take the memory (or make a
//! `/history` answer) of tens of MiB.
//!
//! Set them on the manager; the routes built on it
//! ([`BroadcastRoutes`](crate::routes::BroadcastRoutes),
//! [`TopicRoutes`](crate::topics::TopicRoutes)) use the same limits:
//!
//! ```
//! use std::time::Duration;
//! use htmx_sse::{broadcast::BroadcastManager, limits::Limits};
//!
//! let manager = BroadcastManager::builder()
//!     .limits(
//!         Limits::new()
//!             .connections(50_000)
//!             .connections_per_user(8)
//!             .retry_after(Duration::from_secs(30)),
//!     )
//!     .build();
//! assert_eq!(manager.limits().connections_per_user, 8);
//! ```
//!
//! Connection counts are per server process: behind a load balancer over N
//! instances, a user may hold up to N × `connections_per_user` streams.
//! Connections without a user (anonymous pages) count toward
//! `connections` only; to bound them per client address, put a rate or
//! concurrency limit in front of the stream route (for example
//! `tower::limit` or your proxy's).

use std::fmt;
use std::time::Duration;

/// The limits of a [`BroadcastManager`](crate::broadcast::BroadcastManager)
/// and the routes built on it; see the [module docs](self).
///
/// Fields are public to read; set them with the methods, which keep the
/// type open to new limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Open streams per process.
    pub connections: usize,
    /// Open streams per user and process.
    pub connections_per_user: usize,
    /// Topic selectors one stream may subscribe to.
    pub topics_per_connection: usize,
    /// Topics one message may be published to.
    pub topics_per_publish: usize,
    /// Connection ids one publish may exclude.
    pub exclude: usize,
    /// Bytes of encoded frames the history keeps.
    pub history_bytes: usize,
    /// Bytes of JSON one `/history` answer may hold.
    pub history_response_bytes: usize,
    /// Bytes of one publish request body.
    pub body: usize,
    /// What `Retry-After` tells a client refused for the number of
    /// connections.
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new()
    }
}

impl Limits {
    /// The defaults (see the table in the [module docs](self)).
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new();
    /// assert_eq!(limits.connections, 20_000);
    /// assert_eq!(limits.body, 64 * 1024);
    /// ```
    #[must_use]
    pub const fn new() -> Self {
        Limits {
            connections: 20_000,
            connections_per_user: 32,
            topics_per_connection: 32,
            topics_per_publish: 32,
            exclude: 1_000,
            history_bytes: 8 * 1024 * 1024,
            history_response_bytes: 1024 * 1024,
            body: 64 * 1024,
            retry_after: Duration::from_secs(5),
        }
    }

    /// Open streams per process (default 20,000): one more is refused with
    /// 503 and `Retry-After`. An idle stream takes about 17 KiB of the
    /// server's memory (see `BENCHMARKS.md`), so the default is about
    /// 340 MiB; raise it along with the process's file descriptor limit.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().connections(100_000);
    /// # assert_eq!(limits.connections, 100_000);
    /// ```
    #[must_use]
    pub const fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Open streams per user and process (default 32): one more is
    /// refused with 429 and `Retry-After`. A page that reconnects with its
    /// own connection id (resume) replaces its old stream and is not
    /// counted twice.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().connections_per_user(4);
    /// # assert_eq!(limits.connections_per_user, 4);
    /// ```
    #[must_use]
    pub const fn connections_per_user(mut self, n: usize) -> Self {
        self.connections_per_user = n;
        self
    }

    /// Topic selectors one stream may subscribe to (default 32). Every
    /// message to topics is matched against the selectors of the streams
    /// that may want it, so this bounds the work a publish costs.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().topics_per_connection(8);
    /// # assert_eq!(limits.topics_per_connection, 8);
    /// ```
    #[must_use]
    pub const fn topics_per_connection(mut self, n: usize) -> Self {
        self.topics_per_connection = n;
        self
    }

    /// Topics one message may be published to (default 32).
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().topics_per_publish(4);
    /// # assert_eq!(limits.topics_per_publish, 4);
    /// ```
    #[must_use]
    pub const fn topics_per_publish(mut self, n: usize) -> Self {
        self.topics_per_publish = n;
        self
    }

    /// Connection ids one publish may exclude (default 1,000). The list is
    /// checked for every connection the message could reach.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().exclude(10);
    /// # assert_eq!(limits.exclude, 10);
    /// ```
    #[must_use]
    pub const fn exclude(mut self, n: usize) -> Self {
        self.exclude = n;
        self
    }

    /// Bytes of encoded frames the history keeps (default 8 MiB): when a
    /// new message would pass it, the oldest leave (the newest message is
    /// always kept). The data kept alongside for `/history` is about as
    /// large again.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().history_bytes(1024 * 1024);
    /// # assert_eq!(limits.history_bytes, 1024 * 1024);
    /// ```
    #[must_use]
    pub const fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// Bytes of JSON one `GET {prefix}/history` answer may hold (default
    /// 1 MiB): it lists the newest messages that fit, oldest first, and
    /// says `X-History-Truncated: true` when it left older ones out.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().history_response_bytes(64 * 1024);
    /// # assert_eq!(limits.history_response_bytes, 64 * 1024);
    /// ```
    #[must_use]
    pub const fn history_response_bytes(mut self, bytes: usize) -> Self {
        self.history_response_bytes = bytes;
        self
    }

    /// Bytes of one publish request body (default 64 KiB): a larger one is
    /// refused with 413 before it is read in full.
    ///
    /// ```
    /// let limits = htmx_sse::limits::Limits::new().body(16 * 1024);
    /// # assert_eq!(limits.body, 16 * 1024);
    /// ```
    #[must_use]
    pub const fn body(mut self, bytes: usize) -> Self {
        self.body = bytes;
        self
    }

    /// What `Retry-After` says to a client refused for the number of
    /// connections (default 5 s, sent in whole seconds, at least 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// let limits = htmx_sse::limits::Limits::new().retry_after(Duration::from_secs(60));
    /// # assert_eq!(limits.retry_after, Duration::from_secs(60));
    /// ```
    #[must_use]
    pub const fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }
}

/// Which limit a request reached: see [`Error::LimitExceeded`](crate::Error::LimitExceeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::connections`].
    Connections,
    /// [`Limits::connections_per_user`].
    ConnectionsPerUser,
    /// [`Limits::topics_per_connection`].
    TopicsPerConnection,
    /// [`Limits::topics_per_publish`].
    TopicsPerPublish,
    /// [`Limits::exclude`].
    Exclude,
    /// [`Limits::body`].
    Body,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Connections => "connections on this server",
            Limit::ConnectionsPerUser => "connections for this user",
            Limit::TopicsPerConnection => "topics per connection",
            Limit::TopicsPerPublish => "topics per message",
            Limit::Exclude => "excluded connections per message",
            Limit::Body => "bytes of request body",
        })
    }
}
