//! One Server-Sent Events frame, validated once and encoded once.
//!
//! An [`Event`] is a finished frame: the exact bytes that go on the wire, held
//! in a [`Bytes`] so that sending it to a thousand connections costs a thousand
//! reference-count increments and nothing else. Build one with
//! [`Event::builder`], or with [`Event::message`] for the common case of an
//! unnamed event carrying HTML.
//!
//! # The wire format
//!
//! The encoder follows the WHATWG EventSource rules exactly:
//!
//! - Data is split on CRLF, lone CR and lone LF; each line becomes its own
//!   `data:` line, so a browser receives the text with its line breaks
//!   normalised to LF. The value always follows `data: ` (colon, space), so a
//!   line that starts with a space keeps it.
//! - An event that has a name, or data (even empty), always carries at least
//!   one `data:` line: browsers silently drop an event without one.
//! - An event name, id or comment containing CR or LF (or an id containing NUL)
//!   is refused with [`Error::InvalidField`]: such a value would forge extra
//!   fields. Nothing is stripped silently and nothing panics, except the
//!   `const` constructors for literals ([`EventName::from_static`],
//!   [`EventId::from_static`]), which fail at compile time when used in a
//!   `const`.
//! - A retry given as text must be a plain decimal integer
//!   ([`Error::InvalidRetry`] otherwise).
//!
//! ```
//! use htmx_sse::Event;
//!
//! let ev = Event::builder()
//!     .event("chat")
//!     .id("42")
//!     .data("<li>hello</li>\n<li>world</li>")
//!     .build()?;
//! assert_eq!(
//!     ev.as_bytes(),
//!     "event: chat\nid: 42\ndata: <li>hello</li>\ndata: <li>world</li>\n\n"
//! );
//!
//! // A name from user data is checked, not trusted:
//! assert!(Event::builder().event("x\nid: forged").build().is_err());
//! # Ok::<(), htmx_sse::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Field};

/// A finished SSE frame: the bytes that go on the wire.
///
/// Cloning is a reference-count increment. Encode once, send to everyone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Event {
    bytes: Bytes,
}

impl Event {
    /// The heartbeat frame: an empty comment (`:\n\n`).
    ///
    /// Browsers ignore it; proxies and load balancers see traffic and keep the
    /// connection open.
    pub const HEARTBEAT: Event = Event {
        bytes: Bytes::from_static(b":\n\n"),
    };

    /// A frame from bytes written in this crate's source, already encoded.
    pub(crate) const fn from_static(bytes: &'static [u8]) -> Event {
        Event {
            bytes: Bytes::from_static(bytes),
        }
    }

    /// Starts building a frame.
    pub fn builder() -> EventBuilder {
        EventBuilder::default()
    }

    /// An unnamed event carrying `data`: what `sse-swap="message"` (htmx 2)
    /// and a plain `hx-sse:connect` element (htmx 4) swap in.
    ///
    /// The data goes on the wire as it is, unescaped: this is the SSE
    /// layer, for HTML the program vouches for (a rendered template, a
    /// [`Fragment`](crate::Fragment)). Text from users belongs in
    /// `Event::from(text)` (escaped) or a template.
    ///
    /// This cannot fail: data of any content is split into `data:` lines.
    ///
    /// ```
    /// let ev = htmx_sse::Event::message("<p>hi</p>");
    /// assert_eq!(ev.as_bytes(), "data: <p>hi</p>\n\n");
    /// ```
    #[must_use]
    pub fn message(data: impl AsRef<str>) -> Event {
        let data = data.as_ref();
        let mut buf = BytesMut::with_capacity(data_capacity(data) + 1);
        put_data(&mut buf, data);
        buf.put_u8(b'\n');
        Event {
            bytes: buf.freeze(),
        }
    }

    /// A frame holding only a comment (`: text`), which browsers ignore.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`] when `text` holds CR or LF.
    pub fn comment(text: impl Into<Cow<'static, str>>) -> Result<Event, Error> {
        Event::builder().comment(text).build()
    }

