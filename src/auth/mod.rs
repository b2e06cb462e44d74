//! Who is asking: the [`Authorizer`] trait turns a request into a
//! [`Subject`] (user, topics it may read privately, topics it may publish
//! to) or a 401/403, and `JwtAuthorizer` (feature `jwt`) does it with
//! Mercure-style tokens.
//!
//! Browsers' `EventSource` cannot send headers, so a stream request carries
//! its credentials in a cookie; publishers use `Authorization: Bearer`. A
//! token in the URL query is accepted only when the application opts in
//! (URLs end up in logs and histories).
//!
//! | request | no credentials | bad credentials | valid credentials |
//! | --- | --- | --- | --- |
//! | stream (`GET`) | anonymous: public messages only | 401 | its user's and its authorized private messages too |
//! | publish (`POST`) | 401 | 401 | allowed when a `publish` selector matches every topic (for broadcast routes: the message type), else 403 |

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use axum::Json;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::connections::UserId;
use crate::topics::{Topic, TopicSelector};

/// Who a request comes from, and what it may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subject {
    /// The user, for per-user delivery.
    pub user: Option<UserId>,
    /// Topics it may receive private messages on.
    pub subscribe: Vec<TopicSelector>,
    /// Topics it may publish to.
    pub publish: Vec<TopicSelector>,
}

impl Subject {
    /// A subject that is this user and nothing more.
    #[must_use]
    pub fn user(user: UserId) -> Self {
        Subject {
            user: Some(user),
            ..Subject::default()
        }
    }

    /// Adds selectors it may receive private messages on.
    #[must_use]
    pub fn with_subscribe(mut self, selectors: Vec<TopicSelector>) -> Self {
        self.subscribe = selectors;
        self
    }

    /// Adds selectors it may publish to.
    #[must_use]
    pub fn with_publish(mut self, selectors: Vec<TopicSelector>) -> Self {
        self.publish = selectors;
        self
    }

