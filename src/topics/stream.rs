//! `TopicStream`: the page side of a topic subscription, for htmx 2 and
//! htmx 4.

use super::TopicSelector;
use crate::Flavor;
use crate::error::Error;
use crate::event::EventName;
use crate::fragment::Fragment;
use crate::streaming::Swap;

#[derive(askama::Template)]
#[template(path = "topics/stream.html")]
struct StreamTemplate<'a> {
    url: &'a str,
    event: &'a str,
    swap: &'a str,
    id: Option<&'a str>,
    auto_scroll: bool,
    attrs: &'a [(String, String)],
    content: &'a str,
    htmx4: bool,
}

/// An element that subscribes to topics on a hub (see
/// [`TopicRoutes`](super::TopicRoutes)) and swaps what arrives, like
/// Hyperflask's `MercureStream`.
///
/// ```
/// use htmx_sse::topics::{TopicSelector, TopicStream};
///
/// let html = TopicStream::new([TopicSelector::new("chat/{room}")?])
///     .hub("/hub")
///     .auto_scroll(true)
///     .attr("class", "messages")?
///     .render()?;
/// assert!(html.as_str().starts_with(
///     r#"<div hx-ext="sse" sse-connect="/hub?topic=chat%2F%7Broom%7D" sse-swap="message" hx-swap="beforeend" data-htmx-sse-autoscroll class="messages"></div>"#
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TopicStream {
    topics: Vec<TopicSelector>,
    hub: String,
    private: bool,
    swap: Swap,
    event: EventName,
    id: Option<String>,
    auto_scroll: bool,
    attrs: Vec<(String, String)>,
    content: Fragment,
    flavor: Flavor,
}

impl TopicStream {
    /// Subscribes to these selectors, at `/hub`, appending (`beforeend`)
    /// unnamed messages, htmx 2 markup.
    pub fn new(topics: impl IntoIterator<Item = TopicSelector>) -> Self {
        TopicStream {
            topics: topics.into_iter().collect(),
            hub: "/hub".to_owned(),
            private: false,
            swap: Swap::BeforeEnd,
            event: EventName::from_static("message"),
            id: None,
            auto_scroll: false,
            attrs: Vec::new(),
            content: Fragment::default(),
            flavor: Flavor::Htmx2,
        }
    }

    /// The hub's path (default `/hub`).
    pub fn hub(mut self, path: &str) -> Self {
        path.clone_into(&mut self.hub);
        self
    }

    /// Asks for private messages too: the hub then requires credentials
    /// (a cookie; `EventSource` sends no headers) and answers 401 without.
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// How arriving fragments are swapped (default `beforeend`).
    pub fn swap(mut self, swap: Swap) -> Self {
        self.swap = swap;
        self
    }

    /// The event type to swap (default `message`, i.e. unnamed events).
    /// htmx 4 swaps unnamed events only, so another type renders an error
    /// in the htmx 4 flavour.
    pub fn event(mut self, name: EventName) -> Self {
        self.event = name;
        self
    }

    /// An id for the element.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`] for an id that is not a plain HTML id.
    pub fn id(mut self, id: &str) -> Result<Self, Error> {
        check_name(id, false).map_err(|reason| Error::InvalidTarget {
            id: id.to_owned(),
            reason,
        })?;
        self.id = Some(id.to_owned());
        Ok(self)
    }

    /// Keeps the element scrolled to the bottom as fragments arrive.
    pub fn auto_scroll(mut self, on: bool) -> Self {
        self.auto_scroll = on;
        self
    }

    /// Adds an attribute; the value is escaped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`] for a name that is not a plain attribute
    /// name (letters, digits, `-`, `_`, `:`, `.`, not starting with a digit
    /// or `-`).
    pub fn attr(mut self, name: &str, value: &str) -> Result<Self, Error> {
        check_name(name, true).map_err(|reason| Error::InvalidTarget {
            id: name.to_owned(),
            reason,
        })?;
        self.attrs.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// What the element shows before anything arrives.
    pub fn content(mut self, content: Fragment) -> Self {
        self.content = content;
        self
    }

    /// htmx 2 (default) or htmx 4 markup.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// The hub URL this element connects to.
    #[must_use]
    pub fn url(&self) -> String {
        let mut url = self.hub.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for t in &self.topics {
            url.push(sep);
            url.push_str("topic=");
            url.push_str(&crate::routes::percent_encode(t.as_str()));
            sep = '&';
        }
        if self.private {
            url.push(sep);
            url.push_str("private=1");
        }
        url
    }

    /// The element (and, with auto-scroll, its small script).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] without topics; [`Error::Unsupported`] for a
    /// named event type in the htmx 4 flavour.
    pub fn render(&self) -> Result<Fragment, Error> {
        if self.topics.is_empty() {
            return Err(Error::InvalidTopic(super::InvalidTopic {
                value: String::new(),
                reason: "a topic stream needs at least one topic",
            }));
        }
        let htmx4 = self.flavor == Flavor::Htmx4;
        if htmx4 && self.event.as_str() != "message" {
            return Err(Error::Unsupported {
                what: "htmx 4 swaps unnamed events only; publish with type \"message\"",
            });
        }
        let url = self.url();
        Fragment::render(&StreamTemplate {
            url: &url,
            event: self.event.as_str(),
            swap: self.swap.as_str(),
            id: self.id.as_deref(),
            auto_scroll: self.auto_scroll,
            attrs: &self.attrs,
            content: self.content.as_str(),
            htmx4,
        })
    }
}

fn check_name(name: &str, attribute: bool) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return Err("empty");
    };
    if !(first.is_ascii_alphabetic() || first == b'_' || (attribute && first == b':')) {
        return Err("must start with an ASCII letter or underscore");
    }
    let ok = |b: u8| {
        b.is_ascii_alphanumeric()
            || b == b'-'
            || b == b'_'
            || (attribute && (b == b':' || b == b'.'))
    };
    if bytes.all(ok) {
        Ok(())
    } else {
        Err("may hold only ASCII letters, digits, '-' and '_' (and ':' '.' in attribute names)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htmx4_markup_and_refusals() {
        let s = TopicStream::new([TopicSelector::new("a").unwrap()])
            .flavor(Flavor::Htmx4)
            .swap(Swap::InnerHtml)
            .private(true);
        let html = s.render().unwrap();
        assert_eq!(
            html.as_str(),
            r#"<div hx-sse:connect="/hub?topic=a&#38;private=1" hx-swap="innerHTML"></div>"#
        );
        let named = s.event(EventName::from_static("chat"));
        assert!(matches!(named.render(), Err(Error::Unsupported { .. })));
        assert!(TopicStream::new([]).render().is_err());
        let t = TopicStream::new([TopicSelector::new("a").unwrap()]);
        assert!(t.clone().attr("onclick\"", "x").is_err());
        assert!(t.clone().id("1x").is_err());
        let html = t
            .attr("title", "\"><script>alert(1)</script>")
            .unwrap()
            .render()
            .unwrap();
        assert!(
            !html.as_str().contains("<script>alert"),
            "{}",
            html.as_str()
        );
    }
}
