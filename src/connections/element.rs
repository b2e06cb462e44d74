//! [`SseElement`]: the element that opens a page's SSE connection, for
//! htmx 2 (`hx-ext="sse" sse-connect`) and htmx 4 (`hx-sse:connect`), its
//! checked attribute names, and [`connection_id_slot`]. Re-exported from
//! [`scripts`](super::scripts), where the helpers that keep the connection
//! healthy live.

use std::borrow::Cow;
use std::fmt;

use askama::Template;

use crate::Flavor;
use crate::error::Error;
use crate::event::{EventName, check_list_name};
use crate::fragment::{Fragment, IntoFragment};
use crate::streaming::{CLOSE_EVENT, Swap};

/// Renders one of this module's templates. They write only strings,
/// numbers and booleans into a `String`, which cannot fail.
pub(super) fn render<T: Template>(template: &T) -> Fragment {
    Fragment::render(template).unwrap_or_else(|e| unreachable!("script templates cannot fail: {e}"))
}

// ---------------------------------------------------------------------------
// Attribute names

/// A checked HTML attribute name for [`SseElement::attr`].
///
/// Lowercase ASCII letters, digits, `-`, `_`, `.`, `:` and `@`, starting
/// with a letter, `_`, `:` or `@`: every name htmx and the common
/// frameworks use (`hx-on:click`, `data-id`, `aria-live`, `@click`), and
/// nothing that could end the attribute or the tag. HTML lowercases
/// attribute names, so uppercase letters are refused rather than silently
/// changed.
///
/// ```
/// use htmx_sse::connections::scripts::AttributeName;
///
/// const LIVE: AttributeName = AttributeName::from_static("aria-live");
/// assert_eq!(LIVE.as_str(), "aria-live");
/// assert!(AttributeName::new("hx-on:htmx:sse-open").is_ok());
/// assert!(AttributeName::new("onclick=\"x\"").is_err());
/// assert!(AttributeName::new("Data-X").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AttributeName(Cow<'static, str>);

/// Why a name is not a valid attribute name, if it is not.
const fn attribute_name_error(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    let first = name[0];
    if !(first.is_ascii_lowercase() || first == b'_' || first == b':' || first == b'@') {
        return Some("must start with a lowercase ASCII letter, '_', ':' or '@'");
    }
    let mut i = 1;
    while i < name.len() {
        let b = name[i];
        if !(b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
        {
            return Some(
                "may hold only lowercase ASCII letters, digits, '-', '_', '.', ':' and '@'",
            );
        }
        i += 1;
    }
    None
}

impl AttributeName {
    /// Checks `name` and wraps it.
    ///
    /// # Errors
    ///
    /// [`InvalidAttributeName`] when it is empty or holds anything outside
    /// the characters listed on the type.
    ///
    /// ```
    /// use htmx_sse::connections::scripts::AttributeName;
    ///
    /// let name = AttributeName::new(String::from("data-room"))?;
    /// assert_eq!(name.as_str(), "data-room");
    /// assert!(AttributeName::new("x y").is_err());
    /// # Ok::<(), htmx_sse::connections::scripts::InvalidAttributeName>(())
    /// ```
    pub fn new(name: impl Into<Cow<'static, str>>) -> Result<Self, InvalidAttributeName> {
        let name = name.into();
        match attribute_name_error(name.as_bytes()) {
            Some(reason) => Err(InvalidAttributeName {
                name: crate::connections::truncate_for_error(&name),
                reason,
            }),
            None => Ok(AttributeName(name)),
        }
    }

    /// Wraps a literal, checked at compile time when used in a `const`.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid attribute name: this is for names written
    /// in the program, never for data.
    ///
    /// ```
    /// use htmx_sse::connections::scripts::AttributeName;
    ///
    /// const ROLE: AttributeName = AttributeName::from_static("role");
    /// assert_eq!(ROLE.to_string(), "role");
    /// ```
    #[track_caller]
    #[must_use]
    pub const fn from_static(name: &'static str) -> Self {
        assert!(
            attribute_name_error(name.as_bytes()).is_none(),
            "invalid attribute name"
        );
        AttributeName(Cow::Borrowed(name))
    }

    /// The name as text.
    ///
    /// ```
    /// use htmx_sse::connections::scripts::AttributeName;
    ///
    /// assert_eq!(AttributeName::from_static("hx-on:click").as_str(), "hx-on:click");
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AttributeName {
    type Err = InvalidAttributeName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttributeName::new(s.to_owned())
    }
}

/// The error from [`AttributeName::new`].
///
/// ```
/// use htmx_sse::connections::scripts::AttributeName;
///
/// let err = AttributeName::new("a b").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid attribute name \"a b\": may hold only lowercase ASCII letters, digits, '-', '_', '.', ':' and '@'"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAttributeName {
    name: String,
    reason: &'static str,
}

