//! Toast notifications on channels: [`Notifier`] sends, [`NotificationStream`]
//! shows them.
//!
//! A channel exists while at least one page listens to it: it appears with
//! the first listener and vanishes with the last, and sending to a channel
//! nobody listens to does nothing and says 0 were reached. The channel
//! `"all"` (and [`Notifier::send_all`]) reaches every listener of every
//! channel.
//!
//! ```no_run
//! use axum::{routing::{get, post}, Router};
//! use htmx_sse::auth::Access;
//! use htmx_sse::notify::{Level, NotificationStream, Notifier};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let notifier = Notifier::new();
//! let toasts = NotificationStream::new("admin").render()?; // put it in the page
//! // GET /notifications/{channel}: anyone may listen to any channel here
//! // (see `NotificationRoutes` for an authorizer per channel).
//! let app: Router = notifier
//!     .routes()
//!     .listen(Access::Anyone)
//!     .install(Router::new())
//!     .route("/", get(move || async move { axum::response::Html(toasts.into_string()) }))
//!     .route("/action", post({
//!         let notifier = notifier.clone();
//!         move || async move {
//!             notifier.send("admin", "Action completed!", Level::Success).await.ok();
//!         }
//!     }));
//! # Ok(()) }
//! ```
//!
//! Toasts are DaisyUI alerts (`alert alert-success` inside a `toast`
//! container) and stay readable without DaisyUI: each one reads
//! "Success: Action completed!". The message text is escaped.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Flavor;
use crate::auth::{Access, AuthError, Authorizer, subject_of};
use crate::broadcast::{BroadcastManager, Subscription};
use crate::error::Error;
use crate::fragment::Fragment;
use crate::topics::{Topic, TopicSelector};

/// How urgent a notification is; it picks the toast's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Level {
    /// Blue (the default).
    #[default]
    Info,
    /// Green.
    Success,
    /// Yellow.
    Warning,
    /// Red; announced at once by screen readers (`role="alert"`).
    Error,
}

impl Level {
    /// `info`, `success`, `warning` or `error` (the DaisyUI class suffix).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Success => "success",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    /// The word shown before the message: `Info`, `Success`, …
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Success => "Success",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }

    /// Whether screen readers should interrupt for it.
    #[must_use]
    pub const fn is_urgent(self) -> bool {
        matches!(self, Level::Error | Level::Warning)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "info" => Ok(Level::Info),
            "success" => Ok(Level::Success),
            "warning" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            _ => Err(Error::InvalidTopic(crate::topics::InvalidTopic {
                value: crate::connections::truncate_for_error(s),
                reason: "a level is info, success, warning or error",
            })),
        }
    }
}

/// The name that reaches every channel.
pub const ALL: &str = "all";

#[derive(askama::Template)]
#[template(path = "notify/toast.html")]
struct Toast<'a> {
    level: Level,
    message: &'a str,
}

/// The toast for one notification: escaped message text in a DaisyUI
/// alert that reads well without DaisyUI.
///
/// ```
/// use htmx_sse::notify::{toast, Level};
///
/// let html = toast("<b>saved</b>", Level::Success)?;
/// assert_eq!(
///     html.as_str(),
///     "<div class=\"alert alert-success\" role=\"status\" data-level=\"success\"><strong>Success:</strong> <span>&#60;b&#62;saved&#60;/b&#62;</span></div>"
/// );
/// # Ok::<(), htmx_sse::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Render`] if the template fails (it has no fallible parts).
pub fn toast(message: &str, level: Level) -> Result<Fragment, Error> {
    let html = Fragment::render(&Toast { level, message })?;
    Ok(Fragment::trusted(html.as_str().trim_end()))
}

/// Sends toasts to channels of listening pages.
///
/// Cheap to clone. Built on a [`BroadcastManager`] whose connections each
/// subscribe to one channel (as a topic), so notifications get ids, a short
/// history and resume with `Last-Event-ID` like any broadcast.
#[derive(Debug, Clone)]
pub struct Notifier {
    manager: BroadcastManager,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    /// A notifier with a history of 100 notifications.
    #[must_use]
    pub fn new() -> Self {
        Notifier::with_manager(
            BroadcastManager::builder()
                .history(100)
                .kind("notifications")
                .build(),
        )
    }