    /// Whether it may publish to every one of `topics` (and there is at
    /// least one).
    ///
    /// ```
    /// use htmx_sse::auth::Subject;
    /// use htmx_sse::topics::{Topic, TopicSelector};
    ///
    /// let s = Subject::default().with_publish(vec![TopicSelector::new("todos/**")?]);
    /// assert!(s.can_publish(&[Topic::new("todos/1")?]));
    /// assert!(!s.can_publish(&[Topic::new("todos/1")?, Topic::new("admin")?]));
    /// # Ok::<(), htmx_sse::topics::InvalidTopic>(())
    /// ```
    #[must_use]
    pub fn can_publish(&self, topics: &[Topic]) -> bool {
        !topics.is_empty()
            && topics
                .iter()
                .all(|t| self.publish.iter().any(|s| s.matches(t)))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials where they are required (401).
    Missing,
    /// Credentials that do not hold: forged, expired, wrongly signed,
    /// malformed (401).
    Invalid(String),
    /// Valid credentials without the right (403).
    Forbidden(String),
    /// The credentials could not be checked now (a session store down):
    /// 503, worth retrying; not a sign-out.
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status: 401, 403, or 503.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("credentials required"),
            AuthError::Invalid(why) => write!(f, "invalid credentials: {why}"),
            AuthError::Forbidden(why) => write!(f, "forbidden: {why}"),
            AuthError::Unavailable(why) => write!(f, "credentials cannot be checked now: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Who may use a group of routes: the decision every route installer asks
/// for before it answers anyone.
///
/// The default is [`Access::Granted`]: a request needs credentials that the
/// application's [`Authorizer`] accepts and that carry the right grant (for
/// publishing, a `publish` selector matching what is published). Without an
/// authorizer nobody is granted anything, so routes installed with the
/// defaults answer 401 until the application decides otherwise.
///
/// [`Access::Anyone`] opens the routes to whoever reaches them. Write it
/// only where that is true on purpose: a server on `127.0.0.1`, or routes
/// behind your own layer (`route_layer`) that already decides.
///
/// ```
/// use axum::Router;
/// use htmx_sse::auth::Access;
/// use htmx_sse::{broadcast::BroadcastManager, routes::BroadcastRoutes};
///
/// // Anyone may publish: a decision a reviewer can see (and grep for).
/// let app: Router = BroadcastRoutes::new(BroadcastManager::new())
///     .publish(Access::Anyone)
///     .install(Router::new());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Access {
    /// Requests whose credentials the authorizer accepts and grants the
    /// action; nobody without an authorizer (401).
    #[default]
    Granted,
    /// Anyone who reaches the route, with or without credentials (bad
    /// credentials are still refused with 401).
    Anyone,
}

impl Access {
    /// Checks a request that the authorizer turned into `subject` (`None`:
    /// no credentials) against this policy; `grant` says whether a subject
    /// holds the right.
    pub(crate) fn check(
        self,
        subject: Option<&Subject>,
        grant: impl FnOnce(&Subject) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        match (self, subject) {
            (Access::Anyone, _) => Ok(()),
            (Access::Granted, None) => Err(AuthError::Missing),
            (Access::Granted, Some(s)) => grant(s),
        }
    }
}

/// What [`Authorizer::authorize`] returns.
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Subject>, AuthError>> + Send + 'a>>;

/// Turns a request into a [`Subject`].
///
/// Return `Ok(None)` when the request carries no credentials (anonymous),
/// `Err` when it carries bad ones. The route installers decide what an
/// anonymous request may do (see the [module docs](self)).
///
/// ```
/// use htmx_sse::auth::{AuthError, AuthFuture, Authorizer, Subject};
/// use htmx_sse::connections::UserId;
///
/// /// The user named by a `user` cookie (a demo, not security).
/// struct CookieUser;
///
/// impl Authorizer for CookieUser {
///     fn authorize<'a>(&'a self, parts: &'a axum::http::request::Parts) -> AuthFuture<'a> {
///         Box::pin(async move {
///             let Some(name) = htmx_sse::auth::cookie(parts, "user") else {
///                 return Ok(None);
///             };
///             let user = UserId::new(name).map_err(|e| AuthError::Invalid(e.to_string()))?;
///             Ok(Some(Subject::user(user)))
///         })
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Reads the request's credentials.
    fn authorize<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a>;
}

/// An [`Authorizer`] from an axum extractor the application already has
/// (its session user, say): every request is run through `E` with `state`,
/// and `to_subject` says what the extracted value may do.
///
/// When `E` rejects the request, its rejection's status decides: 401 means
/// no credentials (the request is anonymous: public messages on the
/// stream, 401 on routes that need credentials), 403 refuses it with 403,
/// a server error (its session store is down, say) with 503, anything else
/// with 401 (bad credentials). Nothing the extractor's
/// rejection says reaches the client. `to_subject` may return `None` for
/// an extracted value that is anonymous after all.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use axum::{Router, extract::{FromRequestParts, FromRef}, http::{StatusCode, request::Parts}};
/// use htmx_sse::auth::{self, Subject};
/// use htmx_sse::{BroadcastManager, connections::UserId, routes::BroadcastRoutes};
///
/// /// The application's own session extractor.
/// struct SessionUser(String);
///
/// #[derive(Clone, Default)]
/// struct Sessions(Arc<HashMap<String, String>>);
///
/// impl<S: Send + Sync> FromRequestParts<S> for SessionUser
/// where
///     Sessions: FromRef<S>,
/// {
///     type Rejection = StatusCode;
///
///     async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, StatusCode> {
///         let sessions = Sessions::from_ref(state);
///         let id = auth::cookie(parts, "session").ok_or(StatusCode::UNAUTHORIZED)?;
///         let user = sessions.0.get(id).ok_or(StatusCode::UNAUTHORIZED)?;
///         Ok(SessionUser(user.clone()))
///     }
/// }
///
/// let sessions = Sessions::default();
/// let routes = BroadcastRoutes::new(BroadcastManager::new()).authorizer(auth::from_extractor(
///     sessions,
///     |SessionUser(name): SessionUser| UserId::new(&name).ok().map(Subject::user),
/// ));
/// let app: Router = routes.router();
/// ```
pub fn from_extractor<E, S, F>(state: S, to_subject: F) -> FromExtractor<E, S, F>
where
    E: axum::extract::FromRequestParts<S> + 'static,
    S: Clone + Send + Sync + 'static,
    F: Fn(E) -> Option<Subject> + Send + Sync + 'static,
{
    FromExtractor {
        state,
        to_subject,
        _extractor: std::marker::PhantomData,
    }
}

/// An [`Authorizer`] made by [`from_extractor`].
pub struct FromExtractor<E, S, F> {
    state: S,
    to_subject: F,
    _extractor: std::marker::PhantomData<fn() -> E>,
}

impl<E, S, F> fmt::Debug for FromExtractor<E, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromExtractor")
            .field("extractor", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}

impl<E, S, F> Authorizer for FromExtractor<E, S, F>
where
    E: axum::extract::FromRequestParts<S> + 'static,
    S: Clone + Send + Sync + 'static,
    F: Fn(E) -> Option<Subject> + Send + Sync + 'static,
{
    fn authorize<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            // Extractors take the parts mutably: they get a copy.
            let mut copy = axum::http::Request::new(());
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            *copy.extensions_mut() = parts.extensions.clone();
            let (mut copy, ()) = copy.into_parts();
            match E::from_request_parts(&mut copy, &self.state).await {
                Ok(value) => Ok((self.to_subject)(value)),
                Err(rejection) => match rejection.into_response().status() {
                    StatusCode::UNAUTHORIZED => Ok(None),
                    StatusCode::FORBIDDEN => Err(AuthError::Forbidden(
                        "refused by the application's extractor".into(),
                    )),
                    status if status.is_server_error() => Err(AuthError::Unavailable(format!(
                        "the application's extractor failed ({})",
                        status.as_u16()
                    ))),
                    status => Err(AuthError::Invalid(format!(
                        "refused by the application's extractor ({})",
                        status.as_u16()
                    ))),
                },
            }
        })
    }
}

