//! HTML fragments: what the server renders and htmx swaps in.
//!
//! HTML safety is the type's job, as in maud: a `&str` or `String` is
//! **text**, and becomes a fragment with `<`, `>`, `&`, `"` and `'`
//! escaped. HTML comes from a template engine (maud's `Markup`, askama
//! templates through `Askama` or `Fragment::render`), which escapes the
//! values put into it, or from [`Fragment::trusted`], the one explicit,
//! greppable way to send a string as HTML. [`IntoFragment`] is the door
//! through which all of them come in.
//!
//! ```
//! use htmx_sse::{Fragment, IntoFragment};
//!
//! let name = "<script>alert(1)</script>";
//! assert_eq!(name.into_fragment()?.as_str(), "&lt;script&gt;alert(1)&lt;/script&gt;");
//! # #[cfg(feature = "maud")] {
//! let from_maud = maud::html! { p { "Hello " (name) } }.into_fragment()?;
//! assert_eq!(from_maud.as_str(), "<p>Hello &lt;script&gt;alert(1)&lt;/script&gt;</p>");
//! # }
//! // HTML written in the program, vouched for where it is written:
//! let fixed = Fragment::trusted("<p>static</p>");
//! assert_eq!(fixed.as_str(), "<p>static</p>");
//! # Ok::<(), htmx_sse::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use crate::error::Error;
use crate::event::Event;

/// A piece of HTML ready to send.
///
/// Made from text ([`Fragment::text`], `From<&str>`, `From<String>`:
/// escaped), from maud `Markup`, by rendering an askama template
/// (`Fragment::render`), or from HTML the caller vouches for
/// ([`Fragment::trusted`]). Converts into an unnamed [`Event`] with
/// `Event::from`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Fragment(String);

impl Fragment {
    /// Wraps HTML as it is: the caller vouches that it holds no markup from
    /// untrusted input. Use it for HTML written in the program or produced
    /// by a trusted renderer; build anything that holds user data with a
    /// template engine (or [`Fragment::text`]).
    ///
    /// ```
    /// use htmx_sse::Fragment;
    ///
    /// assert_eq!(Fragment::trusted("<hr>").as_str(), "<hr>");
    /// ```
    #[must_use]
    pub fn trusted(html: impl Into<String>) -> Self {
        Fragment(html.into())
    }

    /// Text, escaped so that the page shows it as written.
    ///
    /// ```
    /// use htmx_sse::Fragment;
    ///
    /// assert_eq!(Fragment::text("a < b & \"c\"").as_str(), "a &lt; b &amp; &quot;c&quot;");
    /// ```
    #[must_use]
    pub fn text(text: &str) -> Self {
        Fragment(escape_html(text))
    }

    /// Renders an askama template into a fragment, pre-sized with the
    /// template's size hint. Askama escapes `{{ value }}` in `.html`
    /// templates.
    ///
    /// # Errors
    ///
    /// [`Error::Render`] when the template fails to render.
    #[cfg(feature = "askama")]
    pub fn render<T: askama::Template + ?Sized>(template: &T) -> Result<Self, Error> {
        let mut out = String::with_capacity(T::SIZE_HINT);
        template
            .render_into(&mut out)
            .map_err(|e| Error::Render(Box::new(e)))?;
        Ok(Fragment(out))
    }

    /// The HTML.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The HTML, consuming the fragment.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    /// Length of the HTML in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the fragment is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends another fragment.
    pub fn push(&mut self, other: &Fragment) {
        self.0.push_str(&other.0);
    }
}

/// `text` with `&`, `<`, `>`, `"` and `'` as character references: safe
/// as element content and inside quoted attribute values.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut rest = text;
    while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out
}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fragment").field(&self.0).finish()
    }
}

impl fmt::Display for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Fragment {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Fragment {
    /// Text, escaped: as [`Fragment::text`].
    fn from(s: String) -> Self {
        Fragment::text(&s)
    }
}

impl From<&str> for Fragment {
    /// Text, escaped: as [`Fragment::text`].
    fn from(s: &str) -> Self {
        Fragment::text(s)
    }
}

impl From<Fragment> for String {
    fn from(f: Fragment) -> Self {
        f.0
    }
}

impl From<Fragment> for Event {
    /// An unnamed event carrying the fragment as data.
    fn from(f: Fragment) -> Event {
        Event::message(&f.0)
    }
}

impl From<Fragment> for Cow<'static, str> {
    fn from(f: Fragment) -> Self {
        Cow::Owned(f.0)
    }
}

/// Anything that becomes HTML ready to send.
///
/// Implemented for [`Fragment`], maud's `Markup` (feature `maud`), askama
/// templates wrapped in `Askama` (feature `askama`), the OOB builder, and
/// for `&str`, `String` and `Cow<str>` as **text**: escaped, so that the
/// page shows them as written. Send a string as HTML only through
/// [`Fragment::trusted`].
pub trait IntoFragment {
    /// Renders `self` into a fragment.
    ///
    /// # Errors
    ///
    /// [`Error::Render`] when a template fails to render; text and maud
    /// markup never fail.
    fn into_fragment(self) -> Result<Fragment, Error>;
}

impl IntoFragment for Fragment {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(self)
    }
}