    /// A notifier on a manager you configured (heartbeat, shutdown, …).
    #[must_use]
    pub fn with_manager(manager: BroadcastManager) -> Self {
        Notifier { manager }
    }

    /// The manager underneath.
    #[must_use]
    pub fn manager(&self) -> &BroadcastManager {
        &self.manager
    }

    /// Sends `message` as a toast to every page listening to `channel`
    /// (every channel for `"all"`); returns how many were reached. A
    /// channel nobody listens to is not an error: 0 were reached and nothing
    /// is kept.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a channel name that is not a valid topic.
    pub async fn send(&self, channel: &str, message: &str, level: Level) -> Result<usize, Error> {
        if channel == ALL {
            return self.send_all(message, level).await;
        }
        let topic = Topic::new(channel)?;
        // With a shared backend, listeners may be on another instance.
        if !self.manager.is_distributed() && self.manager.subscriber_count(&topic) == 0 {
            return Ok(0);
        }
        let html = toast(message, level)?;
        let sent = self
            .manager
            .message("message", html)
            .metadata(Some(serde_json::json!({ "level": level.as_str() })))
            .topics([topic])
            .send()
            .await?;
        Ok(sent.delivered)
    }

    /// Sends `message` to every listener of every channel.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_all(&self, message: &str, level: Level) -> Result<usize, Error> {
        if !self.manager.is_distributed() && self.manager.connection_count() == 0 {
            return Ok(0);
        }
        let html = toast(message, level)?;
        let sent = self
            .manager
            .message("message", html)
            .metadata(Some(serde_json::json!({ "level": level.as_str() })))
            .send()
            .await?;
        Ok(sent.delivered)
    }

    /// The channels with at least one listener, sorted.
    #[must_use]
    pub fn active_channels(&self) -> Vec<String> {
        self.manager
            .subscribed_topics()
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect()
    }

    /// Listeners of one channel, or of all channels with `None`.
    #[must_use]
    pub fn client_count(&self, channel: Option<&str>) -> usize {
        match channel {
            None => self.manager.connection_count(),
            Some(c) => Topic::new(c).map_or(0, |t| self.manager.subscriber_count(&t)),
        }
    }

    /// The stream route a [`NotificationStream`] listens to, `GET
    /// /notifications/{channel}`, to configure and install: closed (401)
    /// until the application gives an authorizer or opens the channels with
    /// [`Access::Anyone`]. See [`NotificationRoutes`].
    ///
    /// ```
    /// use axum::Router;
    /// use htmx_sse::{auth::Access, notify::Notifier};
    ///
    /// let notifier = Notifier::new();
    /// let app: Router = notifier.routes().listen(Access::Anyone).install(Router::new());
    /// ```
    pub fn routes(&self) -> NotificationRoutes {
        NotificationRoutes::new(self.clone())
    }
}

/// The notification stream route, `GET /notifications/{channel}`, and who
/// may listen to which channel.
///
/// By default ([`Access::Granted`]) a page may listen to a channel when the
/// [`Authorizer`] accepts its credentials and their `subscribe` selectors
/// match the channel as a topic (`"all"` is a channel like any other);
/// 401 without credentials, 403 for another channel, and nobody without an
/// authorizer. `.listen(Access::Anyone)` lets every page listen to every
/// channel.
///
/// ```
/// use axum::Router;
/// use htmx_sse::auth::{Access, AuthFuture, Authorizer, Subject};
/// use htmx_sse::notify::{NotificationRoutes, Notifier};
/// use htmx_sse::topics::TopicSelector;
///
/// /// Each signed-in user hears their own channel, `user/NAME` (the
/// /// cookie is a stand-in for your session check).
/// struct Session;
///
/// impl Authorizer for Session {
///     fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
///         Box::pin(async move {
///             let Some(name) = htmx_sse::auth::cookie(parts, "session_user") else {
///                 return Ok(None);
///             };
///             let own = TopicSelector::new(&format!("user/{name}"))
///                 .map_err(|e| htmx_sse::auth::AuthError::Invalid(e.to_string()))?;
///             Ok(Some(Subject::default().with_subscribe(vec![own])))
///         })
///     }
/// }
///
/// let notifier = Notifier::new();
/// let app: Router = NotificationRoutes::new(notifier.clone())
///     .path("/toasts/{channel}")
///     .authorizer(Session)
///     .install(Router::new());
///
/// // A demo on 127.0.0.1, where every page may hear every channel:
/// let demo: Router = NotificationRoutes::new(notifier).listen(Access::Anyone).install(Router::new());
/// ```
#[derive(Clone)]
#[must_use]
pub struct NotificationRoutes {
    notifier: Notifier,
    path: String,
    authorizer: Option<Arc<dyn Authorizer>>,
    listen: Access,
}

