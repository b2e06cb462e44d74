//! [`LastEventId`]: where a reconnecting page says it stopped, read the
//! way browsers and the crate's reconnect runtime send it.

use std::convert::Infallible;
use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::message::{Epoch, MessageId};
use crate::connections::ConnectionId;

/// The resume point a page sent when it reconnected: the `Last-Event-ID`
/// header, else a `lastEventId` query parameter (for clients that cannot
/// send headers and opted in to ids in URLs), else the `htmx-sse-resume…`
/// cookie the crate's reconnect runtime sets for exactly this stream's path
/// and query. An axum extractor: take `Option<LastEventId>` in your own
/// stream handler, and resume stays right without re-reading headers.
///
/// ```
/// use axum::{Router, extract::State, response::IntoResponse, routing::get};
/// use htmx_sse::broadcast::{BroadcastManager, LastEventId, Subscription};
///
/// async fn events(
///     State(manager): State<BroadcastManager>,
///     last: Option<LastEventId>,
/// ) -> impl IntoResponse {
///     let last = last.as_ref().map(LastEventId::as_str);
///     manager.subscribe(Subscription::new(), last, serde_json::Value::Null)
/// }
///
/// let app: Router = Router::new()
///     .route("/events", get(events))
///     .with_state(BroadcastManager::new());
/// ```
///
/// An id this crate wrote reads as `EPOCH-SEQ.CONNECTION.PROOF`: the
/// [`message`](Self::message) the page saw last and its
/// [`connection`](Self::connection). Anything else (another server's ids,
/// a forged or cut value) is kept as sent, [`is_recognized`](Self::is_recognized)
/// is false, and the manager answers it with a fresh connection and the
/// `reset` event. `Debug` leaves the proof out: it is a credential of sorts.
#[derive(Clone, PartialEq, Eq)]
pub struct LastEventId {
    raw: Box<str>,
    point: Option<ResumePoint>,
}

impl LastEventId {
    /// Reads `raw` as a page sent it.
    ///
    /// ```
    /// use htmx_sse::broadcast::LastEventId;
    ///
    /// let id = LastEventId::new("3f2a9c01-42.tab_1.0123456789abcdef01234567");
    /// assert!(id.is_recognized());
    /// assert_eq!(id.message().map(|m| m.seq()), Some(42));
    /// assert_eq!(id.connection().map(|c| c.as_str()), Some("tab_1"));
    /// assert!(!LastEventId::new("42").is_recognized());
    /// ```
    #[must_use]
    pub fn new(raw: &str) -> Self {
        LastEventId {
            raw: raw.into(),
            point: ResumePoint::parse(raw),
        }
    }

    /// The resume point of a request, if it carries one (header, query
    /// parameter, or the runtime's cookie for its path and query).
    ///
    /// ```
    /// use htmx_sse::broadcast::LastEventId;
    ///
    /// let req = axum::http::Request::get("/sse?lastEventId=3f2a9c01-7.tab_1.x").body(()).unwrap();
    /// let (parts, _) = req.into_parts();
    /// assert_eq!(LastEventId::from_parts(&parts).unwrap().as_str(), "3f2a9c01-7.tab_1.x");
    /// ```
    #[must_use]
    pub fn from_parts(parts: &Parts) -> Option<Self> {
        last_event_id(parts)
            .filter(|s| !s.is_empty())
            .map(|s| Self::new(&s))
    }

    /// The value as the page sent it: what
    /// [`BroadcastManager::subscribe`](super::BroadcastManager::subscribe) takes.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether it reads as an id this crate writes.
    #[must_use]
    pub fn is_recognized(&self) -> bool {
        self.point.is_some()
    }

    /// The last message the page saw (`EPOCH-SEQ`), when recognized.
    #[must_use]
    pub fn message(&self) -> Option<MessageId> {
        self.point.as_ref().map(|p| MessageId {
            epoch: p.epoch,
            seq: p.seq,
        })
    }

