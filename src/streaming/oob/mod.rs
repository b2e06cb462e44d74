//! Out-of-band updates: one message that swaps HTML into several page regions
//! at once.
//!
//! [`OobStreamBuilder`] collects `(target id, swap style, HTML)` triples and
//! builds them into one [`Fragment`]: send it as one unnamed SSE event
//! ([`OobStreamBuilder::build_event`]) and htmx updates every region from it.
//!
//! ```
//! use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
//!
//! let fragment = OobStreamBuilder::new()
//!     .add("count", Swap::InnerHtml, "42")
//!     .add("log", Swap::BeforeEnd, htmx_sse::Fragment::trusted("<li>tick</li>"))
//!     .build()?;
//! assert_eq!(
//!     fragment.as_str(),
//!     "<div id=\"count\" hx-swap-oob=\"innerHTML\">42</div>\
//!      <div id=\"log\" hx-swap-oob=\"beforeend\"><li>tick</li></div>",
//! );
//! # Ok::<(), htmx_sse::Error>(())
//! ```
//!
//! # Flavours
//!
//! | [`OobFlavor`] | emits | works with |
//! | --- | --- | --- |
//! | [`SwapOob`](OobFlavor::SwapOob) (default) | `hx-swap-oob` attributes | htmx 2 (with `htmx-ext-sse`) and htmx 4 |
//! | [`Partial`](OobFlavor::Partial) | `<hx-partial hx-target="#id" hx-swap="style">` elements | htmx 4, and htmx 2.0.11+ |
//!
//! Both flavours give the same page for the same calls: pick `Partial` when
//! every client runs htmx 4 (or 2.0.11+) and you want the message to read as
//! what it is, `SwapOob` otherwise.
//!
//! # Wrapped and unwrapped
//!
//! [`add`](OobStreamBuilder::add) wraps the content in a `<div>` that carries
//! the swap, so any HTML goes, text included:
//! `<div id="count" hx-swap-oob="innerHTML">42</div>`. For every style but
//! `outerHTML`/`outerMorph` htmx swaps in the wrapper's children, so the
//! target receives exactly the content; for those two the target becomes the
//! wrapper `<div>` (keeping its id).
//!
//! [`add_unwrapped`](OobStreamBuilder::add_unwrapped) takes content that is a
//! single element and puts the swap on that element itself:
//! `<tr id="row-7" hx-swap-oob="outerHTML:#row-7">…</tr>`. The element keeps
//! the swap style it was given (`innerHTML` stays `innerHTML`; it does not
//! become `true`, which would mean `outerHTML`).
//!
//! ## Table rows need the unwrapped form
//!
//! An HTML parser drops a `<tr>` (or `<td>`, `<tbody>`, …) that appears inside
//! a `<div>`: the row's tags vanish and only its text survives. So never
//! `add` table parts; give the row itself to `add_unwrapped`, or, to insert
//! rows, a `<tbody>` around them:
//!
//! ```
//! use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
//!
//! let fragment = OobStreamBuilder::new()
//!     // Replace one row.
//!     .add_unwrapped("row-7", Swap::OuterHtml, htmx_sse::Fragment::trusted(r#"<tr id="row-7"><td>seven</td></tr>"#))
//!     // Append a row: htmx swaps in the <tbody>'s children.
//!     .add_unwrapped("rows", Swap::BeforeEnd, htmx_sse::Fragment::trusted("<tbody><tr><td>new</td></tr></tbody>"))
//!     .build()?;
//! assert_eq!(
//!     fragment.as_str(),
//!     r##"<tr hx-swap-oob="outerHTML:#row-7" id="row-7"><td>seven</td></tr><tbody hx-swap-oob="beforeend:#rows"><tr><td>new</td></tr></tbody>"##,
//! );
//! # Ok::<(), htmx_sse::Error>(())
//! ```
//!
//! The same holds for an `<li>` outside a list (wrap it in `<ul>`) and for
//! `<option>`s (wrap them in `<select>`).
//!
//! # htmx 2: an `hx-swap-oob`-only message still empties the swap target
//!
//! htmx-ext-sse swaps every message into the `sse-swap` element, and htmx 2
//! swaps what is left after taking out the `hx-swap-oob` parts, even when
//! nothing is left ([htmx#3263]): the element is emptied. (A message of
//! only `<hx-partial>` elements, the [`OobFlavor::Partial`] output, does not
//! have this problem: htmx 2.0.11 skips the main swap then, as the browser
//! tests show.) Give `hx-swap-oob` messages an element of their own that
//! swaps nothing:
//!
//! ```html
//! <div hx-ext="sse" sse-connect="/events">
//!   <div sse-swap="message" hx-swap="none"></div>
//!   <span id="count"></span> <ul id="log"></ul>
//! </div>
//! ```
//!
//! htmx 4 swaps unnamed events without `sse-swap`, and leaves the target
//! alone when a message holds only `<hx-partial>` elements (always) or only
//! `hx-swap-oob` elements (unless `htmx.config.allowEmptySwapAfterOOB` or
//! `swapEmpty:true` says otherwise).
//!
//! A target id that is not on the page is an error event in htmx 2
//! (`htmx:oobErrorNoTarget`) but silently ignored by htmx 4: check ids in
//! a browser test.
//!
//! # Target ids
//!
//! Target ids are checked: non-empty, an ASCII letter or `_` first, then
//! ASCII letters, digits, `-` and `_`. Such an id is a valid CSS selector
//! after `#` and safe inside a quoted attribute. The first bad id (or
//! unwrapped content that is not one element, or content that failed to
//! render) is kept and returned by [`build`](OobStreamBuilder::build), as
//! `http::request::Builder` does.
//!
//! Escaping user data inside the content is the template engine's job (maud,
//! askama); the builder moves HTML as it is.
//!
//! [htmx#3263]: https://github.com/bigskysoftware/htmx/issues/3263