/// The value of cookie `name` in the request, if any.
#[must_use]
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    cookies(parts)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Every `name=value` pair of the request's `Cookie` headers, in order.
pub(crate) fn cookies(parts: &Parts) -> impl Iterator<Item = (&str, &str)> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The bearer token of the `Authorization` header: `Ok(None)` without the
/// header, an error when it is there but not `Bearer <token>`.
///
/// # Errors
///
/// [`AuthError::Invalid`] for another scheme or a header that is not text.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, AuthError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::Invalid(
            "authorization header is not 'Bearer <token>'".into(),
        )),
    }
}

#[cfg(feature = "jwt")]
mod jwt;
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuthorizer, KeyError};

/// Authorizes `parts` with `authorizer`, if there is one.
pub(crate) async fn subject_of(
    authorizer: Option<&dyn Authorizer>,
    parts: &Parts,
) -> Result<Option<Subject>, AuthError> {
    match authorizer {
        Some(a) => a.authorize(parts).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder().uri("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn cookies_and_bearer_tokens() {
        let p = parts(&[("cookie", "a=1; token=abc.def; b=2")]);
        assert_eq!(cookie(&p, "token"), Some("abc.def"));
        assert_eq!(cookie(&p, "missing"), None);
        assert_eq!(bearer(&p), Ok(None));
        let p = parts(&[("authorization", "Bearer t0k")]);
        assert_eq!(bearer(&p), Ok(Some("t0k")));
        let p = parts(&[("authorization", "Basic dXNlcg==")]);
        assert!(matches!(bearer(&p), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn errors_are_401_or_403_with_json() {
        assert_eq!(AuthError::Missing.status(), StatusCode::UNAUTHORIZED);
        let res = AuthError::Forbidden("no".into()).into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let res = AuthError::Invalid("x".into()).into_response();
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }

    proptest::proptest! {
        /// Cookie and Authorization headers of any printable content are
        /// read or refused, never a panic; a cookie put among others is
        /// found.
        #[test]
        fn cookies_and_bearer_from_anywhere(
            header in "[ -~]{0,300}",
            value in "[A-Za-z0-9._~-]{0,60}",
        ) {
            let p = parts(&[("cookie", &header), ("authorization", &header)]);
            let _ = cookie(&p, "token");
            let _ = bearer(&p);
            let mixed = format!("a=1; token={value}; b=2");
            let p = parts(&[("cookie", &mixed)]);
            proptest::prop_assert_eq!(cookie(&p, "token"), Some(value.as_str()));
        }
    }
}
