//! What a push carries: the notification [`Payload`], or any bytes, wrapped in
//! a [`PushMessage`] with its delivery options ([`Urgency`], [`Topic`], TTL).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{Error, cut};

/// A notification as the service worker shows it: a title, and optionally a
/// body, an icon URL and any JSON data (a URL to open on click, say).
///
/// It travels as JSON, fields with no value left out:
/// `{"title":"…","body":"…","icon":"…","data":{…}}`. The service worker of
/// the demo (`examples/webpush.rs`) reads it like this:
///
/// ```js
/// self.addEventListener("push", (event) => {
///   const p = event.data ? event.data.json() : { title: "(empty push)" };
///   event.waitUntil(self.registration.showNotification(p.title,
///     { body: p.body, icon: p.icon, data: p.data }));
/// });
/// ```
///
/// ```
/// use htmx_sse::webpush::Payload;
///
/// let payload = Payload::new("Payment confirmed")
///     .body("Order 42 approved.")
///     .icon("/static/icons/order.png")
///     .data(serde_json::json!({ "orderId": 42, "url": "/orders/42" }));
/// assert_eq!(payload.title, "Payment confirmed");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Payload {
    /// The notification's title.
    pub title: String,
    /// The text under the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The URL of an image shown with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Anything else the service worker needs, e.g. the URL to open on click.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Payload {
    /// A notification with this title.
    ///
    /// ```
    /// let p = htmx_sse::webpush::Payload::new("Hello");
    /// assert_eq!(p.to_json(), br#"{"title":"Hello"}"#);
    /// ```
    #[must_use]
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Sets the text under the title.
    ///
    /// ```
    /// let p = htmx_sse::webpush::Payload::new("Hello").body("world");
    /// assert_eq!(p.body.as_deref(), Some("world"));
    /// ```
    #[must_use]
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the icon URL.
    ///
    /// ```
    /// let p = htmx_sse::webpush::Payload::new("Hello").icon("/icon.png");
    /// assert_eq!(p.icon.as_deref(), Some("/icon.png"));
    /// ```
    #[must_use]
    pub fn icon(mut self, icon: impl Into<String>) -> Self {
        self.icon = Some(icon.into());
        self
    }

    /// Sets the data the service worker gets with the notification.
    ///
    /// ```
    /// let p = htmx_sse::webpush::Payload::new("Hello").data(serde_json::json!({ "url": "/" }));
    /// assert_eq!(p.data.unwrap()["url"], "/");
    /// ```
    #[must_use]
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The JSON that is encrypted and sent.
    ///
    /// ```
    /// let p = htmx_sse::webpush::Payload::new("Hi").body("there");
    /// assert_eq!(p.to_json(), br#"{"title":"Hi","body":"there"}"#);
    /// ```
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and a `serde_json::Value` (whose map keys are strings)
        // always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// How soon the push service should deliver, so a phone on battery can wait
/// for low-urgency messages (RFC 8030 section 5.3, the `Urgency` header).
///
/// ```
/// use htmx_sse::webpush::Urgency;
///
/// assert_eq!(Urgency::VeryLow.as_str(), "very-low");
/// assert_eq!(Urgency::default(), Urgency::Normal);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Urgency {
    /// `very-low`: advertisements; delivered on power and Wi-Fi.
    VeryLow,
    /// `low`: topic updates; delivered on power or Wi-Fi.
    Low,
    /// `normal`: chat messages, calendar reminders (the push service's
    /// default).
    #[default]
    Normal,
    /// `high`: time-sensitive alerts; delivered at once, even on low battery.
    High,
}

impl Urgency {
    /// The header value.
    ///
    /// ```
    /// assert_eq!(htmx_sse::webpush::Urgency::High.as_str(), "high");
    /// ```
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

impl fmt::Display for Urgency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic: a newer message with the same topic replaces one the push
/// service still holds for an offline browser (RFC 8030 section 5.4, the
/// `Topic` header). 1 to 32 characters of the URL-safe base64 alphabet
/// (`A-Z a-z 0-9 - _`).
///
/// ```
/// use htmx_sse::webpush::Topic;
///
/// let topic = Topic::new("order-42")?;
/// assert_eq!(topic.as_str(), "order-42");
/// assert!(Topic::new("order 42").is_err());
/// # Ok::<(), htmx_sse::webpush::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    /// The longest topic RFC 8030 allows, in characters.
    ///
    /// ```
    /// assert_eq!(htmx_sse::webpush::Topic::MAX_LEN, 32);
    /// ```
    pub const MAX_LEN: usize = 32;

