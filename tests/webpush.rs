//! Web Push over real HTTP on 127.0.0.1: a test push service (an axum app)
//! that checks every request the way a browser vendor's push service and the
//! browser itself would: the VAPID signature and claims, then decryption with
//! the subscriber's private key.
//!
//! The decryption here is written independently of the crate's encryption,
//! from RFC 8291 and RFC 8188, with the same RustCrypto primitives; it is
//! itself checked against the RFC 8291 worked example first.
//!
//! The test push service is `http://127.0.0.1:PORT`, which the default
//! `EndpointPolicy` refuses: the harness opens it with
//! `allow_insecure_endpoints_for_testing`, and the endpoint tests below show
//! what the default refuses, over the same real HTTP. All traffic stays on
//! 127.0.0.1.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{Aead, KeyInit};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use htmx_sse::webpush::{
    Dispatcher, EndpointPolicy, Error, MAX_PAYLOAD_LEN, Payload, PushMessage, Subscription, Topic,
    Urgency, VapidKey, VapidSubject,
};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::Generate as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;
use tokio::net::TcpListener;

const SUBJECT: &str = "mailto:ops@example.com";

/// What a test push service on 127.0.0.1 over `http:` needs.
fn testing() -> EndpointPolicy {
    EndpointPolicy::new().allow_insecure_endpoints_for_testing()
}

// ---------------------------------------------------------------------------
// The receiving side: RFC 8291 decryption, as a browser does it.
// ---------------------------------------------------------------------------

/// Decrypts an `aes128gcm` push message body with the subscriber's private
/// key and auth secret; returns the plaintext without padding.
fn decrypt(body: &[u8], ua_secret: &SecretKey, auth: &[u8; 16]) -> Result<Vec<u8>, String> {
    if body.len() < 86 + 17 {
        return Err(format!("body too short: {} bytes", body.len()));
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().unwrap());
    let idlen = body[20] as usize;
    if idlen != 65 {
        return Err(format!("key id length {idlen}, expected 65"));
    }
    let as_public_bytes = &body[21..86];
    let record = &body[86..];
    if record.len() > rs as usize {
        return Err(format!("record of {} bytes exceeds rs {rs}", record.len()));
    }
    if body.len() > 4096 {
        return Err(format!("body of {} bytes exceeds 4096", body.len()));
    }
    let as_public =
        PublicKey::from_sec1_bytes(as_public_bytes).map_err(|_| "sender key not on curve")?;
    let ua_public = ua_secret.public_key().to_sec1_point(false);

    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public_bytes);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .unwrap();
    let hkdf = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    hkdf.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .unwrap();
    let mut nonce = [0u8; 12];
    hkdf.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .unwrap();

    let mut padded = Aes128Gcm::new(&cek.into())
        .decrypt(&nonce.into(), record)
        .map_err(|_| "AES-GCM authentication failed")?;
    while padded.last() == Some(&0) {
        padded.pop();
    }
    match padded.pop() {
        Some(2) => Ok(padded),
        other => Err(format!("bad padding delimiter {other:?}, expected 0x02")),
    }
}