impl fmt::Debug for NotificationRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationRoutes")
            .field("path", &self.path)
            .field("authorizer", &self.authorizer.is_some())
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl NotificationRoutes {
    /// The route for `notifier` at `/notifications/{channel}`, closed until
    /// opened ([`Access::Granted`] with no authorizer).
    pub fn new(notifier: Notifier) -> Self {
        NotificationRoutes {
            notifier,
            path: "/notifications/{channel}".to_owned(),
            authorizer: None,
            listen: Access::Granted,
        }
    }

    /// The route's path, which must hold `{channel}`.
    ///
    /// # Panics
    ///
    /// When `path` does not start with `/` or lacks `{channel}`.
    #[track_caller]
    pub fn path(mut self, path: &str) -> Self {
        assert!(
            path.starts_with('/') && path.contains("{channel}"),
            "notification route must start with '/' and hold {{channel}}, got {path:?}"
        );
        path.clone_into(&mut self.path);
        self
    }

    /// Checks every request with `authorizer`: see the type's docs.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Who may listen to which channel (default [`Access::Granted`]).
    pub fn listen(mut self, access: Access) -> Self {
        self.listen = access;
        self
    }

    /// Adds the route to `router`.
    pub fn install<S>(self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let path = self.path.clone();
        router.merge(
            Router::new()
                .route(&path, get(listen))
                .with_state(Arc::new(self)),
        )
    }

    async fn listen_to(&self, channel: &str, parts: &axum::http::request::Parts) -> Response {
        let topic = match Topic::new(channel) {
            Ok(t) => t,
            Err(e) => {
                return crate::routes::error(axum::http::StatusCode::BAD_REQUEST, e.to_string());
            }
        };
        let subject = match subject_of(self.authorizer.as_deref(), parts).await {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
        let granted = self.listen.check(subject.as_ref(), |s| {
            if s.subscribe.iter().any(|sel| sel.matches(&topic)) {
                Ok(())
            } else {
                Err(AuthError::Forbidden(format!(
                    "may not listen to channel {channel:?}"
                )))
            }
        });
        if let Err(e) = granted {
            return e.into_response();
        }
        let mut sub = Subscription::new().topics(vec![TopicSelector::exact(&topic)]);
        if let Some(user) = subject.and_then(|s| s.user) {
            sub = sub.user(user);
        }
        let last = crate::broadcast::LastEventId::from_parts(parts);
        self.notifier
            .manager
            .subscribe(
                sub,
                last.as_ref().map(crate::broadcast::LastEventId::as_str),
                serde_json::json!({ "channel": channel }),
            )
            .into_response()
    }
}

/// `GET {path}`: a channel's stream, for those who may listen to it.
async fn listen(
    axum::extract::State(routes): axum::extract::State<Arc<NotificationRoutes>>,
    axum::extract::Path(channel): axum::extract::Path<String>,
    req: Request,
) -> Response {
    routes.listen_to(&channel, &req.into_parts().0).await
}

#[derive(askama::Template)]
#[template(path = "notify/stream.html")]
struct StreamTemplate<'a> {
    id: &'a str,
    url: &'a str,
    position: &'a str,
    dismiss_ms: u64,
    htmx4: bool,
}

