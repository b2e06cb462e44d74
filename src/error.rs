//! The crate's one error type.

use std::fmt;

use crate::limits::Limit;

/// Which part of an SSE frame a value was meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The `event:` field (the event name).
    Event,
    /// The `id:` field.
    Id,
    /// A `:` comment line.
    Comment,
    /// The `retry:` field.
    Retry,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Event => "event name",
            Field::Id => "event id",
            Field::Comment => "comment",
            Field::Retry => "retry",
        })
    }
}

/// Everything that can go wrong in this crate, as a value.
///
/// Nothing a browser, a publisher or a template sends makes this crate panic; it
/// returns one of these instead. The enum is `#[non_exhaustive]`: match the
/// variants you act on and keep a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An event name, id or comment held a byte that would end the line and
    /// forge another field (CR or LF), or that browsers reject (NUL in an id).
    InvalidField {
        /// The field the value was meant for.
        field: Field,
        /// The offending byte (`b'\r'`, `b'\n'` or `0`).
        byte: u8,
        /// Its position in the value.
        position: usize,
    },
    /// An event name was empty (browsers would dispatch it as `message`).
    EmptyEventName,
    /// A retry value was not a plain decimal integer of milliseconds.
    InvalidRetry {
        /// The value as given.
        value: String,
    },
    /// Data could not be serialised to JSON.
    Json(serde_json::Error),
    /// A template could not be rendered.
    Render(Box<dyn std::error::Error + Send + Sync>),
    /// A target id for an out-of-band swap is not a plain HTML id.
    InvalidTarget {
        /// The id as given (its first 80 bytes).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An element added without a wrapper is not a single HTML element that can
    /// carry swap attributes.
    NotAnElement {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A connection id is not 1 to 64 ASCII letters, digits, `-` or `_`.
    InvalidConnectionId {
        /// The id as given (cut to 80 bytes).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A user id is empty, too long, or holds control characters or white
    /// space.
    InvalidUserId {
        /// The id as given (cut to 80 bytes).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic or topic selector is not valid.
    InvalidTopic(crate::topics::InvalidTopic),
    /// A combination of options the target cannot do.
    Unsupported {
        /// What cannot be done, and what to do instead.
        what: &'static str,
    },
    /// No connection with this id is registered (it never was, or it left).
    UnknownConnection {
        /// The id asked for.
        id: String,
    },
    /// A message type that the crate gives a meaning to (`connection`,
    /// `reset`, `close`, or the manager's own close event): pages would
    /// take it for the crate's own event (a published `close` stops every
    /// page from reconnecting). Publish it on purpose with
    /// [`Message::allow_reserved_type`](crate::broadcast::Message::allow_reserved_type).
    ReservedEventName {
        /// The name as given.
        name: String,
    },
    /// The shared backend (Redis) could not be reached or refused the
    /// command; nothing was published. Worth retrying later.
    Backend(String),
    /// A request reached one of the [`Limits`](crate::limits::Limits):
    /// nothing was opened or published.
    LimitExceeded {
        /// Which limit.
        limit: crate::limits::Limit,
        /// Its value.
        max: usize,
        /// When it is worth trying again (for the connection limits: the
        /// `Retry-After` of the answer).
        retry_after: Option<std::time::Duration>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidField {
                field,
                byte,
                position,
            } => {
                let what = match byte {
                    b'\r' => "a carriage return",
                    b'\n' => "a line feed",
                    0 => "a NUL byte",
                    _ => "a forbidden byte",
                };
                write!(f, "invalid {field}: {what} at byte {position}")
            }
            Error::EmptyEventName => f.write_str("invalid event name: empty"),
            Error::InvalidRetry { value } => {
                write!(
                    f,
                    "invalid retry {value:?}: expected a decimal integer of milliseconds"
                )
            }
            Error::Json(_) => f.write_str("data could not be serialised to JSON"),
            Error::Render(_) => f.write_str("template could not be rendered"),
            Error::InvalidTarget { id, reason } => write!(f, "invalid target id {id:?}: {reason}"),
            Error::NotAnElement { reason } => write!(f, "not a single HTML element: {reason}"),
            Error::InvalidConnectionId { id, reason } => {
                write!(f, "invalid connection id {id:?}: {reason}")
            }
            Error::UnknownConnection { id } => write!(f, "unknown connection {id:?}"),
            Error::InvalidUserId { id, reason } => write!(f, "invalid user id {id:?}: {reason}"),
            Error::InvalidTopic(e) => fmt::Display::fmt(e, f),
            Error::Unsupported { what } => write!(f, "unsupported: {what}"),
            Error::ReservedEventName { name } => write!(
                f,
                "event name {name:?} is reserved: the crate sends it itself"
            ),
            Error::Backend(reason) => write!(f, "backend unavailable: {reason}"),
            Error::LimitExceeded { limit, max, .. } => {
                write!(f, "limit reached: at most {max} {limit}")
            }
        }
    }
}

impl Error {
    /// The HTTP status the crate's routes answer this error with: 404 for
    /// an unknown connection, 500 when a template failed, 503 when the
    /// shared backend (Redis) cannot be reached or the server has as many
    /// connections as it takes (worth retrying), 429 when the user has as
    /// many connections as one user may, 413 for a body over the limit,
    /// 400 for more topics than one stream may ask for, 422 for every other
    /// kind of bad input.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use htmx_sse::Error;
    ///
    /// assert_eq!(Error::Backend("down".into()).status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(Error::EmptyEventName.status(), StatusCode::UNPROCESSABLE_ENTITY);
    /// ```
    #[must_use]
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Error::UnknownConnection { .. } => StatusCode::NOT_FOUND,
            Error::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::LimitExceeded { limit, .. } => match limit {
                Limit::Connections => StatusCode::SERVICE_UNAVAILABLE,
                Limit::ConnectionsPerUser => StatusCode::TOO_MANY_REQUESTS,
                Limit::Body => StatusCode::PAYLOAD_TOO_LARGE,
                Limit::TopicsPerConnection => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// When trying again is worth it, if the error says: the `Retry-After`
    /// of the answer for [`Error::LimitExceeded`] on connections.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::{Error, limits::Limit};
    ///
    /// let full = Error::LimitExceeded {
    ///     limit: Limit::Connections,
    ///     max: 20_000,
    ///     retry_after: Some(Duration::from_secs(5)),
    /// };
    /// assert_eq!(full.retry_after(), Some(Duration::from_secs(5)));
    /// assert_eq!(full.status(), 503);
    /// ```
    #[must_use]
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::LimitExceeded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The error as the crate's routes answer it: [`Error::status`] with a JSON
/// body `{"error": "…"}`, so a handler that publishes can return it (or use
/// `?`) and answer like the crate's own routes.
///
/// ```
/// use axum::response::IntoResponse;
/// use htmx_sse::{BroadcastManager, Error};
///
/// async fn publish(manager: BroadcastManager) -> Result<&'static str, Error> {
///     manager.message("note", "hello").send().await?;
///     Ok("sent")
/// }
/// # let _ = publish;
/// let response = Error::Backend("redis down".into()).into_response();
/// assert_eq!(response.status(), 503);
/// ```
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let mut response = (
            self.status(),
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up, at least one.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        response
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Json(e) => Some(e),
            Error::Render(e) => Some(&**e),
            Error::InvalidTopic(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<crate::topics::InvalidTopic> for Error {
    fn from(e: crate::topics::InvalidTopic) -> Self {
        Error::InvalidTopic(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_without_period() {
        let e = Error::InvalidField {
            field: Field::Event,
            byte: b'\n',
            position: 3,
        };
        assert_eq!(e.to_string(), "invalid event name: a line feed at byte 3");
        let e = Error::InvalidRetry { value: "3s".into() };
        assert_eq!(
            e.to_string(),
            "invalid retry \"3s\": expected a decimal integer of milliseconds"
        );
    }

    #[test]
    fn error_is_send_sync() {
        fn assert<T: Send + Sync + 'static>() {}
        assert::<Error>();
    }
}
