//! Who is connected: [`ConnectionRegistry`] with states and stats, the
//! [`ConnectionId`] every connection is known by, and the browser-side
//! helpers that keep connections healthy.

#[cfg(feature = "askama")]
mod element;
mod registry;
pub mod runtime;
#[cfg(feature = "askama")]
pub mod scripts;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub use registry::{
    ConnectionRegistry, ConnectionState, Registration, RegistryStats, SseConnection,
};
pub(crate) use registry::{Entry, Listing, Roll};

use crate::error::Error;

/// The longest connection id accepted.
pub const MAX_CONNECTION_ID_LEN: usize = 64;

/// The id a connection is known by: in exclusions, in `send_to`, in the
/// registry, and inside the `Last-Event-ID` a browser sends back.
///
/// 1 to 64 ASCII letters, digits, `-` or `_`, so that it is safe in a URL
/// path, an HTML attribute and an SSE field. Fresh ids are random (128 bits):
/// treat them as secrets of the tab that holds them.
///
/// ```
/// use htmx_sse::connections::ConnectionId;
///
/// let id = ConnectionId::new("tab-1")?;
/// assert_eq!(id.as_str(), "tab-1");
/// assert!(ConnectionId::new("a b").is_err());
/// assert_eq!(ConnectionId::random().as_str().len(), 32);
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    /// Checks `id` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionId`] when it is empty, longer than 64 bytes,
    /// or holds anything but ASCII letters, digits, `-` and `_`.
    pub fn new(id: &str) -> Result<Self, Error> {
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_CONNECTION_ID_LEN {
            Some("longer than 64 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Some("may hold only ASCII letters, digits, '-' and '_'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidConnectionId {
                id: truncate_for_error(id),
                reason,
            }),
            None => Ok(ConnectionId(Arc::from(id))),
        }
    }

    /// A fresh random id (a v4 UUID in 32 hex digits).
    #[must_use]
    pub fn random() -> Self {
        let mut buf = [0u8; 32];
        let s = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
        ConnectionId(Arc::from(&*s))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a connection belongs to, for per-user delivery: the subject of a
/// token, a session's user id.
///
/// 1 to 256 bytes without control characters or white space.
///
/// ```
/// use htmx_sse::connections::UserId;
///
/// assert_eq!(UserId::new("alice@example.com")?.as_str(), "alice@example.com");
/// assert!(UserId::new("").is_err());
/// assert!(UserId::new("a\nb").is_err());
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Checks `id` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUserId`] when it is empty, longer than 256 bytes, or
    /// holds a control character or white space.
    pub fn new(id: &str) -> Result<Self, Error> {
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > 256 {
            Some("longer than 256 bytes")
        } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("holds a control character or white space")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidUserId {
                id: truncate_for_error(id),
                reason,
            }),
            None => Ok(UserId(Arc::from(id))),
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for UserId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        UserId::new(s)
    }
}

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Checked as [`UserId::new`] checks.
impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Keeps error values small when a client sends a huge id.
pub(crate) fn truncate_for_error(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ConnectionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ConnectionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ConnectionId::new(s)
    }
}

impl TryFrom<&str> for ConnectionId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        ConnectionId::new(s)
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        ConnectionId::new(&s)
    }
}

impl Serialize for ConnectionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ConnectionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ConnectionId::new(&s).map_err(serde::de::Error::custom)
    }
}
