//! Typed names: an application's event names and target ids, declared once
//! and used on both sides (the page and the stream), so that renaming or
//! deleting one is a build error wherever it is still used, not a region
//! that silently stops updating.
//!
//! [`names!`](crate::names!) declares them as constants in a module of
//! your own: event names as [`EventName`](crate::event::EventName), target ids as [`TargetId`],
//! both checked at compile time (an id that htmx cannot target, or an
//! event name with a line break, does not build), plus `EVENTS` and
//! `TARGETS`, every name declared, for the page check
//! (`testing::check_page`, feature `testing`).
//!
//! ```
//! use htmx_sse::Flavor;
//! use htmx_sse::connections::scripts::SseElement;
//! use htmx_sse::streaming::{OobStreamBuilder, Swap};
//!
//! htmx_sse::names! {
//!     /// The dashboard's names.
//!     pub mod dash {
//!         events { TICK = "tick" }
//!         targets { CLOCK = "clock", LOG = "log" }
//!     }
//! }
//!
//! // The page: a target id in maud markup, an event in the element.
//! let page = maud::html! { span id=(dash::CLOCK) {} ul id=(dash::LOG) {} };
//! let element = SseElement::new("/sse", Flavor::Htmx2).swap_event(dash::TICK).render()?;
//! // The stream: the same names.
//! let update = OobStreamBuilder::new()
//!     .add(dash::CLOCK, Swap::InnerHtml, "12:00")
//!     .add(dash::LOG, Swap::BeforeEnd, maud::html! { li { "tick" } })
//!     .build()?;
//! assert!(page.into_string().contains(r#"id="clock""#));
//! assert!(element.as_str().contains(r#"sse-swap="tick""#));
//! assert!(update.as_str().contains(r#"id="clock""#));
//! assert_eq!(dash::TARGETS.len(), 2);
//! # Ok::<(), htmx_sse::Error>(())
//! ```
//!
//! A name used after it was renamed does not build:
//!
//! ```compile_fail,E0425
//! htmx_sse::names! {
//!     pub mod dash {
//!         events { TICK = "tick" }
//!         targets { CLOCK = "clock" }
//!     }
//! }
//! // `CLOCK` was renamed `TIME` in the declaration, but this still uses it:
//! let update = htmx_sse::streaming::OobStreamBuilder::new()
//!     .add(dash::TIME, htmx_sse::streaming::Swap::InnerHtml, "12:00");
//! ```
//!
//! Neither does an id htmx cannot target:
//!
//! ```compile_fail,E0080
//! htmx_sse::names! {
//!     pub mod dash {
//!         events {}
//!         targets { ROW = "1st-row" } // ids start with a letter or `_`
//!     }
//! }
//! let _ = dash::ROW;
//! ```
//!
//! Plain strings keep working everywhere a name is taken.

use std::borrow::Cow;
use std::fmt;

use crate::error::Error;

/// An element id that an out-of-band swap can target: an ASCII letter or
/// `_`, then ASCII letters, digits, `-` and `_`. Checked at compile time
/// with [`from_static`](Self::from_static) in a `const`, at run time with
/// [`new`](Self::new).
///
/// ```
/// use htmx_sse::names::TargetId;
///
/// const CLOCK: TargetId = TargetId::from_static("clock");
/// assert_eq!(CLOCK.as_str(), "clock");
/// assert!(TargetId::new("row 7").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(Cow<'static, str>);

const fn valid_target(b: &[u8]) -> bool {
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return false;
    }
    let mut i = 1;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

impl TargetId {
    /// Checks `id` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`] when htmx could not target it.
    pub fn new(id: impl Into<Cow<'static, str>>) -> Result<Self, Error> {
        let id = id.into();
        crate::streaming::oob::check_target(&id)?;
        Ok(TargetId(id))
    }

    /// Wraps a literal, checked at compile time when used in a `const`.
    ///
    /// # Panics
    ///
    /// When `id` is not a valid target id: this is for literals written in
    /// the program, never for data (in a `const` it is a build error).
    #[track_caller]
    #[must_use]
    pub const fn from_static(id: &'static str) -> Self {
        assert!(
            valid_target(id.as_bytes()),
            "a target id is an ASCII letter or `_`, then letters, digits, `-` and `_`"
        );
        TargetId(Cow::Borrowed(id))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CSS selector of the element with this id, `#id`: what
    /// `hx-target` takes.
    ///
    /// ```
    /// use htmx_sse::names::TargetId;
    ///
    /// assert_eq!(TargetId::from_static("notes").selector(), "#notes");
    /// ```
    #[must_use]
    pub fn selector(&self) -> String {
        let mut s = String::with_capacity(self.0.len() + 1);
        s.push('#');
        s.push_str(&self.0);
        s
    }
}

impl fmt::Debug for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The id itself: what `id=(…)` in maud and `{{ … }}` in askama write.
impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TargetId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Declares an application's event names and target ids as constants in a
/// module; see the [`names`](mod@crate::names) module.
///
/// ```
/// htmx_sse::names! {
///     pub mod chat {
///         events { MESSAGE = "chat", TYPING = "typing" }
///         targets { LOG = "chat-log" }
///     }
/// }
/// assert_eq!(chat::MESSAGE.as_str(), "chat");
/// assert_eq!(chat::EVENTS.len(), 2);
/// ```
#[macro_export]
macro_rules! names {
    (
        $(#[$meta:meta])*
        $vis:vis mod $module:ident {
            events { $($event:ident = $event_name:literal),* $(,)? }
            targets { $($target:ident = $target_id:literal),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        $vis mod $module {
            $(
                #[doc = concat!("The event `", $event_name, "`.")]
                pub const $event: $crate::event::EventName =
                    $crate::event::EventName::from_static($event_name);
            )*
            $(
                #[doc = concat!("The target `#", $target_id, "`.")]
                pub const $target: $crate::names::TargetId =
                    $crate::names::TargetId::from_static($target_id);
            )*
            /// Every event name declared here.
            pub const EVENTS: &[$crate::event::EventName] = &[$($event),*];
            /// Every target id declared here.
            pub const TARGETS: &[$crate::names::TargetId] = &[$($target),*];
        }
    };
}