mod scan;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::event::Event;
use crate::fragment::{Fragment, IntoFragment};

use self::scan::Anatomy;

/// An htmx swap style: how HTML goes into its target.
///
/// The names are htmx's own ([`as_str`](Swap::as_str)); `Display` and
/// `FromStr` use them. [`InnerMorph`](Swap::InnerMorph) and
/// [`OuterMorph`](Swap::OuterMorph) exist in htmx 4 only.
///
/// ```
/// use htmx_sse::streaming::oob::Swap;
///
/// assert_eq!(Swap::default(), Swap::InnerHtml);
/// assert_eq!(Swap::BeforeEnd.to_string(), "beforeend");
/// assert_eq!("outerHTML".parse::<Swap>()?, Swap::OuterHtml);
/// assert!("outerhtml".parse::<Swap>().is_err());
/// # Ok::<(), htmx_sse::streaming::oob::InvalidSwap>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Swap {
    /// `innerHTML`: replace the target's children.
    #[default]
    InnerHtml,
    /// `outerHTML`: replace the target itself.
    OuterHtml,
    /// `textContent`: replace the target's text, without parsing HTML.
    TextContent,
    /// `beforebegin`: insert before the target, as a sibling.
    BeforeBegin,
    /// `afterbegin`: insert before the target's first child.
    AfterBegin,
    /// `beforeend`: insert after the target's last child.
    BeforeEnd,
    /// `afterend`: insert after the target, as a sibling.
    AfterEnd,
    /// `delete`: remove the target; the content is ignored.
    Delete,
    /// `none`: change nothing.
    None,
    /// `innerMorph`: morph the target's children into the content, keeping
    /// focus and state (htmx 4 only).
    InnerMorph,
    /// `outerMorph`: morph the target itself into the content (htmx 4 only).
    OuterMorph,
}

impl Swap {
    /// Every swap style, in declaration order.
    ///
    /// ```
    /// use htmx_sse::streaming::Swap;
    ///
    /// assert!(Swap::ALL.iter().all(|s| s.as_str().parse::<Swap>() == Ok(*s)));
    /// ```
    pub const ALL: [Swap; 11] = [
        Swap::InnerHtml,
        Swap::OuterHtml,
        Swap::TextContent,
        Swap::BeforeBegin,
        Swap::AfterBegin,
        Swap::BeforeEnd,
        Swap::AfterEnd,
        Swap::Delete,
        Swap::None,
        Swap::InnerMorph,
        Swap::OuterMorph,
    ];

    /// The style as htmx spells it in `hx-swap` and `hx-swap-oob`.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::Swap;
    ///
    /// assert_eq!(Swap::InnerHtml.as_str(), "innerHTML");
    /// assert_eq!(Swap::OuterMorph.as_str(), "outerMorph");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Swap::InnerHtml => "innerHTML",
            Swap::OuterHtml => "outerHTML",
            Swap::TextContent => "textContent",
            Swap::BeforeBegin => "beforebegin",
            Swap::AfterBegin => "afterbegin",
            Swap::BeforeEnd => "beforeend",
            Swap::AfterEnd => "afterend",
            Swap::Delete => "delete",
            Swap::None => "none",
            Swap::InnerMorph => "innerMorph",
            Swap::OuterMorph => "outerMorph",
        }
    }

    /// Whether the element carrying an out-of-band swap goes in itself
    /// (`outerHTML`, `outerMorph`); for every other style htmx swaps in only
    /// its children.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::Swap;
    ///
    /// assert!(Swap::OuterHtml.is_inline());
    /// assert!(!Swap::BeforeEnd.is_inline());
    /// ```
    #[must_use]
    pub const fn is_inline(self) -> bool {
        matches!(self, Swap::OuterHtml | Swap::OuterMorph)
    }
}

impl fmt::Display for Swap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Swap {
    type Err = InvalidSwap;

    /// Parses htmx's exact spelling (`"innerHTML"`, `"beforeend"`, …);
    /// anything else, other cases and modifiers (`"innerHTML swap:1s"`)
    /// included, is an error.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::Swap;
    ///
    /// assert_eq!("textContent".parse::<Swap>()?, Swap::TextContent);
    /// assert!("innerHTML swap:1s".parse::<Swap>().is_err());
    /// # Ok::<(), htmx_sse::streaming::oob::InvalidSwap>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Swap::ALL
            .into_iter()
            .find(|swap| swap.as_str() == s)
            .ok_or_else(|| InvalidSwap {
                value: s.to_owned(),
            })
    }
}

/// The error from parsing a [`Swap`] that is not an htmx swap style.
///
/// ```
/// use htmx_sse::streaming::oob::Swap;
///
/// let err = "sideways".parse::<Swap>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown swap style \"sideways\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSwap {
    value: String,
}

impl fmt::Display for InvalidSwap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown swap style {:?}", self.value)
    }
}

impl std::error::Error for InvalidSwap {}

/// How out-of-band updates are written; see the [module docs](self).
///
/// ```
/// use htmx_sse::streaming::oob::{OobFlavor, OobStreamBuilder, Swap};
///
/// let fragment = OobStreamBuilder::new()
///     .flavor(OobFlavor::Partial)
///     .add("count", Swap::InnerHtml, "42")
///     .build()?;
/// assert_eq!(
///     fragment.as_str(),
///     r##"<hx-partial hx-target="#count" hx-swap="innerHTML">42</hx-partial>"##,
/// );
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OobFlavor {
    /// `hx-swap-oob` attributes: htmx 2 and htmx 4.
    #[default]
    SwapOob,
    /// `<hx-partial hx-target="#id" hx-swap="style">` elements: htmx 4, and
    /// htmx 2.0.11+.
    Partial,
}