    /// The connection id the page had, when recognized. It is taken back
    /// only with a proof that holds for the user presenting it.
    #[must_use]
    pub fn connection(&self) -> Option<&ConnectionId> {
        self.point.as_ref().and_then(|p| p.connection.as_ref())
    }
}

impl fmt::Debug for LastEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.point {
            Some(p) => f
                .debug_struct("LastEventId")
                .field(
                    "message",
                    &MessageId {
                        epoch: p.epoch,
                        seq: p.seq,
                    },
                )
                .field("connection", &p.connection)
                .field("proof", &p.proof.is_some())
                .finish(),
            None => f
                .debug_struct("LastEventId")
                .field("unrecognized_len", &self.raw.len())
                .finish(),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(LastEventId::from_parts(parts))
    }
}

/// Without `Option`, a request that carries no resume point is refused
/// with 400 and a JSON error.
impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        LastEventId::from_parts(parts).ok_or_else(|| {
            crate::routes::error(
                StatusCode::BAD_REQUEST,
                "no Last-Event-ID header, lastEventId parameter or resume cookie",
            )
            .into_response()
        })
    }
}

/// What a recognized `Last-Event-ID` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    pub(crate) epoch: Epoch,
    pub(crate) seq: u64,
    /// The connection the page had; `None` for a point rendered into the
    /// page before it connected (`EPOCH-SEQ`, see
    /// [`BroadcastManager::resume_point`](super::BroadcastManager::resume_point)).
    pub(crate) connection: Option<ConnectionId>,
    /// The resume proof (see `proof`), when the id carried one.
    pub(crate) proof: Option<Box<str>>,
}

impl ResumePoint {
    /// Reads `EPOCH-SEQ.CONNECTION.PROOF` (or `EPOCH-SEQ.CONNECTION`, whose
    /// connection id can then not be taken back, or `EPOCH-SEQ`, a point
    /// rendered into a page: what follows it, for a fresh connection).
    /// Anything else (another server's ids, a forged or truncated value)
    /// is `None`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        if s.len() > 160 {
            return None;
        }
        let (message, tag) = match s.split_once('.') {
            Some((message, tag)) => (message, Some(tag)),
            None => (s, None),
        };
        let (connection, proof) = match tag.map(|t| t.split_once('.').ok_or(t)) {
            None => (None, None),
            Some(Ok((c, p))) => (Some(c), Some(p)),
            Some(Err(c)) => (Some(c), None),
        };
        let (epoch, seq) = message.split_once('-')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ResumePoint {
            epoch: Epoch::parse(epoch)?,
            seq: seq.parse().ok()?,
            connection: match connection {
                Some(c) => Some(ConnectionId::new(c).ok()?),
                None => None,
            },
            proof: proof.map(Box::from),
        })
    }
}

/// The `Last-Event-ID` of a stream request: the header, else the
/// `lastEventId` query parameter (for clients that cannot send headers and
/// opted in to ids in URLs), else the `htmx-sse-resume` cookie the
/// crate's reconnect runtime sets for exactly this path and query (so that
/// the id stays out of URLs that logs keep).
fn last_event_id(parts: &Parts) -> Option<String> {
    match parts.headers.get("last-event-id") {
        // A header that is not text cannot be one of ours: resume says so.
        Some(v) => Some(v.to_str().unwrap_or("\u{fffd}").to_owned()),
        None => crate::routes::query_pairs(parts)
            .into_iter()
            .find(|(k, _)| k == "lastEventId")
            .map(|(_, v)| v)
            .or_else(|| resume_cookie(parts))
            // Last: the point rendered into the page's stream URL, which
            // what the browser sends on reconnecting overrides.
            .or_else(|| {
                crate::routes::query_pairs(parts)
                    .into_iter()
                    .find(|(k, _)| k == RESUME_FROM)
                    .map(|(_, v)| v)
            }),
    }
}

/// The query parameter a page's stream URL carries the point it was
/// rendered at in (see
/// [`BroadcastManager::resume_point`](super::BroadcastManager::resume_point)).
pub const RESUME_FROM: &str = "resumeFrom";