    /// The encoded frame.
    #[must_use]
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded frame, consuming the event.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The name in the frame's `event:` field, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.bytes
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"event: "))
            .and_then(|name| std::str::from_utf8(name).ok())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Event")
            .field(&String::from_utf8_lossy(&self.bytes))
            .finish()
    }
}

impl From<String> for Event {
    /// An unnamed event carrying the text, HTML-escaped (a string is text:
    /// see [`crate::fragment`]). [`Event::message`] sends data as it is.
    fn from(text: String) -> Event {
        Event::message(crate::fragment::escape_html(&text))
    }
}

impl From<&str> for Event {
    /// An unnamed event carrying the text, HTML-escaped (a string is text:
    /// see [`crate::fragment`]). [`Event::message`] sends data as it is.
    ///
    /// ```
    /// use htmx_sse::Event;
    ///
    /// assert_eq!(Event::from("<b>1 & 2</b>").as_bytes(), "data: &lt;b&gt;1 &amp; 2&lt;/b&gt;\n\n");
    /// ```
    fn from(text: &str) -> Event {
        Event::message(crate::fragment::escape_html(text))
    }
}

impl From<Event> for Bytes {
    fn from(ev: Event) -> Bytes {
        ev.bytes
    }
}

/// Builds an [`Event`]; the first invalid field is kept and reported by
/// [`build`](EventBuilder::build).
///
/// Field setters accept anything that converts into the validated type:
/// `&str` and `String` are checked, an already validated [`EventName`] or
/// [`EventId`] is taken as is.
#[derive(Debug, Default)]
#[must_use]
pub struct EventBuilder {
    event: Option<EventName>,
    id: Option<EventId>,
    retry: Option<Retry>,
    comment: Option<Cow<'static, str>>,
    data: Option<Cow<'static, str>>,
    error: Option<Error>,
}

impl EventBuilder {
    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Sets the event name (`event:`). Browsers dispatch the event under this
    /// name: htmx 2 swaps it where `sse-swap` lists it; htmx 4 fires it as a
    /// DOM event instead of swapping it.
    pub fn event<T>(mut self, name: T) -> Self
    where
        T: TryInto<EventName>,
        T::Error: Into<Error>,
    {
        match name.try_into() {
            Ok(n) => self.event = Some(n),
            Err(e) => self.fail(e.into()),
        }
        self
    }

    /// Sets the event id (`id:`); the browser sends the last one back as
    /// `Last-Event-ID` when it reconnects. An empty id resets it.
    pub fn id<T>(mut self, id: T) -> Self
    where
        T: TryInto<EventId>,
        T::Error: Into<Error>,
    {
        match id.try_into() {
            Ok(i) => self.id = Some(i),
            Err(e) => self.fail(e.into()),
        }
        self
    }

    /// Sets the reconnection delay the browser should use (`retry:`), from a
    /// [`Duration`], a [`Retry`] or text holding whole milliseconds.
    pub fn retry<T>(mut self, retry: T) -> Self
    where
        T: TryInto<Retry>,
        T::Error: Into<Error>,
    {
        match retry.try_into() {
            Ok(r) => self.retry = Some(r),
            Err(e) => self.fail(e.into()),
        }
        self
    }