impl fmt::Display for InvalidAttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid attribute name {:?}: {}", self.name, self.reason)
    }
}

impl std::error::Error for InvalidAttributeName {}

// ---------------------------------------------------------------------------
// The element

/// Builds the element that opens a page's SSE connection.
///
/// | | [`Flavor::Htmx2`] | [`Flavor::Htmx4`] |
/// | --- | --- | --- |
/// | connect | `hx-ext="sse" sse-connect="URL"` | `hx-sse:connect="URL"` |
/// | [`swap_event`](Self::swap_event) | `sse-swap="a, b"` | `data-sse-swap="a, b"` and a `<script>` after the element that swaps those named events (htmx 4 itself swaps only unnamed ones, and fires named ones as DOM events); a [`BroadcastManager`](crate::BroadcastManager) message of type `message` goes out unnamed and needs no script |
/// | [`close_event`](Self::close_event) (default `close`) | `sse-close` | `hx-sse:close` |
/// | [`hx_target`](Self::hx_target), [`hx_swap`](Self::hx_swap) | where and how `sse-swap` swaps | where and how messages are swapped |
///
/// Values are HTML-escaped inside double-quoted attributes. Event names,
/// the element id and attribute names are checked; the first bad one is
/// kept and returned by [`render`](Self::render), as
/// `http::request::Builder` does. The element is a `<div>`; its children
/// are given as a [`Fragment`] (or anything [`IntoFragment`]).
///
/// ```
/// use htmx_sse::Flavor;
/// use htmx_sse::connections::scripts::SseElement;
/// use htmx_sse::streaming::Swap;
///
/// let el = SseElement::new("/sse?room=1&x=<y>", Flavor::Htmx4)
///     .id("feed")
///     .hx_target("#log")
///     .hx_swap(Swap::BeforeEnd)
///     .children(htmx_sse::Fragment::trusted(r#"<ul id="log"></ul>"#))
///     .render()?;
/// assert_eq!(
///     el.as_str(),
///     r##"<div id="feed" hx-sse:connect="/sse?room=1&#38;x=&#60;y&#62;" hx-sse:close="close" hx-target="#log" hx-swap="beforeend"><ul id="log"></ul></div>"##
/// );
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct SseElement {
    /// `None` for an [`SseListener`]: an element inside the connection's.
    url: Option<String>,
    flavor: Flavor,
    id: Option<String>,
    swap_events: Vec<EventName>,
    close: Option<EventName>,
    target: Option<String>,
    swap: Option<Swap>,
    attrs: Vec<(AttributeName, String)>,
    children: Fragment,
    error: Option<Error>,
}

#[derive(Template)]
#[template(path = "htmx_sse/element.html")]
struct ElementTemplate<'a> {
    attrs: Vec<(&'a str, &'a str)>,
    children: &'a Fragment,
    named_swap: bool,
}

