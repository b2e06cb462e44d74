//! Web Push: notify users whose page is closed (feature `webpush`).
//!
//! Server-Sent Events reach the pages that are open. Web Push reaches a
//! browser whose page is closed: the browser registers a service worker,
//! subscribes with the server's public key, and hands the page a
//! [`Subscription`]; the server encrypts a message for that subscription and
//! posts it to the browser vendor's push service, which wakes the service
//! worker to show a notification.
//!
//! This module is the server side:
//!
//! - [`VapidKey`] and [`VapidSubject`]: the server's identity (RFC 8292).
//!   Every request carries a JWT signed with ES256 for the push service's
//!   origin, valid for 12 hours.
//! - [`Subscription`]: the JSON of `PushSubscription.toJSON()`, checked once.
//! - [`EndpointPolicy`]: which push endpoints the server posts to (see
//!   [Endpoints](#endpoints)).
//! - [`Payload`] (title, body, icon, data) or any bytes, in a
//!   [`PushMessage`] with its `TTL`, [`Urgency`] and [`Topic`].
//! - [`Dispatcher`]: [`send`](Dispatcher::send) one,
//!   [`send_many`](Dispatcher::send_many) with bounded concurrency, and the
//!   endpoints that are gone in the [`SendReport`].
//!
//! The cryptography is RustCrypto's (`p256` for ECDH and ECDSA, `hkdf`,
//! `sha2`, `aes-gcm`); this module only composes it as the RFCs say. The
//! payload is encrypted with `aes128gcm` (RFC 8291, RFC 8188) and checked
//! against the RFC 8291 worked example byte for byte.
//!
//! # Quick start
//!
//! Make a key pair once and keep the private half secret:
//!
//! ```
//! let key = htmx_sse::webpush::VapidKey::generate()?;
//! println!("VAPID_PRIVATE_KEY={}", key.private_key_base64());
//! println!("applicationServerKey: {}", key.public_key_base64());
//! # Ok::<(), htmx_sse::webpush::Error>(())
//! ```
//!
//! Then store the subscriptions pages post, and push:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Json, Router, extract::State, routing::post};
//! use htmx_sse::webpush::{Dispatcher, Payload, Subscription, VapidKey, VapidSubject};
//!
//! async fn subscribe(State(app): State<App>, Json(sub): Json<Subscription>) {
//!     app.subscriptions.lock().unwrap().push(sub);
//! }
//!
//! async fn notify(State(app): State<App>) {
//!     let subs = app.subscriptions.lock().unwrap().clone();
//!     let payload = Payload::new("Build finished").data(serde_json::json!({ "url": "/builds/17" }));
//!     if let Ok(report) = app.push.send_many(&subs, &payload).await {
//!         app.subscriptions.lock().unwrap().retain(|s| !report.gone.iter().any(|e| e == s.endpoint()));
//!     }
//! }
//!
//! #[derive(Clone)]
//! struct App {
//!     push: Dispatcher,
//!     subscriptions: std::sync::Arc<std::sync::Mutex<Vec<Subscription>>>,
//! }
//!
//! # fn run() -> Result<(), htmx_sse::webpush::Error> {
//! let key = VapidKey::from_base64(&std::env::var("VAPID_PRIVATE_KEY").unwrap_or_default())?;
//! let push = Dispatcher::new(key, VapidSubject::new("mailto:ops@example.com")?, Duration::from_secs(3600));
//! let app: Router = Router::new()
//!     .route("/push/subscribe", post(subscribe))
//!     .route("/push/notify", post(notify))
//!     .with_state(App { push, subscriptions: Default::default() });
//! # Ok(()) }
//! ```
//!
//! The page side (service worker, subscribe button) is in
//! `examples/webpush.rs`.
//!
//! # Gone subscriptions
//!
//! A push service answers `404` or `410` when a subscription expired or the
//! user revoked permission. It will never work again: [`Error::Gone`] from
//! [`Dispatcher::send`], [`SendReport::gone`] from
//! [`Dispatcher::send_many`]. Delete those subscriptions; keep the ones in
//! [`SendReport::failed`] (a `429`, a `5xx` or a timeout is worth retrying).
//!
//! # Endpoints
//!
//! A subscription's endpoint is a URL chosen by whoever posts to your
//! subscribe route, and the server `POST`s to it with its VAPID signature.
//! So that this cannot be used to make your server send requests into its
//! own network (server-side request forgery):
//!
//! - **The URL is checked** when the subscription is made and again before
//!   each request, against an [`EndpointPolicy`]. By default: `https:` only;
//!   a host name, never an IP literal (in any form the URL standard reads as
//!   one: `https://2130706433/` is `127.0.0.1`); no `localhost`,
//!   `*.localhost` or single-label name; no user name or password. A refused
//!   endpoint is [`Error::EndpointRefused`], and nothing is sent.
//! - **An allow-list** ([`EndpointPolicy::allow_hosts`], exact names and
//!   `*.suffix`) limits endpoints to the push services you expect. Give the
//!   same policy to [`Subscription::from_json_with_policy`] in the subscribe
//!   route and to [`Dispatcher::endpoint_policy`].
//! - **Addresses are checked when connecting.** The dispatcher's HTTP
//!   client resolves names through a filter that drops every address that is
//!   not public unicast: loopback, private (RFC 1918, `fc00::/7`),
//!   link-local (`169.254/16`, `fe80::/10`), CGNAT (`100.64/10`),
//!   unspecified, multicast, broadcast, reserved and documentation ranges,
//!   and the IPv4-mapped and NAT64 forms of these. A name left with no
//!   address is [`Error::EndpointRefused`]. The filter is reqwest's DNS
//!   resolver, so the addresses checked are the ones connected to: a name
//!   that resolves differently a moment later (DNS rebinding) gains nothing.
//! - **Redirects are not followed** ([`Error::Redirected`]), and no proxy is
//!   used (through a proxy the filter would see only the proxy).
//! - **A push service's answer is not repeated.** The body of a refusal is
//!   text chosen by the endpoint's owner: it is kept (4 KiB at most) in
//!   [`Error::Rejected`]'s `body` field, never in its `Display` message. Log
//!   errors; do not send them to browsers.
//!
//! A test push service on `http://127.0.0.1:PORT` needs the explicit
//! [`EndpointPolicy::allow_insecure_endpoints_for_testing`], for the
//! subscriptions and for the dispatcher. A client of your own
//! ([`Dispatcher::with_client`]) must do what the dispatcher's own does:
//! start from [`Dispatcher::client_builder`].
//!
//! # Payload size
//!
//! A push message holds at most [`MAX_PAYLOAD_LEN`] (3993) bytes: push
//! services need only accept 4096 bytes of body, of which the encryption
//! header takes 86, the authentication tag 16 and the padding delimiter 1.
//! A larger message is refused with [`Error::PayloadTooLarge`] before any
//! request. Send an id and let the page fetch the rest.
//!
//! # TLS
//!
//! Push services are `https:`. The `webpush` feature builds `reqwest`
//! without TLS (enough for tests against `http://127.0.0.1`, with
//! [`EndpointPolicy::allow_insecure_endpoints_for_testing`]); the
//! `webpush-rustls` feature adds rustls, or pass your own client, built from
//! [`Dispatcher::client_builder`], with [`Dispatcher::with_client`].

mod b64;
mod dispatcher;
mod encrypt;
mod endpoint;
mod error;
mod message;
mod subscription;
mod vapid;

pub use dispatcher::{DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, Dispatcher, SendReport};
pub use encrypt::MAX_PAYLOAD_LEN;
pub use endpoint::EndpointPolicy;
pub use error::Error;
pub use message::{Payload, PushMessage, Topic, Urgency};
pub use subscription::Subscription;
pub use vapid::{VapidKey, VapidSubject};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_sync() {
        fn assert<T: Send + Sync + 'static>() {}
        assert::<Dispatcher>();
        assert::<Subscription>();
        assert::<PushMessage>();
        assert::<VapidKey>();
        assert::<SendReport>();
        assert::<EndpointPolicy>();
        assert::<Error>();
    }
}