    /// Sets a comment line (`: text`), ignored by browsers.
    pub fn comment(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        let text = text.into();
        match check_line(&text, Field::Comment, false) {
            Ok(()) => self.comment = Some(text),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Sets the data, replacing any set before. Line breaks of any kind (CRLF,
    /// CR, LF) become separate `data:` lines.
    pub fn data(mut self, data: impl Into<Cow<'static, str>>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Sets the data to `value` serialised as JSON (one line), HTML-safe:
    /// `<`, `>`, `&`, U+2028 and U+2029 are written as `\u` escapes, the
    /// same value to any JSON parser and never markup if the data is
    /// swapped into a page.
    ///
    /// ```
    /// use htmx_sse::Event;
    ///
    /// let ev = Event::builder().json_data(&serde_json::json!({"s": "<b>"})).build()?;
    /// let text = std::str::from_utf8(ev.as_bytes()).unwrap();
    /// assert_eq!(text, "data: {\"s\":\"\\u003cb\\u003e\"}\n\n");
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn json_data<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(s) => self.data = Some(Cow::Owned(html_safe_json(&s))),
            Err(e) => self.fail(Error::Json(e)),
        }
        self
    }

    /// Encodes the frame.
    ///
    /// # Errors
    ///
    /// The first invalid value given to a setter: [`Error::InvalidField`],
    /// [`Error::EmptyEventName`], [`Error::InvalidRetry`] or [`Error::Json`].
    pub fn build(self) -> Result<Event, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let data = self.data.as_deref();
        let mut cap = 1;
        if let Some(c) = &self.comment {
            cap += c.len() + 3;
        }
        if let Some(n) = &self.event {
            cap += n.as_str().len() + 8;
        }
        if let Some(i) = &self.id {
            cap += i.as_str().len() + 5;
        }
        if self.retry.is_some() {
            cap += 28;
        }
        cap += data.map_or(7, data_capacity);
        let mut buf = BytesMut::with_capacity(cap);

        if let Some(c) = &self.comment {
            put_field(&mut buf, b":", c);
        }
        if let Some(n) = &self.event {
            put_field(&mut buf, b"event:", n.as_str());
        }
        if let Some(i) = &self.id {
            put_field(&mut buf, b"id:", i.as_str());
        }
        if let Some(r) = self.retry {
            // Writing to a `BytesMut` cannot fail.
            let _ = writeln!(buf, "retry: {}", r.0);
        }
        match data {
            Some(d) => put_data(&mut buf, d),
            // A named event without data would never be dispatched.
            None if self.event.is_some() => buf.put_slice(b"data:\n"),
            None => {}
        }
        if buf.is_empty() {
            // An empty builder is an empty comment, never zero bytes that
            // would merge with the next frame.
            buf.put_u8(b':');
            buf.put_u8(b'\n');
        }
        buf.put_u8(b'\n');
        Ok(Event {
            bytes: buf.freeze(),
        })
    }
}

/// JSON with `<`, `>`, `&`, U+2028 and U+2029 written as `\u` escapes:
/// the same value to every JSON parser, and never markup (a `<script>` in a
/// string) where htmx would swap it into the page. In JSON text these
/// characters only occur inside strings, where the escapes mean the same.
pub(crate) fn html_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    if !value.is_empty() {
        buf.put_u8(b' ');
        buf.put_slice(value.as_bytes());
    }
    buf.put_u8(b'\n');
}

fn data_capacity(data: &str) -> usize {
    // One `data: ` prefix per line; count line breaks cheaply.
    let breaks = memchr::memchr2_iter(b'\r', b'\n', data.as_bytes()).count();
    data.len() + (breaks + 1) * 7
}

/// Writes `data` as one `data:` line per line of text; lines end at CRLF, CR
/// or LF exactly as an EventSource parser ends them.
fn put_data(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    while let Some(off) = memchr::memchr2(b'\r', b'\n', &bytes[start..]) {
        let end = start + off;
        put_field(buf, b"data:", &data[start..end]);
        start = if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
            end + 2
        } else {
            end + 1
        };
    }
    put_field(buf, b"data:", &data[start..]);
}

fn check_line(value: &str, field: Field, nul: bool) -> Result<(), Error> {
    let bytes = value.as_bytes();
    let found = if nul {
        memchr::memchr3(b'\r', b'\n', 0, bytes)
    } else {
        memchr::memchr2(b'\r', b'\n', bytes)
    };
    match found {
        Some(position) => Err(Error::InvalidField {
            field,
            byte: bytes[position],
            position,
        }),
        None => Ok(()),
    }
}

