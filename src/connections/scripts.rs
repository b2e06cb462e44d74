//! Browser-side helpers: the element that opens a page's SSE connection, and
//! the scripts that keep that connection healthy, for htmx 2 (with
//! htmx-ext-sse 2.2) and htmx 4 (with its `hx-sse` extension).
//!
//! | helper | htmx 2 + htmx-ext-sse | htmx 4 |
//! | --- | --- | --- |
//! | [`SseElement`] | `hx-ext="sse" sse-connect sse-swap sse-close` | `hx-sse:connect hx-sse:close`, plus a small script that swaps the named events listed (htmx 4 swaps only unnamed ones) and fires `sse:NAME` triggers |
//! | [`SseListener`] (inside an `SseElement`) | `sse-swap="a, b"` | `data-sse-swap="a, b"`, swapped by the `SseElement`'s script |
//! | [`reconnect_script`] | takes over reconnection: backoff, retry limit, status hook, last event id carried in the URL | sets `htmx.config.sse` (delays, retry limit, jitter) and maps `htmx:sse:*` events onto the status hook |
//! | [`cleanup_on_unload`] | closes every source on `pagehide`, reopens it on `pageshow` from the back/forward cache, resuming | ends the streams htmx 4 does not pause itself (`pauseOnBackground: false`) |
//! | [`reset_script`] | dispatches `htmx-sse:reset` when the server sends its `reset` event (the page cannot be caught up: a restart, a gap in the history), optionally reloads the page | the same |
//! | [`shared_connection_script`] | one connection per browser for all tabs, relayed over a `BroadcastChannel` | not applicable: htmx 4 streams through `fetch` (see its docs) |
//! | [`connection_monitor_script`] | polls the stats route into an element | the same |
//!
//! ```
//! use std::time::Duration;
//! use htmx_sse::Flavor;
//! use htmx_sse::connections::scripts::{self, ReconnectOptions, SseElement};
//!
//! let head = [
//!     scripts::reconnect_script(ReconnectOptions::new().status_element("sse-status")),
//!     scripts::cleanup_on_unload(),
//!     scripts::connection_monitor_script("/sse/status", Duration::from_secs(5), "stats"),
//! ];
//! let body = SseElement::new("/sse", Flavor::Htmx2)
//!     .swap_event("chat")
//!     .hx_swap(htmx_sse::streaming::Swap::BeforeEnd)
//!     .render()?;
//! assert_eq!(
//!     body.as_str(),
//!     r#"<div hx-ext="sse" sse-connect="/sse" sse-swap="chat" sse-close="close" hx-swap="beforeend"></div>"#
//! );
//! assert!(head.iter().all(|s| s.as_str().starts_with("<script>")));
//! # Ok::<(), htmx_sse::Error>(())
//! ```
//!
//! # Where the scripts go
//!
//! In `<head>`, after the `<script>` tags of htmx and its SSE extension:
//! they wrap `htmx.createEventSource` (htmx 2) and set `htmx.config.sse`
//! (htmx 4), which must happen before htmx processes the page. Each helper
//! is one self-contained `<script>`; the ones that need the shared runtime
//! (`window.htmxSse`) each carry it, and the first one to run defines it, so
//! any combination, in any order, works. The output depends only on the
//! options: a Content-Security-Policy can allow each script by its hash.
//!
//! With more than one of them, use [`Helpers`]: the runtime (about 23 KB)
//! once, inline or loaded with `<script src integrity>` from the broadcast
//! routes' `GET {prefix}/htmx-sse.js` (cacheable, see
//! [`runtime`](super::runtime)), and the helpers' calls in one small
//! script. Four helpers weigh 94 KB of HTML as single scripts, 24 KB with
//! `Helpers` inline, and 0.5 KB with the runtime served.
//!
//! # Values are data, never code
//!
//! Every configurable value (URLs, element ids, channel names) reaches the
//! script through askama's `json` filter, which writes `<`, `>`, `&` and `'`
//! as `\u00XX` escapes: a value such as `</script><script>…` stays inside
//! its JavaScript string and cannot end the script element. The scripts
//! write only text into the page (`textContent` and attributes), never
//! HTML.
//!
//! # The status hook
//!
//! [`reconnect_script`] (and every other helper that uses the runtime)
//! dispatches `htmx-sse:status` on `document` whenever a connection changes
//! state, with `detail = {state, attempt, url}` (and `delay` in ms while
//! reconnecting, `reason` when known). `state` is one of `connecting`,
//! `open`, `reconnecting`, `failed`, `closed`. With a status element, its
//! `textContent` becomes the state and its `data-state` and `data-attempt`
//! attributes follow, for CSS such as `[data-state=failed] { color: red }`.
//! For debugging, `window.htmxSse.connections()` lists the htmx 2
//! connections the runtime holds: `{url, role, state, attempt, lastEventId,
//! listeners, open}` each, `role` being `local`, `leader` or `follower`.
//! Every helper that uses the runtime also dispatches `htmx-sse:reset` on
//! the server's reset event (see [`reset_script`]); only [`reset_script`]
//! can make it reload the page.