/// The way each htmx writes out-of-band updates natively: `hx-swap-oob`
/// for htmx 2, `<hx-partial>` for htmx 4. A page whose htmx version is one
/// [`Flavor`](crate::Flavor) value passes the same value to
/// [`OobStreamBuilder::flavor`]. (Both flavours read both forms, from htmx
/// 2.0.11 on: a stream shared by pages of both flavours may keep either.)
///
/// ```
/// use htmx_sse::Flavor;
/// use htmx_sse::streaming::oob::OobFlavor;
///
/// assert_eq!(OobFlavor::from(Flavor::Htmx2), OobFlavor::SwapOob);
/// assert_eq!(OobFlavor::from(Flavor::Htmx4), OobFlavor::Partial);
/// ```
impl From<crate::Flavor> for OobFlavor {
    fn from(flavor: crate::Flavor) -> Self {
        match flavor {
            crate::Flavor::Htmx2 => OobFlavor::SwapOob,
            crate::Flavor::Htmx4 => OobFlavor::Partial,
        }
    }
}

/// Builds one message that updates several page regions at once.
///
/// Each `add*` call names a target element by id, a [`Swap`] style and the
/// HTML; [`build`](Self::build) joins them into one [`Fragment`] in the
/// chosen [`OobFlavor`]. The flavour may be set at any point before
/// `build`. Errors are kept, not raised: the first bad id, unwrapped content
/// that is not one element, or content that failed to render is returned by
/// `build`, and every `add*` after it does nothing.
///
/// ```
/// # #[cfg(feature = "maud")] {
/// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
///
/// let user = "<script>alert(1)</script>";
/// let event = OobStreamBuilder::new()
///     .add("greeting", Swap::InnerHtml, maud::html! { b { "hi " (user) } })
///     .add_unwrapped("status", Swap::OuterHtml, maud::html! { p id="status" { "online" } })
///     .build_event()?;
/// assert_eq!(
///     event.as_bytes(),
///     concat!(
///         r#"data: <div id="greeting" hx-swap-oob="innerHTML"><b>hi &lt;script&gt;alert(1)&lt;/script&gt;</b></div>"#,
///         r##"<p hx-swap-oob="outerHTML:#status" id="status">online</p>"##,
///         "\n\n",
///     ),
/// );
/// # }
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct OobStreamBuilder {
    flavor: OobFlavor,
    parts: Vec<Part>,
    error: Option<Error>,
}

/// One region's update, validated, waiting for [`OobStreamBuilder::build`].
#[derive(Debug, Clone)]
struct Part {
    target: Box<str>,
    swap: Swap,
    html: String,
    shape: Shape,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Goes inside a wrapper written by the builder.
    Wrapped,
    /// A single element, carrying the swap itself.
    Unwrapped(Anatomy),
}

impl OobStreamBuilder {
    /// An empty builder in the [`SwapOob`](OobFlavor::SwapOob) flavour.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::OobStreamBuilder;
    ///
    /// let fragment = OobStreamBuilder::new().build()?;
    /// assert!(fragment.is_empty());
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `elements` updates before it
    /// reallocates.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let builder = OobStreamBuilder::with_capacity(2)
    ///     .add("a", Swap::InnerHtml, "1")
    ///     .add("b", Swap::InnerHtml, "2");
    /// assert_eq!(builder.len(), 2);
    /// ```
    pub fn with_capacity(elements: usize) -> Self {
        Self {
            parts: Vec::with_capacity(elements),
            ..Self::default()
        }
    }