impl SseElement {
    /// An element connecting to `url` for `flavor`, closing on the crate's
    /// close event (`close`), swapping nothing until told which events to
    /// swap.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2).render()?;
    /// assert_eq!(el.as_str(), r#"<div hx-ext="sse" sse-connect="/sse" sse-close="close"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn new(url: impl Into<String>, flavor: Flavor) -> Self {
        SseElement {
            url: Some(url.into()),
            flavor,
            id: None,
            swap_events: Vec::new(),
            close: Some(CLOSE_EVENT),
            target: None,
            swap: None,
            attrs: Vec::new(),
            children: Fragment::default(),
            error: None,
        }
    }

    fn keep(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Swaps events named `name` into the element (or its
    /// [`hx_target`](Self::hx_target)); call it once per name. A
    /// [`BroadcastManager`](crate::BroadcastManager) message's type is its
    /// event name.
    ///
    /// Kept for [`render`](Self::render): the errors of
    /// [`EventName::new`], and [`Error::InvalidField`] for a comma or white
    /// space at either end (htmx splits the list on commas and trims).
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2)
    ///     .swap_event("chat")
    ///     .swap_event("news")
    ///     .render()?;
    /// assert!(el.as_str().contains(r#"sse-swap="chat, news""#));
    /// assert!(SseElement::new("/sse", Flavor::Htmx2).swap_event("a,b").render().is_err());
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn swap_event<T>(mut self, name: T) -> Self
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
    {
        match name
            .try_into()
            .map_err(Into::into)
            .and_then(|n| check_list_name(&n).map(|()| n))
        {
            Ok(n) => self.swap_events.push(n),
            Err(e) => self.keep(e),
        }
        self
    }

    /// Stops listening, without reconnecting, when an event named `name`
    /// arrives (the default is the crate's `close`).
    ///
    /// Kept for [`render`](Self::render): the errors of [`EventName::new`].
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/jobs/7", Flavor::Htmx4).close_event("done").render()?;
    /// assert_eq!(el.as_str(), r#"<div hx-sse:connect="/jobs/7" hx-sse:close="done"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn close_event<T>(mut self, name: T) -> Self
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
    {
        match name.try_into() {
            Ok(n) => self.close = Some(n),
            Err(e) => self.keep(e.into()),
        }
        self
    }

    /// Writes no close attribute: the page then reconnects whatever the
    /// server sends.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2).no_close_event().render()?;
    /// assert_eq!(el.as_str(), r#"<div hx-ext="sse" sse-connect="/sse"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn no_close_event(mut self) -> Self {
        self.close = None;
        self
    }

    /// Opens the stream from the point the page was rendered at, so that
    /// nothing published between the render and the connect is lost: pass
    /// [`BroadcastManager::resume_point`](crate::BroadcastManager::resume_point),
    /// taken when the page's state was read. It goes into the URL as
    /// `resumeFrom=…`, which the crate's stream routes (and the
    /// [`LastEventId`](crate::broadcast::LastEventId) extractor) read last:
    /// once the page has received an event, what the browser sends on
    /// reconnecting takes over.
    ///
    /// In htmx 2, put the reconnect runtime on the page too
    /// ([`reconnect_script`](super::scripts::reconnect_script) or
    /// [`Helpers`](super::scripts::Helpers)): after an error answer (a 502
    /// from a proxy during a deploy, a 503 for the limits) htmx-ext-sse on
    /// its own opens a new source on the same URL without the last event
    /// id, which would start from this point again and show what came
    /// since twice; the runtime carries the page's own id in a cookie,
    /// which wins. htmx 4 keeps `Last-Event-ID` itself.
    ///
    /// ```
    /// use htmx_sse::{BroadcastManager, Flavor};
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let manager = BroadcastManager::new();
    /// let el = SseElement::new("/sse?topic=news", Flavor::Htmx2)
    ///     .resume_from(manager.resume_point())
    ///     .render()?;
    /// // `&` written as an HTML character reference in the attribute.
    /// assert!(el.as_str().contains(&format!("/sse?topic=news&#38;resumeFrom={}", manager.resume_point())));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn resume_from(mut self, point: impl fmt::Display) -> Self {
        if let Some(url) = &mut self.url {
            let sep = if url.contains('?') { '&' } else { '?' };
            let value = crate::routes::percent_encode(&point.to_string());
            *url = format!("{url}{sep}{}={value}", crate::broadcast::RESUME_FROM);
        }
        self
    }

    /// The element's id.
    ///
    /// Kept for [`render`](Self::render): [`Error::InvalidTarget`] unless it
    /// is an ASCII letter or `_` followed by ASCII letters, digits, `-` and
    /// `_` (the rule for out-of-band target ids).
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// assert!(SseElement::new("/sse", Flavor::Htmx2).id("live-1").render().is_ok());
    /// assert!(SseElement::new("/sse", Flavor::Htmx2).id("1st").render().is_err());
    /// ```
    pub fn id(mut self, id: &str) -> Self {
        match crate::streaming::oob::check_target(id) {
            Ok(()) => self.id = Some(id.to_owned()),
            Err(e) => self.keep(e),
        }
        self
    }

    /// `hx-target`: where swapped content goes (a CSS selector or htmx's
    /// extended selectors such as `closest li`). Escaped, not checked.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx4).hx_target("#log").render()?;
    /// assert!(el.as_str().contains(r##"hx-target="#log""##));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn hx_target(mut self, selector: impl Into<String>) -> Self {
        self.target = Some(selector.into());
        self
    }

    /// `hx-swap`: how swapped content goes in. For modifiers
    /// (`beforeend scroll:bottom`), set `hx-swap` with
    /// [`attr`](Self::attr) instead.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    /// use htmx_sse::streaming::Swap;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2).hx_swap(Swap::AfterBegin).render()?;
    /// assert!(el.as_str().contains(r#"hx-swap="afterbegin""#));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn hx_swap(mut self, swap: Swap) -> Self {
        self.swap = Some(swap);
        self
    }

    /// Adds an attribute, its value HTML-escaped. An attribute of the same
    /// name given before, or written by the builder itself (say `hx-swap`),
    /// is replaced.
    ///
    /// Escaping keeps the value inside its attribute; it does not make it
    /// safe as code or as a URL. Never put user data into an event handler
    /// (`on…`, `hx-on…`) or a URL attribute.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::{AttributeName, SseElement};
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2)
    ///     .attr(AttributeName::from_static("hx-swap"), "beforeend scroll:bottom")
    ///     .attr(AttributeName::from_static("title"), r#"say "hi" <b>"#)
    ///     .render()?;
    /// assert_eq!(
    ///     el.as_str(),
    ///     r#"<div hx-ext="sse" sse-connect="/sse" sse-close="close" hx-swap="beforeend scroll:bottom" title="say &#34;hi&#34; &#60;b&#62;"></div>"#
    /// );
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn attr(mut self, name: AttributeName, value: impl Into<String>) -> Self {
        self.attrs.retain(|(n, _)| *n != name);
        self.attrs.push((name, value.into()));
        self
    }

    /// The element's content.
    ///
    /// Kept for [`render`](Self::render): the error of rendering it.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let el = SseElement::new("/sse", Flavor::Htmx2)
    ///     .children(htmx_sse::Fragment::trusted(r#"<ul id="log" sse-swap="chat" hx-swap="beforeend"></ul>"#))
    ///     .render()?;
    /// assert!(el.as_str().ends_with(r#"<ul id="log" sse-swap="chat" hx-swap="beforeend"></ul></div>"#));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn children(mut self, children: impl IntoFragment) -> Self {
        match children.into_fragment() {
            Ok(f) => self.children = f,
            Err(e) => self.keep(e),
        }
        self
    }

    /// The element, or the first error kept by the builder.
    ///
    /// # Errors
    ///
    /// The first error met by a builder method: see each method.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseElement;
    ///
    /// let ok = SseElement::new("/sse", Flavor::Htmx2).swap_event("chat").render()?;
    /// assert!(ok.as_str().starts_with("<div hx-ext=\"sse\""));
    /// let err = SseElement::new("/sse", Flavor::Htmx2).id("no spaces").render().unwrap_err();
    /// assert!(matches!(err, htmx_sse::Error::InvalidTarget { .. }));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn render(self) -> Result<Fragment, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let list = (!self.swap_events.is_empty()).then(|| {
            self.swap_events
                .iter()
                .map(EventName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        });
        let htmx4 = matches!(self.flavor, Flavor::Htmx4);
        let mut own: Vec<(&str, &str)> = Vec::with_capacity(8 + self.attrs.len());
        if let Some(id) = &self.id {
            own.push(("id", id));
        }
        match (&self.url, htmx4) {
            (Some(url), true) => {
                own.push(("hx-sse:connect", url));
                if let Some(close) = &self.close {
                    own.push(("hx-sse:close", close.as_str()));
                }
            }
            (Some(url), false) => {
                own.push(("hx-ext", "sse"));
                own.push(("sse-connect", url));
                if let Some(list) = &list {
                    own.push(("sse-swap", list));
                }
                if let Some(close) = &self.close {
                    own.push(("sse-close", close.as_str()));
                }
            }
            (None, false) => {
                if let Some(list) = &list {
                    own.push(("sse-swap", list));
                }
            }
            (None, true) => {}
        }
        if let Some(target) = &self.target {
            own.push(("hx-target", target));
        }
        if let Some(swap) = self.swap {
            own.push(("hx-swap", swap.as_str()));
        }
        if htmx4 && let Some(list) = &list {
            own.push(("data-sse-swap", list));
        }
        own.retain(|(name, _)| !self.attrs.iter().any(|(n, _)| n.as_str() == *name));
        own.extend(self.attrs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        // htmx 4 needs the script that swaps named events (and sends
        // `sse:NAME` to `hx-trigger`s) on the connection's element: for
        // its own list, and for listeners and triggers inside it.
        let named_swap = htmx4
            && self.url.is_some()
            && (self
                .attrs
                .iter()
                .all(|(n, _)| n.as_str() != "data-sse-swap")
                && self.swap_events.iter().any(|n| n.as_str() != "message")
                || self.children.as_str().contains("data-sse-swap=")
                || self.children.as_str().contains("sse:"));
        Ok(render(&ElementTemplate {
            attrs: own,
            children: &self.children,
            named_swap,
        }))
    }
}