/// Checks `Authorization: vapid t=<jwt>, k=<key>` as RFC 8292 says.
fn verify_vapid(
    headers: &HeaderMap,
    audience: &str,
    subject: &str,
    public_key: &str,
) -> Result<(), String> {
    let value = headers
        .get("authorization")
        .ok_or("no Authorization header")?
        .to_str()
        .map_err(|_| "Authorization is not ASCII")?;
    let params = value
        .strip_prefix("vapid ")
        .ok_or_else(|| format!("not the vapid scheme: {value}"))?;
    let mut t = None;
    let mut k = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("k", v)) => k = Some(v),
            _ => return Err(format!("unexpected parameter {param:?}")),
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    if k != public_key {
        return Err(format!("k={k} is not the server's key"));
    }
    let key_bytes = B64.decode(k).map_err(|e| e.to_string())?;
    let verifying = VerifyingKey::from_sec1_bytes(&key_bytes).map_err(|e| e.to_string())?;

    let (signed, signature) = t.rsplit_once('.').ok_or("JWT has no signature")?;
    let (header, claims) = signed.split_once('.').ok_or("JWT has no claims")?;
    let signature = Signature::from_slice(&B64.decode(signature).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    verifying
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "bad ES256 signature")?;

    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(header).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" || header["typ"] != "JWT" {
        return Err(format!("JWT header {header}"));
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(claims).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if claims["aud"] != audience {
        return Err(format!("aud {} is not {audience}", claims["aud"]));
    }
    if claims["sub"] != subject {
        return Err(format!("sub {} is not {subject}", claims["sub"]));
    }
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if exp <= now || exp > now + 24 * 60 * 60 {
        return Err(format!("exp {exp} is not within 24 h of now ({now})"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The test push service.
// ---------------------------------------------------------------------------

/// A browser that subscribed: its private key stays here, its subscription
/// goes to the server.
struct Subscriber {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Subscriber {
    fn new() -> Self {
        let mut auth = [0u8; 16];
        getrandom::fill(&mut auth).unwrap();
        Self {
            secret: SecretKey::generate(),
            auth,
        }
    }

    /// The subscription, for a test push service (`testing()` policy).
    fn subscription(&self, endpoint: &str) -> Subscription {
        self.try_subscription(endpoint, &testing()).unwrap()
    }

    fn try_subscription(
        &self,
        endpoint: &str,
        policy: &EndpointPolicy,
    ) -> Result<Subscription, Error> {
        Subscription::new_with_policy(endpoint, self.p256dh(), B64.encode(self.auth), policy)
    }

    fn p256dh(&self) -> String {
        B64.encode(self.secret.public_key().to_sec1_point(false).as_bytes())
    }
}

/// One request the service accepted as well formed.
#[derive(Debug, Clone)]
struct Received {
    id: usize,
    plaintext: Vec<u8>,
    ttl: Option<String>,
    urgency: Option<String>,
    topic: Option<String>,
}

#[derive(Default)]
struct Service {
    audience: OnceLock<String>,
    vapid_public: String,
    subscribers: Mutex<HashMap<usize, Arc<Subscriber>>>,
    /// Answers per endpoint id, taken in turn; 201 when none is left.
    script: Mutex<HashMap<usize, VecDeque<(StatusCode, &'static str)>>>,
    received: Mutex<Vec<Received>>,
    /// Requests that failed verification, with the reason.
    problems: Mutex<Vec<String>>,
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Mutex<Option<Duration>>,
}

impl Service {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        let mut received = self.received.lock().unwrap().clone();
        received.sort_by_key(|r| r.id);
        received
    }

    fn assert_no_problems(&self) {
        let problems = self.problems.lock().unwrap();
        assert!(
            problems.is_empty(),
            "push service saw bad requests: {problems:#?}"
        );
    }
}

struct InFlight<'a>(&'a Service);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn push(
    State(svc): State<Arc<Service>>,
    Path(id): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    svc.hits.fetch_add(1, Ordering::SeqCst);
    let now = svc.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    svc.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&svc);
    let delay = *svc.delay.lock().unwrap();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    };
    let checked = (|| {
        if header("content-encoding").as_deref() != Some("aes128gcm") {
            return Err(format!("Content-Encoding {:?}", header("content-encoding")));
        }
        let ttl = header("ttl").ok_or("no TTL header")?;
        ttl.parse::<u64>()
            .map_err(|_| format!("TTL {ttl:?} is not a number"))?;
        verify_vapid(
            &headers,
            svc.audience.get().unwrap(),
            SUBJECT,
            &svc.vapid_public,
        )?;
        let subscriber = svc
            .subscribers
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no subscriber {id}"))?;
        decrypt(&body, &subscriber.secret, &subscriber.auth)
    })();

    match checked {
        Ok(plaintext) => {
            svc.received.lock().unwrap().push(Received {
                id,
                plaintext,
                ttl: header("ttl"),
                urgency: header("urgency"),
                topic: header("topic"),
            });
            let answer = svc
                .script
                .lock()
                .unwrap()
                .get_mut(&id)
                .and_then(VecDeque::pop_front);
            let (status, text) = answer.unwrap_or((StatusCode::CREATED, ""));
            (status, text).into_response()
        }
        Err(problem) => {
            svc.problems
                .lock()
                .unwrap()
                .push(format!("/push/{id}: {problem}"));
            (StatusCode::BAD_REQUEST, problem).into_response()
        }
    }
}

/// A running push service, the server's key, and a dispatcher using both.
struct Harness {
    svc: Arc<Service>,
    base: String,
    dispatcher: Dispatcher,
}

impl Harness {
    async fn start() -> Self {
        let key = VapidKey::generate().unwrap();
        let svc = Arc::new(Service {
            vapid_public: key.public_key_base64().to_owned(),
            ..Service::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        svc.audience.set(base.clone()).unwrap();
        let app = Router::new()
            .route("/push/{id}", post(push))
            .with_state(svc.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dispatcher = Dispatcher::new(
            key,
            VapidSubject::new(SUBJECT).unwrap(),
            Duration::from_secs(60),
        )
        .endpoint_policy(testing());
        Self {
            svc,
            base,
            dispatcher,
        }
    }

    /// A new subscriber at `/push/{id}`, answered with `script` in turn.
    fn subscribe(&self, id: usize, script: &[(StatusCode, &'static str)]) -> Subscription {
        self.subscribe_via(&self.base, id, script)
    }

    /// As `subscribe`, with the endpoint's origin written as `base` (another
    /// name for this service).
    fn subscribe_via(
        &self,
        base: &str,
        id: usize,
        script: &[(StatusCode, &'static str)],
    ) -> Subscription {
        let subscriber = Subscriber::new();
        let sub = subscriber.subscription(&format!("{base}/push/{id}"));
        self.svc
            .subscribers
            .lock()
            .unwrap()
            .insert(id, Arc::new(subscriber));
        self.svc
            .script
            .lock()
            .unwrap()
            .insert(id, script.iter().copied().collect());
        sub
    }
}

/// Serves `app` on 127.0.0.1 and returns its address.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A service that answers every `POST /push/{id}` with `status` and counts
/// the requests.
async fn counting_service(status: StatusCode) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/push/{id}",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { status }
        }),
    );
    (serve(app).await, hits)
}

/// A client for the tests' own requests, blind to any proxy settings.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn dispatcher(policy: EndpointPolicy) -> Dispatcher {
    Dispatcher::new(
        VapidKey::generate().unwrap(),
        VapidSubject::new(SUBJECT).unwrap(),
        Duration::from_secs(60),
    )
    .endpoint_policy(policy)
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn rfc8291_worked_example_decrypts_with_the_receivers_private_key() {
    // RFC 8291 section 5: the receiver's keys and the published message.
    let ua_secret = SecretKey::from_slice(
        &B64.decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        B64.encode(ua_secret.public_key().to_sec1_point(false).as_bytes()),
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    );
    let auth: [u8; 16] = B64
        .decode("BTBZMqHH6r4Tts7J_aSIgg")
        .unwrap()
        .try_into()
        .unwrap();
    let body = B64
        .decode(concat!(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmY",
            "WAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexS",
            "gSxsj_Qulcy4a-fN",
        ))
        .unwrap();
    assert_eq!(
        decrypt(&body, &ua_secret, &auth).unwrap(),
        b"When I grow up, I want to be a watermelon"
    );
    // And the same body under a wrong auth secret does not open.
    assert!(decrypt(&body, &ua_secret, &[0; 16]).is_err());
}

#[tokio::test]
async fn send_is_verified_and_decrypted_and_gets_201_404_410_500_in_turn() {
    let h = Harness::start().await;
    let sub = h.subscribe(
        0,
        &[
            (StatusCode::CREATED, ""),
            (StatusCode::NOT_FOUND, "no such subscription"),
            (StatusCode::GONE, "unsubscribed"),
            (StatusCode::INTERNAL_SERVER_ERROR, "boom"),
        ],
    );

    h.dispatcher.send(&sub, "first").await.unwrap();

    let e = h.dispatcher.send(&sub, "second").await.unwrap_err();
    assert!(e.is_gone(), "{e:?}");
    assert!(matches!(
        e,
        Error::Gone {
            status: StatusCode::NOT_FOUND
        }
    ));

    let e = h.dispatcher.send(&sub, "third").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Gone {
                status: StatusCode::GONE
            }
        ),
        "{e:?}"
    );

    let e = h.dispatcher.send(&sub, "fourth").await.unwrap_err();
    match &e {
        Error::Rejected { status, body } => {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body, "boom");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!e.is_gone());
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(
        e.to_string(),
        "push service answered 500 Internal Server Error"
    );

    h.svc.assert_no_problems();
    let texts: Vec<Vec<u8>> = h.svc.received().into_iter().map(|r| r.plaintext).collect();
    assert_eq!(
        texts,
        [&b"first"[..], b"second", b"third", b"fourth"].map(<[u8]>::to_vec)
    );
}

#[tokio::test]
async fn send_many_reports_exactly_the_gone_endpoints() {
    let h = Harness::start().await;
    let subs = [
        h.subscribe(0, &[(StatusCode::CREATED, "")]),
        h.subscribe(1, &[(StatusCode::NOT_FOUND, "")]),
        h.subscribe(2, &[(StatusCode::GONE, "")]),
        h.subscribe(3, &[(StatusCode::INTERNAL_SERVER_ERROR, "boom")]),
    ];
    let payload = Payload::new("Pagamento confirmado")
        .body("Pedido 42 aprovado.")
        .icon("/static/icons/order.png")
        .data(serde_json::json!({ "orderId": "42", "url": "/orders/42" }));

    let report = h.dispatcher.send_many(&subs, &payload).await.unwrap();

    assert_eq!(report.delivered, 1);
    assert_eq!(
        report.gone,
        [subs[1].endpoint().to_owned(), subs[2].endpoint().to_owned()]
    );
    assert_eq!(report.failed.len(), 1);
    let (endpoint, error) = &report.failed[0];
    assert_eq!(endpoint, subs[3].endpoint());
    assert!(
        matches!(error, Error::Rejected { status, body } if *status == StatusCode::INTERNAL_SERVER_ERROR && body == "boom"),
        "{error:?}"
    );
    assert!(!report.is_complete());

    // Every subscriber got the payload and could open it.
    h.svc.assert_no_problems();
    let received = h.svc.received();
    assert_eq!(
        received.iter().map(|r| r.id).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for r in &received {
        let got: serde_json::Value = serde_json::from_slice(&r.plaintext).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "title": "Pagamento confirmado",
                "body": "Pedido 42 aprovado.",
                "icon": "/static/icons/order.png",
                "data": { "orderId": "42", "url": "/orders/42" },
            })
        );
    }
}