impl IntoFragment for &Fragment {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(self.clone())
    }
}

impl IntoFragment for &str {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(Fragment::text(self))
    }
}

impl IntoFragment for String {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(Fragment::text(&self))
    }
}

impl IntoFragment for &String {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(Fragment::text(self))
    }
}

impl IntoFragment for Cow<'_, str> {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Ok(Fragment::text(&self))
    }
}

#[cfg(feature = "maud")]
mod maud_support {
    use super::{Error, Event, Fragment, IntoFragment};

    impl IntoFragment for maud::Markup {
        fn into_fragment(self) -> Result<Fragment, Error> {
            Ok(Fragment(self.into_string()))
        }
    }

    impl From<maud::Markup> for Fragment {
        fn from(m: maud::Markup) -> Self {
            Fragment(m.into_string())
        }
    }

    impl From<maud::Markup> for Event {
        /// An unnamed event carrying the markup as data.
        fn from(m: maud::Markup) -> Event {
            Event::message(&m.0)
        }
    }

    /// A fragment inside maud markup is inserted as it is (it is HTML already).
    impl maud::Render for Fragment {
        fn render_to(&self, buffer: &mut String) {
            buffer.push_str(&self.0);
        }
    }
}

/// An askama template as an [`IntoFragment`] value.
///
/// Rust's coherence rules keep a blanket `impl IntoFragment for T: Template`
/// from living beside the impls for strings, so templates come in through this
/// wrapper (or through [`Fragment::render`]).
///
/// ```
/// use askama::Template;
/// use htmx_sse::{fragment::Askama, IntoFragment};
///
/// #[derive(Template)]
/// #[template(source = "<li>{{ name }}</li>", ext = "html")]
/// struct Row<'a> { name: &'a str }
///
/// let f = Askama(Row { name: "<b>" }).into_fragment()?;
/// assert_eq!(f.as_str(), "<li>&#60;b&#62;</li>");
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[cfg(feature = "askama")]
#[derive(Debug, Clone, Copy)]
pub struct Askama<T>(pub T);

#[cfg(feature = "askama")]
impl<T: askama::Template> IntoFragment for Askama<T> {
    fn into_fragment(self) -> Result<Fragment, Error> {
        Fragment::render(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_text() {
        let hostile = "<img src=x onerror=\"alert('x')\"> & co";
        let escaped = "&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt; &amp; co";
        assert_eq!(hostile.into_fragment().unwrap().as_str(), escaped);
        assert_eq!(
            String::from(hostile).into_fragment().unwrap().into_string(),
            escaped
        );
        assert_eq!(
            (&String::from(hostile)).into_fragment().unwrap().as_str(),
            escaped
        );
        assert_eq!(
            Cow::Borrowed(hostile).into_fragment().unwrap().as_str(),
            escaped
        );
        assert_eq!(Fragment::from(hostile).as_str(), escaped);
        assert_eq!(Fragment::from(hostile.to_owned()).as_str(), escaped);
        assert_eq!(escape_html("plain, nothing to do"), "plain, nothing to do");
        assert_eq!(escape_html(""), "");
        let ev: Event = Fragment::trusted("<p>a\nb</p>").into();
        assert_eq!(&**ev.as_bytes(), b"data: <p>a\ndata: b</p>\n\n");
    }

    #[cfg(feature = "maud")]
    #[test]
    fn maud_escapes_user_data() {
        let user = "<script>alert('x')</script>";
        let f = maud::html! { li { (user) } }.into_fragment().unwrap();
        assert_eq!(
            f.as_str(),
            "<li>&lt;script&gt;alert('x')&lt;/script&gt;</li>"
        );
        assert!(!f.as_str().contains("<script>"));
        // A fragment embedded in markup is not escaped twice.
        let inner = Fragment::trusted("<b>ok</b>");
        let outer = maud::html! { div { (inner) } };
        assert_eq!(outer.into_string(), "<div><b>ok</b></div>");
    }

    #[cfg(feature = "askama")]
    #[test]
    fn askama_escapes_user_data() {
        use askama::Template;
        #[derive(Template)]
        #[template(source = "<li title=\"{{ user }}\">{{ user }}</li>", ext = "html")]
        struct Item<'a> {
            user: &'a str,
        }
        let user = "<script>alert(\"x\")</script>";
        let f = Fragment::render(&Item { user }).unwrap();
        assert!(!f.as_str().contains("<script>"), "{}", f.as_str());
        assert!(f.as_str().contains("&#60;script&#62;"), "{}", f.as_str());
        let g = Askama(Item { user }).into_fragment().unwrap();
        assert_eq!(f, g);
    }

    #[cfg(feature = "askama")]
    #[test]
    fn askama_render_errors_are_values() {
        use askama::Template;
        struct Fails;
        impl std::fmt::Display for Fails {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Err(std::fmt::Error)
            }
        }
        #[derive(Template)]
        #[template(source = "{{ inner }}", ext = "html")]
        struct Outer {
            inner: Fails,
        }
        let err = Fragment::render(&Outer { inner: Fails }).unwrap_err();
        assert!(matches!(err, Error::Render(_)));
        assert_eq!(err.to_string(), "template could not be rendered");
    }
}