/// An element inside an [`SseElement`] that swaps named events into its
/// target: the same builder call for htmx 2 and htmx 4, so that a page
/// switches htmx versions by changing its [`Flavor`] alone.
///
/// | | [`Flavor::Htmx2`] | [`Flavor::Htmx4`] |
/// | --- | --- | --- |
/// | [`event`](Self::event) | `sse-swap="a, b"` | `data-sse-swap="a, b"`, swapped by the script the enclosing [`SseElement`] adds |
/// | [`hx_target`](Self::hx_target), [`hx_swap`](Self::hx_swap) | where and how | the same |
///
/// Put it inside the [`SseElement`] of the same flavour (as a child): in
/// htmx 2 only elements inside the connection's element hear its events,
/// and in htmx 4 the connection's element adds the script that swaps them
/// when its children hold a listener. An `hx-trigger="sse:NAME"` inside it
/// fires in both flavours too. In htmx 4, unnamed messages (`message`) are
/// swapped by the connection's element itself: give that element the
/// target and swap instead.
///
/// ```
/// use htmx_sse::Flavor;
/// use htmx_sse::connections::scripts::{SseElement, SseListener};
/// use htmx_sse::streaming::Swap;
///
/// htmx_sse::names! {
///     mod live {
///         events { NOTE = "note" }
///         targets { NOTES = "notes" }
///     }
/// }
///
/// fn page(flavor: Flavor) -> Result<htmx_sse::Fragment, htmx_sse::Error> {
///     let listener = SseListener::new(flavor)
///         .event(live::NOTE)
///         .hx_target(live::NOTES.selector())
///         .hx_swap(Swap::BeforeEnd)
///         .render()?;
///     let list = format!(r#"<ul id="{}"></ul>"#, live::NOTES);
///     SseElement::new("/sse", flavor)
///         .children(htmx_sse::Fragment::trusted(format!("{}{list}", listener.as_str())))
///         .render()
/// }
///
/// let htmx2 = page(Flavor::Htmx2)?;
/// assert!(htmx2.as_str().contains(r##"<div sse-swap="note" hx-target="#notes" hx-swap="beforeend"></div>"##));
/// let htmx4 = page(Flavor::Htmx4)?;
/// assert!(htmx4.as_str().contains(r##"<div hx-target="#notes" hx-swap="beforeend" data-sse-swap="note"></div>"##));
/// assert!(htmx4.as_str().contains("<script>")); // the script that swaps it
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct SseListener(SseElement);

