//! `JwtAuthorizer`: Mercure-style JSON Web Tokens (feature `jwt`).

use std::fmt;

use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, AuthFuture, Authorizer, Subject, bearer, cookie};
use crate::connections::UserId;
use crate::routes::query_pairs;
use crate::topics::TopicSelector;

/// The shortest HS256 secret used without a warning: 32 bytes, the size of
/// the SHA-256 output (RFC 7518 §3.2).
const MIN_SECRET_LEN: usize = 32;

/// A key or secret that cannot be used.
///
/// ```
/// use htmx_sse::auth::JwtAuthorizer;
///
/// let err = JwtAuthorizer::hs256(b"").unwrap_err();
/// assert_eq!(err.to_string(), "empty HS256 secret");
/// assert!(JwtAuthorizer::rs256_pem(b"not a key").is_err());
/// ```
#[derive(Debug)]
pub struct KeyError(KeyErrorKind);

#[derive(Debug)]
enum KeyErrorKind {
    EmptySecret,
    Pem(jsonwebtoken::errors::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyErrorKind::EmptySecret => f.write_str("empty HS256 secret"),
            KeyErrorKind::Pem(e) => write!(f, "invalid key: {e}"),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            KeyErrorKind::EmptySecret => None,
            KeyErrorKind::Pem(e) => Some(e),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    mercure: Rights,
}

#[derive(Deserialize, Default)]
struct Rights {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Checks JSON Web Tokens signed with HS256, RS256 or ES256 and reads
/// Mercure-style claims:
///
/// ```json
/// { "sub": "alice", "exp": 1767225600,
///   "mercure": { "subscribe": ["users/alice/**"], "publish": ["chat"] } }
/// ```
///
/// `sub` becomes the user; `mercure.subscribe` the topics it may read
/// privately; `mercure.publish` the topics it may publish to. The token
/// comes from `Authorization: Bearer`, else from the cookie (default name
/// `htmx_sse_token`), else, only if enabled, from a query parameter.
///
/// ```
/// use htmx_sse::auth::JwtAuthorizer;
///
/// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")?
///     .audience(["my-app"])
///     .issuer(["https://auth.example"])
///     .cookie_name("session_token");
/// # Ok::<(), htmx_sse::auth::KeyError>(())
/// ```
///
/// # What is checked
///
/// Anything that does not hold is [`AuthError::Invalid`] (a 401):
///
/// - **The signature and the algorithm.** The algorithm is the one the
///   key is for (HS256 for [`hs256`](Self::hs256), RS256 for
///   [`rs256_pem`](Self::rs256_pem), ES256 for
///   [`es256_pem`](Self::es256_pem)); the token's `alg` header must name
///   it. `alg: none` is refused, and so is algorithm confusion (an HS256
///   token "signed" with an RSA or EC public key presented to an RS256 or
///   ES256 authorizer).
/// - **`exp`**: required, and the token must not have expired.
/// - **`nbf`** (not before): when present, the token must already be valid.
///   `exp` and `nbf` share one clock leeway, 60 seconds by default
///   ([`leeway`](Self::leeway)): a token is accepted up to 60 s after its
///   `exp` and from 60 s before its `nbf`.
/// - **`aud`**: with [`audience`](Self::audience), required and must name
///   one of the configured audiences. Without it, a token that names an
///   audience is refused (RFC 7519 §4.1.3: a token meant for someone else
///   is not for this server); a token without `aud` is accepted.
/// - **`iss`**: with [`issuer`](Self::issuer), required and must be one of
///   the configured issuers. Without it, `iss` is not looked at.
///
/// Configure [`audience`](Self::audience) (and [`issuer`](Self::issuer))
/// whenever the same key signs tokens for more than one service, else a
/// token minted for one of them is good for all.
#[derive(Clone)]
pub struct JwtAuthorizer {
    key: DecodingKey,
    validation: Validation,
    cookie: Option<String>,
    query: Option<String>,
}

impl fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("algorithms", &self.validation.algorithms)
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("leeway", &self.validation.leeway)
            .field("cookie", &self.cookie)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl JwtAuthorizer {
    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 60;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without a configured audience, a token that names one is refused.
        validation.validate_aud = true;
        JwtAuthorizer {
            key,
            validation,
            cookie: Some("htmx_sse_token".to_owned()),
            query: None,
        }
    }