use std::time::Duration;

use askama::Template;
use serde::Serialize;

use super::element::render;
pub use super::element::{
    AttributeName, InvalidAttributeName, SseElement, SseListener, connection_id_slot,
};
use crate::fragment::Fragment;

/// The longest delay a browser timer can wait (`setTimeout` takes a signed
/// 32-bit count of milliseconds and fires at once beyond it).
const MAX_TIMER_MS: u64 = i32::MAX as u64;

/// The shortest interval the connection monitor polls at.
const MIN_POLL_MS: u64 = 100;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).map_or(MAX_TIMER_MS, |ms| ms.min(MAX_TIMER_MS))
}

// ---------------------------------------------------------------------------
// Reconnection

/// Options for [`reconnect_script`].
///
/// Defaults: first retry after 1 s, doubling up to 30 s, ±20 % jitter, at
/// most 10 retries in a row, no status element, no debug logging.
///
/// ```
/// use std::time::Duration;
/// use htmx_sse::connections::scripts::ReconnectOptions;
///
/// let options = ReconnectOptions::new()
///     .base_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(10))
///     .max_retries(5)
///     .status_element("connection-status");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ReconnectOptions {
    base_delay: Duration,
    max_delay: Duration,
    max_retries: Option<u32>,
    jitter: f64,
    status_element: Option<String>,
    resume_in_url: bool,
    debug: bool,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: Some(10),
            jitter: 0.2,
            status_element: None,
            resume_in_url: false,
            debug: false,
        }
    }
}

