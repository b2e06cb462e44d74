//! `Dispatcher`: signs, encrypts and posts push messages, one or many at a
//! time, and sorts the answers into delivered, gone and failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use super::encrypt;
use super::endpoint::{EndpointPolicy, NoPublicAddress, PublicAddressesOnly, SystemResolver};
use super::error::Error;
use super::message::PushMessage;
use super::subscription::Subscription;
use super::vapid::{VapidKey, VapidSubject};

/// How many requests [`Dispatcher::send_many`] keeps in flight by default;
/// change it with [`Dispatcher::concurrency`].
///
/// ```
/// assert_eq!(htmx_sse::webpush::DEFAULT_CONCURRENCY, 8);
/// ```
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How long one request may take by default, connection to last byte;
/// change it with [`Dispatcher::timeout`].
///
/// ```
/// assert_eq!(htmx_sse::webpush::DEFAULT_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an error response's body is kept in [`Error::Rejected`].
const MAX_ERROR_BODY: usize = 4096;

/// Sends push messages to browsers: VAPID-signed (RFC 8292), encrypted for
/// each subscriber (RFC 8291), posted to the subscription's push service.
///
/// Built from the server's [`VapidKey`], a [`VapidSubject`] and a default
/// TTL. Cloning is cheap and clones share the HTTP client's connection pool.
///
/// ```no_run
/// use std::time::Duration;
/// use htmx_sse::webpush::{Dispatcher, Error, Payload, Subscription, VapidKey, VapidSubject};
///
/// # async fn run(subscription: Subscription, everyone: Vec<Subscription>) -> Result<(), Error> {
/// let key = VapidKey::from_base64(&std::env::var("VAPID_PRIVATE_KEY").unwrap_or_default())?;
/// let dispatcher = Dispatcher::new(key, VapidSubject::new("mailto:ops@example.com")?, Duration::from_secs(60));
///
/// let payload = Payload::new("Payment confirmed").body("Order 42 approved.");
/// match dispatcher.send(&subscription, &payload).await {
///     Ok(()) => {}
///     Err(e) if e.is_gone() => { /* delete `subscription` from your store */ }
///     Err(e) => eprintln!("push failed: {e}"),
/// }
///
/// let report = dispatcher.send_many(&everyone, &payload).await?;
/// for endpoint in &report.gone { /* delete the subscription with this endpoint */ }
/// # Ok(()) }
/// ```
///
/// # Endpoints
///
/// Each request goes to a URL the subscriber chose. Before it, the endpoint
/// is checked against the dispatcher's [`EndpointPolicy`] (the default one
/// unless [`endpoint_policy`](Self::endpoint_policy) set another: `https:`,
/// a host name, optionally an allow-list); a refused one is
/// [`Error::EndpointRefused`] and nothing is sent. The dispatcher's own HTTP
/// client ([`client_builder`](Self::client_builder)) then connects only to
/// public addresses (its DNS resolver drops the others, and refuses a name
/// left with none), follows no redirect ([`Error::Redirected`]) and uses no
/// proxy.
///
/// # TLS
///
/// Real push services (`fcm.googleapis.com`, `updates.push.services.mozilla.com`,
/// `web.push.apple.com`) are `https:`. The `webpush` feature builds `reqwest`
/// without TLS; turn on `webpush-rustls`, or give
/// [`with_client`](Self::with_client) a client built from
/// [`client_builder`](Self::client_builder) with a TLS feature of your own
/// `reqwest` dependency.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    client: reqwest::Client,
    key: Arc<VapidKey>,
    subject: VapidSubject,
    ttl: Duration,
    timeout: Duration,
    concurrency: usize,
    policy: EndpointPolicy,
}