/// The name (or, with a `-HASH` suffix per stream, the prefix) of the
/// cookies the reconnect runtime carries a last event id in.
pub(crate) const RESUME_COOKIE: &str = "htmx-sse-resume";

/// The id in an `htmx-sse-resume…` cookie (`ENC(path and query)|ENC(id)`)
/// set for this request's path and query. The path the page used may carry
/// a prefix that a reverse proxy strips (`/app/sse` arriving as `/sse`):
/// the cookie's path and query need only end with the request's.
fn resume_cookie(parts: &Parts) -> Option<String> {
    let here = parts.uri.path_and_query()?.as_str();
    crate::auth::cookies(parts)
        .filter(|(name, _)| {
            name.strip_prefix(RESUME_COOKIE)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        })
        .find_map(|(_, value)| {
            let (for_url, id) = value.split_once('|')?;
            let for_url = percent_decode(for_url)?;
            let same = for_url == here
                || (for_url.ends_with(here)
                    && for_url[..for_url.len() - here.len()].starts_with('/'));
            if same { percent_decode(id) } else { None }
        })
}

/// `%XX` sequences decoded; `None` for a bad escape or bytes that are not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn last_event_id_round_trip_and_refusals() {
        let ok = ResumePoint::parse("0a0b0c0d-42.tab_1").unwrap();
        assert_eq!(ok.epoch, Epoch(0x0a0b0c0d));
        assert_eq!(ok.seq, 42);
        assert_eq!(ok.connection.unwrap().as_str(), "tab_1");
        // A point rendered into a page: no connection.
        let rendered = ResumePoint::parse("0a0b0c0d-42").unwrap();
        assert_eq!((rendered.seq, rendered.connection), (42, None));
        for bad in [
            "",
            "42",
            "0a0b0c0d-",
            "0a0b0c0d-4.",
            "0a0b0c0d-.x",
            "0a0b0c0-42.x",
            "0a0b0c0g-42.x",
            "0a0b0c0d--4.x",
            "0a0b0c0d-4x.x",
            "0a0b0c0d-4.",
            "0a0b0c0d-4.a b",
            "0a0b0c0d-99999999999999999999999.x",
        ] {
            assert_eq!(ResumePoint::parse(bad), None, "{bad:?}");
        }
        let long = format!("0a0b0c0d-1.{}", "x".repeat(200));
        assert_eq!(ResumePoint::parse(&long), None);
    }

    #[test]
    fn the_resume_cookie_counts_for_its_own_path_and_query_only() {
        let cookie = "a=1; htmx-sse-resume=%2Fhub%3Ftopic%3Dx|e1-5.abc.0f; b=2";
        let id = |uri: &str, extra: &[(&str, &str)]| {
            let mut h = vec![("cookie", cookie)];
            h.extend_from_slice(extra);
            last_event_id(&parts(uri, &h))
        };
        assert_eq!(id("/hub?topic=x", &[]).as_deref(), Some("e1-5.abc.0f"));
        // Another stream of the same page, another path: not its id.
        assert_eq!(id("/hub?topic=y", &[]), None);
        assert_eq!(id("/hub", &[]), None);
        assert_eq!(id("/sse", &[]), None);
        // The header and the query parameter come first.
        assert_eq!(
            id("/hub?topic=x", &[("last-event-id", "h")]).as_deref(),
            Some("h")
        );
        assert_eq!(
            last_event_id(&parts("/hub?topic=x&lastEventId=q", &[("cookie", cookie)])).as_deref(),
            Some("q")
        );
        // Behind a proxy that strips a prefix; two streams' cookies side by
        // side, each found for its own stream only.
        let two = "htmx-sse-resume-a=%2Fapp%2Fhub%3Ftopic%3Dx|id-x; htmx-sse-resume-b=%2Fapp%2Fhub%3Ftopic%3Dy|id-y";
        let with = |uri: &str| last_event_id(&parts(uri, &[("cookie", two)]));
        assert_eq!(with("/hub?topic=x").as_deref(), Some("id-x"));
        assert_eq!(with("/app/hub?topic=y").as_deref(), Some("id-y"));
        assert_eq!(with("/hub?topic=z"), None);
        // A suffix that is not a whole path is no match.
        assert_eq!(with("/ub?topic=x"), None);
        // Another cookie with a name that merely starts the same.
        assert_eq!(
            last_event_id(&parts(
                "/sse",
                &[("cookie", "htmx-sse-resumex=%2Fsse|nope")]
            )),
            None
        );
        // Malformed values are no id at all.
        for bad in [
            "htmx-sse-resume=%2Fsse",
            "htmx-sse-resume=%2Fsse|%zz",
            "htmx-sse-resume=%2|x",
            "htmx-sse-resume=%2Fsse|%ff%fe",
        ] {
            assert_eq!(
                last_event_id(&parts("/sse", &[("cookie", bad)])),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            last_event_id(&parts(
                "/sse",
                &[("cookie", "htmx-sse-resume=%2Fsse|e1-5.x%2Ey")]
            ))
            .as_deref(),
            Some("e1-5.x.y")
        );
    }

    #[test]
    fn debug_leaves_the_proof_out() {
        let id = LastEventId::new("0a0b0c0d-42.tab_1.secretproof");
        let shown = format!("{id:?}");
        assert!(!shown.contains("secretproof"), "{shown}");
        assert!(shown.contains("tab_1"), "{shown}");
        assert!(!format!("{:?}", LastEventId::new("secret")).contains("secret"));
    }

    proptest::proptest! {
        /// Anything a browser can send as `Last-Event-ID` is read or
        /// refused, never a panic; what the crate writes reads back.
        #[test]
        fn last_event_ids_from_anywhere(any in "\\PC{0,200}") {
            let _ = ResumePoint::parse(&any);
        }

        #[test]
        fn last_event_ids_round_trip(
            epoch: u32,
            seq: u64,
            id in "[A-Za-z0-9_-]{1,64}",
            proof in proptest::option::of("[0-9a-f]{24}"),
        ) {
            let text = match &proof {
                Some(p) => format!("{}-{seq}.{id}.{p}", Epoch(epoch)),
                None => format!("{}-{seq}.{id}", Epoch(epoch)),
            };
            let lei = ResumePoint::parse(&text).expect("an id the crate writes");
            proptest::prop_assert_eq!(lei.epoch, Epoch(epoch));
            proptest::prop_assert_eq!(lei.seq, seq);
            proptest::prop_assert_eq!(lei.connection.as_ref().map(ConnectionId::as_str), Some(id.as_str()));
            proptest::prop_assert_eq!(lei.proof.as_deref(), proof.as_deref());
        }
        /// The resume cookie of any content, on any path: an id or none,
        /// never a panic; what the runtime writes (encodeURIComponent)
        /// reads back for its own path only.
        #[test]
        fn resume_cookies_from_anywhere(
            raw in "[!#-+--:<-\\[\\]-~]{0,200}",
            id in "\\PC{0,80}",
            query in "[a-z0-9=&]{0,20}",
        ) {
            let cookie = format!("htmx-sse-resume={raw}");
            let _ = last_event_id(&parts("/sse", &[("cookie", &cookie)]));
            let uri = if query.is_empty() { "/sse".to_owned() } else { format!("/sse?{query}") };
            let encode = |s: &str| -> String {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                            char::from(b).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect()
            };
            let cookie = format!("htmx-sse-resume={}|{}", encode(&uri), encode(&id));
            let found = last_event_id(&parts(&uri, &[("cookie", &cookie)]));
            proptest::prop_assert_eq!(found.as_deref(), Some(id.as_str()));
            proptest::prop_assert_eq!(last_event_id(&parts("/other", &[("cookie", &cookie)])), None);
        }

    }
}
