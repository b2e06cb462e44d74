//! `JwtAuthorizer`: Mercure-style JSON Web Tokens (feature `jwt`).

use std::fmt;

use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, AuthFuture, Authorizer, Subject, bearer, cookie};
use crate::connections::UserId;
use crate::routes::query_pairs;
use crate::topics::TopicSelector;

/// A key that could not be read.
#[derive(Debug)]
pub struct KeyError(jsonwebtoken::errors::Error);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid key: {}", self.0)
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
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
/// `htmx_sse_token`), else, only if enabled, from a query parameter. `exp`
/// is required and checked (60 s leeway); the algorithm must be the one
/// the key is for, so `alg: none` and algorithm swaps are refused.
///
/// ```
/// use htmx_sse::auth::JwtAuthorizer;
///
/// let auth = JwtAuthorizer::hs256(b"a secret of at least 32 bytes!!!")
///     .cookie_name("session_token")
///     .audience("my-app");
/// ```
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
        validation.validate_aud = false;
        JwtAuthorizer {
            key,
            validation,
            cookie: Some("htmx_sse_token".to_owned()),
            query: None,
        }
    }

    /// Tokens signed with HMAC-SHA256 and this shared secret.
    #[must_use]
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Tokens signed with RSA (RS256); `pem` is the public key.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `pem` is not an RSA public key in PEM.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(KeyError)?;
        Ok(Self::with(key, Algorithm::RS256))
    }

    /// Tokens signed with ECDSA P-256 (ES256); `pem` is the public key.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when `pem` is not an EC public key in PEM.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(KeyError)?;
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

    /// Requires this `aud` claim.
    #[must_use]
    pub fn audience(mut self, aud: &str) -> Self {
        self.validation.set_audience(&[aud]);
        self.validation.validate_aud = true;
        self
    }

    /// Requires this `iss` claim.
    #[must_use]
    pub fn issuer(mut self, iss: &str) -> Self {
        self.validation.set_issuer(&[iss]);
        self
    }

    /// Clock leeway for `exp` and `nbf`, in seconds (default 60).
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