impl ReconnectOptions {
    /// The defaults (see the type).
    ///
    /// ```
    /// use htmx_sse::connections::scripts::ReconnectOptions;
    ///
    /// assert_eq!(ReconnectOptions::new(), ReconnectOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay before the first retry; each further retry in a row waits
    /// twice as long, up to [`max_delay`](Self::max_delay). Delays beyond
    /// what a browser timer can wait (about 24.8 days) are cut to it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().base_delay(Duration::from_millis(250));
    /// ```
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest delay between two retries.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().max_delay(Duration::from_secs(60));
    /// ```
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Gives up after `retries` failed retries in a row (a connection that
    /// opens starts the count again): the state becomes `failed` and no
    /// further request is made until the page is reloaded.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().max_retries(3);
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// Retries forever, as the browser and htmx do by themselves.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().unlimited_retries();
    /// ```
    pub fn unlimited_retries(mut self) -> Self {
        self.max_retries = None;
        self
    }

    /// Spreads each delay by up to ± `fraction` of it at random, so that
    /// the pages of a restarted server do not all come back at once.
    /// Clamped to `0.0..=1.0` (NaN counts as 0).
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let exact = ReconnectOptions::new().jitter(0.0);
    /// # let _ = exact;
    /// ```
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The id of an element that shows the state: its `textContent` becomes
    /// the state's name, its `data-state` and `data-attempt` attributes
    /// follow. Any text is fine: it is looked up with
    /// `document.getElementById`, never parsed.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().status_element("sse-status");
    /// ```
    pub fn status_element(mut self, id: impl Into<String>) -> Self {
        self.status_element = Some(id.into());
        self
    }

    /// Carries the last event id of a new source in its URL
    /// (`?lastEventId=…`) instead of a short-lived cookie (htmx 2; htmx 4
    /// sends the `Last-Event-ID` header itself). Off by default: access logs
    /// and proxies keep URLs, and a whole event id lets whoever holds it
    /// resume that page's connection as its user. Turn it on only where
    /// the stream is served under a path the page cannot set cookies for,
    /// and keep `lastEventId` out of the logs. (A stream on another origin
    /// always gets the id in its URL: the page cannot set that origin's
    /// cookies.)
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().resume_in_url(true);
    /// ```
    pub fn resume_in_url(mut self, on: bool) -> Self {
        self.resume_in_url = on;
        self
    }

    /// Logs what the runtime does with `console.debug`.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ReconnectOptions;
    /// let _ = ReconnectOptions::new().debug(true);
    /// ```
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReconnectConfig {
    base_delay: u64,
    max_delay: u64,
    max_retries: Option<u32>,
    jitter: f64,
    status_element: Option<String>,
    resume_in_url: bool,
    debug: bool,
}

#[derive(Template)]
#[template(path = "htmx_sse/reconnect.html")]
struct ReconnectTemplate {
    config: ReconnectConfig,
}

/// A `<script>` that reconnects with backoff and a retry limit, reports
/// the connection's state, and never loses the last event id.
///
/// **htmx 2.** htmx-ext-sse opens sources through `htmx.createEventSource`;
/// the script replaces it and hands the extension a stand-in that owns the
/// real `EventSource`. When that source fails, the stand-in closes it
/// (stopping the browser's own fixed 3 s retries), waits
/// `base_delay · 2^(n-1)` (capped, with jitter) and opens a new one that
/// carries the last id seen in a cookie, `htmx-sse-resume-HASH` (one per
/// stream), scoped to the
/// stream's path, lasting 30 s and deleted once the source opens (or, with
/// [`ReconnectOptions::resume_in_url`], in its URL as `lastEventId=`),
/// which [`setup_broadcast_routes`](crate::setup_broadcast_routes) reads as
/// `Last-Event-ID`: nothing missed, nothing twice, even after an error
/// status, where the extension on its own would open a fresh source with
/// no id at all. While retrying, the stand-in reports errors as
/// `CONNECTING` (`htmx:sseError` still fires), so the extension never
/// re-creates the source itself; after `max_retries` failures in a row the
/// state is `failed`, the stand-in becomes `CLOSED` and nothing more is
/// requested. Ids are
/// tracked for every event type an element listens to, and for `message`,
/// `connection` and `reset`. The server's `retry:` field is not used: the
/// delays are these.
///
/// **htmx 4.** `hx-sse` reconnects by itself and keeps `Last-Event-ID`;
/// the script sets `htmx.config.sse` (`reconnectDelay`, `reconnectMaxDelay`,
/// `reconnectMaxAttempts`, `reconnectJitter`; an element's `hx-config`
/// still wins) and maps `htmx:sse:before:connection`,
/// `htmx:sse:after:connection` and `htmx:sse:close` onto the status hook.
/// htmx 4 does not retry when the very first request fails (it is an
/// ordinary htmx request then), so no state is reported for it.
///
/// See the [module docs](self) for the status hook.
///
/// ```
/// use std::time::Duration;
/// use htmx_sse::connections::scripts::{reconnect_script, ReconnectOptions};
///
/// let script = reconnect_script(
///     ReconnectOptions::new()
///         .max_retries(3)
///         .base_delay(Duration::from_millis(500))
///         .status_element("status"),
/// );
/// assert!(script.as_str().ends_with(
///     "window.htmxSse.reconnect({\"baseDelay\":500,\"maxDelay\":30000,\"maxRetries\":3,\
///      \"jitter\":0.2,\"statusElement\":\"status\",\"resumeInUrl\":false,\"debug\":false});\n</script>"
/// ));
/// ```
pub fn reconnect_script(options: ReconnectOptions) -> Fragment {
    render(&ReconnectTemplate {
        config: reconnect_config(options),
    })
}

fn reconnect_config(options: ReconnectOptions) -> ReconnectConfig {
    ReconnectConfig {
        base_delay: millis(options.base_delay),
        max_delay: millis(options.max_delay),
        max_retries: options.max_retries,
        jitter: options.jitter,
        status_element: options.status_element,
        resume_in_url: options.resume_in_url,
        debug: options.debug,
    }
}

// ---------------------------------------------------------------------------
// Unload

#[derive(Template)]
#[template(path = "htmx_sse/cleanup.html")]
struct CleanupTemplate;

/// A `<script>` that closes the page's connections on `pagehide` and
/// reopens them when the page comes back from the back/forward cache.
///
/// Left alone, Chromium keeps an htmx 2 page's `EventSource` open while the
/// page sits in the back/forward cache: a page nobody sees holds one of the
/// browser's six connections to the server. `beforeunload` and `unload`
/// handlers would keep the page out of that cache, so this uses `pagehide`
/// and `pageshow`.
///
/// **htmx 2.** Every source opened through `htmx.createEventSource` is
/// closed on `pagehide` (the server sees the connection end). On `pageshow`
/// with `persisted`, the same stand-in objects the extension holds get new
/// sources, with the last event id in the URL: the page catches up, and
/// nothing is re-processed, so no second source leaks
/// (htmx-extensions#190). (The helpers avoid re-processing; they do not
/// repair it: an `sse-connect` element whose attributes the page changes
/// is still re-initialised by htmx without closing its source.)
///
/// **htmx 4.** `hx-sse:connect` pauses its stream by itself when the page
/// is hidden, which includes leaving it for another page
/// (`pauseOnBackground`, on by default), and resumes with `Last-Event-ID`.
/// The script ends, on `pagehide`, the streams with `pauseOnBackground`
/// turned off; `hx-sse` reconnects them with `Last-Event-ID` once the page
/// is shown again.
///
/// ```
/// let script = htmx_sse::connections::scripts::cleanup_on_unload();
/// assert!(script.as_str().starts_with("<script>"));
/// assert!(script.as_str().ends_with("window.htmxSse.cleanupOnUnload();\n</script>"));
/// ```
#[must_use]
pub fn cleanup_on_unload() -> Fragment {
    render(&CleanupTemplate)
}

// ---------------------------------------------------------------------------
// The reset event

/// Options for [`reset_script`].
///
/// The default only dispatches `htmx-sse:reset`: regions reload themselves
/// with `hx-trigger="htmx-sse:reset from:document"`.
///
/// ```
/// use htmx_sse::connections::scripts::ResetOptions;
///
/// let options = ResetOptions::new().reload(true);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct ResetOptions {
    reload: bool,
    debug: bool,
}

impl ResetOptions {
    /// The defaults: no reload, no debug logging.
    ///
    /// ```
    /// use htmx_sse::connections::scripts::ResetOptions;
    ///
    /// assert_eq!(ResetOptions::new(), ResetOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Reloads the whole page (`location.reload()`) on the reset event,
    /// unless an `htmx-sse:reset` listener calls `preventDefault()`. For
    /// pages whose state is not in a few regions that can fetch it again.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ResetOptions;
    /// let _ = ResetOptions::new().reload(true);
    /// ```
    pub fn reload(mut self, on: bool) -> Self {
        self.reload = on;
        self
    }

