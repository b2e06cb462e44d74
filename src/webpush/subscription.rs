//! `Subscription`: a browser's push subscription, exactly as
//! `PushSubscription.toJSON()` gives it, checked once when it arrives.

use std::fmt;

use p256::PublicKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::b64;
use super::endpoint::EndpointPolicy;
use super::error::{Error, cut};

/// A browser's push subscription: where to send (`endpoint`) and the keys to
/// encrypt for (`keys.p256dh`, `keys.auth`).
///
/// It reads and writes exactly the JSON `PushSubscription.toJSON()` gives in
/// the browser, so the page can `POST` it as it is, and the server can store
/// it and replay it unchanged:
///
/// ```json
/// {"endpoint":"https://fcm.googleapis.com/fcm/send/…","expirationTime":null,
///  "keys":{"p256dh":"BNcRdreALRFX…","auth":"tBHItJI5svbpez7KI4CCXg"}}
/// ```
///
/// The fields are checked once, when the value is made (by
/// [`Subscription::from_json`], [`Subscription::new`] or serde): the endpoint
/// is an `https:` URL the default [`EndpointPolicy`] accepts, `p256dh` is
/// base64url of a 65-byte uncompressed point on P-256, and `auth` is
/// base64url of 16 bytes. Sending cannot then fail on the subscription's
/// shape. The original strings are kept, so serialising gives back the same
/// text.
///
/// ```
/// use htmx_sse::webpush::Subscription;
///
/// let json = r#"{"endpoint":"https://push.example.net/send/abc","expirationTime":null,"keys":{"p256dh":"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}"#;
/// let sub = Subscription::from_json(json)?;
/// assert_eq!(sub.endpoint(), "https://push.example.net/send/abc");
/// assert_eq!(sub.to_json(), json);
/// # Ok::<(), htmx_sse::webpush::Error>(())
/// ```
///
/// With axum, take it as `Json<Subscription>`: a malformed subscription is
/// refused with `422` and the reason.
///
/// # Trust
///
/// The endpoint comes from the browser, that is from whoever posts to your
/// subscribe route, and the server will `POST` to it. So it is checked
/// against an [`EndpointPolicy`]: by default `https:` only, a host name (no
/// IP literal, no `localhost`, no single-label name), no user name or
/// password; the dispatcher checks it again before each request, with its
/// own policy, and its HTTP client refuses names that resolve to internal
/// addresses. To accept only the push services you expect, parse with
/// [`Subscription::from_json_with_policy`] and an allow-list
/// ([`EndpointPolicy::allow_hosts`]), and give the dispatcher the same
/// policy ([`Dispatcher::endpoint_policy`](super::Dispatcher::endpoint_policy)).
///
/// A test push service on `http://127.0.0.1` needs
/// [`EndpointPolicy::allow_insecure_endpoints_for_testing`], given to
/// [`Subscription::new_with_policy`] and to the dispatcher.
#[derive(Clone)]
pub struct Subscription {
    endpoint: String,
    expiration_time: Option<u64>,
    p256dh: String,
    auth: String,
    url: reqwest::Url,
    audience: String,
    ua_public: PublicKey,
    auth_secret: [u8; 16],
}