    /// Sets how the updates are written ([`OobFlavor::SwapOob`] by default):
    /// an [`OobFlavor`], or the page's [`Flavor`](crate::Flavor) for the
    /// form that htmx version writes natively. It applies to every update,
    /// those added before the call included.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobFlavor, OobStreamBuilder, Swap};
    ///
    /// let fragment = OobStreamBuilder::new()
    ///     .add("log", Swap::BeforeEnd, htmx_sse::Fragment::trusted("<li>x</li>"))
    ///     .flavor(OobFlavor::Partial)
    ///     .build()?;
    /// assert_eq!(
    ///     fragment.as_str(),
    ///     r##"<hx-partial hx-target="#log" hx-swap="beforeend"><li>x</li></hx-partial>"##,
    /// );
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// With the page's flavour:
    ///
    /// ```
    /// use htmx_sse::Flavor;
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let update = |flavor: Flavor| OobStreamBuilder::new().flavor(flavor).add("n", Swap::InnerHtml, "1").build();
    /// assert_eq!(update(Flavor::Htmx2)?.as_str(), r#"<div id="n" hx-swap-oob="innerHTML">1</div>"#);
    /// assert_eq!(update(Flavor::Htmx4)?.as_str(), r##"<hx-partial hx-target="#n" hx-swap="innerHTML">1</hx-partial>"##);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn flavor(mut self, flavor: impl Into<OobFlavor>) -> Self {
        self.flavor = flavor.into();
        self
    }

    /// Adds `content` for the element with id `target_id`, wrapped in a
    /// `<div>` that carries the swap: the common case, for any HTML or text.
    ///
    /// For every style but `outerHTML`/`outerMorph` the target receives
    /// exactly `content`; for those two it becomes
    /// `<div id="{target_id}">{content}</div>`. Do not use it for table
    /// parts (see the [module docs](self#table-rows-need-the-unwrapped-form)).
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let fragment = OobStreamBuilder::new()
    ///     .add("count", Swap::InnerHtml, htmx_sse::Fragment::trusted("<b>3</b>"))
    ///     .build()?;
    /// assert_eq!(fragment.as_str(), r#"<div id="count" hx-swap-oob="innerHTML"><b>3</b></div>"#);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Kept for [`build`](Self::build): [`Error::InvalidTarget`] for a bad
    /// id, or the error from rendering `content`.
    pub fn add(self, target_id: impl AsRef<str>, swap: Swap, content: impl IntoFragment) -> Self {
        self.add_element(target_id, swap, content, true)
    }

    /// Adds `content`, which must be a single element, for the element with
    /// id `target_id`; the element itself carries the swap.
    ///
    /// The content may start with whitespace and HTML comments and end with
    /// whitespace; they stay outside the swap, at the top level of the
    /// message, where htmx 2 swaps them into the `sse-swap` element (use a
    /// bus element with `hx-swap="none"`, see the [module docs](self)). With `outerHTML`/`outerMorph` the element replaces the
    /// target; with the other styles htmx swaps in its children, so choose a
    /// root element that is valid where it is parsed (`<tbody>` around rows,
    /// `<ul>` around list items).
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let fragment = OobStreamBuilder::new()
    ///     .add_unwrapped("cart", Swap::InnerHtml, htmx_sse::Fragment::trusted(r#"<span class="n">3</span>"#))
    ///     .build()?;
    /// assert_eq!(
    ///     fragment.as_str(),
    ///     r##"<span hx-swap-oob="innerHTML:#cart" class="n">3</span>"##,
    /// );
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Kept for [`build`](Self::build): [`Error::InvalidTarget`] for a bad
    /// id, the error from rendering `content`, or [`Error::NotAnElement`]
    /// when the content does not start with an element, holds more than one
    /// element, or already has an `hx-swap-oob` attribute.
    pub fn add_unwrapped(
        self,
        target_id: impl AsRef<str>,
        swap: Swap,
        content: impl IntoFragment,
    ) -> Self {
        self.add_element(target_id, swap, content, false)
    }

    /// Adds `content` for the element with id `target_id`, wrapped
    /// ([`add`](Self::add)) when `wrap` is true, unwrapped
    /// ([`add_unwrapped`](Self::add_unwrapped)) when it is false.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// use htmx_sse::Fragment;
    ///
    /// let rows = [("r1", Fragment::trusted("<tr id=\"r1\"><td>1</td></tr>"))];
    /// let mut builder = OobStreamBuilder::new();
    /// for (id, html) in rows {
    ///     builder = builder.add_element(id, Swap::OuterHtml, html, false);
    /// }
    /// assert_eq!(
    ///     builder.build()?.as_str(),
    ///     r##"<tr hx-swap-oob="outerHTML:#r1" id="r1"><td>1</td></tr>"##,
    /// );
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Kept for [`build`](Self::build), as for `add` and `add_unwrapped`.
    pub fn add_element(
        mut self,
        target_id: impl AsRef<str>,
        swap: Swap,
        content: impl IntoFragment,
        wrap: bool,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        match Part::new(target_id.as_ref(), swap, content, wrap) {
            Ok(part) => self.parts.push(part),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// How many updates were added (those that failed not counted).
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// assert_eq!(OobStreamBuilder::new().add("a", Swap::Delete, "").len(), 1);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no update was added.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::OobStreamBuilder;
    ///
    /// assert!(OobStreamBuilder::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Removes every update and the kept error, keeping the flavour and the
    /// allocated room, to build another message.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let mut builder = OobStreamBuilder::new().add("bad id", Swap::InnerHtml, "x");
    /// builder.clear();
    /// assert!(builder.is_empty());
    /// assert!(builder.build().is_ok());
    /// ```
    pub fn clear(&mut self) {
        self.parts.clear();
        self.error = None;
    }

    /// Joins every update into one fragment, in the order added; no update
    /// gives an empty fragment.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let fragment = OobStreamBuilder::new()
    ///     .add("a", Swap::OuterHtml, "1")
    ///     .add("b", Swap::Delete, "")
    ///     .build()?;
    /// assert_eq!(
    ///     fragment.as_str(),
    ///     r#"<div id="a" hx-swap-oob="outerHTML">1</div><div id="b" hx-swap-oob="delete"></div>"#,
    /// );
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The first error met by an `add*` call: [`Error::InvalidTarget`],
    /// [`Error::NotAnElement`], or the content's own rendering error.
    pub fn build(self) -> Result<Fragment, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let capacity = self.parts.iter().map(Part::size_hint).sum();
        let mut out = String::with_capacity(capacity);
        for part in &self.parts {
            part.render_into(self.flavor, &mut out);
        }
        Ok(Fragment::trusted(out))
    }

    /// Builds the fragment ([`build`](Self::build)) into an unnamed SSE
    /// event: what htmx 2 swaps through `sse-swap="message"` and htmx 4
    /// swaps by default.
    ///
    /// ```
    /// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
    ///
    /// let event = OobStreamBuilder::new().add("n", Swap::InnerHtml, "1").build_event()?;
    /// assert_eq!(event.as_bytes(), "data: <div id=\"n\" hx-swap-oob=\"innerHTML\">1</div>\n\n");
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`build`](Self::build).
    pub fn build_event(self) -> Result<Event, Error> {
        self.build().map(Event::from)
    }
}

/// A builder is content too: [`build`](OobStreamBuilder::build) it.
///
/// ```
/// use htmx_sse::IntoFragment;
/// use htmx_sse::streaming::oob::{OobStreamBuilder, Swap};
///
/// let fragment = OobStreamBuilder::new().add("n", Swap::InnerHtml, "1").into_fragment()?;
/// assert_eq!(fragment.as_str(), r#"<div id="n" hx-swap-oob="innerHTML">1</div>"#);
/// # Ok::<(), htmx_sse::Error>(())
/// ```
impl IntoFragment for OobStreamBuilder {
    fn into_fragment(self) -> Result<Fragment, Error> {
        self.build()
    }
}

impl Part {
    fn new(
        target_id: &str,
        swap: Swap,
        content: impl IntoFragment,
        wrap: bool,
    ) -> Result<Part, Error> {
        check_target(target_id)?;
        let html = content.into_fragment()?.into_string();
        let shape = if wrap {
            Shape::Wrapped
        } else {
            Shape::Unwrapped(Anatomy::of(&html).map_err(|reason| Error::NotAnElement { reason })?)
        };
        Ok(Part {
            target: target_id.into(),
            swap,
            html,
            shape,
        })
    }