    /// Logs each reset event with `console.debug`.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::ResetOptions;
    /// let _ = ResetOptions::new().debug(true);
    /// ```
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

#[derive(Serialize)]
struct ResetConfig {
    reload: bool,
    debug: bool,
}

#[derive(Template)]
#[template(path = "htmx_sse/reset.html")]
struct ResetTemplate {
    config: ResetConfig,
}

/// A `<script>` that tells the page when the server could not catch it up.
///
/// A [`BroadcastManager`](crate::BroadcastManager) answers a reconnecting
/// page with the [`reset`](crate::broadcast::RESET_EVENT) event, data
/// `{"reason": …}`, when the messages it missed are gone: the server
/// restarted (`restarted`, an in-memory manager's history went with the
/// process), the history no longer reaches back (`history-gap`), or the id
/// is not one of the crate's (`unrecognized`). What the page shows may then
/// be stale, and it must fetch it again.
///
/// The script dispatches `htmx-sse:reset` on `document`, once per reset
/// event, with `detail = {reason, url}` (`reason` is `null` when the data
/// is not the crate's JSON), the same for both flavours. A region that can
/// fetch its state reloads itself with
/// `hx-get="/items" hx-trigger="load, htmx-sse:reset from:document"`. With
/// [`ResetOptions::reload`] the whole page reloads instead, unless a
/// listener calls `preventDefault()` on the event.
///
/// **htmx 2.** The event reaches the script through the runtime's
/// `htmx.createEventSource` (see [`reconnect_script`]; without it, the
/// runtime reconnects with its defaults: forever, 1 s doubling up to 30 s,
/// the last event id in the URL). htmx-ext-sse alone offers
/// `hx-trigger="sse:reset"`, but only on elements inside the `sse-connect`
/// element.
///
/// **htmx 4.** `hx-sse` fires named events as DOM events on the connecting
/// element; the script listens to `htmx:sse:after:message` for `reset`.
///
/// ```
/// use htmx_sse::connections::scripts::{reset_script, ResetOptions};
///
/// let script = reset_script(ResetOptions::new());
/// assert!(script.as_str().ends_with(
///     "window.htmxSse.onReset({\"reload\":false,\"debug\":false});\n</script>"
/// ));
/// ```
pub fn reset_script(options: ResetOptions) -> Fragment {
    render(&ResetTemplate {
        config: ResetConfig {
            reload: options.reload,
            debug: options.debug,
        },
    })
}

// ---------------------------------------------------------------------------
// The connection monitor

#[derive(Serialize)]
struct MonitorConfig<'a> {
    url: &'a str,
    interval: u64,
    element: &'a str,
}

#[derive(Template)]
#[template(path = "htmx_sse/monitor.html")]
struct MonitorTemplate<'a> {
    config: MonitorConfig<'a>,
}

/// A `<script>` that polls the stats route (`GET {prefix}/status` of
/// [`setup_broadcast_routes`](crate::setup_broadcast_routes)) every
/// `interval` and shows what it says in the element with id `element_id`.
///
/// The element's `textContent` becomes `"T connected, A active, M
/// messages"`, its `data-state` `ok`, `error` or `paused`, and
/// `data-total`, `data-active`, `data-messages` and `data-last-id` hold the
/// numbers; `htmx-sse:stats` is dispatched on `document` with the JSON as
/// `detail`, to render it differently. At most one request is in flight,
/// none lasts longer than `interval`, and polling stops while the page is
/// hidden. `interval` is at least 100 ms (shorter ones are raised to it).
/// The same for htmx 2 and htmx 4: it does not use htmx.
///
/// ```
/// use std::time::Duration;
///
/// let script = htmx_sse::connections::scripts::connection_monitor_script(
///     "/sse/status",
///     Duration::from_secs(5),
///     "stats",
/// );
/// assert!(script.as_str().ends_with(
///     "})({\"url\":\"/sse/status\",\"interval\":5000,\"element\":\"stats\"});\n</script>"
/// ));
/// ```
#[must_use]
pub fn connection_monitor_script(
    stats_url: &str,
    interval: Duration,
    element_id: &str,
) -> Fragment {
    render(&MonitorTemplate {
        config: MonitorConfig {
            url: stats_url,
            interval: millis(interval).max(MIN_POLL_MS),
            element: element_id,
        },
    })
}

// ---------------------------------------------------------------------------
// One connection for every tab

/// Options for [`shared_connection_script`].
///
/// ```
/// use htmx_sse::connections::scripts::SharedOptions;
///
/// let options = SharedOptions::new().channel("my-app-sse").debug(true);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct SharedOptions {
    channel: String,
    debug: bool,
}

impl Default for SharedOptions {
    fn default() -> Self {
        SharedOptions {
            channel: "htmx-sse".to_owned(),
            debug: false,
        }
    }
}

