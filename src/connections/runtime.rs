//! The browser runtime of the helper scripts as one cacheable file:
//! [`RUNTIME_JS`], its [`integrity`] hash, and [`serve`], the handler that
//! serves it (the broadcast routes mount it at `GET {prefix}/htmx-sse.js`).
//!
//! Each helper script of `scripts` carries this runtime
//! inline, so that one helper alone works anywhere; a page with several
//! helpers would carry it several times (about 23 KB each). The
//! `Helpers` builder emits it once: inline, or
//! as `<script src=… integrity=…>` pointing at this handler, which the
//! browser fetches once and keeps.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha384};

/// The runtime's JavaScript: defines `window.htmxSse` (reconnection, the
/// reset event, unload handling, the shared connection); a second copy on
/// a page does nothing.
pub const RUNTIME_JS: &str = include_str!("../../templates/htmx_sse/runtime.js");

/// The path the broadcast routes serve the runtime at, after their prefix.
pub const RUNTIME_FILE: &str = "/htmx-sse.js";

struct Hashes {
    integrity: String,
    version: String,
    etag: HeaderValue,
}

fn hashes() -> &'static Hashes {
    static HASHES: OnceLock<Hashes> = OnceLock::new();
    HASHES.get_or_init(|| {
        let digest = Sha384::digest(RUNTIME_JS.as_bytes());
        let version: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Hashes {
            integrity: format!(
                "sha384-{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ),
            etag: HeaderValue::try_from(format!("\"{version}\""))
                .unwrap_or_else(|_| unreachable!("hex digits in quotes are a valid header")),
            version,
        }
    })
}

/// The runtime's Subresource Integrity value, `sha384-…`: a page that
/// loads it with `integrity=` runs it only if it is exactly this file.
///
/// ```
/// let sri = htmx_sse::connections::runtime::integrity();
/// assert!(sri.starts_with("sha384-") && sri.len() == 7 + 64);
/// ```
#[must_use]
pub fn integrity() -> &'static str {
    &hashes().integrity
}

/// A short hash of the runtime (16 hex digits), for URLs that change when
/// the runtime does (`…/htmx-sse.js?v=VERSION`).
///
/// ```
/// assert_eq!(htmx_sse::connections::runtime::version().len(), 16);
/// ```
#[must_use]
pub fn version() -> &'static str {
    &hashes().version
}

/// Serves [`RUNTIME_JS`] as `text/javascript` with an `ETag` (a matching
/// `If-None-Match` gets 304). Asked with `?v=` and the current
/// [`version`], it is cacheable for a year (`immutable`): the URL changes
/// with the runtime. Asked with another version (a page rendered by a
/// newer or older instance during a rolling deploy), it is answered with
/// `no-store`, so that no cache keeps this file under the other version's
/// URL. Without `?v=`, browsers keep it for an hour and then revalidate.
///
/// ```
/// use axum::{Router, routing::get};
/// use htmx_sse::connections::runtime;
///
/// // Where the broadcast routes are not mounted, serve it yourself:
/// let app: Router = Router::new().route("/assets/htmx-sse.js", get(runtime::serve));
/// ```
pub async fn serve(req: Request) -> Response {
    let h = hashes();
    let (parts, _) = req.into_parts();
    let asked = crate::routes::query_pairs(&parts)
        .into_iter()
        .find(|(k, _)| k == "v")
        .map(|(_, v)| v);
    let cache = match asked {
        Some(v) if v == h.version => "public, max-age=31536000, immutable",
        // Another version than this one (a page of a newer or older
        // instance, during a rolling deploy): answered, never kept under
        // that URL.
        Some(_) => "no-store",
        None => "public, max-age=3600",
    };
    let fresh = parts
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == h.etag
        });
    let headers = [
        (header::ETAG, h.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        RUNTIME_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integrity_is_the_sha384_of_the_file() {
        let digest = Sha384::digest(RUNTIME_JS.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(integrity(), format!("sha384-{b64}"));
        assert!(version().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
