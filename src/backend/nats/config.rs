//! [`NatsConfig`]: where the NATS backend connects, under which prefix it
//! names its stream and buckets, and its timeouts.

use std::fmt;
use std::time::Duration;

/// Where the NATS JetStream backend connects, and the prefix of the
/// JetStream stream and key-value buckets it keeps its data in.
///
/// ```no_run
/// use htmx_sse::{backend::NatsConfig, broadcast::BroadcastManager};
///
/// # async fn run() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::builder()
///     .history(500)
///     .build_nats(NatsConfig::new("nats://127.0.0.1:4222").prefix("chat"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct NatsConfig {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) liveness: Duration,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a user and password or a token: show only where
        // it points.
        let shown = match self.url.rsplit_once('@') {
            Some((scheme, host)) => {
                let scheme = scheme.split_once("://").map_or("nats", |(s, _)| s);
                format!("{scheme}://…@{host}")
            }
            None => self.url.clone(),
        };
        f.debug_struct("NatsConfig")
            .field("url", &shown)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("liveness", &self.liveness)
            .finish()
    }
}

impl NatsConfig {
    /// Connects to `url` (`nats://[user:password@]host:port`, or several
    /// separated by commas), prefix `htmx-sse`, request timeout 2 s,
    /// liveness 15 s.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            prefix: "htmx-sse".to_owned(),
            timeout: Duration::from_secs(2),
            liveness: Duration::from_secs(15),
        }
    }

    /// The name of the JetStream stream, and the start of the names of
    /// the key-value buckets (default `htmx-sse`): 1 to 32 ASCII letters,
    /// digits, `-` and `_` (checked when the backend is made). Managers
    /// that share a prefix share messages; give each manager of an
    /// application its own (`chat`, `notifications`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a publish or a look-up waits for NATS before it fails
    /// (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an instance that stopped renewing its liveness entry (it
    /// crashed, or lost NATS) still counts as alive (default 15 s; at
    /// least 300 ms). The entries live in a bucket whose entries the
    /// server removes at this age; the others then forget the instance's
    /// connections: `send_to` answers unknown and
    /// [`cluster_connection_count`](crate::broadcast::BroadcastManager::cluster_connection_count)
    /// leaves them out. The first instance to create the bucket sets the
    /// age for every instance on the prefix, and each instance renews its
    /// entry every quarter of the bucket's age (not of its own setting),
    /// so that a healthy instance is never taken for dead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::backend::NatsConfig;
    ///
    /// let config = NatsConfig::new("nats://ann:secret@127.0.0.1:4222")
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
    fn config_debug_hides_the_credentials() {
        let c = NatsConfig::new("nats://ann:s3cret@127.0.0.1:4222");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("ann"),
            "{shown}"
        );
        assert!(shown.contains("nats://…@127.0.0.1:4222"), "{shown}");
    }
}