impl SharedOptions {
    /// The defaults: channel `htmx-sse`, no debug logging.
    ///
    /// ```
    /// use htmx_sse::connections::scripts::SharedOptions;
    ///
    /// assert_eq!(SharedOptions::new(), SharedOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The `BroadcastChannel` (and Web Lock) name the tabs meet on; give
    /// two applications on one origin different names.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::SharedOptions;
    /// let _ = SharedOptions::new().channel("admin");
    /// ```
    pub fn channel(mut self, name: impl Into<String>) -> Self {
        self.channel = name.into();
        self
    }

    /// Logs leadership changes and relayed traffic with `console.debug`.
    ///
    /// ```
    /// # use htmx_sse::connections::scripts::SharedOptions;
    /// let _ = SharedOptions::new().debug(true);
    /// ```
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

#[derive(Serialize)]
struct SharedConfig {
    channel: String,
    debug: bool,
}

#[derive(Template)]
#[template(path = "htmx_sse/shared.html")]
struct SharedTemplate {
    config: SharedConfig,
}

/// A `<script>` that gives all tabs of a browser one connection per URL,
/// so that a seventh tab does not hang on HTTP/1.1's six connections per
/// host.
///
/// **htmx 2.** One tab, the leader, holds the real `EventSource` (with the
/// reconnection of [`reconnect_script`]) and relays every event (type,
/// data, id) over a `BroadcastChannel`; in the other tabs
/// `htmx.createEventSource` returns a stand-in fed from the channel, which
/// htmx-ext-sse cannot tell from an `EventSource`. The leader is elected
/// with a Web Lock (`navigator.locks`), or, where Web Locks are missing,
/// over the channel (beacons every second; a leader silent for three is
/// replaced). When the leader tab closes or is left, another tab takes the
/// lock and opens the source, resuming from the last event id it saw;
/// events relayed twice around a hand-over are dropped by id. A tab joining
/// later gets the `connection` event again; a tab back from the
/// back/forward cache gets what it missed from the leader's last 128
/// events, or the `reset` event when that is not enough. The unload
/// handling of [`cleanup_on_unload`] is always on with this script (a
/// leader frozen in the cache would starve the other tabs), and the channel
/// is closed while a page is in the cache (Chromium evicts a cached page
/// that a `BroadcastChannel` message reaches).
///
/// **Limitation:** the server sees one connection, with one connection id,
/// for every tab: an exclusion (`exclude`) or a `send_to` by connection id
/// reaches, or spares, all tabs of that browser alike.
///
/// **htmx 4.** Not applicable: htmx 4 streams through `fetch`, not
/// `htmx.createEventSource`, and the script does nothing there. Serve
/// htmx 4 pages over HTTP/2 (or HTTP/3), where one TCP connection carries
/// about a hundred streams and the six-connection limit does not apply.
///
/// ```
/// use htmx_sse::connections::scripts::{shared_connection_script, SharedOptions};
///
/// let script = shared_connection_script(SharedOptions::new());
/// assert!(script.as_str().ends_with(
///     "window.htmxSse.share({\"channel\":\"htmx-sse\",\"debug\":false});\n</script>"
/// ));
/// ```
pub fn shared_connection_script(options: SharedOptions) -> Fragment {
    render(&SharedTemplate {
        config: SharedConfig {
            channel: options.channel,
            debug: options.debug,
        },
    })
}

// ---------------------------------------------------------------------------
// Several helpers, one runtime

/// Several helpers for one page with the runtime once: the helpers' calls
/// in one `<script>`, after the runtime inline (the default) or after a
/// `<script src=… integrity=…>` that loads it from the broadcast routes'
/// `GET {prefix}/htmx-sse.js` ([`runtime_src`](Self::runtime_src)), which
/// the browser fetches once for every page and keeps.
///
/// Each helper function ([`reconnect_script`], [`cleanup_on_unload`],
/// [`reset_script`], [`shared_connection_script`]) carries the whole
/// runtime (about 23 KB), so that one alone works anywhere; with three of
/// them a page carries it three times. Put the result in `<head>` after
/// htmx and its SSE extension, as the single helpers.
///
/// ```
/// use htmx_sse::connections::scripts::{Helpers, ReconnectOptions, ResetOptions};
///
/// let head = Helpers::new()
///     .reconnect(ReconnectOptions::new().status_element("status"))
///     .cleanup_on_unload()
///     .reset(ResetOptions::new())
///     .runtime_src("/sse/htmx-sse.js")
///     .render();
/// assert!(head.as_str().starts_with(r#"<script src="/sse/htmx-sse.js?v="#));
/// assert!(head.as_str().len() < 1024, "the runtime is not inline");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Helpers {
    src: Option<String>,
    calls: String,
}

impl Helpers {
    /// No helpers yet, the runtime inline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the runtime from `url` (the broadcast routes serve it at
    /// `{prefix}/htmx-sse.js`), with `?v=` the runtime's
    /// [`version`](crate::connections::runtime::version) (so browsers may
    /// keep it for a year and fetch it again when it changes) and
    /// `integrity` its hash (so the browser runs exactly this file, even
    /// from a CDN). Without it the runtime is inline.
    pub fn runtime_src(mut self, url: &str) -> Self {
        self.src = Some(url.to_owned());
        self
    }