    /// Tokens signed with HMAC-SHA256 and this shared secret.
    ///
    /// Use a random secret of at least 32 bytes (256 bits, RFC 7518 §3.2),
    /// for instance `openssl rand -base64 32` (the base64 text, 44 bytes,
    /// is the secret). Whoever holds one token can test guesses of the
    /// secret offline, as fast as their hardware allows, so a short or
    /// human-chosen secret gets found and then any token can be forged. A
    /// secret shorter than 32 bytes is accepted, with a `tracing` warning.
    ///
    /// Whoever holds the secret can also *sign* tokens: share it only
    /// between this server and the services that issue tokens, or use
    /// [`rs256_pem`](Self::rs256_pem) / [`es256_pem`](Self::es256_pem),
    /// whose public key signs nothing.
    ///
    /// ```
    /// use htmx_sse::auth::JwtAuthorizer;
    ///
    /// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")?;
    /// # Ok::<(), htmx_sse::auth::KeyError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `secret` is empty: an empty key is no secret, and
    /// anyone could sign tokens with it.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError(KeyErrorKind::EmptySecret));
        }
        if secret.len() < MIN_SECRET_LEN {
            tracing::warn!(
                len = secret.len(),
                "HS256 secret shorter than {MIN_SECRET_LEN} bytes: tokens can be forged once it is guessed"
            );
        }
        Ok(Self::with(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// Tokens signed with RSA (RS256); `pem` is the public key.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `pem` is not an RSA public key in PEM.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError(KeyErrorKind::Pem(e)))?;
        Ok(Self::with(key, Algorithm::RS256))
    }

    /// Tokens signed with ECDSA P-256 (ES256); `pem` is the public key.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `pem` is not an EC public key in PEM.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| KeyError(KeyErrorKind::Pem(e)))?;
        Ok(Self::with(key, Algorithm::ES256))
    }

    /// The cookie to read the token from (`None`: no cookie).
    #[must_use]
    pub fn cookie_name(mut self, name: impl Into<Option<&'static str>>) -> Self {
        self.cookie = name.into().map(str::to_owned);
        self
    }

    /// Also accepts the token in this query parameter. Off by default:
    /// URLs end up in logs, histories and `Referer` headers.
    #[must_use]
    pub fn query_param(mut self, name: &str) -> Self {
        self.query = Some(name.to_owned());
        self
    }

    /// Requires an `aud` claim naming one of `audiences`: a token without
    /// `aud`, or whose `aud` (a string, or an array of which one must
    /// match) names none of them, is refused. Replaces the audiences of an
    /// earlier call.
    ///
    /// Without this, a token that names any audience is refused; see
    /// [What is checked](Self#what-is-checked).
    ///
    /// ```
    /// use htmx_sse::auth::JwtAuthorizer;
    ///
    /// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")?
    ///     .audience(["my-app", "my-app-staging"]);
    /// # Ok::<(), htmx_sse::auth::KeyError>(())
    /// ```
    ///
    /// # Panics
    ///
    /// When `audiences` is empty: no token could be accepted.
    #[must_use]
    #[track_caller]
    pub fn audience<I>(mut self, audiences: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let audiences: Vec<String> = audiences.into_iter().map(Into::into).collect();
        assert!(
            !audiences.is_empty(),
            "JwtAuthorizer::audience: at least one audience"
        );
        self.validation.set_audience(&audiences);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Requires an `iss` claim that is one of `issuers`: a token without
    /// `iss`, or from another issuer, is refused. Replaces the issuers of
    /// an earlier call.
    ///
    /// ```
    /// use htmx_sse::auth::JwtAuthorizer;
    ///
    /// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")?
    ///     .issuer(["https://auth.example"]);
    /// # Ok::<(), htmx_sse::auth::KeyError>(())
    /// ```
    ///
    /// # Panics
    ///
    /// When `issuers` is empty: no token could be accepted.
    #[must_use]
    #[track_caller]
    pub fn issuer<I>(mut self, issuers: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let issuers: Vec<String> = issuers.into_iter().map(Into::into).collect();
        assert!(
            !issuers.is_empty(),
            "JwtAuthorizer::issuer: at least one issuer"
        );
        self.validation.set_issuer(&issuers);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Clock leeway for `exp` and `nbf`, in seconds (default 60): a token
    /// stays valid this long after its `exp` and is valid this long before
    /// its `nbf`.
    ///
    /// ```
    /// use htmx_sse::auth::JwtAuthorizer;
    ///
    /// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")?.leeway(5);
    /// # Ok::<(), htmx_sse::auth::KeyError>(())
    /// ```
    #[must_use]
    pub fn leeway(mut self, seconds: u64) -> Self {
        self.validation.leeway = seconds;
        self
    }

    fn token<'a>(&self, parts: &'a Parts) -> Result<Option<std::borrow::Cow<'a, str>>, AuthError> {
        if let Some(t) = bearer(parts)? {
            return Ok(Some(t.into()));
        }
        if let Some(name) = &self.cookie
            && let Some(t) = cookie(parts, name)
        {
            return Ok(Some(t.into()));
        }
        if let Some(name) = &self.query
            && let Some((_, v)) = query_pairs(parts).into_iter().find(|(k, _)| k == name)
        {
            return Ok(Some(v.into()));
        }
        Ok(None)
    }

    /// Checks a token and reads its subject.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for anything that does not hold.
    pub fn verify(&self, token: &str) -> Result<Subject, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let selectors = |list: Vec<String>| {
            list.iter()
                .map(|s| TopicSelector::new(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AuthError::Invalid(format!("token claims: {e}")))
        };
        let user = claims
            .sub
            .map(|s| UserId::new(&s))
            .transpose()
            .map_err(|e| AuthError::Invalid(format!("token sub: {e}")))?;
        Ok(Subject {
            user,
            subscribe: selectors(claims.mercure.subscribe)?,
            publish: selectors(claims.mercure.publish)?,
        })
    }
}

impl Authorizer for JwtAuthorizer {
    fn authorize<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            match self.token(parts)? {
                None => Ok(None),
                Some(token) => self.verify(&token).map(Some),
            }
        })
    }
}
