//! `Shutdown`: one signal that ends every stream it was given to.

use std::future::{Future, IntoFuture};
use std::time::Duration;

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

    /// Waits for the signals a server is stopped with, then triggers:
    /// SIGINT (Ctrl-C) or SIGTERM (what containers, systemd and Kubernetes
    /// send) on Unix, Ctrl-C elsewhere. Pass the result to
    /// `with_graceful_shutdown`: streams end cleanly (their chunked body
    /// finished, no close event, so browsers reconnect to the next server
    /// process and resume) and the server returns.
    ///
    /// ```no_run
    /// use htmx_sse::streaming::Shutdown;
    ///
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// let shutdown = Shutdown::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app.into_make_service())
    ///     .with_graceful_shutdown(shutdown.after_signal())
    ///     .await
    /// # }
    /// ```
    ///
    /// When the SIGTERM handler cannot be installed (it always can on
    /// Linux), a warning is logged and Ctrl-C alone is waited for.
    pub async fn after_signal(self) {
        stop_signal().await;
        tracing::info!("stop signal received: ending streams");
        self.trigger();
    }

    /// Runs `server` (an `axum::serve(…).with_graceful_shutdown(…)`) and,
    /// once this signal is triggered, gives its connections `grace` to
    /// end; then returns anyway. The connections left (axum runs each on a
    /// task of its own) end when the runtime does, as `main` returns.
    ///
    /// A graceful shutdown waits for every connection, and the connection
    /// of a client that stopped reading never ends: its socket is full, so
    /// the end of its stream cannot be written. Without a bound, one such
    /// client keeps the process alive until it is killed. Streams of this
    /// crate end at once on the signal, so `grace` is only for the
    /// application's other requests (a few seconds is plenty).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use htmx_sse::streaming::Shutdown;
    ///
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// let shutdown = Shutdown::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().after_signal());
    /// shutdown.drain_within(server, Duration::from_secs(5)).await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The server's own error, if it fails before the grace ends.
    pub async fn drain_within<F>(&self, server: F, grace: Duration) -> std::io::Result<()>
    where
        F: IntoFuture<Output = std::io::Result<()>>,
    {
        let deadline = async {
            self.triggered().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server.into_future() => result,
            () = deadline => {
                tracing::warn!(
                    ?grace,
                    "connections still open after the stop signal and its grace: stopping anyway"
                );
                Ok(())
            }
        }
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// SIGINT or SIGTERM (Unix), Ctrl-C elsewhere.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