    fn call(mut self, function: &str, config: Option<&impl Serialize>) -> Self {
        let args = config.map_or_else(String::new, |c| {
            let json = serde_json::to_string(c)
                .unwrap_or_else(|e| unreachable!("helper configs serialise: {e}"));
            crate::event::html_safe_json(&json)
        });
        self.calls
            .push_str(&format!("window.htmxSse.{function}({args});\n"));
        self
    }

    /// What [`reconnect_script`] does.
    pub fn reconnect(self, options: ReconnectOptions) -> Self {
        self.call("reconnect", Some(&reconnect_config(options)))
    }

    /// What [`cleanup_on_unload`] does.
    pub fn cleanup_on_unload(self) -> Self {
        self.call("cleanupOnUnload", None::<&()>)
    }

    /// What [`reset_script`] does.
    pub fn reset(self, options: ResetOptions) -> Self {
        self.call(
            "onReset",
            Some(&ResetConfig {
                reload: options.reload,
                debug: options.debug,
            }),
        )
    }

    /// What [`shared_connection_script`] does.
    pub fn shared_connection(self, options: SharedOptions) -> Self {
        self.call(
            "share",
            Some(&SharedConfig {
                channel: options.channel,
                debug: options.debug,
            }),
        )
    }

    /// The `<script>` elements.
    #[must_use]
    pub fn render(self) -> Fragment {
        use crate::connections::runtime::{RUNTIME_JS, integrity, version};
        let html = match &self.src {
            Some(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!(
                    "<script src=\"{}{sep}v={}\" integrity=\"{}\" crossorigin=\"anonymous\"></script>\n<script>\n{}</script>",
                    crate::fragment::escape_html(url),
                    version(),
                    integrity(),
                    self.calls
                )
            }
            None => format!("<script>\n{RUNTIME_JS}{}</script>", self.calls),
        };
        Fragment::trusted(html)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flavor;
    use crate::error::{Error, Field};
    use crate::event::EventName;
    use crate::streaming::Swap;

    const HOSTILE: &str = "</script><script>window.__pwned=1</script>";
    const HOSTILE_JSON: &str =
        r#""\u003c/script\u003e\u003cscript\u003ewindow.__pwned=1\u003c/script\u003e""#;
    const RUNTIME: &str = include_str!("../../templates/htmx_sse/runtime.js");
    const MONITOR: &str = include_str!("../../templates/htmx_sse/monitor.js");
    const SWAP4: &str = include_str!("../../templates/htmx_sse/htmx4_swap.js");

    /// The text between `<script>` and `</script>`, checking there is
    /// exactly one script element.
    fn script_body(f: &Fragment) -> &str {
        let s = f.as_str();
        let body = s
            .strip_prefix("<script>")
            .and_then(|s| s.strip_suffix("</script>"))
            .unwrap_or_else(|| panic!("not one script element: {s}"));
        let lower = body.to_ascii_lowercase();
        assert!(!lower.contains("</script"), "a script end tag inside");
        assert!(!lower.contains("<script"), "a script start tag inside");
        assert!(!lower.contains("<!--"), "a comment opener inside");
        body
    }

    #[test]
    fn helpers_inline_are_the_single_helpers_and_served_carry_no_runtime() {
        let reconnect = || ReconnectOptions::new().max_retries(3).status_element("st");
        let cases = [
            (
                Helpers::new().reconnect(reconnect()),
                reconnect_script(reconnect()),
            ),
            (Helpers::new().cleanup_on_unload(), cleanup_on_unload()),
            (
                Helpers::new().reset(ResetOptions::new().reload(true)),
                reset_script(ResetOptions::new().reload(true)),
            ),
            (
                Helpers::new().shared_connection(SharedOptions::new()),
                shared_connection_script(SharedOptions::new()),
            ),
        ];
        for (helpers, single) in cases {
            assert_eq!(helpers.render().as_str(), single.as_str());
        }

        let all = || {
            Helpers::new()
                .reconnect(reconnect())
                .cleanup_on_unload()
                .reset(ResetOptions::new())
                .shared_connection(SharedOptions::new())
        };
        let inline = all().render();
        assert_eq!(
            inline
                .as_str()
                .matches("if (window.htmxSse) return;")
                .count(),
            1
        );
        let served = all().runtime_src("/app/sse/htmx-sse.js").render();
        let (tag, rest) = served.as_str().split_once('\n').unwrap();
        assert_eq!(
            tag,
            format!(
                "<script src=\"/app/sse/htmx-sse.js?v={}\" integrity=\"{}\" crossorigin=\"anonymous\"></script>",
                crate::connections::runtime::version(),
                crate::connections::runtime::integrity()
            )
        );
        assert!(!rest.contains("htmxSse) return"), "no runtime inline");
        let singles: usize = [
            reconnect_script(reconnect()),
            cleanup_on_unload(),
            reset_script(ResetOptions::new()),
            shared_connection_script(SharedOptions::new()),
        ]
        .iter()
        .map(|f| f.as_str().len())
        .sum();
        // The page weight of the four helpers, as the closing note reports.
        println!(
            "four helpers: {singles} bytes as single scripts, {} with Helpers inline, {} with Helpers served",
            inline.as_str().len(),
            served.as_str().len()
        );
        assert!(inline.as_str().len() * 3 < singles);
        assert!(served.as_str().len() < 1024);

        // Hostile values stay data: in the URL attribute and in the calls.
        let hostile = Helpers::new()
            .reconnect(ReconnectOptions::new().status_element(HOSTILE))
            .runtime_src("/x\"><script>alert(1)</script>")
            .render();
        let (tag, rest) = hostile.as_str().split_once('\n').unwrap();
        assert!(
            tag.starts_with("<script src=\"/x&quot;&gt;&lt;script&gt;"),
            "{tag}"
        );
        script_body(&Fragment::trusted(rest.to_owned()));
        assert!(rest.contains(HOSTILE_JSON), "{rest}");
    }

    #[test]
    fn the_javascript_sources_cannot_end_a_script() {
        for src in [RUNTIME, MONITOR, SWAP4] {
            let lower = src.to_ascii_lowercase();
            for bad in ["</script", "<script", "<!--"] {
                assert!(!lower.contains(bad), "{bad} in a script source");
            }
        }
    }

    #[test]
    fn reconnect_script_exact() {
        let f = reconnect_script(
            ReconnectOptions::new()
                .base_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(2))
                .max_retries(3)
                .jitter(0.0)
                .status_element(HOSTILE)
                .debug(true),
        );
        let want = format!(
            "\n{RUNTIME}window.htmxSse.reconnect({{\"baseDelay\":200,\"maxDelay\":2000,\
             \"maxRetries\":3,\"jitter\":0.0,\"statusElement\":{HOSTILE_JSON},\"resumeInUrl\":false,\"debug\":true}});\n"
        );
        assert_eq!(script_body(&f), want);
    }