#[tokio::test]
async fn ttl_urgency_and_topic_headers() {
    let h = Harness::start().await;
    let sub = h.subscribe(0, &[]);

    h.dispatcher
        .send(&sub, Payload::new("default"))
        .await
        .unwrap();
    let message = PushMessage::json(&serde_json::json!({ "n": 1 }))
        .unwrap()
        .ttl(Duration::from_secs(600))
        .urgency(Urgency::VeryLow)
        .topic(Topic::new("build-17").unwrap());
    h.dispatcher.send(&sub, &message).await.unwrap();
    h.dispatcher
        .send(
            &sub,
            PushMessage::new("now")
                .ttl(Duration::ZERO)
                .urgency(Urgency::High),
        )
        .await
        .unwrap();

    h.svc.assert_no_problems();
    let r = h.svc.received();
    assert_eq!(r[0].plaintext, br#"{"title":"default"}"#);
    assert_eq!(
        r[0].ttl.as_deref(),
        Some("60"),
        "the dispatcher's default TTL"
    );
    assert_eq!(r[0].urgency, None);
    assert_eq!(r[0].topic, None);
    assert_eq!(r[1].plaintext, br#"{"n":1}"#);
    assert_eq!(r[1].ttl.as_deref(), Some("600"));
    assert_eq!(r[1].urgency.as_deref(), Some("very-low"));
    assert_eq!(r[1].topic.as_deref(), Some("build-17"));
    assert_eq!(r[2].ttl.as_deref(), Some("0"));
    assert_eq!(r[2].urgency.as_deref(), Some("high"));
}

#[tokio::test]
async fn largest_payload_is_delivered_and_one_byte_more_is_refused_before_sending() {
    let h = Harness::start().await;
    let sub = h.subscribe(0, &[]);

    let largest = vec![b'x'; MAX_PAYLOAD_LEN];
    h.dispatcher.send(&sub, largest.clone()).await.unwrap();
    assert_eq!(h.svc.hits(), 1);
    assert_eq!(h.svc.received()[0].plaintext, largest);

    let too_large = vec![b'x'; MAX_PAYLOAD_LEN + 1];
    let e = h
        .dispatcher
        .send(&sub, too_large.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                size: 3994,
                max: 3993
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "payload too large for one push message: 3994 bytes, at most 3993"
    );
    let e = h
        .dispatcher
        .send_many([&sub, &sub], too_large)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PayloadTooLarge { .. }), "{e:?}");

    let big = Payload::new("t").body("b".repeat(4000));
    let e = h.dispatcher.send(&sub, &big).await.unwrap_err();
    assert!(matches!(e, Error::PayloadTooLarge { .. }), "{e:?}");

    assert_eq!(
        h.svc.hits(),
        1,
        "no request was made for the oversized payloads"
    );
    h.svc.assert_no_problems();
}