impl SseListener {
    /// A listener for `flavor` that swaps nothing until told which events
    /// to swap.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    ///
    /// let el = SseListener::new(Flavor::Htmx2).event("toast").render()?;
    /// assert_eq!(el.as_str(), r#"<div sse-swap="toast"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn new(flavor: Flavor) -> Self {
        let mut element = SseElement::new(String::new(), flavor);
        element.url = None;
        element.close = None;
        SseListener(element)
    }

    /// Swaps events named `name`; call it once per name. The errors are
    /// those of [`SseElement::swap_event`], kept for
    /// [`render`](Self::render).
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    ///
    /// let el = SseListener::new(Flavor::Htmx4).event("a").event("b").render()?;
    /// assert_eq!(el.as_str(), r#"<div data-sse-swap="a, b"></div>"#);
    /// assert!(SseListener::new(Flavor::Htmx4).event("a,b").render().is_err());
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn event<T>(self, name: T) -> Self
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
    {
        SseListener(self.0.swap_event(name))
    }

    /// The element's id, as [`SseElement::id`].
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    ///
    /// let el = SseListener::new(Flavor::Htmx2).id("bus").event("tick").render()?;
    /// assert_eq!(el.as_str(), r#"<div id="bus" sse-swap="tick"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn id(self, id: &str) -> Self {
        SseListener(self.0.id(id))
    }

    /// `hx-target`, as [`SseElement::hx_target`]; for a declared target,
    /// [`TargetId::selector`](crate::names::TargetId::selector).
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    /// use htmx_sse::names::TargetId;
    ///
    /// const LOG: TargetId = TargetId::from_static("log");
    /// let el = SseListener::new(Flavor::Htmx2).event("line").hx_target(LOG.selector()).render()?;
    /// assert!(el.as_str().contains(r##"hx-target="#log""##));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn hx_target(self, selector: impl Into<String>) -> Self {
        SseListener(self.0.hx_target(selector))
    }

    /// `hx-swap`, as [`SseElement::hx_swap`]. [`Swap::None`] makes a
    /// listener for messages that hold only out-of-band parts: they update
    /// their own targets and the listener stays as it is.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    /// use htmx_sse::streaming::Swap;
    ///
    /// let el = SseListener::new(Flavor::Htmx2).event("dashboard").hx_swap(Swap::None).render()?;
    /// assert_eq!(el.as_str(), r#"<div sse-swap="dashboard" hx-swap="none"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn hx_swap(self, swap: Swap) -> Self {
        SseListener(self.0.hx_swap(swap))
    }

    /// Adds an attribute, as [`SseElement::attr`].
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::{AttributeName, SseListener};
    ///
    /// let el = SseListener::new(Flavor::Htmx2)
    ///     .event("toast")
    ///     .attr(AttributeName::from_static("aria-live"), "polite")
    ///     .render()?;
    /// assert_eq!(el.as_str(), r#"<div sse-swap="toast" aria-live="polite"></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn attr(self, name: AttributeName, value: impl Into<String>) -> Self {
        SseListener(self.0.attr(name, value))
    }

    /// The element's content, as [`SseElement::children`].
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    ///
    /// let el = SseListener::new(Flavor::Htmx2).event("clock").children("–").render()?;
    /// assert_eq!(el.as_str(), r#"<div sse-swap="clock">–</div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn children(self, children: impl IntoFragment) -> Self {
        SseListener(self.0.children(children))
    }

    /// The element, or the first error kept by the builder.
    ///
    /// # Errors
    ///
    /// The first error met by a builder method: see each method.
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::connections::scripts::SseListener;
    ///
    /// assert!(SseListener::new(Flavor::Htmx2).event("a b ").render().is_err());
    /// ```
    pub fn render(self) -> Result<Fragment, Error> {
        self.0.render()
    }
}