    #[test]
    fn reconnect_defaults_and_limits() {
        let f = reconnect_script(
            ReconnectOptions::new()
                .unlimited_retries()
                .max_delay(Duration::from_secs(u64::MAX))
                .jitter(f64::NAN),
        );
        assert!(f.as_str().ends_with(
            "window.htmxSse.reconnect({\"baseDelay\":1000,\"maxDelay\":2147483647,\
             \"maxRetries\":null,\"jitter\":0.0,\"statusElement\":null,\"resumeInUrl\":false,\"debug\":false});\n</script>"
        ));
        assert_eq!(ReconnectOptions::new().jitter(7.0).jitter, 1.0);
        assert_eq!(ReconnectOptions::new().jitter(-1.0).jitter, 0.0);
    }

    #[test]
    fn cleanup_script_exact() {
        assert_eq!(
            script_body(&cleanup_on_unload()),
            format!("\n{RUNTIME}window.htmxSse.cleanupOnUnload();\n")
        );
    }

    #[test]
    fn shared_script_exact() {
        let f = shared_connection_script(SharedOptions::new().channel(HOSTILE));
        assert_eq!(
            script_body(&f),
            format!(
                "\n{RUNTIME}window.htmxSse.share({{\"channel\":{HOSTILE_JSON},\"debug\":false}});\n"
            )
        );
    }

    #[test]
    fn reset_script_exact() {
        assert_eq!(
            script_body(&reset_script(ResetOptions::new().reload(true).debug(true))),
            format!("\n{RUNTIME}window.htmxSse.onReset({{\"reload\":true,\"debug\":true}});\n")
        );
        assert_eq!(
            script_body(&reset_script(ResetOptions::new())),
            format!("\n{RUNTIME}window.htmxSse.onReset({{\"reload\":false,\"debug\":false}});\n")
        );
        // The runtime turns the server's reset event into htmx-sse:reset.
        assert!(RUNTIME.contains("'htmx-sse:reset'"));
    }

    #[test]
    fn monitor_script_exact() {
        let f = connection_monitor_script(HOSTILE, Duration::from_millis(5), HOSTILE);
        assert_eq!(
            script_body(&f),
            format!(
                "\n((cfg) => {{\n{MONITOR}}})({{\"url\":{HOSTILE_JSON},\"interval\":100,\"element\":{HOSTILE_JSON}}});\n"
            )
        );
    }

