//! `BroadcastMessage` and `MessageId`: what was published, and where it
//! stands in the order of everything published.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::backend::Epoch;
use crate::event::{Event, EventName};

/// Where a message stands: the epoch of the process that numbered it and
/// its place in that process's sequence. Shown as `EPOCH-SEQ`
/// (`3f2a9c01-42`).
///
/// On the wire a broadcast frame's `id:` is `EPOCH-SEQ.CONNECTION`: the
/// message id followed by the receiving connection's id, so that the
/// `Last-Event-ID` a browser sends back says both what it saw and who it
/// is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub(crate) epoch: Epoch,
    pub(crate) seq: u64,
}

impl MessageId {
    /// The epoch part.
    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The sequence number (1 for the first message of an epoch).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One published message: its id, type, JSON data, time and metadata.
///
/// The type is the SSE event name (match it with `sse-swap="TYPE"` in
/// htmx 2); the data is JSON: text and HTML as a JSON string (see
/// [`html`](Self::html)), anything else as published. See
/// [`Data`](super::Data) for how each goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BroadcastMessage {
    /// Its id.
    pub id: MessageId,
    /// Its type: the SSE event name.
    #[serde(rename = "type")]
    pub message_type: EventName,
    /// Its data.
    pub data: serde_json::Value,
    /// Whether `data` is HTML, sent as it is (published as a
    /// [`Fragment`](crate::Fragment), maud `Markup` or a template); else
    /// text (sent escaped) or JSON.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub html: bool,
    /// When it was published (UTC).
    pub timestamp: DateTime<Utc>,
    /// What the publisher attached, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl BroadcastMessage {
    /// The message as JSON: `{"id", "type", "data", "timestamp", "metadata"?}`.
    ///
    /// ```
    /// # use htmx_sse::broadcast::BroadcastManager;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// manager.message("note", "hello").send().await?;
    /// let json = manager.history(None)[0].to_json();
    /// assert!(json.contains(r#""type":"note","data":"hello""#));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising a Value, a string and a timestamp cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message as one SSE frame with the default rendering and the
    /// message id alone as `id:` (what a connection receives adds its own id
    /// to that).
    ///
    /// ```
    /// # use htmx_sse::broadcast::BroadcastManager;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), htmx_sse::Error> {
    /// let manager = BroadcastManager::new();
    /// manager.message("note", "<p>hi</p>").send().await?; // text
    /// manager.message("note", htmx_sse::Fragment::trusted("<p>hi</p>")).send().await?;
    /// let history = manager.history(None);
    /// let frame = |i: usize| String::from_utf8(history[i].to_event().as_bytes().to_vec()).unwrap();
    /// assert_eq!(frame(0), format!("event: note\nid: {}\ndata: &lt;p&gt;hi&lt;/p&gt;\n\n", history[0].id));
    /// assert_eq!(frame(1), format!("event: note\nid: {}\ndata: <p>hi</p>\n\n", history[1].id));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn to_event(&self) -> Event {
        named(&self.message_type)
            .id(self.id.to_string())
            .data(match (&self.data, self.html) {
                (serde_json::Value::String(html), true) => html.clone(),
                (data, _) => default_text(data),
            })
            .build()
            .unwrap_or_else(|_| Event::message(""))
    }
}

/// The default rendering: a JSON string is text, sent HTML-escaped;
/// anything else compact, HTML-safe JSON (`<`, `>`, `&` as `\u` escapes).
pub(crate) fn default_text(data: &serde_json::Value) -> String {
    match data {
        serde_json::Value::String(s) => crate::fragment::escape_html(s),
        other => crate::event::html_safe_json(&other.to_string()),
    }
}

/// A builder for a frame of this type: `message` is sent unnamed (the same
/// to an `EventSource`, and the only kind htmx 4 swaps).
pub(crate) fn named(message_type: &EventName) -> crate::event::EventBuilder {
    let b = Event::builder();
    if message_type.as_str() == "message" {
        b
    } else {
        b.event(message_type.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_escapes_text() {
        assert_eq!(
            default_text(&serde_json::json!("<b>x</b>")),
            "&lt;b&gt;x&lt;/b&gt;"
        );
        assert_eq!(default_text(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }

    #[test]
    fn json_data_never_carries_markup() {
        let value = serde_json::json!({
            "s": "<script>alert(1)</script> & \u{2028}\u{2029}",
            "<k>": ["a>b", 1, null]
        });
        let text = default_text(&value);
        for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!text.contains(c), "{c:?} in {text}");
        }
        assert!(text.contains(r"\u003cscript\u003e"), "{text}");
        // The same value to a JSON parser.
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
