//! [`RedisConfig`]: where the Redis backend connects, under which key
//! prefix it keeps its data, and its timeouts.

use std::fmt;
use std::time::Duration;

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
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) liveness: Duration,
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
    /// 300 ms). Each instance renews its key every quarter of this, and
    /// the others then forget its connections: `send_to` answers unknown and
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_password() {
        let c = RedisConfig::new("redis://:s3cret@127.0.0.1:6379/0");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379"), "{shown}");
    }
}
