//! `Shutdown`: one signal that ends every stream it was given to.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A signal that ends every [`SseStream`](super::SseStream) configured with
/// it, so that graceful shutdown returns promptly with streams open.
///
/// Cheap to clone; all clones share one signal. Streams end without the close
/// message, so browsers reconnect (to the next server process) and resume.
///
/// ```
/// use htmx_sse::streaming::Shutdown;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shutdown = Shutdown::new();
/// let waiter = shutdown.clone();
/// let task = tokio::spawn(async move { waiter.triggered().await });
/// shutdown.trigger();
/// task.await.unwrap();
/// assert!(shutdown.is_triggered());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal not yet triggered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every stream that has this signal. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether [`trigger`](Self::trigger) was called.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the signal is triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Waits for `signal` (for example `tokio::signal::ctrl_c()`), then
    /// triggers: pass the result to `with_graceful_shutdown`.
    pub async fn after<F: Future>(self, signal: F) {
        signal.await;
        self.trigger();
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}
