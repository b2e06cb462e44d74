//! The Web Push error type: what went wrong, in terms a caller can act on.

use std::fmt;

use axum::http::StatusCode;

/// Everything that can go wrong while preparing or delivering a push message.
///
/// Three cases ask for different actions, and each has its own variant:
///
/// - [`Error::Gone`]: the push service answered `404 Not Found` or
///   `410 Gone`. The subscription will never work again: delete it.
/// - [`Error::PayloadTooLarge`]: the message does not fit in one push message
///   ([`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN) bytes). Nothing was sent:
///   send less (an id to fetch, say).
/// - [`Error::Rejected`]: any other status. The body the push service sent
///   back (it usually says why, e.g. a bad VAPID signature) is in the
///   variant's `body` field, not in the `Display` message: see there.
///
/// [`Error::EndpointRefused`] and [`Error::Redirected`] are the endpoint
/// checks at work (see [`EndpointPolicy`](super::EndpointPolicy)): a
/// subscription whose endpoint is not a push service the server will post
/// to. The others are bad input caught before anything is sent (keys,
/// subjects, subscriptions, topics) and transport failures. The enum is
/// `#[non_exhaustive]`: match the variants you act on and keep a wildcard arm.
///
/// ```
/// use htmx_sse::webpush::Error;
///
/// fn should_delete(result: &Result<(), Error>) -> bool {
///     matches!(result, Err(e) if e.is_gone())
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The VAPID private key could not be read or is not a P-256 key.
    InvalidVapidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The VAPID subject is not a `mailto:` address or an `https:` URL.
    InvalidSubject {
        /// The subject as given (cut to 80 bytes).
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subscription (as a browser's `PushSubscription.toJSON()` gives it)
    /// has a malformed field.
    InvalidSubscription {
        /// The field: `"endpoint"`, `"keys.p256dh"` or `"keys.auth"`, or
        /// `"json"` when the text is not a subscription object at all.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint is refused by the [`EndpointPolicy`](super::EndpointPolicy):
    /// `http:`, an IP-literal host, `localhost` or a single-label name, a
    /// user name or password in the URL, a host outside the allow-list; or,
    /// when the dispatcher's own HTTP client connected, a host name that
    /// resolves to no public address (loopback, private, link-local, …).
    /// Nothing was sent to it.
    ///
    /// ```
    /// use htmx_sse::webpush::{Error, Subscription};
    ///
    /// let e = Subscription::new(
    ///     "https://169.254.169.254/latest/meta-data",
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    /// ).unwrap_err();
    /// assert!(matches!(e, Error::EndpointRefused { .. }));
    /// assert_eq!(
    ///     e.to_string(),
    ///     "push endpoint refused: the host 169.254.169.254 is an IP address; push services are reached by name",
    /// );
    /// ```
    EndpointRefused {
        /// Why (the host in it is cut to 80 bytes).
        reason: String,
    },
    /// A `Topic` is not 1 to 32 characters of the URL-safe base64 alphabet.
    InvalidTopic {
        /// The topic as given (cut to 80 bytes).
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload does not fit in one push message; nothing was sent.
    PayloadTooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The largest payload that fits ([`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN)).
        max: usize,
    },
    /// The push service answered `404 Not Found` or `410 Gone`: the
    /// subscription expired or the user revoked it. Delete it.
    Gone {
        /// `404` or `410`.
        status: StatusCode,
    },
    /// The push service refused the message with a status other than
    /// `404`/`410` (and not a redirect).
    ///
    /// The `Display` message has the status only. The push service is
    /// whatever host the subscription named, so its body is text chosen by
    /// whoever posted the subscription: an error message shown to a user or
    /// returned in a response must not carry it. Read `body` deliberately,
    /// to log it, say.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use htmx_sse::webpush::Error;
    ///
    /// let e = Error::Rejected {
    ///     status: StatusCode::BAD_REQUEST,
    ///     body: "<script>alert(1)</script>".into(),
    /// };
    /// assert_eq!(e.to_string(), "push service answered 400 Bad Request");
    /// ```
    Rejected {
        /// The status it answered with.
        status: StatusCode,
        /// The start of the response body: its first 4 KiB at most, as
        /// lossy UTF-8. Not in the `Display` message.
        body: String,
    },
    /// The push service answered with a redirect (`3xx`), which is never
    /// followed: a push service does not redirect, and following one would
    /// let an endpoint send the server's request anywhere. Nothing was
    /// delivered.
    ///
    /// With a client of your own
    /// ([`Dispatcher::with_client`](super::Dispatcher::with_client)) that
    /// followed the redirect anyway, the answer came from another URL than
    /// the endpoint: it is not counted as delivered, and `status` is the
    /// status of that other answer.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use htmx_sse::webpush::Error;
    ///
    /// let e = Error::Redirected { status: StatusCode::TEMPORARY_REDIRECT };
    /// assert_eq!(e.to_string(), "push service answered 307 Temporary Redirect: redirects are not followed");
    /// ```
    Redirected {
        /// The `3xx` status, or with a client that followed the redirect,
        /// the status of the answer from elsewhere.
        status: StatusCode,
    },
    /// The request failed before a response arrived (connection, timeout, TLS).
    Request(reqwest::Error),
    /// A message could not be serialised to JSON.
    Json(serde_json::Error),
    /// The operating system's random number generator failed (the per-message
    /// key and salt, or a new VAPID key, could not be made).
    Random(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Whether the push service said the subscription is gone (`404`/`410`):
    /// delete it.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use htmx_sse::webpush::Error;
    ///
    /// assert!(Error::Gone { status: StatusCode::GONE }.is_gone());
    /// ```
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Gone { .. })
    }

    /// The HTTP status the push service answered with, if it answered.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use htmx_sse::webpush::Error;
    ///
    /// let e = Error::Rejected { status: StatusCode::TOO_MANY_REQUESTS, body: String::new() };
    /// assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    /// ```
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Gone { status }
            | Error::Rejected { status, .. }
            | Error::Redirected { status } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn subscription(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidSubscription {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn endpoint_refused(reason: impl Into<String>) -> Self {
        Error::EndpointRefused {
            reason: reason.into(),
        }
    }

    pub(crate) fn vapid_key(reason: impl Into<String>) -> Self {
        Error::InvalidVapidKey {
            reason: reason.into(),
        }
    }

    pub(crate) fn random(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Random(Box::new(e))
    }
}

/// Cuts user input kept in an error to 80 bytes, at a char boundary.
pub(crate) fn cut(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidVapidKey { reason } => write!(f, "invalid VAPID private key: {reason}"),
            Error::InvalidSubject { subject, reason } => {
                write!(f, "invalid VAPID subject {subject:?}: {reason}")
            }
            Error::InvalidSubscription { field, reason } => {
                write!(f, "invalid push subscription: {field}: {reason}")
            }
            Error::InvalidTopic { topic, reason } => write!(f, "invalid topic {topic:?}: {reason}"),
            Error::PayloadTooLarge { size, max } => write!(
                f,
                "payload too large for one push message: {size} bytes, at most {max}"
            ),
            Error::Gone { status } => write!(f, "push subscription is gone ({status}): delete it"),
            Error::EndpointRefused { reason } => write!(f, "push endpoint refused: {reason}"),
            // Never the body: see the variant's docs.
            Error::Rejected { status, .. } => write!(f, "push service answered {status}"),
            Error::Redirected { status } if status.is_redirection() => write!(
                f,
                "push service answered {status}: redirects are not followed"
            ),
            Error::Redirected { status } => write!(
                f,
                "push request was redirected away from the endpoint by the HTTP client \
                 (then answered {status}): build it with redirect::Policy::none()"
            ),
            Error::Request(_) => f.write_str("push request failed"),
            Error::Json(_) => f.write_str("push message could not be serialised to JSON"),
            Error::Random(_) => {
                f.write_str("the operating system's random number generator failed")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Request(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::Random(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Request(e)
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
        let e = Error::PayloadTooLarge {
            size: 4000,
            max: 3993,
        };
        assert_eq!(
            e.to_string(),
            "payload too large for one push message: 4000 bytes, at most 3993"
        );
        let e = Error::Gone {
            status: StatusCode::GONE,
        };
        assert_eq!(
            e.to_string(),
            "push subscription is gone (410 Gone): delete it"
        );
        let e = Error::Rejected {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "push service answered 500 Internal Server Error"
        );
        let e = Error::Redirected {
            status: StatusCode::PERMANENT_REDIRECT,
        };
        assert_eq!(
            e.to_string(),
            "push service answered 308 Permanent Redirect: redirects are not followed"
        );
        assert_eq!(e.status(), Some(StatusCode::PERMANENT_REDIRECT));
        let e = Error::Redirected {
            status: StatusCode::CREATED,
        };
        assert_eq!(
            e.to_string(),
            "push request was redirected away from the endpoint by the HTTP client \
             (then answered 201 Created): build it with redirect::Policy::none()"
        );
        let e = Error::endpoint_refused("the host \"localhost\" names this machine");
        assert_eq!(
            e.to_string(),
            "push endpoint refused: the host \"localhost\" names this machine"
        );
    }

    #[test]
    fn rejected_display_never_carries_the_body() {
        let body = "<script>alert(document.cookie)</script> internal: 10.0.0.5";
        let e = Error::Rejected {
            status: StatusCode::BAD_REQUEST,
            body: body.into(),
        };
        let shown = e.to_string();
        assert_eq!(shown, "push service answered 400 Bad Request");
        assert!(!shown.contains("script") && !shown.contains("10.0.0.5"));
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        let s = "é".repeat(60);
        let c = cut(&s);
        assert!(c.len() <= 80);
        assert!(s.starts_with(&c));
    }

    #[test]
    fn error_is_send_sync() {
        fn assert<T: Send + Sync + 'static>() {}
        assert::<Error>();
    }
}