    /// Checks and wraps a topic.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] if it is empty, longer than 32 characters, or
    /// has a character outside `A-Z a-z 0-9 - _`.
    ///
    /// ```
    /// use htmx_sse::webpush::Topic;
    ///
    /// assert!(Topic::new("a".repeat(32)).is_ok());
    /// assert!(Topic::new("a".repeat(33)).is_err());
    /// ```
    pub fn new(topic: impl Into<String>) -> Result<Self, Error> {
        let topic = topic.into();
        let reason = if topic.is_empty() {
            Some("empty")
        } else if topic.len() > Self::MAX_LEN {
            Some("longer than 32 characters")
        } else if !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Some("only A-Z, a-z, 0-9, '-' and '_' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidTopic {
                topic: cut(&topic),
                reason,
            }),
            None => Ok(Self(topic)),
        }
    }

    /// The topic.
    ///
    /// ```
    /// assert_eq!(htmx_sse::webpush::Topic::new("news")?.as_str(), "news");
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One message to push: the bytes to encrypt and its delivery options.
///
/// [`Dispatcher::send`](super::Dispatcher::send) takes anything that turns
/// into one: a [`Payload`] (sent as JSON), `Bytes`, `Vec<u8>`, `String` or
/// `&'static str`. Build one yourself for a TTL, an urgency or a topic of its
/// own; without a TTL the dispatcher's default applies.
///
/// ```
/// use std::time::Duration;
/// use htmx_sse::webpush::{Payload, PushMessage, Topic, Urgency};
///
/// let message = PushMessage::from(Payload::new("Build failed"))
///     .ttl(Duration::from_secs(600))
///     .urgency(Urgency::High)
///     .topic(Topic::new("build-17")?);
/// # Ok::<(), htmx_sse::webpush::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct PushMessage {
    pub(crate) body: Bytes,
    pub(crate) ttl: Option<Duration>,
    pub(crate) urgency: Option<Urgency>,
    pub(crate) topic: Option<Topic>,
}

impl PushMessage {
    /// A message carrying these bytes (at most
    /// [`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN); checked when sending).
    ///
    /// ```
    /// let m = htmx_sse::webpush::PushMessage::new("ping");
    /// assert_eq!(m.body(), b"ping");
    /// ```
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ttl: None,
            urgency: None,
            topic: None,
        }
    }

    /// A message carrying `value` as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] if `value` cannot be serialised.
    ///
    /// ```
    /// let m = htmx_sse::webpush::PushMessage::json(&serde_json::json!({ "n": 1 }))?;
    /// assert_eq!(m.body(), br#"{"n":1}"#);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        Ok(Self::new(serde_json::to_vec(value)?))
    }

    /// How long the push service keeps the message for a browser that is
    /// offline (the `TTL` header, whole seconds; zero means deliver now or
    /// drop). Push services cap it, typically at four weeks.
    ///
    /// ```
    /// let m = htmx_sse::webpush::PushMessage::new("x").ttl(std::time::Duration::from_secs(60));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The `Urgency` header.
    ///
    /// ```
    /// use htmx_sse::webpush::{PushMessage, Urgency};
    /// let m = PushMessage::new("x").urgency(Urgency::Low);
    /// ```
    pub fn urgency(mut self, urgency: Urgency) -> Self {
        self.urgency = Some(urgency);
        self
    }

    /// The `Topic` header: replaces an undelivered message with the same
    /// topic.
    ///
    /// ```
    /// use htmx_sse::webpush::{PushMessage, Topic};
    /// let m = PushMessage::new("x").topic(Topic::new("inbox")?);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    pub fn topic(mut self, topic: Topic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// The bytes that will be encrypted and sent.
    ///
    /// ```
    /// assert_eq!(htmx_sse::webpush::PushMessage::new("ping").body(), b"ping");
    /// ```
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl From<Payload> for PushMessage {
    fn from(payload: Payload) -> Self {
        Self::new(payload.to_json())
    }
}

impl From<&Payload> for PushMessage {
    fn from(payload: &Payload) -> Self {
        Self::new(payload.to_json())
    }
}

impl From<Bytes> for PushMessage {
    fn from(body: Bytes) -> Self {
        Self::new(body)
    }
}

impl From<Vec<u8>> for PushMessage {
    fn from(body: Vec<u8>) -> Self {
        Self::new(body)
    }
}

impl From<String> for PushMessage {
    fn from(body: String) -> Self {
        Self::new(body)
    }
}

impl From<&'static str> for PushMessage {
    fn from(body: &'static str) -> Self {
        Self::new(body)
    }
}

impl From<&PushMessage> for PushMessage {
    fn from(message: &PushMessage) -> Self {
        message.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_json_leaves_out_empty_fields() {
        let p = Payload::new("t")
            .icon("/i.png")
            .data(serde_json::json!({"url": "/x"}));
        assert_eq!(
            p.to_json(),
            br#"{"title":"t","icon":"/i.png","data":{"url":"/x"}}"#
        );
        let back: Payload = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn topics() {
        assert!(Topic::new("A-z_09").is_ok());
        for bad in ["", "a.b", "a/b", "a+b", "é", &"x".repeat(33)] {
            assert!(
                matches!(Topic::new(bad), Err(Error::InvalidTopic { .. })),
                "{bad}"
            );
        }
    }
}