#[tokio::test]
async fn send_many_keeps_at_most_the_concurrency_limit_in_flight() {
    let h = Harness::start().await;
    *h.svc.delay.lock().unwrap() = Some(Duration::from_millis(50));
    let subs: Vec<Subscription> = (0..20).map(|id| h.subscribe(id, &[])).collect();
    let dispatcher = h.dispatcher.clone().concurrency(3);

    // Spawned: the future of `send_many` is `Send`, as axum handlers need.
    let report = tokio::spawn(async move { dispatcher.send_many(&subs, "hello").await })
        .await
        .unwrap()
        .unwrap();

    assert_eq!(report.delivered, 20);
    assert!(report.is_complete());
    assert_eq!(h.svc.hits(), 20);
    let max = h.svc.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} requests were in flight at once, limit 3");
    assert!(max >= 2, "requests did run concurrently (max {max})");
    h.svc.assert_no_problems();
}

#[tokio::test]
async fn send_many_reports_unreachable_push_services_as_failed() {
    let h = Harness::start().await;
    // A port that was free a moment ago: connections are refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let ok = h.subscribe(0, &[]);
    let unreachable = Subscriber::new().subscription(&format!("http://{closed}/push/9"));

    let report = h
        .dispatcher
        .send_many([&unreachable, &ok], "hello")
        .await
        .unwrap();

    assert_eq!(report.delivered, 1);
    assert!(report.gone.is_empty());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, unreachable.endpoint());
    let error = &report.failed[0].1;
    assert!(matches!(error, Error::Request(_)), "{error:?}");
    assert_eq!(error.to_string(), "push request failed");
    assert!(std::error::Error::source(error).is_some());
    assert_eq!(error.status(), None);
}

#[test]
fn subscription_json_round_trips_exactly() {
    let p256dh = Subscriber::new()
        .subscription("https://x.example/a")
        .p256dh()
        .to_owned();
    let cases = [
        // Chrome: an FCM endpoint, expirationTime null.
        format!(
            r#"{{"endpoint":"https://fcm.googleapis.com/fcm/send/dH3x:APA91bE-abc_123","expirationTime":null,"keys":{{"p256dh":"{p256dh}","auth":"tBHItJI5svbpez7KI4CCXg"}}}}"#
        ),
        // Firefox: a Mozilla autopush endpoint.
        format!(
            r#"{{"endpoint":"https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk","expirationTime":null,"keys":{{"auth":"BTBZMqHH6r4Tts7J_aSIgg","p256dh":"{p256dh}"}}}}"#
        ),
        // An expiration time in milliseconds.
        format!(
            r#"{{"endpoint":"https://web.push.apple.com/QGm1x","expirationTime":1767225600000,"keys":{{"p256dh":"{p256dh}","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}}}"#
        ),
    ];
    for json in &cases {
        let original: serde_json::Value = serde_json::from_str(json).unwrap();

        let sub: Subscription = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_value(&sub).unwrap(),
            original,
            "serde: {json}"
        );

        let sub = Subscription::from_json(json).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&sub.to_json()).unwrap(),
            original
        );

        let from_value: Subscription = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(from_value, sub);
    }
    // In the key order browsers write, the text itself comes back.
    assert_eq!(
        Subscription::from_json(&cases[0]).unwrap().to_json(),
        cases[0]
    );
    assert_eq!(
        Subscription::from_json(&cases[2])
            .unwrap()
            .expiration_time(),
        Some(1_767_225_600_000)
    );
}

