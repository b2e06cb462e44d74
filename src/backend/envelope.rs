//! What a backend carries: an [`Envelope`] (a message rendered, encoded and
//! addressed once, by the instance that publishes it), the [`Target`] it
//! is addressed to, and the [`Epoch`] its number belongs to.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connections::{ConnectionId, UserId};
use crate::event::EventName;
use crate::topics::Topic;

/// The incarnation of a shared log: message numbers restart from 1 in a
/// new epoch. Random per in-memory manager (so that ids from before a
/// restart are told apart from this process's own, as Centrifugo's epochs
/// do); kept in the backend with a shared one (so that ids stay valid
/// across instances and restarts, and change only when the backend lost
/// its data). Shown as 8 hex digits.
///
/// ```
/// use htmx_sse::backend::Epoch;
///
/// let e: Epoch = "3f2a9c01".parse()?;
/// assert_eq!(e.to_string(), "3f2a9c01");
/// assert!("3f2a9c0".parse::<Epoch>().is_err());
/// # Ok::<(), htmx_sse::backend::InvalidEpoch>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub(crate) u32);

impl Epoch {
    /// A fresh random epoch, for a log that has none yet.
    #[must_use]
    pub fn random() -> Self {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        Epoch(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Reads the 8 hex digits it is shown as.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().map(Epoch)
    }
}

/// Text that is not an [`Epoch`] (8 hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEpoch;

impl fmt::Display for InvalidEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an epoch is 8 hex digits")
    }
}

impl std::error::Error for InvalidEpoch {}

impl FromStr for Epoch {
    type Err = InvalidEpoch;
    fn from_str(s: &str) -> Result<Self, InvalidEpoch> {
        Epoch::parse(s).ok_or(InvalidEpoch)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Epoch::parse(&s).ok_or_else(|| serde::de::Error::custom(InvalidEpoch))
    }
}

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Target {
    /// Every connection but these.
    All {
        /// The connections spared.
        exclude: Box<[ConnectionId]>,
    },
    /// Exactly this connection, and only while it belongs to this user
    /// (`None`: a connection without a user).
    One {
        /// The connection.
        to: ConnectionId,
        /// Its user when the message was published.
        user: Option<UserId>,
    },
    /// Connections subscribed to one of these topics (and, when private,
    /// authorized for one of them), but these.
    Topics {
        /// The message's topics.
        topics: Box<[Topic]>,
        /// Whether only authorized subscribers get it.
        private: bool,
        /// The connections spared.
        exclude: Box<[ConnectionId]>,
    },
    /// Every connection of this user but these.
    User {
        /// The user.
        user: UserId,
        /// The connections spared.
        exclude: Box<[ConnectionId]>,
    },
}

/// A message rendered, encoded and addressed, not yet numbered: what a
/// [`Backend`](super::Backend) carries from the instance that publishes it
/// to every instance (itself included), which delivers it to its own
/// connections from these bytes, without rendering it again.
///
/// Serde-able (JSON carries the frames as arrays of bytes; a backend may
/// store [`body`](Self::body) apart, as the Redis backend does), and
/// versioned: [`Envelope::FORMAT`] changes when the meaning of a field does,
/// so that a backend can refuse entries it cannot read.
///
/// ```
/// use htmx_sse::backend::{Envelope, Target};
///
/// let json = r#"{"v":1,"body":[100,97,116,97,58,32,104,105,10,10],"target":{"k":"all","exclude":[]},
///     "type":"message","data":"hi","timestamp":"2026-12-05T10:00:00Z","origin":7,"nonce":1}"#;
/// let envelope: Envelope = serde_json::from_str(json)?;
/// assert_eq!(&envelope.body[..], b"data: hi\n\n");
/// assert!(matches!(envelope.target, Target::All { .. }));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// The format version, [`Envelope::FORMAT`] for envelopes this crate
    /// makes.
    #[serde(rename = "v")]
    pub format: u32,
    /// `event: …\ndata: …\n\n`: the frame without its `id:` line.
    pub body: Bytes,
    /// With the topic as event type: one body per topic, in topic order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_bodies: Option<Box<[Bytes]>>,
    /// Who it is for.
    pub target: Target,
    /// Its type (the event name).
    #[serde(rename = "type")]
    pub message_type: EventName,
    /// Its data, as published (listed by `/history`).
    pub data: serde_json::Value,
    /// Whether `data` is HTML sent as it is (else text or JSON).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub html: bool,
    /// What the publisher attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// When it was published.
    pub timestamp: DateTime<Utc>,
    /// The manager that published it (random per manager).
    pub origin: u64,
    /// Its number among that manager's publishes: with `origin`, how the
    /// publisher recognises its own message when the backend delivers it
    /// back (and returns how many connections it reached).
    pub nonce: u64,
}

impl Envelope {
    /// The format of the envelopes this version of the crate makes.
    pub const FORMAT: u32 = 1;
}