/// The toast container a page shows notifications in: connects to a
/// channel, appends each toast, removes it after a delay.
///
/// ```
/// use htmx_sse::notify::NotificationStream;
///
/// let html = NotificationStream::new("admin")
///     .position("toast-start toast-bottom")
///     .dismiss_ms(5000)
///     .render()?;
/// assert!(html.as_str().contains(r#"sse-connect="/notifications/admin""#));
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NotificationStream {
    channel: String,
    url: Option<String>,
    position: String,
    dismiss_ms: u64,
    flavor: Flavor,
}

impl NotificationStream {
    /// A container for `channel`, at the default URL
    /// `/notifications/{channel}`, top right, toasts gone after 3 s, htmx 2
    /// markup.
    pub fn new(channel: &str) -> Self {
        NotificationStream {
            channel: channel.to_owned(),
            url: None,
            position: "toast-end toast-top".to_owned(),
            dismiss_ms: 3000,
            flavor: Flavor::Htmx2,
        }
    }

    /// An explicit stream URL.
    pub fn url(mut self, url: &str) -> Self {
        self.url = Some(url.to_owned());
        self
    }

    /// DaisyUI position classes (default `toast-end toast-top`).
    pub fn position(mut self, classes: &str) -> Self {
        classes.clone_into(&mut self.position);
        self
    }

    /// How long a toast stays, in milliseconds (0: until the page goes).
    pub fn dismiss_ms(mut self, ms: u64) -> Self {
        self.dismiss_ms = ms;
        self
    }

    /// htmx 2 (`hx-ext="sse"`, the default) or htmx 4 (`hx-sse:connect`)
    /// markup.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// The container and its small dismiss script. Every value is escaped
    /// for where it goes (attributes, script).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] when the channel is not a valid topic.
    pub fn render(&self) -> Result<Fragment, Error> {
        let topic = Topic::new(&self.channel)?;
        let url = self.url.clone().unwrap_or_else(|| {
            format!(
                "/notifications/{}",
                crate::routes::percent_encode(topic.as_str())
            )
        });
        let id = format!(
            "htmx-sse-toasts-{}",
            topic
                .as_str()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
        );
        Fragment::render(&StreamTemplate {
            id: &id,
            url: &url,
            position: &self.position,
            dismiss_ms: self.dismiss_ms,
            htmx4: self.flavor == Flavor::Htmx4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toast_escapes_and_reads_without_css() {
        let t = toast("<script>alert(1)</script>", Level::Error).unwrap();
        assert!(!t.as_str().contains("<script>"));
        assert!(t.as_str().contains("role=\"alert\""));
        assert!(t.as_str().contains("<strong>Error:</strong>"));
    }

    #[test]
    fn stream_component_escapes_every_value() {
        let html = NotificationStream::new("ops/a\"b")
            .position("x\" onmouseover=\"alert(1)")
            .render()
            .unwrap();
        let s = html.as_str();
        assert!(!s.contains("onmouseover=\"alert"), "{s}");
        assert!(s.contains("/notifications/ops%2Fa%22b"), "{s}");
        let bad = NotificationStream::new("a b").render().unwrap_err();
        assert!(matches!(bad, Error::InvalidTopic(_)));
        let h4 = NotificationStream::new("x")
            .flavor(Flavor::Htmx4)
            .render()
            .unwrap();
        assert!(h4.as_str().contains("hx-sse:connect=\"/notifications/x\""));
    }

    #[test]
    fn the_dismiss_script_is_javascript_not_html_entities() {
        // The id reaches the script JSON-encoded, not HTML-escaped (which
        // was a syntax error that kept toasts from ever leaving).
        let html = NotificationStream::new("ops").render().unwrap();
        let s = html.as_str();
        assert!(s.contains("getElementById(\"htmx-sse-toasts-ops\")"), "{s}");
        assert!(!s.contains("&#34;"), "{s}");
    }
}