#[test]
fn bad_subscriptions_give_clear_errors() {
    let good_key = Subscriber::new()
        .subscription("https://x.example/a")
        .p256dh()
        .to_owned();
    let compressed = {
        let secret = SecretKey::generate();
        B64.encode(secret.public_key().to_sec1_point(true).as_bytes())
    };
    let off_curve = {
        let mut bytes = B64.decode(&good_key).unwrap();
        bytes[40] ^= 0xff;
        B64.encode(bytes)
    };
    let auth = "BTBZMqHH6r4Tts7J_aSIgg";
    let json = |endpoint: &str, p256dh: &str, auth: &str| {
        format!(
            r#"{{"endpoint":"{endpoint}","expirationTime":null,"keys":{{"p256dh":"{p256dh}","auth":"{auth}"}}}}"#
        )
    };
    let ep = "https://push.example.net/a";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            json(ep, "not*base64!", auth),
            "keys.p256dh",
            "not base64url",
        ),
        (
            json(ep, &compressed, auth),
            "keys.p256dh",
            "expected 65 bytes (an uncompressed P-256 point, starting 0x04), got 33 bytes",
        ),
        (
            json(ep, &off_curve, auth),
            "keys.p256dh",
            "not a point on the P-256 curve",
        ),
        (json(ep, &good_key, "a$b"), "keys.auth", "not base64url"),
        (
            json(ep, &good_key, "AAAAAAAAAAA"),
            "keys.auth",
            "expected 16 bytes, got 8 bytes",
        ),
        (
            json("ftp://push.example.net/a", &good_key, auth),
            "endpoint",
            "expected an https: URL, got scheme \"ftp\"",
        ),
        (json("not a url", &good_key, auth), "endpoint", "not a URL"),
        (
            r#"{"endpoint":"https://push.example.net/a"}"#.to_owned(),
            "json",
            "missing field `keys`",
        ),
        (
            json(ep, &good_key, auth).replace("null", "\"soon\""),
            "json",
            "invalid type",
        ),
    ];
    for (text, field, reason) in &cases {
        let e = Subscription::from_json(text).unwrap_err();
        match &e {
            Error::InvalidSubscription {
                field: f,
                reason: r,
            } => {
                assert_eq!(f, field, "{text}");
                assert!(r.contains(reason), "{r:?} should say {reason:?}");
            }
            other => panic!("{text}: expected InvalidSubscription, got {other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with(&format!("invalid push subscription: {field}: ")),
            "{e}"
        );
        // serde gives the same message.
        let serde_err = serde_json::from_str::<Subscription>(text).unwrap_err();
        if *field != "json" {
            assert!(
                serde_err.to_string().contains(&e.to_string()),
                "{serde_err}"
            );
        }
    }
}