impl Subscription {
    /// Makes a subscription from its three strings (as stored in three
    /// columns, say), with no expiration time.
    ///
    /// The endpoint is checked against the default [`EndpointPolicy`]; see
    /// [`new_with_policy`](Self::new_with_policy) for another.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSubscription`] naming the field (`endpoint`,
    /// `keys.p256dh` or `keys.auth`) and what is wrong with it;
    /// [`Error::EndpointRefused`] if the policy refuses the endpoint.
    ///
    /// ```
    /// use htmx_sse::webpush::{Error, Subscription};
    ///
    /// let sub = Subscription::new(
    ///     "https://push.example.net/send/abc",
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    /// )?;
    /// let bad = Subscription::new("https://push.example.net/x", "BAD", "BTBZMqHH6r4Tts7J_aSIgg");
    /// assert!(matches!(bad, Err(Error::InvalidSubscription { field: "keys.p256dh", .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new(
        endpoint: impl Into<String>,
        p256dh: impl Into<String>,
        auth: impl Into<String>,
    ) -> Result<Self, Error> {
        Self::new_with_policy(endpoint, p256dh, auth, &EndpointPolicy::new())
    }

    /// [`new`](Self::new), checking the endpoint against `policy`: an
    /// allow-list of push services, or the opening for a test push service.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// ```
    /// use htmx_sse::webpush::{EndpointPolicy, Error, Subscription};
    ///
    /// let (p256dh, auth) = (
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    /// );
    /// let test_service = "http://127.0.0.1:8080/push/1";
    /// assert!(matches!(Subscription::new(test_service, p256dh, auth), Err(Error::EndpointRefused { .. })));
    ///
    /// let testing = EndpointPolicy::new().allow_insecure_endpoints_for_testing();
    /// let sub = Subscription::new_with_policy(test_service, p256dh, auth, &testing)?;
    /// assert_eq!(sub.endpoint(), test_service);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new_with_policy(
        endpoint: impl Into<String>,
        p256dh: impl Into<String>,
        auth: impl Into<String>,
        policy: &EndpointPolicy,
    ) -> Result<Self, Error> {
        Self::from_parts(endpoint.into(), None, p256dh.into(), auth.into(), policy)
    }

    /// Sets the expiration time, in milliseconds since the Unix epoch
    /// (`expirationTime`; browsers mostly give `null`).
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// let sub = sub.with_expiration_time(Some(1_767_225_600_000));
    /// assert_eq!(sub.expiration_time(), Some(1_767_225_600_000));
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn with_expiration_time(mut self, expiration_time: Option<u64>) -> Self {
        self.expiration_time = expiration_time;
        self
    }

    /// Parses the JSON of `PushSubscription.toJSON()`, checking the endpoint
    /// against the default [`EndpointPolicy`] (as serde does).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSubscription`] with `field: "json"` if the text is not
    /// such an object, or naming the malformed field;
    /// [`Error::EndpointRefused`] if the policy refuses the endpoint.
    ///
    /// ```
    /// use htmx_sse::webpush::{Error, Subscription};
    ///
    /// let e = Subscription::from_json(r#"{"endpoint":"ftp://x","keys":{"p256dh":"","auth":""}}"#);
    /// assert!(matches!(e, Err(Error::InvalidSubscription { field: "endpoint", .. })));
    /// ```
    pub fn from_json(json: &str) -> Result<Self, Error> {
        Self::from_json_with_policy(json, &EndpointPolicy::new())
    }

    /// [`from_json`](Self::from_json), checking the endpoint against
    /// `policy`. In a subscribe route, take the body as a `String` and parse
    /// it with the policy your dispatcher uses:
    ///
    /// ```
    /// use std::sync::LazyLock;
    /// use axum::http::StatusCode;
    /// use htmx_sse::webpush::{EndpointPolicy, Subscription};
    ///
    /// static PUSH_SERVICES: LazyLock<EndpointPolicy> = LazyLock::new(|| {
    ///     EndpointPolicy::new().allow_hosts(["fcm.googleapis.com", "updates.push.services.mozilla.com"])
    /// });
    ///
    /// async fn subscribe(body: String) -> StatusCode {
    ///     match Subscription::from_json_with_policy(&body, &PUSH_SERVICES) {
    ///         Ok(sub) => { /* store sub.to_json() */ StatusCode::CREATED }
    ///         Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`from_json`](Self::from_json).
    pub fn from_json_with_policy(json: &str, policy: &EndpointPolicy) -> Result<Self, Error> {
        let raw: RawSubscription =
            serde_json::from_str(json).map_err(|e| Error::subscription("json", e.to_string()))?;
        Self::from_raw(raw, policy)
    }

    /// The JSON of `PushSubscription.toJSON()`: `endpoint`, `expirationTime`
    /// and `keys` with the strings as they were given.
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// assert!(sub.to_json().starts_with(r#"{"endpoint":"https://push.example.net/a","expirationTime":null,"#));
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising strings and an integer into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The push service URL this subscription sends to.
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// assert_eq!(sub.endpoint(), "https://push.example.net/a");
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `expirationTime`: when the subscription expires, in milliseconds since
    /// the Unix epoch, if the browser said.
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// assert_eq!(sub.expiration_time(), None);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn expiration_time(&self) -> Option<u64> {
        self.expiration_time
    }

    /// `keys.p256dh` as given: the browser's public key, base64url.
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// assert!(sub.p256dh().starts_with("BCVx"));
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn p256dh(&self) -> &str {
        &self.p256dh
    }

    /// `keys.auth` as given: the browser's 16-byte auth secret, base64url.
    ///
    /// ```
    /// # let sub = htmx_sse::webpush::Subscription::new("https://push.example.net/a",
    /// #     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    /// #     "BTBZMqHH6r4Tts7J_aSIgg")?;
    /// assert_eq!(sub.auth(), "BTBZMqHH6r4Tts7J_aSIgg");
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn auth(&self) -> &str {
        &self.auth
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The endpoint's origin, the `aud` claim of the VAPID token.
    pub(crate) fn audience(&self) -> &str {
        &self.audience
    }

    pub(crate) fn ua_public(&self) -> &PublicKey {
        &self.ua_public
    }

    pub(crate) fn auth_secret(&self) -> &[u8; 16] {
        &self.auth_secret
    }

    fn from_parts(
        endpoint: String,
        expiration_time: Option<u64>,
        p256dh: String,
        auth: String,
        policy: &EndpointPolicy,
    ) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&endpoint).map_err(|e| {
            Error::subscription("endpoint", format!("not a URL ({e}): {:?}", cut(&endpoint)))
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::subscription(
                "endpoint",
                format!("expected an https: URL, got scheme {:?}", cut(url.scheme())),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::subscription("endpoint", "the URL has no host"));
        }
        policy.check(&url)?;
        let audience = url.origin().ascii_serialization();

        let key = b64::decode(&p256dh)
            .map_err(|e| Error::subscription("keys.p256dh", format!("not base64url: {e}")))?;
        if key.len() != 65 || key[0] != 0x04 {
            return Err(Error::subscription(
                "keys.p256dh",
                format!(
                    "expected 65 bytes (an uncompressed P-256 point, starting 0x04), got {} bytes",
                    key.len()
                ),
            ));
        }
        let ua_public = PublicKey::from_sec1_bytes(&key)
            .map_err(|_| Error::subscription("keys.p256dh", "not a point on the P-256 curve"))?;

        let secret = b64::decode(&auth)
            .map_err(|e| Error::subscription("keys.auth", format!("not base64url: {e}")))?;
        let auth_secret: [u8; 16] = secret.as_slice().try_into().map_err(|_| {
            Error::subscription(
                "keys.auth",
                format!("expected 16 bytes, got {} bytes", secret.len()),
            )
        })?;

        Ok(Self {
            endpoint,
            expiration_time,
            p256dh,
            auth,
            url,
            audience,
            ua_public,
            auth_secret,
        })
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("endpoint", &self.endpoint)
            .field("expiration_time", &self.expiration_time)
            .field("p256dh", &self.p256dh)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint
            && self.expiration_time == other.expiration_time
            && self.p256dh == other.p256dh
            && self.auth == other.auth
    }
}

