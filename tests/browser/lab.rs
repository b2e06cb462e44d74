//! What the test layers of `helpers.rs` and `app.rs` share: reading a stream
//! request, and serving it so that the test can end it without the close
//! event, as a dropped connection would.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt as _;
use htmx_sse::Flavor;
use tokio::sync::watch;

use super::Flavour;

/// The crate's flavour for the pages of `f`.
pub(super) fn flavor(f: Flavour) -> Flavor {
    match f {
        Flavour::Htmx2 => Flavor::Htmx2,
        Flavour::Htmx4 => Flavor::Htmx4,
    }
}

/// A stream request as the server saw it: its path and query, its
/// `Last-Event-ID` header, and the `htmx-sse-resume-…` cookie the runtime
/// carries a last event id in, if any.
pub(super) struct Seen {
    pub(super) uri: String,
    pub(super) header: Option<String>,
    pub(super) cookie: Option<String>,
}

pub(super) fn stream_request(req: &Request) -> Seen {
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let cookie = req
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| name.starts_with("htmx-sse-resume"))
        .map(|(_, value)| value.to_owned());
    Seen {
        uri: req.uri().to_string(),
        header,
        cookie,
    }
}

/// Serves a stream request whose body ends (a clean end of the chunked
/// response, no close event) when `cut` is bumped; dropping it unregisters
/// the connection, as a client that went away would.
pub(super) async fn cuttable(cut: &watch::Sender<u64>, req: Request, next: Next) -> Response {
    let mut cut = cut.subscribe();
    let (parts, body) = next.run(req).await.into_parts();
    let body = body.into_data_stream().take_until(async move {
        let _ = cut.changed().await;
    });
    Response::from_parts(parts, Body::from_stream(body))
}