    /// Bytes this part renders to, at most.
    fn size_hint(&self) -> usize {
        // The longest markup around the content is the Partial flavour's
        // wrapped inline form: 67 bytes, the id twice, the style once.
        self.html.len() + 2 * self.target.len() + self.swap.as_str().len() + 67
    }

    fn render_into(&self, flavor: OobFlavor, out: &mut String) {
        let (id, swap, html) = (&*self.target, self.swap, self.html.as_str());
        match (flavor, self.shape) {
            (OobFlavor::SwapOob, Shape::Wrapped) => {
                push_div_open(out, id, Some(swap));
                out.push_str(html);
                out.push_str("</div>");
            }
            (OobFlavor::SwapOob, Shape::Unwrapped(a)) => {
                out.push_str(&html[..a.name_end]);
                out.push_str(" hx-swap-oob=\"");
                out.push_str(swap.as_str());
                out.push_str(":#");
                out.push_str(id);
                out.push('"');
                out.push_str(&html[a.name_end..]);
            }
            (OobFlavor::Partial, Shape::Wrapped) => {
                push_partial_open(out, id, swap);
                if swap.is_inline() {
                    push_div_open(out, id, None);
                    out.push_str(html);
                    out.push_str("</div>");
                } else {
                    out.push_str(html);
                }
                out.push_str("</hx-partial>");
            }
            (OobFlavor::Partial, Shape::Unwrapped(a)) => {
                let inside = if swap.is_inline() {
                    a.start..a.end
                } else {
                    a.inner_start..a.inner_end
                };
                out.push_str(&html[..a.start]);
                push_partial_open(out, id, swap);
                out.push_str(&html[inside]);
                out.push_str("</hx-partial>");
                out.push_str(&html[a.end..]);
            }
        }
    }
}

/// `<div id="{id}" hx-swap-oob="{swap}">`, or `<div id="{id}">` without a swap.
fn push_div_open(out: &mut String, id: &str, swap: Option<Swap>) {
    out.push_str("<div id=\"");
    out.push_str(id);
    if let Some(swap) = swap {
        out.push_str("\" hx-swap-oob=\"");
        out.push_str(swap.as_str());
    }
    out.push_str("\">");
}

/// `<hx-partial hx-target="#{id}" hx-swap="{swap}">`.
fn push_partial_open(out: &mut String, id: &str, swap: Swap) {
    out.push_str("<hx-partial hx-target=\"#");
    out.push_str(id);
    out.push_str("\" hx-swap=\"");
    out.push_str(swap.as_str());
    out.push_str("\">");
}

