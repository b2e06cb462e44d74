//! `Topic` and `TopicSelector`: names for what a message is about, and
//! patterns that say which names a connection wants.

use std::fmt;
use std::sync::Arc;

use crate::connections::truncate_for_error;

/// The longest topic or selector accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 512;

/// Why a topic or a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidTopic {
    /// The value as given (cut to 80 bytes).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid topic {:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for InvalidTopic {}

fn invalid(value: &str, reason: &'static str) -> InvalidTopic {
    InvalidTopic {
        value: truncate_for_error(value),
        reason,
    }
}

/// Characters no topic may hold: they are selector syntax or unsafe in a
/// header, a URL query or an SSE field.
fn check_chars(value: &str, allow_pattern: bool) -> Result<(), InvalidTopic> {
    if value.is_empty() {
        return Err(invalid(value, "empty"));
    }
    if value.len() > MAX_TOPIC_LEN {
        return Err(invalid(value, "longer than 512 bytes"));
    }
    for c in value.chars() {
        if c.is_control() || c.is_whitespace() {
            return Err(invalid(value, "holds a control character or white space"));
        }
        if !allow_pattern && matches!(c, '{' | '}' | '*') {
            return Err(invalid(
                value,
                "'{', '}' and '*' belong to selectors, not topics",
            ));
        }
    }
    Ok(())
}

/// What a message is about: `chat`, `todos/42`, `https://example.com/books/1`.
///
/// 1 to 512 bytes, no white space or control characters, and none of `{`,
/// `}`, `*` (those are selector syntax). Segments are separated by `/`.
///
/// ```
/// use htmx_sse::topics::Topic;
///
/// let t = Topic::new("todos/42")?;
/// assert_eq!(t.as_str(), "todos/42");
/// assert!(Topic::new("todos/*").is_err());
/// assert!(Topic::new("a b").is_err());
/// # Ok::<(), htmx_sse::topics::InvalidTopic>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Checks `value` and wraps it.
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] saying what is wrong.
    pub fn new(value: &str) -> Result<Self, InvalidTopic> {
        check_chars(value, false)?;
        Ok(Topic(Arc::from(value)))
    }

    /// The topic as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Topic {
    type Error = InvalidTopic;
    fn try_from(s: &str) -> Result<Self, InvalidTopic> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = InvalidTopic;
    fn try_from(s: String) -> Result<Self, InvalidTopic> {
        Topic::new(&s)
    }
}

impl std::str::FromStr for Topic {
    type Err = InvalidTopic;
    fn from_str(s: &str) -> Result<Self, InvalidTopic> {
        Topic::new(s)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    /// This exact segment.
    Exact(Box<str>),
    /// Any one non-empty segment (`*` or `{name}`).
    One,
    /// Any number of segments, zero included (`**`, last only).
    Rest,
}

/// A pattern over topics: which topics a connection wants, or which ones a
/// token may read privately or publish to.
///
/// The syntax, segment by segment (segments are separated by `/`):
///
/// | selector | matches |
/// | --- | --- |
/// | `*` (alone) | every topic |
/// | `todos/42` | exactly that topic |
/// | `todos/{id}` | `todos/` and one non-empty segment: `todos/42`, not `todos/42/items` |
/// | `todos/*` | the same (`*` is an unnamed `{}`) |
/// | `todos/**` | `todos` and everything below it: `todos`, `todos/42`, `todos/42/items` |
///
/// `**` may only be the last segment. A `{name}` is letters, digits and
/// `_`. A segment is either a pattern or plain text, never both
/// (`todo-{id}` is refused).
///
/// ```
/// use htmx_sse::topics::{Topic, TopicSelector};
///
/// let s = TopicSelector::new("todos/{id}")?;
/// assert!(s.matches(&Topic::new("todos/42")?));
/// assert!(!s.matches(&Topic::new("todos/42/items")?));
/// assert!(TopicSelector::new("todos/{id").is_err());
/// assert!(TopicSelector::new("**/x").is_err());
/// # Ok::<(), htmx_sse::topics::InvalidTopic>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicSelector {
    text: Arc<str>,
    parts: Arc<[Part]>,
}