const fn const_check(bytes: &[u8], nul: bool) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' || bytes[i] == b'\n' || (nul && bytes[i] == 0) {
            return false;
        }
        i += 1;
    }
    true
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:expr, $nul:expr, $empty_ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Cow<'static, str>);

        impl $name {
            /// Checks `value` and wraps it.
            ///
            /// # Errors
            ///
            /// [`Error::InvalidField`] when `value` holds a forbidden byte.
            pub fn new(value: impl Into<Cow<'static, str>>) -> Result<Self, Error> {
                let value = value.into();
                if !$empty_ok && value.is_empty() {
                    return Err(Error::EmptyEventName);
                }
                check_line(&value, $field, $nul)?;
                Ok(Self(value))
            }

            /// Wraps a literal, checked at compile time when used in a `const`.
            ///
            /// # Panics
            ///
            /// When `value` holds a forbidden byte: this is for literals
            /// written in the program, never for data.
            #[track_caller]
            #[must_use]
            pub const fn from_static(value: &'static str) -> Self {
                assert!(
                    $empty_ok || !value.is_empty(),
                    concat!(stringify!($name), " must not be empty")
                );
                assert!(
                    const_check(value.as_bytes(), $nul),
                    concat!(stringify!($name), " must not contain CR, LF or NUL")
                );
                Self(Cow::Borrowed(value))
            }

            /// The value as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self, Error> {
                Self::new(Cow::Owned(value.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&String> for $name {
            type Error = Error;
            fn try_from(value: &String) -> Result<Self, Error> {
                Self::new(value.clone())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self, Error> {
                Self::try_from(value)
            }
        }

        /// Checked as [`new`](Self::new) checks.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_newtype!(
    /// A checked event name: not empty, no CR, LF or NUL (a NUL would
    /// reach the page as U+0000 in the name; no page listens for it).
    ///
    /// ```
    /// use htmx_sse::event::EventName;
    ///
    /// const CLOSE: EventName = EventName::from_static("close");
    /// assert_eq!(CLOSE.as_str(), "close");
    /// assert!(EventName::new("a\rb").is_err());
    /// assert!(EventName::new("a\0b").is_err());
    /// assert!(EventName::new("").is_err());
    /// ```
    EventName,
    Field::Event,
    true,
    false
);

text_newtype!(
    /// A checked event id: no CR, LF or NUL (browsers ignore an id with NUL).
    /// An empty id is allowed: it resets the browser's last event id.
    ///
    /// ```
    /// use htmx_sse::event::EventId;
    ///
    /// assert_eq!(EventId::new("e1-42")?.as_str(), "e1-42");
    /// assert!(EventId::new("4\02").is_err());
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    EventId,
    Field::Id,
    true,
    true
);

/// A reconnection delay in whole milliseconds (`retry:`).
///
/// From a [`Duration`] (sub-millisecond parts are dropped), from `u64`
/// milliseconds, or parsed from text that is a plain decimal integer.
///
/// ```
/// use htmx_sse::event::Retry;
///
/// assert_eq!(Retry::try_from("3000")?.as_millis(), 3000);
/// assert!(Retry::try_from("3s").is_err());
/// assert!(Retry::try_from("-1").is_err());
/// assert!(Retry::try_from(" 5").is_err());
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Retry(u64);

impl Retry {
    /// A delay of `ms` milliseconds.
    #[must_use]
    pub const fn from_millis(ms: u64) -> Self {
        Retry(ms)
    }

    /// The delay in milliseconds.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }
}

impl From<Duration> for Retry {
    fn from(d: Duration) -> Self {
        Retry(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl From<u64> for Retry {
    fn from(ms: u64) -> Self {
        Retry(ms)
    }
}

impl TryFrom<&str> for Retry {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidRetry {
            value: value.to_owned(),
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        value.parse().map(Retry).map_err(|_| invalid())
    }
}

impl TryFrom<String> for Retry {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        Retry::try_from(value.as_str())
    }
}

/// An event name that survives htmx's comma-separated list (`sse-swap`,
/// `data-sse-swap`): no comma, no white space at either end.
pub(crate) fn check_list_name(name: &EventName) -> Result<(), Error> {
    let s = name.as_str();
    let bad = s.bytes().position(|b| b == b',').or_else(|| {
        let last = s.len() - 1;
        if s.as_bytes()[0].is_ascii_whitespace() {
            Some(0)
        } else if s.as_bytes()[last].is_ascii_whitespace() {
            Some(last)
        } else {
            None
        }
    });
    match bad {
        Some(position) => Err(Error::InvalidField {
            field: Field::Event,
            byte: s.as_bytes()[position],
            position,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::parser::{Parser, SseItem};

    fn enc(b: EventBuilder) -> Bytes {
        b.build().unwrap().into_bytes()
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(&*Event::message("x").into_bytes(), b"data: x\n\n");
        assert_eq!(
            &*enc(Event::builder().event("upd").data("<p>\n</p>")),
            b"event: upd\ndata: <p>\ndata: </p>\n\n"
        );
        assert_eq!(
            &*enc(Event::builder()
                .comment("hi")
                .event("e")
                .id("7")
                .retry(Duration::from_millis(1500))
                .data("d")),
            b": hi\nevent: e\nid: 7\nretry: 1500\ndata: d\n\n"
        );
        assert_eq!(&*Event::HEARTBEAT.into_bytes(), b":\n\n");
        assert_eq!(&*Event::comment("").unwrap().into_bytes(), b":\n\n");
        assert_eq!(&*enc(Event::builder()), b":\n\n");
    }

    #[test]
    fn all_line_breaks_split_data() {
        assert_eq!(
            &*Event::message("a\r\nb\rc\nd").into_bytes(),
            b"data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        // A trailing break becomes a trailing empty line, so it survives.
        assert_eq!(&*Event::message("a\n").into_bytes(), b"data: a\ndata:\n\n");
        // CRLF counts once; CR CR counts twice.
        assert_eq!(
            &*Event::message("a\r\r\nb").into_bytes(),
            b"data: a\ndata:\ndata: b\n\n"
        );
    }

    #[test]
    fn leading_space_is_kept() {
        assert_eq!(&*Event::message(" x").into_bytes(), b"data:  x\n\n");
        assert_eq!(
            &*enc(Event::builder().event(" sp").data("")),
            b"event:  sp\ndata:\n\n"
        );
    }

    #[test]
    fn named_event_always_has_data() {
        assert_eq!(
            &*enc(Event::builder().event("ping")),
            b"event: ping\ndata:\n\n"
        );
        assert_eq!(
            &*enc(Event::builder().event("ping").data("")),
            b"event: ping\ndata:\n\n"
        );
        // An id-only frame updates the last event id and dispatches nothing:
        // no empty message is swapped into the page.
        assert_eq!(&*enc(Event::builder().id("9")), b"id: 9\n\n");
        assert_eq!(&*enc(Event::builder().retry(10u64)), b"retry: 10\n\n");
    }

    #[test]
    fn json_data() {
        #[derive(serde::Serialize)]
        struct P {
            n: u32,
            s: &'static str,
        }
        assert_eq!(
            &*enc(Event::builder().json_data(&P { n: 1, s: "a\nb" })),
            b"data: {\"n\":1,\"s\":\"a\\nb\"}\n\n"
        );
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        let err = Event::builder().json_data(&bad).build().unwrap_err();
        assert!(matches!(err, Error::Json(_)), "{err}");
    }

    #[test]
    fn injection_is_refused() {
        let cases: [(EventBuilder, Field, u8); 7] = [
            (Event::builder().event("a\nid: 1"), Field::Event, b'\n'),
            (Event::builder().event("a\rb"), Field::Event, b'\r'),
            (Event::builder().id("1\ndata: x"), Field::Id, b'\n'),
            (Event::builder().id("1\r"), Field::Id, b'\r'),
            (Event::builder().id("1\0"), Field::Id, 0),
            (
                Event::builder().comment("c\n\ndata: x"),
                Field::Comment,
                b'\n',
            ),
            (Event::builder().comment("c\r"), Field::Comment, b'\r'),
        ];
        for (b, field, byte) in cases {
            match b.data("ok").build() {
                Err(Error::InvalidField {
                    field: f, byte: by, ..
                }) => {
                    assert_eq!((f, by), (field, byte));
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
        // NUL is refused in names, like CR and LF; comments may hold it
        // (browsers skip comments whole).
        assert!(matches!(
            Event::builder().event("a\0b").build(),
            Err(Error::InvalidField {
                field: Field::Event,
                byte: 0,
                position: 1
            })
        ));
        assert!(matches!(
            Event::builder().event("").build(),
            Err(Error::EmptyEventName)
        ));
    }

    #[test]
    fn first_error_is_kept() {
        let err = Event::builder()
            .id("bad\n")
            .event("also\nbad")
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidField {
                field: Field::Id,
                ..
            }
        ));
    }

    #[test]
    fn retry_must_be_an_integer() {
        for bad in [
            "",
            "3s",
            "-1",
            "1.5",
            " 1",
            "1 ",
            "+1",
            "99999999999999999999999",
        ] {
            let err = Event::builder().retry(bad).build().unwrap_err();
            assert!(matches!(err, Error::InvalidRetry { .. }), "{bad:?}");
        }
        assert_eq!(
            &*enc(Event::builder().retry("0250").data("x")),
            b"retry: 250\ndata: x\n\n"
        );
    }

    #[test]
    #[should_panic(expected = "must not contain CR, LF or NUL")]
    fn from_static_panics_on_newline() {
        let _ = EventName::from_static("a\nb");
    }

    #[test]
    fn validated_types_pass_through() {
        const NAME: EventName = EventName::from_static("tick");
        let id = EventId::new(String::from("5")).unwrap();
        assert_eq!(
            &*enc(Event::builder().event(NAME).id(id).data("x")),
            b"event: tick\nid: 5\ndata: x\n\n"
        );
    }

    fn parse_all(bytes: &[u8]) -> Vec<SseItem> {
        let mut p = Parser::new();
        p.feed(bytes)
    }

    proptest::proptest! {
        #[test]
        fn any_data_survives_a_spec_parser(data in ".*", name in "[^\r\n\0]{1,20}", id in "[^\r\n\0]{0,20}") {
            let ev = Event::builder().event(name.as_str()).id(id.as_str()).data(data.clone()).build().unwrap();
            let items = parse_all(ev.as_bytes());
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            proptest::prop_assert_eq!(items.len(), 1);
            match &items[0] {
                SseItem::Event(e) => {
                    proptest::prop_assert_eq!(&e.data, &expected);
                    proptest::prop_assert_eq!(&e.event, &name);
                    proptest::prop_assert_eq!(&e.last_event_id, &id);
                }
                other => proptest::prop_assert!(false, "not an event: {:?}", other),
            }
        }

        #[test]
        fn any_message_survives_split_delivery(data in "[ -~\r\n\u{80}-\u{10FFFF}]{0,64}", cut in 0usize..80) {
            // The parser must give the same answer however the bytes are chunked.
            let ev = Event::message(&data);
            let bytes = ev.as_bytes();
            let cut = cut.min(bytes.len());
            let mut p = Parser::new();
            let mut items = p.feed(&bytes[..cut]);
            items.extend(p.feed(&bytes[cut..]));
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            proptest::prop_assert_eq!(items.len(), 1);
            match &items[0] {
                SseItem::Event(e) => {
                    proptest::prop_assert_eq!(&e.data, &expected);
                    proptest::prop_assert_eq!(e.event.as_str(), "message");
                }
                other => proptest::prop_assert!(false, "not an event: {:?}", other),
            }
        }
    }
}