#[tokio::test]
async fn a_page_posting_a_bad_subscription_gets_422_with_the_reason() {
    use axum::Json;
    let app = Router::new().route(
        "/subscribe",
        post(|Json(sub): Json<Subscription>| async move { sub.endpoint().to_owned() }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let good = Subscriber::new().subscription("https://push.example.net/a");

    let response = client
        .post(format!("http://{addr}/subscribe"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "https://push.example.net/a");

    let mut bad = serde_json::to_value(&good).unwrap();
    bad["keys"]["auth"] = "AAAA".into();
    let response = client
        .post(format!("http://{addr}/subscribe"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("invalid push subscription: keys.auth: expected 16 bytes, got 3 bytes"),
        "{text}"
    );
}

#[test]
fn bad_vapid_keys_give_clear_errors() {
    let cases = [
        ("!!!not-base64!!!", "not base64url"),
        (
            // 31 bytes.
            "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oQ",
            "expected 32 bytes (a raw P-256 private key) or a DER document, got 31 bytes",
        ),
        (
            // 33 bytes that are no DER document.
            "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRwA",
            "got 33 bytes that are not a P-256 PKCS#8 or SEC1 DER document",
        ),
        (
            // Zero is not a private key.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "not a P-256 private key (zero or not below the curve order)",
        ),
        (
            // 2^256 - 1 is above the curve order: no point on the curve.
            "__________________________________________8",
            "not a P-256 private key (zero or not below the curve order)",
        ),
    ];
    for (text, reason) in cases {
        let e = VapidKey::from_base64(text).unwrap_err();
        match &e {
            Error::InvalidVapidKey { reason: r } => {
                assert!(r.contains(reason), "{text}: {r:?} should say {reason:?}");
            }
            other => panic!("{text}: expected InvalidVapidKey, got {other:?}"),
        }
        assert!(
            e.to_string().starts_with("invalid VAPID private key: "),
            "{e}"
        );
    }

    let e = VapidKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid VAPID private key: not a PEM P-256 private key (PKCS#8 or SEC1)"
    );
}

#[test]
fn vapid_keys_from_raw_der_and_pem_agree() {
    // openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256
    let pkcs8_body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9icIcjV/ZsFDBV1w\
                      vPjtVjQAu7bGeGdn8L7TuzMjoaShRANCAARaygZ80444MfZSCX1Rrc0kvVZZz1/b\
                      eChq4ewHw1enUuNaErg6+T6Ah08dzJRpfBA0AaJqxCGFmpzd7gHDg6Kr";
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{pkcs8_body}\n-----END PRIVATE KEY-----\n");
    let from_pem = VapidKey::from_pem(&pem).unwrap();
    let from_der = VapidKey::from_base64(pkcs8_body).unwrap();
    let raw = VapidKey::from_base64(&from_pem.private_key_base64()).unwrap();
    assert_eq!(from_pem.public_key_base64(), from_der.public_key_base64());
    assert_eq!(from_pem.public_key_base64(), raw.public_key_base64());
    assert_eq!(raw.private_key_base64(), from_pem.private_key_base64());

    // openssl ecparam -name prime256v1 -genkey -noout (SEC1)
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\n\
                MHcCAQEEIEbu8d+BZ+okaLuU4a6cEr07t9GouK0hCCQoy1S40lUZoAoGCCqGSM49\n\
                AwEHoUQDQgAEECicWuorTeHJVD9qkaaxVInS4ELbAFKbe3Y6YhgdW7Mda5cpg/Zw\n\
                Y580N5nCH6tmJQ0mBE81ZLkxbNz2Qk+9bA==\n\
                -----END EC PRIVATE KEY-----\n";
    let key = VapidKey::from_pem(sec1).unwrap();
    // The public key inside the SEC1 document is the one derived from it.
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            sec1.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    assert_eq!(B64.encode(&der[der.len() - 65..]), key.public_key_base64());
}

#[test]
fn bad_subjects_and_topics_give_clear_errors() {
    let e = VapidSubject::new("ops@example.com").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid VAPID subject \"ops@example.com\": expected a mailto: address or an https: URL"
    );
    let e = VapidSubject::new("http://example.com").unwrap_err();
    assert!(matches!(e, Error::InvalidSubject { .. }));
    let e = VapidSubject::new("mailto:").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid VAPID subject \"mailto:\": expected mailto: followed by an email address"
    );

    let e = Topic::new("x".repeat(33)).unwrap_err();
    assert!(
        e.to_string().ends_with(": longer than 32 characters"),
        "{e}"
    );
    let e = Topic::new("a.b").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid topic \"a.b\": only A-Z, a-z, 0-9, '-' and '_' are allowed"
    );
}

#[test]
#[should_panic(expected = "Dispatcher::concurrency must be at least 1")]
fn zero_concurrency_is_a_programmer_error() {
    let key = VapidKey::generate().unwrap();
    let _ = Dispatcher::new(
        key,
        VapidSubject::new(SUBJECT).unwrap(),
        Duration::from_secs(1),
    )
    .concurrency(0);
}

// ---------------------------------------------------------------------------
// Endpoints: Web Push is no request forger.
// ---------------------------------------------------------------------------

#[test]
fn the_default_policy_refuses_http_ip_literals_and_local_names() {
    let subscriber = Subscriber::new();
    let json = |endpoint: &str| {
        format!(
            r#"{{"endpoint":"{endpoint}","expirationTime":null,"keys":{{"p256dh":"{}","auth":"{}"}}}}"#,
            subscriber.p256dh(),
            B64.encode(subscriber.auth)
        )
    };
    let ip = |shown: &str| {
        format!("the host {shown} is an IP address; push services are reached by name")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "http://push.example.net/a",
            "expected https:, got http: (only EndpointPolicy::allow_insecure_endpoints_for_testing allows it)".to_owned(),
        ),
        ("https://127.0.0.1/a", ip("127.0.0.1")),
        ("https://127.0.0.1./a", ip("127.0.0.1")),
        // The forms the URL standard reads as 127.0.0.1.
        ("https://2130706433/a", ip("127.0.0.1")),
        ("https://0x7f000001/a", ip("127.0.0.1")),
        ("https://0x7f.1/a", ip("127.0.0.1")),
        ("https://0177.0.0.1/a", ip("127.0.0.1")),
        ("https://127.1/a", ip("127.0.0.1")),
        ("https://10.0.0.5/a", ip("10.0.0.5")),
        ("https://169.254.169.254/latest/meta-data", ip("169.254.169.254")),
        ("https://8.8.8.8/a", ip("8.8.8.8")),
        ("https://[::1]/a", ip("::1")),
        ("https://[::ffff:127.0.0.1]/a", ip("::ffff:127.0.0.1")),
        ("https://[fe80::1]/a", ip("fe80::1")),
        ("https://localhost/a", r#"the host "localhost" names this machine"#.to_owned()),
        ("https://LocalHost.:8443/a", r#"the host "localhost" names this machine"#.to_owned()),
        ("https://api.localhost/a", r#"the host "api.localhost" names this machine"#.to_owned()),
        (
            "https://intranet/a",
            r#"the host "intranet" is a single-label name; push services have a dotted domain name"#.to_owned(),
        ),
        (
            "https://user:secret@push.example.net/a",
            "the URL carries a user name or password".to_owned(),
        ),
    ];
    for (endpoint, reason) in &cases {
        let text = json(endpoint);
        for e in [
            Subscription::from_json(&text).unwrap_err(),
            subscriber
                .try_subscription(endpoint, &EndpointPolicy::new())
                .unwrap_err(),
            subscriber
                .try_subscription(endpoint, &EndpointPolicy::default())
                .unwrap_err(),
        ] {
            match &e {
                Error::EndpointRefused { reason: r } => assert_eq!(r, reason, "{endpoint}"),
                other => panic!("{endpoint}: expected EndpointRefused, got {other:?}"),
            }
            assert_eq!(e.to_string(), format!("push endpoint refused: {reason}"));
        }
        let serde_err = serde_json::from_str::<Subscription>(&text).unwrap_err();
        assert!(
            serde_err.to_string().contains(reason.as_str()),
            "{serde_err}"
        );
        // The explicit opening for tests accepts all but the credentials.
        let opened = subscriber.try_subscription(endpoint, &testing());
        assert_eq!(
            opened.is_ok(),
            !endpoint.contains('@'),
            "{endpoint}: {opened:?}"
        );
    }
    // What browsers hand out passes.
    for endpoint in [
        "https://fcm.googleapis.com/fcm/send/dH3x:APA91bE",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
        "https://web.push.apple.com/QGm1x",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA",
    ] {
        Subscription::from_json(&json(endpoint)).unwrap();
    }
}

#[tokio::test]
async fn a_default_dispatcher_sends_nothing_to_a_test_service() {
    let h = Harness::start().await;
    let sub = h.subscribe(0, &[]);
    let strict = dispatcher(EndpointPolicy::new());

    let e = strict.send(&sub, "hello").await.unwrap_err();
    assert!(matches!(e, Error::EndpointRefused { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("push endpoint refused: expected https:, got http:"),
        "{e}"
    );
    let report = strict.send_many([&sub], "hello").await.unwrap();
    assert_eq!(report.delivered, 0);
    assert!(
        matches!(report.failed[..], [(_, Error::EndpointRefused { .. })]),
        "{report:?}"
    );
    assert_eq!(h.svc.hits(), 0, "nothing reached the service");

    // The same subscription through the opened dispatcher is delivered: the
    // service was there all along.
    h.dispatcher.send(&sub, "hello").await.unwrap();
    assert_eq!(h.svc.hits(), 1);
    h.svc.assert_no_problems();
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_when_connecting() {
    let h = Harness::start().await;
    let port = h.base.rsplit(':').next().unwrap().to_owned();
    // The same service by name: `localhost` is 127.0.0.1 in /etc/hosts. The
    // testing policy lets the name through; the dispatcher's resolver does
    // not let the address through.
    let by_name = h.subscribe_via(&format!("http://localhost:{port}"), 0, &[]);
    let by_ip = h.subscribe(1, &[]);

    let e = h.dispatcher.send(&by_name, "hello").await.unwrap_err();
    assert!(matches!(e, Error::EndpointRefused { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        r#"push endpoint refused: the host "localhost" resolves to no public address"#
    );
    assert_eq!(e.status(), None);
    let report = h
        .dispatcher
        .send_many([&by_name, &by_ip], "hello")
        .await
        .unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, by_name.endpoint());
    assert!(matches!(report.failed[0].1, Error::EndpointRefused { .. }));

    // So is a client of one's own built from `client_builder`.
    let own = h
        .dispatcher
        .clone()
        .with_client(Dispatcher::client_builder().build().unwrap());
    let e = own.send(&by_name, "hello").await.unwrap_err();
    assert!(matches!(e, Error::EndpointRefused { .. }), "{e:?}");

    let ids: Vec<usize> = h.svc.received().iter().map(|r| r.id).collect();
    assert_eq!(ids, [1], "only the IP-literal endpoint was reached");
    assert_eq!(h.svc.hits(), 1);
    h.svc.assert_no_problems();
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (target, target_hits) = counting_service(StatusCode::CREATED).await;
    let push = dispatcher(testing());
    let mut subs = Vec::new();
    for status in [
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let location = format!("http://{target}/push/0");
        let redirector = Router::new().route(
            "/push/{id}",
            post(move || async move { (status, [(LOCATION, location)]) }),
        );
        let from = serve(redirector).await;
        let sub = Subscriber::new().subscription(&format!("http://{from}/push/0"));

        let e = push.send(&sub, "hello").await.unwrap_err();
        assert!(
            matches!(e, Error::Redirected { status: s } if s == status),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("push service answered {status}: redirects are not followed")
        );
        assert_eq!(e.status(), Some(status));
        subs.push(sub);
    }
    let report = push.send_many(&subs, "hello").await.unwrap();
    assert_eq!(report.delivered, 0);
    assert!(
        report
            .failed
            .iter()
            .all(|(_, e)| matches!(e, Error::Redirected { .. }))
    );
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect target was not reached"
    );

    // A client from `client_builder` does not follow either.
    let own = push
        .clone()
        .with_client(Dispatcher::client_builder().build().unwrap());
    let e = own.send(&subs[0], "hello").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Redirected {
                status: StatusCode::TEMPORARY_REDIRECT
            }
        ),
        "{e:?}"
    );
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);

    // A client of one's own that follows redirects reaches the target (what
    // the `with_client` docs warn about), but its answer is no delivery.
    let following = push.clone().with_client(client());
    let e = following.send(&subs[0], "hello").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Redirected {
                status: StatusCode::CREATED
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("redirected away from the endpoint"),
        "{e}"
    );
    assert_eq!(target_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_allow_list_applies_when_subscribing_and_before_sending() {
    let subscriber = Subscriber::new();
    let policy = EndpointPolicy::new().allow_hosts([
        "fcm.googleapis.com",
        "*.push.services.mozilla.com",
        "*.notify.windows.com",
    ]);
    for endpoint in [
        "https://fcm.googleapis.com/fcm/send/x",
        "https://FCM.GoogleAPIs.com./fcm/send/x",
        "https://updates.push.services.mozilla.com/wpush/v2/x",
        "https://wns2-par02p.notify.windows.com/w/?token=x",
    ] {
        subscriber.try_subscription(endpoint, &policy).unwrap();
    }
    for (endpoint, host) in [
        ("https://push.example.net/x", "push.example.net"),
        (
            "https://fcm.googleapis.com.evil.example/x",
            "fcm.googleapis.com.evil.example",
        ),
        ("https://evilfcm.googleapis.com/x", "evilfcm.googleapis.com"),
        (
            "https://push.services.mozilla.com/x",
            "push.services.mozilla.com",
        ),
        ("https://notify.windows.com/x", "notify.windows.com"),
    ] {
        let e = subscriber.try_subscription(endpoint, &policy).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("push endpoint refused: the host {host:?} is not an allowed push service")
        );
    }
    // The list does not undo the other checks.
    let e = subscriber
        .try_subscription("http://fcm.googleapis.com/x", &policy)
        .unwrap_err();
    assert!(e.to_string().contains("expected https:"), "{e}");

    // Before sending, over HTTP.
    let h = Harness::start().await;
    let sub = h.subscribe(0, &[]);
    for refusing in [
        testing().allow_hosts(["push.example.net"]),
        testing().allow_hosts(Vec::<String>::new()),
        testing().allow_hosts(["127.0.0.2", "localhost", "[::1]"]),
    ] {
        let e = dispatcher(refusing.clone())
            .send(&sub, "hello")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"push endpoint refused: the host "127.0.0.1" is not an allowed push service"#,
            "{refusing:?}"
        );
    }
    assert_eq!(h.svc.hits(), 0);
    h.dispatcher
        .clone()
        .endpoint_policy(testing().allow_hosts(["push.example.net", "127.0.0.1"]))
        .send(&sub, "hello")
        .await
        .unwrap();
    assert_eq!(h.svc.hits(), 1);
    h.svc.assert_no_problems();
}

#[tokio::test]
async fn a_rejecting_services_body_is_kept_bounded_and_never_displayed() {
    let h = Harness::start().await;
    let reflected = "<script>alert(document.cookie)</script> internal: 10.0.0.5";
    let long: &'static str = Box::leak(format!("{}TAIL", "x".repeat(10_000)).into_boxed_str());
    let sub = h.subscribe(
        0,
        &[
            (StatusCode::BAD_REQUEST, reflected),
            (StatusCode::TOO_MANY_REQUESTS, long),
            (StatusCode::BAD_REQUEST, reflected),
        ],
    );

    let e = h.dispatcher.send(&sub, "one").await.unwrap_err();
    assert_eq!(e.to_string(), "push service answered 400 Bad Request");
    assert!(
        matches!(&e, Error::Rejected { body, .. } if body == reflected),
        "{e:?}"
    );

    let e = h.dispatcher.send(&sub, "two").await.unwrap_err();
    assert_eq!(e.to_string(), "push service answered 429 Too Many Requests");
    let Error::Rejected { body, .. } = &e else {
        panic!("expected Rejected, got {e:?}")
    };
    assert_eq!(body.len(), 4096);
    assert!(long.starts_with(body.as_str()));

    let report = h.dispatcher.send_many([&sub], "three").await.unwrap();
    let shown = report.failed[0].1.to_string();
    assert_eq!(shown, "push service answered 400 Bad Request");
    h.svc.assert_no_problems();
}

/// The `webpush` example, compiled in: its routes, served on 127.0.0.1.
#[allow(dead_code)]
#[path = "../examples/webpush.rs"]
mod example;

#[tokio::test]
async fn the_example_never_echoes_endpoint_errors_to_the_browser() {
    let h = Harness::start().await;
    let reflected = "<script>alert(document.cookie)</script>";
    let sub = h.subscribe(0, &[(StatusCode::BAD_REQUEST, reflected)]);
    let addr = serve(example::router(h.dispatcher.clone(), testing())).await;
    let client = client();

    // A subscription the policy refuses: a generic answer.
    let refused = Subscriber::new()
        .subscription("https://x.example/a")
        .to_json()
        .replace("https://x.example/a", "https://user:secret@x.example/a");
    let response = client
        .post(format!("http://{addr}/subscribe"))
        .body(refused)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({ "error": "not a push subscription this server accepts" })
    );

    let response = client
        .post(format!("http://{addr}/subscribe"))
        .body(sub.to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let notify = || {
        client
            .post(format!("http://{addr}/notify"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("title=Hello&body=from+the+test")
            .send()
    };
    // The push service answers 400 with a script: the page gets counts only.
    let response = notify().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let text = response.text().await.unwrap();
    for leak in [
        "script",
        "127.0.0.1",
        "push service answered",
        "/push/0",
        "400",
    ] {
        assert!(!text.contains(leak), "{leak:?} reached the browser: {text}");
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::json!({
            "error": "some push messages could not be sent; see the server log",
            "delivered": 0,
            "gone": 0,
            "failed": 1,
        })
    );
    assert_eq!(h.svc.hits(), 1, "the push did reach the service");

    // Next time the service accepts it.
    let response = notify().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({ "delivered": 1, "gone": 0, "failed": 0 })
    );
    assert_eq!(h.svc.hits(), 2);
    h.svc.assert_no_problems();
}