impl TopicSelector {
    /// Parses and checks a selector.
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] saying what is wrong: bad characters, an unclosed
    /// `{`, an empty or odd `{name}`, a pattern mixed with text in one
    /// segment, `**` before the end.
    pub fn new(value: &str) -> Result<Self, InvalidTopic> {
        check_chars(value, true)?;
        if value == "*" {
            return Ok(TopicSelector {
                text: Arc::from(value),
                parts: Arc::from(vec![Part::Rest]),
            });
        }
        let segments: Vec<&str> = value.split('/').collect();
        let last = segments.len() - 1;
        let mut parts = Vec::with_capacity(segments.len());
        for (i, seg) in segments.iter().enumerate() {
            let part = if *seg == "**" {
                if i != last {
                    return Err(invalid(value, "'**' may only be the last segment"));
                }
                Part::Rest
            } else if *seg == "*" {
                Part::One
            } else if let Some(inner) = seg.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(invalid(
                        value,
                        "a '{' must close with '}' at the end of its segment",
                    ));
                };
                if name.is_empty() {
                    return Err(invalid(value, "'{}' needs a name, e.g. '{id}'"));
                }
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(invalid(
                        value,
                        "a '{name}' holds only ASCII letters, digits and '_'",
                    ));
                }
                Part::One
            } else if seg.contains(['{', '}', '*']) {
                return Err(invalid(
                    value,
                    "a segment is a pattern ('*', '**', '{name}') or plain text, not both",
                ));
            } else {
                Part::Exact(Box::from(*seg))
            };
            parts.push(part);
        }
        Ok(TopicSelector {
            text: Arc::from(value),
            parts: Arc::from(parts),
        })
    }

    /// A selector that matches exactly `topic`.
    #[must_use]
    pub fn exact(topic: &Topic) -> Self {
        TopicSelector {
            text: Arc::clone(&topic.0),
            parts: topic
                .as_str()
                .split('/')
                .map(|s| Part::Exact(Box::from(s)))
                .collect(),
        }
    }

    /// A selector that matches every topic (`*`).
    #[must_use]
    pub fn any() -> Self {
        TopicSelector {
            text: Arc::from("*"),
            parts: Arc::from(vec![Part::Rest]),
        }
    }

    /// Whether `topic` matches.
    #[must_use]
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut segs = topic.as_str().split('/');
        for part in self.parts.iter() {
            match part {
                Part::Rest => return true,
                Part::One => match segs.next() {
                    Some(s) if !s.is_empty() => {}
                    _ => return false,
                },
                Part::Exact(want) => match segs.next() {
                    Some(s) if s == &**want => {}
                    _ => return false,
                },
            }
        }
        segs.next().is_none()
    }

    /// The exact topic this selector names, when it has no pattern.
    #[must_use]
    pub fn as_topic(&self) -> Option<Topic> {
        self.parts
            .iter()
            .all(|p| matches!(p, Part::Exact(_)))
            .then(|| Topic(Arc::clone(&self.text)))
    }

    /// The selector as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for TopicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for TopicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<&str> for TopicSelector {
    type Error = InvalidTopic;
    fn try_from(s: &str) -> Result<Self, InvalidTopic> {
        TopicSelector::new(s)
    }
}

impl std::str::FromStr for TopicSelector {
    type Err = InvalidTopic;
    fn from_str(s: &str) -> Result<Self, InvalidTopic> {
        TopicSelector::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for TopicSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TopicSelector::new(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether any selector in `selectors` matches any of `topics`.
pub(crate) fn any_match(selectors: &[TopicSelector], topics: &[Topic]) -> bool {
    topics
        .iter()
        .any(|t| selectors.iter().any(|s| s.matches(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn matching() {
        let cases = [
            ("*", "a", true),
            ("*", "a/b/c", true),
            ("a", "a", true),
            ("a", "a/b", false),
            ("a/{id}", "a/1", true),
            ("a/{id}", "a", false),
            ("a/{id}", "a/", false),
            ("a/{id}", "a/1/2", false),
            ("a/*", "a/x", true),
            ("a/**", "a", true),
            ("a/**", "a/1/2/3", true),
            ("a/**", "b/1", false),
            ("{x}/items", "list/items", true),
            (
                "https://example.com/books/{id}",
                "https://example.com/books/1",
                true,
            ),
            (
                "https://example.com/books/{id}",
                "https://example.org/books/1",
                false,
            ),
        ];
        for (sel, topic, want) in cases {
            assert_eq!(
                TopicSelector::new(sel).unwrap().matches(&t(topic)),
                want,
                "{sel} vs {topic}"
            );
        }
        assert!(TopicSelector::exact(&t("x/y")).matches(&t("x/y")));
        assert!(TopicSelector::any().matches(&t("q")));
        assert_eq!(
            TopicSelector::new("a/b").unwrap().as_topic(),
            Some(t("a/b"))
        );
        assert_eq!(TopicSelector::new("a/*").unwrap().as_topic(), None);
    }

    #[test]
    fn bad_selectors_say_why() {
        let cases = [
            ("", "empty"),
            ("a b", "white space"),
            ("a\nb", "control"),
            ("a/{id", "must close"),
            ("a/{}", "needs a name"),
            ("a/{i-d}", "only ASCII letters"),
            ("a/x{id}", "not both"),
            ("a/x*", "not both"),
            ("**/a", "last segment"),
        ];
        for (sel, says) in cases {
            let e = TopicSelector::new(sel).unwrap_err();
            assert!(e.reason.contains(says), "{sel:?}: {e}");
        }
        assert!(
            TopicSelector::new(&"a".repeat(513))
                .unwrap_err()
                .to_string()
                .contains("longer than 512")
        );
        assert!(Topic::new("a/{id}").is_err());
        assert!(Topic::new("*").is_err());
    }

    proptest::proptest! {
        /// Any text is a topic or selector, or a clear refusal; never a
        /// panic. A valid topic keeps its text, and its exact selector and
        /// `**` match it.
        #[test]
        fn topics_and_selectors_from_anywhere(any in "\\PC{0,600}") {
            let _ = TopicSelector::new(&any);
            if let Ok(t) = Topic::new(&any) {
                proptest::prop_assert_eq!(t.as_str(), any.as_str());
                proptest::prop_assert!(TopicSelector::exact(&t).matches(&t));
                proptest::prop_assert!(TopicSelector::new("**").unwrap().matches(&t));
            }
        }
    }
}