/// The place in a form where the `connection` event puts the page's
/// connection id (`<input type="hidden" name="connection_id" …>`), so that
/// every request the form sends says which connection it came from and a
/// broadcast can [exclude](crate::broadcast::Message::exclude) it. Put it
/// inside the form, and the form inside the [`SseElement`] of the same
/// flavour.
///
/// **htmx 2:** `<span sse-swap="connection" hx-target="this"
/// hx-swap="innerHTML"></span>`. `hx-target="this"` matters: an element
/// inherits the form's `hx-target` and `hx-swap`, and without it the hidden
/// input would be swapped into the form's target (the list the form adds
/// to), where no request carries it.
///
/// **htmx 4:** the same with `data-sse-swap`, and the small script that
/// swaps named events (htmx 4 swaps only unnamed ones by itself).
///
/// ```
/// use htmx_sse::Flavor;
/// use htmx_sse::connections::scripts::{SseElement, connection_id_slot};
/// use htmx_sse::streaming::Swap;
///
/// for flavor in [Flavor::Htmx2, Flavor::Htmx4] {
///     let form = format!(
///         r##"<form hx-post="/notes" hx-target="#notes" hx-swap="beforeend">{}<input name="text"><button>Add</button></form>"##,
///         connection_id_slot(flavor).as_str(),
///     );
///     // Notes from the other tabs: the handler excludes the posting
///     // tab's connection id, and answers the posting tab itself.
///     let page = SseElement::new("/sse", flavor)
///         .swap_event("note")
///         .hx_target("#notes")
///         .hx_swap(Swap::BeforeEnd)
///         .children(htmx_sse::Fragment::trusted(form))
///         .render()?;
///     assert!(page.as_str().contains("connection"));
/// }
/// # Ok::<(), htmx_sse::Error>(())
/// ```
///
/// The handler reads the field and excludes it:
///
/// ```
/// use axum::{Form, extract::State, response::Html};
/// use htmx_sse::{BroadcastManager, connections::ConnectionId};
///
/// #[derive(serde::Deserialize)]
/// struct Note { text: String, connection_id: Option<String> }
///
/// async fn add_note(State(manager): State<BroadcastManager>, Form(note): Form<Note>) -> Html<String> {
///     let item = maud::html! { li { (note.text) } };
///     let posting: Vec<ConnectionId> =
///         note.connection_id.as_deref().and_then(|id| ConnectionId::new(id).ok()).into_iter().collect();
///     let _ = manager.message("note", item.clone()).exclude(&posting).send().await;
///     Html(item.into_string()) // the posting tab shows it from this answer
/// }
/// # let _ = add_note;
/// ```
#[must_use]
pub fn connection_id_slot(flavor: Flavor) -> Fragment {
    const SLOT: &str = r#"hx-target="this" hx-swap="innerHTML"></span>"#;
    match flavor {
        Flavor::Htmx2 => Fragment::trusted(format!(r#"<span sse-swap="connection" {SLOT}"#)),
        Flavor::Htmx4 => Fragment::trusted(format!(
            "<span data-sse-swap=\"connection\" {SLOT}<script>\n{}</script>",
            include_str!("../../templates/htmx_sse/htmx4_swap.js")
        )),
    }
}