impl Eq for Subscription {}

impl std::hash::Hash for Subscription {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.endpoint.hash(state);
        self.expiration_time.hash(state);
        self.p256dh.hash(state);
        self.auth.hash(state);
    }
}

impl std::str::FromStr for Subscription {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_json(s)
    }
}

/// The wire shape of `PushSubscription.toJSON()`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSubscription {
    endpoint: String,
    #[serde(default)]
    expiration_time: Option<u64>,
    keys: RawKeys,
}

#[derive(Deserialize)]
struct RawKeys {
    p256dh: String,
    auth: String,
}

impl Subscription {
    fn from_raw(raw: RawSubscription, policy: &EndpointPolicy) -> Result<Self, Error> {
        Self::from_parts(
            raw.endpoint,
            raw.expiration_time,
            raw.keys.p256dh,
            raw.keys.auth,
            policy,
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRef<'a> {
    endpoint: &'a str,
    expiration_time: Option<u64>,
    keys: WireKeys<'a>,
}

#[derive(Serialize)]
struct WireKeys<'a> {
    p256dh: &'a str,
    auth: &'a str,
}

impl Serialize for Subscription {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            endpoint: &self.endpoint,
            expiration_time: self.expiration_time,
            keys: WireKeys {
                p256dh: &self.p256dh,
                auth: &self.auth,
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Subscription {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawSubscription::deserialize(deserializer)?;
        Subscription::from_raw(raw, &EndpointPolicy::new()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn audience_is_the_origin() {
        let sub = Subscription::new("https://Push.Example.net:443/a/b?c=d", P256DH, AUTH).unwrap();
        assert_eq!(sub.audience(), "https://push.example.net");
        let testing = EndpointPolicy::new().allow_insecure_endpoints_for_testing();
        let sub =
            Subscription::new_with_policy("http://127.0.0.1:8080/push/1", P256DH, AUTH, &testing)
                .unwrap();
        assert_eq!(sub.audience(), "http://127.0.0.1:8080");
    }

    #[test]
    fn debug_hides_the_auth_secret() {
        let sub = Subscription::new("https://push.example.net/a", P256DH, AUTH).unwrap();
        assert!(!format!("{sub:?}").contains(AUTH));
    }
}