impl Dispatcher {
    /// A dispatcher signing with `key`, naming `subject` as the contact, and
    /// asking push services to keep messages for `ttl` (whole seconds) when
    /// the browser is offline. A message's own TTL
    /// ([`PushMessage::ttl`]) wins over it.
    ///
    /// It checks endpoints against the default [`EndpointPolicy`], and sends
    /// with a client from [`client_builder`](Self::client_builder).
    ///
    /// # Panics
    ///
    /// As [`reqwest::Client::new`], if the TLS backend cannot be initialised.
    /// Build the client yourself from [`client_builder`](Self::client_builder)
    /// and pass it to [`with_client`](Self::with_client) to handle that as an
    /// error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    ///
    /// let dispatcher = Dispatcher::new(
    ///     VapidKey::generate()?,
    ///     VapidSubject::new("mailto:ops@example.com")?,
    ///     Duration::from_secs(60),
    /// );
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn new(key: VapidKey, subject: VapidSubject, ttl: Duration) -> Self {
        let client = Self::client_builder().build().unwrap_or_else(|e| {
            panic!("htmx_sse::webpush::Dispatcher::new: the HTTP client cannot be built: {e}")
        });
        Self {
            client,
            key: Arc::new(key),
            subject,
            ttl,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            policy: EndpointPolicy::new(),
        }
    }

    /// A `reqwest` client builder set up the way the dispatcher's own client
    /// is: its DNS resolver passes on only public addresses (and refuses a
    /// name that has none), it follows no redirect
    /// (`redirect::Policy::none()`), and it uses no proxy, not even one from
    /// the environment (`HTTPS_PROXY`): through a proxy the address check
    /// would see only the proxy's address.
    ///
    /// Add what you need (TLS roots, a user agent, connection pool settings),
    /// build it, and pass it to [`with_client`](Self::with_client). Calling
    /// its `dns_resolver`, `resolve`, `redirect` or `proxy` undoes the
    /// matching protection.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// # let dispatcher = Dispatcher::new(VapidKey::generate()?, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// let client = Dispatcher::client_builder()
    ///     .user_agent("my-app/1.0")
    ///     .pool_max_idle_per_host(4)
    ///     .build()?;
    /// let dispatcher = dispatcher.with_client(client);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    pub fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(PublicAddressesOnly::new(SystemResolver))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    }

    /// Uses this HTTP client instead of the dispatcher's own.
    ///
    /// The dispatcher cannot look inside a `reqwest::Client`, so what its
    /// own client guarantees (see [`client_builder`](Self::client_builder))
    /// becomes yours: build the client from
    /// [`client_builder`](Self::client_builder), or at least with
    /// `redirect(Policy::none())`, no proxy that would reach internal hosts,
    /// and a DNS resolver that refuses internal addresses. Otherwise an
    /// endpoint whose name resolves to `10.0.0.5` or `169.254.169.254` is
    /// reached.
    ///
    /// Whatever the client, the dispatcher still checks each endpoint against
    /// its [`EndpointPolicy`] before the request, and never counts a `3xx`
    /// answer, or an answer from another URL than the endpoint (a redirect
    /// the client followed), as delivered: both are [`Error::Redirected`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// # let dispatcher = Dispatcher::new(VapidKey::generate()?, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// let client = Dispatcher::client_builder().timeout(Duration::from_secs(20)).build()?;
    /// let dispatcher = dispatcher.with_client(client);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Checks endpoints against `policy` before each request (the default
    /// [`EndpointPolicy`] unless set): an allow-list of push services, or the
    /// opening for a test push service. Parse subscriptions with the same
    /// policy ([`Subscription::from_json_with_policy`]) so that a refused
    /// endpoint is refused when it is posted, not only when it is used.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// use htmx_sse::webpush::EndpointPolicy;
    ///
    /// # let dispatcher = Dispatcher::new(VapidKey::generate()?, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// let policy = EndpointPolicy::new().allow_hosts([
    ///     "fcm.googleapis.com",
    ///     "updates.push.services.mozilla.com",
    ///     "web.push.apple.com",
    ///     "*.notify.windows.com",
    /// ]);
    /// let dispatcher = dispatcher.endpoint_policy(policy);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn endpoint_policy(mut self, policy: EndpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How many requests [`send_many`](Self::send_many) keeps in flight
    /// ([`DEFAULT_CONCURRENCY`] unless set).
    ///
    /// # Panics
    ///
    /// If `limit` is zero: nothing would ever be sent.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// # let dispatcher = Dispatcher::new(VapidKey::generate()?, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// let dispatcher = dispatcher.concurrency(32);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    #[track_caller]
    pub fn concurrency(mut self, limit: usize) -> Self {
        assert!(limit > 0, "Dispatcher::concurrency must be at least 1");
        self.concurrency = limit;
        self
    }