    #[test]
    fn json_escapes_every_html_special() {
        let f = shared_connection_script(SharedOptions::new().channel("a'b&c<d>e\"f\u{2028}"));
        assert!(
            f.as_str()
                .contains(r#"window.htmxSse.share({"channel":"a\u0027b\u0026c\u003cd\u003ee\"f"#)
        );
    }

    #[test]
    fn the_last_event_id_goes_in_the_url_only_when_asked() {
        let default = reconnect_script(ReconnectOptions::new()).into_string();
        assert!(default.contains(r#""resumeInUrl":false"#), "{default}");
        let opted = reconnect_script(ReconnectOptions::new().resume_in_url(true)).into_string();
        assert!(opted.contains(r#""resumeInUrl":true"#), "{opted}");
    }

    #[test]
    fn element_htmx2_everything() {
        let f = SseElement::new("/sse?a=1&b=\"2\"", Flavor::Htmx2)
            .id("live")
            .swap_event("chat")
            .swap_event(EventName::from_static("news"))
            .close_event("bye")
            .hx_target("closest section")
            .hx_swap(Swap::BeforeEnd)
            .attr(AttributeName::from_static("data-x"), HOSTILE)
            .children(Fragment::trusted("<ul></ul>"))
            .render()
            .unwrap();
        assert_eq!(
            f.as_str(),
            "<div id=\"live\" hx-ext=\"sse\" sse-connect=\"/sse?a=1&#38;b=&#34;2&#34;\" \
             sse-swap=\"chat, news\" sse-close=\"bye\" hx-target=\"closest section\" \
             hx-swap=\"beforeend\" data-x=\"&#60;/script&#62;&#60;script&#62;window.__pwned=1&#60;/script&#62;\">\
             <ul></ul></div>"
        );
    }

    #[test]
    fn element_htmx4_named_events_bring_their_script() {
        let f = SseElement::new("/sse", Flavor::Htmx4)
            .swap_event("chat")
            .swap_event("message")
            .render()
            .unwrap();
        assert_eq!(
            f.as_str(),
            format!(
                "<div hx-sse:connect=\"/sse\" hx-sse:close=\"close\" data-sse-swap=\"chat, message\"></div>\
                 <script>\n{}</script>",
                SWAP4.trim_end()
            )
        );
        // Unnamed messages only: htmx 4 swaps them by itself.
        let f = SseElement::new("/sse", Flavor::Htmx4)
            .swap_event("message")
            .render()
            .unwrap();
        assert!(!f.as_str().contains("<script"), "{}", f.as_str());
    }

    #[test]
    fn element_errors_are_kept_first_one_wins() {
        let err = SseElement::new("/sse", Flavor::Htmx2)
            .id("9lives")
            .swap_event("a\nb")
            .render()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTarget { .. }), "{err:?}");
        let err = SseElement::new("/sse", Flavor::Htmx2)
            .swap_event("a\nb")
            .id("9lives")
            .render()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidField {
                    field: Field::Event,
                    byte: b'\n',
                    position: 1
                }
            ),
            "{err:?}"
        );
        for (name, byte, position) in [("a,b", b',', 1), (" a", b' ', 0), ("a\t", b'\t', 1)] {
            let err = SseElement::new("/sse", Flavor::Htmx4)
                .swap_event(name)
                .render()
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidField { field: Field::Event, byte: b, position: p } if b == byte && p == position),
                "{name:?}: {err:?}"
            );
        }
        assert!(matches!(
            SseElement::new("/sse", Flavor::Htmx2)
                .swap_event("")
                .render(),
            Err(Error::EmptyEventName)
        ));
        assert!(matches!(
            SseElement::new("/sse", Flavor::Htmx2)
                .close_event("x\ry")
                .render(),
            Err(Error::InvalidField { .. })
        ));
        assert!(matches!(
            SseElement::new("/sse", Flavor::Htmx2).id("a b").render(),
            Err(Error::InvalidTarget { .. })
        ));
    }

    #[test]
    fn extra_attributes_replace_the_builders_own() {
        let f = SseElement::new("/sse", Flavor::Htmx4)
            .hx_swap(Swap::InnerHtml)
            .swap_event("chat")
            .attr(
                AttributeName::from_static("hx-swap"),
                "beforeend scroll:bottom",
            )
            .attr(AttributeName::from_static("title"), "one")
            .attr(AttributeName::from_static("title"), "two")
            .render()
            .unwrap();
        assert!(f.as_str().starts_with(
            "<div hx-sse:connect=\"/sse\" hx-sse:close=\"close\" data-sse-swap=\"chat\" \
             hx-swap=\"beforeend scroll:bottom\" title=\"two\"></div><script>"
        ));
    }

    #[test]
    fn attribute_names() {
        for ok in [
            "a",
            "data-x",
            "hx-on:htmx:sse-open",
            "@click",
            ":class",
            "_x",
            "x.y",
            "a1",
        ] {
            assert!(AttributeName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1a", "-a", "A", "a b", "a\"", "a>", "a=", "a/", "é", "a\0",
        ] {
            assert!(AttributeName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            "x".parse::<AttributeName>().unwrap(),
            AttributeName::from_static("x")
        );
    }

    #[test]
    #[should_panic(expected = "invalid attribute name")]
    fn attribute_name_from_static_panics_on_bad_literals() {
        let _ = AttributeName::from_static("on click");
    }

    #[test]
    fn types_are_send_sync() {
        fn assert<T: Send + Sync + 'static>() {}
        assert::<SseElement>();
        assert::<ReconnectOptions>();
        assert::<SharedOptions>();
        assert::<ResetOptions>();
        assert::<AttributeName>();
        assert::<InvalidAttributeName>();
    }
}