/// Checks that `id` is a plain HTML id: an ASCII letter or `_`, then ASCII
/// letters, digits, `-` and `_`. `#id` is then a valid CSS selector, and
/// the id is safe inside a double-quoted attribute. Shared with the
/// `sse-connect` element builder.
pub(crate) fn check_target(id: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidTarget {
            id: crate::connections::truncate_for_error(id),
            reason,
        })
    };
    let mut bytes = id.bytes();
    match bytes.next() {
        None => invalid("empty"),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            invalid("must start with an ASCII letter or underscore")
        }
        Some(_) if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
            invalid("may hold only ASCII letters, digits, '-' and '_'")
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::oob::scan::*;

    fn build(b: OobStreamBuilder) -> String {
        b.build().unwrap().into_string()
    }

    fn one(flavor: OobFlavor, swap: Swap, content: &str, wrap: bool) -> String {
        build(OobStreamBuilder::new().flavor(flavor).add_element(
            "t",
            swap,
            Fragment::trusted(content),
            wrap,
        ))
    }

    fn not_an_element(content: &str) -> &'static str {
        match OobStreamBuilder::new()
            .add_unwrapped("t", Swap::OuterHtml, Fragment::trusted(content))
            .build()
        {
            Err(Error::NotAnElement { reason }) => reason,
            other => panic!("{content:?}: expected NotAnElement, got {other:?}"),
        }
    }

    #[test]
    fn swap_names_round_trip() {
        let names = [
            "innerHTML",
            "outerHTML",
            "textContent",
            "beforebegin",
            "afterbegin",
            "beforeend",
            "afterend",
            "delete",
            "none",
            "innerMorph",
            "outerMorph",
        ];
        assert_eq!(Swap::ALL.map(Swap::as_str), names);
        for swap in Swap::ALL {
            assert_eq!(swap.to_string(), swap.as_str());
            assert_eq!(swap.as_str().parse::<Swap>(), Ok(swap));
        }
        assert_eq!(Swap::default(), Swap::InnerHtml);
        assert_eq!(OobFlavor::default(), OobFlavor::SwapOob);
        let inline: Vec<Swap> = Swap::ALL.into_iter().filter(|s| s.is_inline()).collect();
        assert_eq!(inline, [Swap::OuterHtml, Swap::OuterMorph]);
    }

    #[test]
    fn swap_parsing_is_exact() {
        for bad in [
            "",
            "innerhtml",
            "InnerHTML",
            "outerhtml",
            " innerHTML",
            "innerHTML ",
            "innerHTML swap:1s",
            "true",
            "append",
            "before",
        ] {
            let err = bad.parse::<Swap>().unwrap_err();
            assert_eq!(err.to_string(), format!("unknown swap style {bad:?}"));
        }
        fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
        is_error(&"x".parse::<Swap>().unwrap_err());
    }

    #[test]
    fn swap_oob_wrapped_every_style() {
        for swap in Swap::ALL {
            assert_eq!(
                one(OobFlavor::SwapOob, swap, "<b>x</b>", true),
                format!("<div id=\"t\" hx-swap-oob=\"{swap}\"><b>x</b></div>"),
            );
        }
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::InnerHtml, "<b>x</b>", true),
            r#"<div id="t" hx-swap-oob="innerHTML"><b>x</b></div>"#
        );
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::OuterMorph, "text", true),
            r#"<div id="t" hx-swap-oob="outerMorph">text</div>"#
        );
    }

    #[test]
    fn swap_oob_unwrapped_every_style() {
        for swap in Swap::ALL {
            assert_eq!(
                one(OobFlavor::SwapOob, swap, r#"<p class="c">x</p>"#, false),
                format!("<p hx-swap-oob=\"{swap}:#t\" class=\"c\">x</p>"),
            );
        }
        assert_eq!(
            one(
                OobFlavor::SwapOob,
                Swap::BeforeEnd,
                "<ul><li>a</li></ul>",
                false
            ),
            r##"<ul hx-swap-oob="beforeend:#t"><li>a</li></ul>"##
        );
    }

    #[test]
    fn unwrapped_inner_html_keeps_its_style() {
        // The Python original wrote `hx-swap-oob="true"` here, which htmx
        // reads as outerHTML.
        let out = one(OobFlavor::SwapOob, Swap::InnerHtml, "<span>3</span>", false);
        assert_eq!(out, r##"<span hx-swap-oob="innerHTML:#t">3</span>"##);
        assert!(!out.contains("\"true\""));
    }

    #[test]
    fn partial_wrapped_every_style() {
        for swap in Swap::ALL {
            let expected = if swap.is_inline() {
                format!(
                    "<hx-partial hx-target=\"#t\" hx-swap=\"{swap}\"><div id=\"t\"><b>x</b></div></hx-partial>"
                )
            } else {
                format!("<hx-partial hx-target=\"#t\" hx-swap=\"{swap}\"><b>x</b></hx-partial>")
            };
            assert_eq!(one(OobFlavor::Partial, swap, "<b>x</b>", true), expected);
        }
        assert_eq!(
            one(OobFlavor::Partial, Swap::OuterHtml, "x", true),
            r##"<hx-partial hx-target="#t" hx-swap="outerHTML"><div id="t">x</div></hx-partial>"##
        );
        assert_eq!(
            one(OobFlavor::Partial, Swap::BeforeBegin, "x", true),
            r##"<hx-partial hx-target="#t" hx-swap="beforebegin">x</hx-partial>"##
        );
    }

    #[test]
    fn partial_unwrapped_every_style() {
        let element = r#"<ul class="c"><li>a</li><li>b</li></ul>"#;
        for swap in Swap::ALL {
            let inside = if swap.is_inline() {
                element
            } else {
                "<li>a</li><li>b</li>"
            };
            assert_eq!(
                one(OobFlavor::Partial, swap, element, false),
                format!("<hx-partial hx-target=\"#t\" hx-swap=\"{swap}\">{inside}</hx-partial>"),
            );
        }
        assert_eq!(
            one(
                OobFlavor::Partial,
                Swap::OuterHtml,
                r#"<tr id="t"><td>1</td></tr>"#,
                false
            ),
            r##"<hx-partial hx-target="#t" hx-swap="outerHTML"><tr id="t"><td>1</td></tr></hx-partial>"##
        );
        assert_eq!(
            one(OobFlavor::Partial, Swap::InnerHtml, "<img src=x>", false),
            r##"<hx-partial hx-target="#t" hx-swap="innerHTML"></hx-partial>"##
        );
    }

    #[test]
    fn leading_comments_and_whitespace_are_kept() {
        let content = "\n  <!-- row 7 -->\n<tr id=\"t\"><td>7</td></tr>\n";
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::OuterHtml, content, false),
            "\n  <!-- row 7 -->\n<tr hx-swap-oob=\"outerHTML:#t\" id=\"t\"><td>7</td></tr>\n"
        );
        assert_eq!(
            one(OobFlavor::Partial, Swap::OuterHtml, content, false),
            "\n  <!-- row 7 -->\n<hx-partial hx-target=\"#t\" hx-swap=\"outerHTML\"><tr id=\"t\"><td>7</td></tr></hx-partial>\n"
        );
        assert_eq!(
            one(OobFlavor::Partial, Swap::InnerHtml, content, false),
            "\n  <!-- row 7 -->\n<hx-partial hx-target=\"#t\" hx-swap=\"innerHTML\"><td>7</td></hx-partial>\n"
        );
        // Empty and abruptly closed comments.
        assert_eq!(
            one(
                OobFlavor::SwapOob,
                Swap::InnerHtml,
                "<!----><!--><!---><p>x</p>",
                false
            ),
            r##"<!----><!--><!---><p hx-swap-oob="innerHTML:#t">x</p>"##
        );
    }

    #[test]
    fn void_and_self_closing_elements() {
        assert_eq!(
            one(
                OobFlavor::SwapOob,
                Swap::OuterHtml,
                r#"<img src="a.png" alt="">"#,
                false
            ),
            r##"<img hx-swap-oob="outerHTML:#t" src="a.png" alt="">"##
        );
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::OuterHtml, "<input>", false),
            r##"<input hx-swap-oob="outerHTML:#t">"##
        );
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::OuterHtml, "<BR/>  ", false),
            r##"<BR hx-swap-oob="outerHTML:#t"/>  "##
        );
        assert_eq!(
            one(
                OobFlavor::SwapOob,
                Swap::OuterHtml,
                "<circle r='1'/>",
                false
            ),
            r##"<circle hx-swap-oob="outerHTML:#t" r='1'/>"##
        );
        // A start tag alone is one element too.
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::InnerHtml, "<div>", false),
            r##"<div hx-swap-oob="innerHTML:#t">"##
        );
    }

    #[test]
    fn quoted_gt_in_attributes() {
        let content = r#"<div title="a>b" data-x='c>"d' hx-get=/x?a=1>in</div>"#;
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::OuterHtml, content, false),
            r##"<div hx-swap-oob="outerHTML:#t" title="a>b" data-x='c>"d' hx-get=/x?a=1>in</div>"##
        );
        assert_eq!(
            one(OobFlavor::Partial, Swap::InnerHtml, content, false),
            r##"<hx-partial hx-target="#t" hx-swap="innerHTML">in</hx-partial>"##
        );
        // A `>` in an attribute of a nested tag does not end anything either.
        let nested = r#"<p><a title="</p>">x</a></p>"#;
        assert_eq!(
            one(OobFlavor::Partial, Swap::InnerHtml, nested, false),
            r##"<hx-partial hx-target="#t" hx-swap="innerHTML"><a title="</p>">x</a></hx-partial>"##
        );
    }

    #[test]
    fn nested_same_name_elements_and_raw_text() {
        let content = "<div><div>a</div><!-- </div> --><script>if (a</div>) {}</script></DIV >";
        assert_eq!(
            one(OobFlavor::Partial, Swap::InnerHtml, content, false),
            "<hx-partial hx-target=\"#t\" hx-swap=\"innerHTML\"><div>a</div><!-- </div> --><script>if (a</div>) {}</script></hx-partial>"
        );
        assert_eq!(
            one(
                OobFlavor::Partial,
                Swap::BeforeEnd,
                "<textarea><b></textarea>",
                false
            ),
            "<hx-partial hx-target=\"#t\" hx-swap=\"beforeend\"><b></hx-partial>"
        );
    }

    #[test]
    fn invalid_target_ids() {
        let cases = [
            ("", "empty"),
            ("1row", "must start with an ASCII letter or underscore"),
            ("-x", "must start with an ASCII letter or underscore"),
            ("#x", "must start with an ASCII letter or underscore"),
            (" x", "must start with an ASCII letter or underscore"),
            ("é", "must start with an ASCII letter or underscore"),
            ("a b", "may hold only ASCII letters, digits, '-' and '_'"),
            ("a\"b", "may hold only ASCII letters, digits, '-' and '_'"),
            ("a.b", "may hold only ASCII letters, digits, '-' and '_'"),
            ("a:b", "may hold only ASCII letters, digits, '-' and '_'"),
            ("a>b", "may hold only ASCII letters, digits, '-' and '_'"),
            ("rowé", "may hold only ASCII letters, digits, '-' and '_'"),
            ("x\n", "may hold only ASCII letters, digits, '-' and '_'"),
        ];
        for (id, why) in cases {
            for wrap in [true, false] {
                match OobStreamBuilder::new()
                    .add_element(id, Swap::InnerHtml, Fragment::trusted("<p>x</p>"), wrap)
                    .build()
                {
                    Err(Error::InvalidTarget { id: got, reason }) => {
                        assert_eq!((got.as_str(), reason), (id, why));
                    }
                    other => panic!("{id:?}: expected InvalidTarget, got {other:?}"),
                }
            }
        }
        for ok in ["a", "_", "A-1_b", "row-42", "_x9"] {
            assert!(
                OobStreamBuilder::new()
                    .add(ok, Swap::InnerHtml, "")
                    .build()
                    .is_ok(),
                "{ok}"
            );
        }
        let err = OobStreamBuilder::new()
            .add("a b", Swap::InnerHtml, "")
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid target id \"a b\": may hold only ASCII letters, digits, '-' and '_'"
        );
    }

    #[test]
    fn not_an_element_cases() {
        assert_eq!(not_an_element(""), EMPTY);
        assert_eq!(not_an_element("  \n"), EMPTY);
        assert_eq!(not_an_element("<!-- only a comment -->"), EMPTY);
        assert_eq!(not_an_element("text"), TEXT_FIRST);
        assert_eq!(not_an_element("text <p>x</p>"), TEXT_FIRST);
        assert_eq!(not_an_element("</p>"), TEXT_FIRST);
        assert_eq!(not_an_element("< p>x</p>"), TEXT_FIRST);
        assert_eq!(not_an_element("<!DOCTYPE html><p>x</p>"), TEXT_FIRST);
        assert_eq!(not_an_element("<!-- open <p>x</p>"), UNTERMINATED_COMMENT);
        assert_eq!(not_an_element("<p>x<!-- open</p>"), UNTERMINATED_COMMENT);
        assert_eq!(not_an_element("<p class=\"x>y</p>"), UNTERMINATED_TAG);
        assert_eq!(not_an_element("<p"), UNTERMINATED_TAG);
        assert_eq!(not_an_element("<p>x</p>tail"), TRAILING);
        assert_eq!(not_an_element("<p>a</p><p>b</p>"), TRAILING);
        assert_eq!(
            not_an_element("<tr><td>1</td></tr><tr><td>2</td></tr>"),
            TRAILING
        );
        assert_eq!(not_an_element("<p>x</p><!-- c -->"), TRAILING);
        assert_eq!(not_an_element("<img src=x> caption"), TRAILING);
        assert_eq!(not_an_element("<br><br>"), TRAILING);
        assert_eq!(not_an_element("<p>x</div>"), NO_END_TAG);
        assert_eq!(not_an_element("<div>text"), NO_END_TAG);
        assert_eq!(not_an_element("<div><div></div>"), NO_END_TAG);
        assert_eq!(not_an_element("<script>x"), NO_END_TAG);
        assert_eq!(
            not_an_element(r#"<p hx-swap-oob="true">x</p>"#),
            ALREADY_OOB
        );
        assert_eq!(not_an_element("<p HX-SWAP-OOB>x</p>"), ALREADY_OOB);
        assert_eq!(
            not_an_element("<p class=a data-hx-swap-oob=x>x</p>"),
            ALREADY_OOB
        );
        // An attribute merely containing the name is fine.
        assert!(
            OobStreamBuilder::new()
                .add_unwrapped(
                    "t",
                    Swap::InnerHtml,
                    Fragment::trusted(r#"<p title="hx-swap-oob" hx-swap-oobx>x</p>"#)
                )
                .build()
                .is_ok()
        );
        // The Partial flavour checks the same things.
        let err = OobStreamBuilder::new()
            .flavor(OobFlavor::Partial)
            .add_unwrapped("t", Swap::InnerHtml, "text")
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a single HTML element: content must start with an element start tag"
        );
        // Wrapped content is not checked at all.
        assert_eq!(
            one(OobFlavor::SwapOob, Swap::InnerHtml, "a <i>b</i> c", true),
            r#"<div id="t" hx-swap-oob="innerHTML">a <i>b</i> c</div>"#
        );
    }

    #[test]
    fn first_error_is_kept() {
        let builder = OobStreamBuilder::new()
            .add("ok", Swap::InnerHtml, "1")
            .add_unwrapped("also-ok", Swap::InnerHtml, "just text")
            .add("bad id", Swap::InnerHtml, "2")
            .add("fine", Swap::InnerHtml, "3");
        assert_eq!(builder.len(), 1);
        assert!(matches!(
            builder.build(),
            Err(Error::NotAnElement { reason: TEXT_FIRST })
        ));
        let err = OobStreamBuilder::new()
            .add("", Swap::InnerHtml, "1")
            .add_unwrapped("x", Swap::InnerHtml, "text")
            .build_event()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidTarget {
                reason: "empty",
                ..
            }
        ));
    }

    #[test]
    fn render_errors_are_kept() {
        struct Fails;
        impl IntoFragment for Fails {
            fn into_fragment(self) -> Result<Fragment, Error> {
                Err(Error::Render("boom".into()))
            }
        }
        let builder = OobStreamBuilder::new()
            .add("a", Swap::InnerHtml, Fails)
            .add("b c", Swap::InnerHtml, "x");
        match builder.build() {
            Err(Error::Render(e)) => assert_eq!(e.to_string(), "boom"),
            other => panic!("{other:?}"),
        }
        let bad = OobStreamBuilder::new().add("1", Swap::None, "");
        assert!(matches!(
            bad.build(),
            Err(Error::InvalidTarget { reason, .. }) if reason.starts_with("must start")
        ));
    }

    #[test]
    fn build_joins_everything_once() {
        let make = || {
            OobStreamBuilder::with_capacity(3)
                .add("a", Swap::InnerHtml, "1")
                .add_unwrapped("b", Swap::OuterHtml, Fragment::trusted("<li id=b>2</li>"))
                .add("c", Swap::Delete, "")
        };
        let builder = make();
        assert_eq!(builder.len(), 3);
        assert!(!builder.is_empty());
        assert_eq!(
            build(make()),
            r##"<div id="a" hx-swap-oob="innerHTML">1</div><li hx-swap-oob="outerHTML:#b" id=b>2</li><div id="c" hx-swap-oob="delete"></div>"##
        );
        assert_eq!(
            build(builder.flavor(OobFlavor::Partial)),
            r##"<hx-partial hx-target="#a" hx-swap="innerHTML">1</hx-partial><hx-partial hx-target="#b" hx-swap="outerHTML"><li id=b>2</li></hx-partial><hx-partial hx-target="#c" hx-swap="delete"></hx-partial>"##
        );
        let empty = OobStreamBuilder::new();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.build().unwrap(), Fragment::default());
        assert_eq!(
            &**OobStreamBuilder::new().build_event().unwrap().as_bytes(),
            b"data:\n\n"
        );
    }

    #[test]
    fn size_hint_is_an_upper_bound() {
        for flavor in [OobFlavor::SwapOob, OobFlavor::Partial] {
            for swap in Swap::ALL {
                for wrap in [true, false] {
                    let part =
                        Part::new("row-1", swap, Fragment::trusted("<p>x</p>"), wrap).unwrap();
                    let mut out = String::new();
                    part.render_into(flavor, &mut out);
                    assert!(out.len() <= part.size_hint(), "{out}");
                }
            }
        }
    }

    #[test]
    fn clear_resets_for_reuse() {
        let mut builder = OobStreamBuilder::new()
            .flavor(OobFlavor::Partial)
            .add("a", Swap::InnerHtml, "1")
            .add("", Swap::InnerHtml, "2");
        builder.clear();
        assert!(builder.is_empty());
        assert_eq!(
            build(builder.add("b", Swap::InnerHtml, "3")),
            r##"<hx-partial hx-target="#b" hx-swap="innerHTML">3</hx-partial>"##
        );
    }

    #[test]
    fn build_event_is_unnamed_and_multiline_safe() {
        let ev = OobStreamBuilder::new()
            .add("log", Swap::BeforeEnd, Fragment::trusted("<li>a\nb</li>"))
            .build_event()
            .unwrap();
        assert_eq!(
            &**ev.as_bytes(),
            b"data: <div id=\"log\" hx-swap-oob=\"beforeend\"><li>a\ndata: b</li></div>\n\n"
        );
    }

    #[cfg(feature = "maud")]
    #[test]
    fn maud_escaping_survives_the_builder() {
        let user = "<script>alert(\"x\")</script>";
        let out = build(
            OobStreamBuilder::new()
                .add("msg", Swap::BeforeEnd, maud::html! { li { (user) } })
                .add_unwrapped(
                    "who",
                    Swap::OuterHtml,
                    maud::html! { span id="who" title=(user) { (user) } },
                ),
        );
        assert_eq!(
            out,
            "<div id=\"msg\" hx-swap-oob=\"beforeend\"><li>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</li></div>\
             <span hx-swap-oob=\"outerHTML:#who\" id=\"who\" title=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;\">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</span>"
        );
        assert!(!out.contains("<script>"));
        let partial = build(
            OobStreamBuilder::new()
                .flavor(OobFlavor::Partial)
                .add_unwrapped("msg", Swap::BeforeEnd, maud::html! { ul { li { (user) } } }),
        );
        assert!(!partial.contains("<script>"), "{partial}");
    }

    #[test]
    fn builder_is_send_sync() {
        fn assert<T: Send + Sync + 'static>() {}
        assert::<OobStreamBuilder>();
        assert::<Swap>();
        assert::<InvalidSwap>();
    }
}