    /// How long one request may take ([`DEFAULT_TIMEOUT`] unless set).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// # let dispatcher = Dispatcher::new(VapidKey::generate()?, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// let dispatcher = dispatcher.timeout(Duration::from_secs(10));
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The VAPID public key, base64url: the `applicationServerKey` the page
    /// passes to `pushManager.subscribe`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use htmx_sse::webpush::{Dispatcher, VapidKey, VapidSubject};
    /// let key = VapidKey::generate()?;
    /// let public = key.public_key_base64().to_owned();
    /// let dispatcher = Dispatcher::new(key, VapidSubject::new("mailto:a@b.example")?, Duration::from_secs(60));
    /// assert_eq!(dispatcher.public_key(), public);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn public_key(&self) -> &str {
        self.key.public_key_base64()
    }

    /// Sends one message to one subscription.
    ///
    /// # Errors
    ///
    /// - [`Error::PayloadTooLarge`] before anything is sent, if the message is
    ///   longer than [`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN).
    /// - [`Error::EndpointRefused`] before anything is sent, if the
    ///   dispatcher's [`EndpointPolicy`] refuses the endpoint, or if its host
    ///   name resolves to no public address.
    /// - [`Error::Gone`] on `404`/`410`: delete the subscription.
    /// - [`Error::Redirected`] on a `3xx`: redirects are not followed.
    /// - [`Error::Rejected`] on any other non-2xx status, with the body.
    /// - [`Error::Request`] if no response arrived (connection, TLS, timeout).
    /// - [`Error::Random`] if the OS random number generator failed.
    ///
    /// ```no_run
    /// # use htmx_sse::webpush::{Dispatcher, Payload, Subscription};
    /// # async fn run(dispatcher: Dispatcher, sub: Subscription) -> Result<(), htmx_sse::webpush::Error> {
    /// dispatcher.send(&sub, Payload::new("Hello")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(
        &self,
        subscription: &Subscription,
        message: impl Into<PushMessage>,
    ) -> Result<(), Error> {
        let message = message.into();
        encrypt::check_size(message.body.len())?;
        let authorization = self
            .key
            .authorization(subscription.audience(), &self.subject);
        self.deliver(subscription, &message, &authorization).await
    }

    /// Sends one message to many subscriptions, at most
    /// [`concurrency`](Self::concurrency) requests at a time, and reports
    /// what happened to each: delivered, gone, or failed with its error.
    /// Nothing is dropped: every subscription is counted in exactly one of
    /// the three.
    ///
    /// The message is serialised once and one VAPID token is signed per push
    /// service origin; each subscription gets its own encryption (that is
    /// what RFC 8291 requires).
    ///
    /// # Errors
    ///
    /// Only [`Error::PayloadTooLarge`], before anything is sent. Failures of
    /// single deliveries are in the [`SendReport`].
    ///
    /// ```no_run
    /// # use htmx_sse::webpush::{Dispatcher, Payload, Subscription};
    /// # async fn run(dispatcher: Dispatcher, subs: Vec<Subscription>) -> Result<(), htmx_sse::webpush::Error> {
    /// let report = dispatcher.send_many(&subs, Payload::new("New release")).await?;
    /// println!("{} delivered, {} gone", report.delivered, report.gone.len());
    /// for (endpoint, error) in &report.failed {
    ///     eprintln!("{endpoint}: {error}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_many<'a, I>(
        &self,
        subscriptions: I,
        message: impl Into<PushMessage>,
    ) -> Result<SendReport, Error>
    where
        I: IntoIterator<Item = &'a Subscription>,
    {
        let message = message.into();
        encrypt::check_size(message.body.len())?;
        let subscriptions: Vec<&Subscription> = subscriptions.into_iter().collect();

        let mut tokens: HashMap<&str, Arc<str>> = HashMap::new();
        let jobs: Vec<(usize, &Subscription, Arc<str>)> = subscriptions
            .iter()
            .enumerate()
            .map(|(index, sub)| {
                let token = tokens
                    .entry(sub.audience())
                    .or_insert_with(|| self.key.authorization(sub.audience(), &self.subject).into())
                    .clone();
                (index, *sub, token)
            })
            .collect();

        // A hand-driven `FuturesUnordered` rather than `buffer_unordered` over
        // a closure: the closure's borrowed arguments would make this future
        // not `Send` (rust-lang/rust#102211), and axum handlers must be.
        let mut jobs = jobs.into_iter();
        let mut pending = FuturesUnordered::new();
        let mut results = Vec::with_capacity(subscriptions.len());
        loop {
            while pending.len() < self.concurrency {
                let Some((index, sub, token)) = jobs.next() else {
                    break;
                };
                pending.push(self.deliver_indexed(index, sub, &message, token));
            }
            match pending.next().await {
                Some(result) => results.push(result),
                None => break,
            }
        }
        results.sort_by_key(|(index, _)| *index);

        let mut report = SendReport::default();
        for (index, result) in results {
            let endpoint = subscriptions[index].endpoint();
            match result {
                Ok(()) => report.delivered += 1,
                Err(e) if e.is_gone() => report.gone.push(endpoint.to_owned()),
                Err(e) => report.failed.push((endpoint.to_owned(), e)),
            }
        }
        Ok(report)
    }

    async fn deliver_indexed(
        &self,
        index: usize,
        subscription: &Subscription,
        message: &PushMessage,
        authorization: Arc<str>,
    ) -> (usize, Result<(), Error>) {
        (
            index,
            self.deliver(subscription, message, &authorization).await,
        )
    }

    async fn deliver(
        &self,
        subscription: &Subscription,
        message: &PushMessage,
        authorization: &str,
    ) -> Result<(), Error> {
        self.policy.check(subscription.url())?;
        let body = encrypt::encrypt(
            &message.body,
            subscription.ua_public(),
            subscription.auth_secret(),
        )?;
        let ttl = message.ttl.unwrap_or(self.ttl).as_secs();
        let mut request = self
            .client
            .post(subscription.url().clone())
            .timeout(self.timeout)
            .header(AUTHORIZATION, authorization)
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("ttl", ttl)
            .body(body);
        if let Some(urgency) = message.urgency {
            request = request.header("urgency", urgency.as_str());
        }
        if let Some(topic) = &message.topic {
            request = request.header("topic", topic.as_str());
        }
        let mut response = request.send().await.map_err(refused_or_request)?;
        let status = response.status();
        // Only the dispatcher's own client is known not to follow redirects;
        // with any other, an answer from elsewhere is no delivery.
        if status.is_redirection() || response.url() != subscription.url() {
            return Err(Error::Redirected { status });
        }
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Err(Error::Gone { status });
        }
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        Err(Error::Rejected {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// [`Error::EndpointRefused`] if the address filter refused the connection
/// (it is deep in the error's sources), the request error otherwise.
fn refused_or_request(e: reqwest::Error) -> Error {
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<NoPublicAddress>() {
            return Error::endpoint_refused(refused.to_string());
        }
        source = cause.source();
    }
    Error::Request(e)
}

/// What [`Dispatcher::send_many`] did with each subscription. Every
/// subscription is in exactly one of `delivered`, `gone` and `failed`, in
/// the order they were given.
///
/// ```
/// let report = htmx_sse::webpush::SendReport::default();
/// assert!(report.is_complete());
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SendReport {
    /// How many push services accepted the message (a 2xx answer, normally
    /// `201 Created`).
    pub delivered: usize,
    /// The endpoints whose push service answered `404` or `410`: delete these
    /// subscriptions.
    pub gone: Vec<String>,
    /// The endpoints that failed otherwise, with the error: another status
    /// (with the body), no answer at all (worth retrying later), or an
    /// endpoint refused before any request ([`Error::EndpointRefused`], which
    /// will not change: delete those too).
    pub failed: Vec<(String, Error)>,
}

impl SendReport {
    /// Whether every subscription was delivered to.
    ///
    /// ```
    /// let mut report = htmx_sse::webpush::SendReport::default();
    /// report.gone.push("https://push.example.net/gone".into());
    /// assert!(!report.is_complete());
    /// ```
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.gone.is_empty() && self.failed.is_empty()
    }
}
