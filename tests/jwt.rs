//! `JwtAuthorizer` over real HTTP on 127.0.0.1: `aud`, `iss`, `nbf`, `exp`
//! and its leeway, `alg: none`, algorithm confusion, the empty secret.
//!
//! Every token is tried twice, as a subscriber (`GET /hub`, token in the
//! cookie) and as a publisher (`POST /hub`, `Authorization: Bearer`), and
//! both must agree: accepted, or a 401 whose body says why.
#![cfg(all(feature = "testing", feature = "jwt"))]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use htmx_sse::auth::{AuthError, JwtAuthorizer};
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::connections::UserId;
use htmx_sse::testing::{ClientError, TestClient};
use htmx_sse::topics::TopicRoutes;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"test secret, 32 bytes or more!!!";

fn now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}

/// Claims that may read and publish everything, valid for ten minutes,
/// with `extra` merged in (a `null` removes a claim).
fn claims(extra: &Value) -> Value {
    let mut c = json!({"sub": "alice", "exp": now() + 600,
        "mercure": {"subscribe": ["*"], "publish": ["*"]}});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hs_token(extra: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims(extra),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn hs256() -> JwtAuthorizer {
    JwtAuthorizer::hs256(SECRET).unwrap()
}

/// A hub whose routes use `auth`, on a free port of 127.0.0.1.
struct Hub {
    base: String,
    http: reqwest::Client,
}

async fn hub(auth: JwtAuthorizer) -> Hub {
    let routes = TopicRoutes::new(BroadcastManager::new())
        .authorizer(auth)
        .trust_publisher_html();
    let (base, _) = common::serve(routes.install(Router::new())).await;
    Hub {
        base,
        http: reqwest::Client::new(),
    }
}

impl Hub {
    /// `Ok` when `token` is accepted, else the body of the 401. Panics on
    /// anything else, or when subscribing and publishing disagree.
    async fn try_token(&self, token: &str) -> Result<(), String> {
        let res = self
            .http
            .post(format!("{}/hub", self.base))
            .bearer_auth(token)
            .json(&json!({"topics": ["a"], "html": "x"}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let publish = match status {
            200 => Ok(()),
            401 => Err(res.text().await.unwrap()),
            other => panic!("publish: {other}: {}", res.text().await.unwrap()),
        };
        let subscribe = match TestClient::get(format!("{}/hub?topic=a", self.base))
            .header("cookie", &format!("htmx_sse_token={token}"))
            .connect()
            .await
        {
            Ok(mut c) => {
                assert_eq!(c.next_event_within(WAIT).await.unwrap().event, "connection");
                Ok(())
            }
            Err(ClientError::NotAnEventStream {
                status: 401, body, ..
            }) => Err(body),
            Err(other) => panic!("subscribe: {other:?}"),
        };
        assert_eq!(publish, subscribe, "publish and subscribe disagree");
        publish
    }

    /// Checks each row: `None` accepted, `Some(why)` refused with a 401
    /// whose body contains `why`.
    async fn check(&self, rows: &[(&str, String, Option<&str>)]) {
        for (name, token, want) in rows {
            match (self.try_token(token).await, want) {
                (Ok(()), None) => {}
                (Err(body), Some(why)) => {
                    assert!(body.contains("invalid credentials"), "{name}: {body}");
                    assert!(body.contains(why), "{name}: {body} lacks {why:?}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_valid_token_is_accepted_and_read() {
    let auth = hs256()
        .audience(["my-app"])
        .issuer(["https://auth.example"]);
    let token = hs_token(&json!({"aud": "my-app", "iss": "https://auth.example",
        "nbf": now() - 10, "sub": "bob"}));
    let subject = auth.verify(&token).unwrap();
    assert_eq!(subject.user, Some(UserId::new("bob").unwrap()));
    assert_eq!(subject.publish.len(), 1);
    hub(auth).await.check(&[("valid", token, None)]).await;
}

#[tokio::test]
async fn audience_when_configured_is_required_and_checked() {
    let h = hub(hs256().audience(["my-app", "my-app-staging"])).await;
    h.check(&[
        ("aud one of them", hs_token(&json!({"aud": "my-app"})), None),
        (
            "aud the other",
            hs_token(&json!({"aud": "my-app-staging"})),
            None,
        ),
        (
            "aud array containing one",
            hs_token(&json!({"aud": ["other", "my-app"]})),
            None,
        ),
        (
            "wrong aud",
            hs_token(&json!({"aud": "other-app"})),
            Some("InvalidAudience"),
        ),
        (
            "wrong aud array",
            hs_token(&json!({"aud": ["other-app", "my-app-2"]})),
            Some("InvalidAudience"),
        ),
        (
            "missing aud",
            hs_token(&json!({})),
            Some("Missing required claim: aud"),
        ),
        (
            "aud not a string",
            hs_token(&json!({"aud": 7})),
            Some("Missing required claim: aud"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn without_an_audience_a_token_naming_one_is_refused() {
    let h = hub(hs256()).await;
    h.check(&[
        ("no aud", hs_token(&json!({})), None),
        ("any iss", hs_token(&json!({"iss": "anyone"})), None),
        (
            "aud",
            hs_token(&json!({"aud": "some-other-service"})),
            Some("InvalidAudience"),
        ),
        (
            "aud array",
            hs_token(&json!({"aud": ["a", "b"]})),
            Some("InvalidAudience"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn issuer_when_configured_is_required_and_checked() {
    let h = hub(hs256().issuer(["https://auth.example"])).await;
    h.check(&[
        (
            "right iss",
            hs_token(&json!({"iss": "https://auth.example"})),
            None,
        ),
        (
            "wrong iss",
            hs_token(&json!({"iss": "https://evil.example"})),
            Some("InvalidIssuer"),
        ),
        (
            "missing iss",
            hs_token(&json!({})),
            Some("Missing required claim: iss"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn nbf_and_exp_are_checked_with_the_leeway() {
    let h = hub(hs256()).await;
    h.check(&[
        ("nbf past", hs_token(&json!({"nbf": now() - 10})), None),
        (
            "nbf in 30 s, inside the 60 s leeway",
            hs_token(&json!({"nbf": now() + 30})),
            None,
        ),
        (
            "nbf in an hour",
            hs_token(&json!({"nbf": now() + 3600})),
            Some("ImmatureSignature"),
        ),
        (
            "nbf not a number",
            hs_token(&json!({"nbf": "soon"})),
            Some("Invalid format for claim: nbf"),
        ),
        (
            "expired 30 s ago, inside the 60 s leeway",
            hs_token(&json!({"exp": now() - 30})),
            None,
        ),
        (
            "expired an hour ago",
            hs_token(&json!({"exp": now() - 3600})),
            Some("ExpiredSignature"),
        ),
        (
            "without exp",
            hs_token(&json!({"exp": null})),
            Some("Missing required claim: exp"),
        ),
    ])
    .await;

    let strict = hub(hs256().leeway(0)).await;
    strict
        .check(&[
            (
                "nbf in 30 s, no leeway",
                hs_token(&json!({"nbf": now() + 30})),
                Some("ImmatureSignature"),
            ),
            (
                "expired 30 s ago, no leeway",
                hs_token(&json!({"exp": now() - 30})),
                Some("ExpiredSignature"),
            ),
        ])
        .await;
}

/// An unsigned token: `alg` as given, an empty signature.
fn unsigned(alg: &str) -> String {
    format!(
        "{}.{}.",
        common::keys::base64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
        common::keys::base64url(claims(&json!({})).to_string().as_bytes())
    )
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let keys = common::keys::Keys::make("jwt");
    let rsa_pub = keys.read("rsa.pub");
    let ec_pub = keys.read("ec.pub");
    let rs = JwtAuthorizer::rs256_pem(&rsa_pub).unwrap();
    let es = JwtAuthorizer::es256_pem(&ec_pub).unwrap();
    let rs_key = EncodingKey::from_rsa_pem(&keys.read("rsa.pem")).unwrap();
    let good = encode(&Header::new(Algorithm::RS256), &claims(&json!({})), &rs_key).unwrap();
    // The classic confusion: HMAC "signed" with the public key's PEM bytes,
    // which a verifier that trusts the header's `alg` would check as an
    // HMAC secret.
    let confused = |public_pem: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims(&json!({"sub": "mallory"})),
            &EncodingKey::from_secret(public_pem),
        )
        .unwrap()
    };
    let (rs_confused, es_confused) = (confused(&rsa_pub), confused(&ec_pub));
    // They are well made: an HS256 authorizer with those bytes as its
    // secret accepts them. What refuses them below is the algorithm check.
    for (pem, token) in [(&rsa_pub, &rs_confused), (&ec_pub, &es_confused)] {
        let user = JwtAuthorizer::hs256(pem)
            .unwrap()
            .verify(token)
            .unwrap()
            .user;
        assert_eq!(user, Some(UserId::new("mallory").unwrap()));
    }

    let rs_hub = hub(rs.clone()).await;
    rs_hub
        .check(&[
            ("valid", good, None),
            ("alg none", unsigned("none"), Some("none")),
            ("alg None", unsigned("None"), Some("None")),
            ("alg NONE", unsigned("NONE"), Some("NONE")),
        ])
        .await;
    rs_hub
        .check(&[
            (
                "HS256 signed with the RSA public key",
                rs_confused.clone(),
                Some("InvalidAlgorithm"),
            ),
            (
                "RS256 header, HS256 signature",
                {
                    let mut parts: Vec<String> =
                        rs_confused.split('.').map(str::to_owned).collect();
                    parts[0] = common::keys::base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
                    parts.join(".")
                },
                Some("InvalidSignature"),
            ),
        ])
        .await;
    hub(es.clone())
        .await
        .check(&[(
            "HS256 signed with the EC public key",
            es_confused.clone(),
            Some("InvalidAlgorithm"),
        )])
        .await;
    // Without HTTP too, and `alg: none` to an HS256 authorizer.
    for (name, auth, token) in [
        ("alg none to HS256", &hs256(), unsigned("none")),
        ("alg none to RS256", &rs, unsigned("none")),
        ("confusion to RS256", &rs, rs_confused),
        ("confusion to ES256", &es, es_confused),
    ] {
        match auth.verify(&token) {
            Err(AuthError::Invalid(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn an_empty_secret_is_refused_and_a_short_one_warned_about() {
    let err = JwtAuthorizer::hs256(b"").unwrap_err();
    assert_eq!(err.to_string(), "empty HS256 secret");
    assert!(std::error::Error::source(&err).is_none());

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let _long = JwtAuthorizer::hs256(SECRET).unwrap();
        assert_eq!(logs.text(), "", "32 bytes: no warning");
        let short = JwtAuthorizer::hs256(b"0123456789abcdefghijklmnopqrstu").unwrap();
        let text = logs.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("shorter than 32 bytes"), "{text}");
        assert!(text.contains("len=31"), "{text}");
        // Short is accepted (with the warning): its tokens still verify.
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(&json!({})),
            &EncodingKey::from_secret(b"0123456789abcdefghijklmnopqrstu"),
        )
        .unwrap();
        assert!(short.verify(&token).is_ok());
    });

    // Bad PEM is a `KeyError` with a source.
    let err = JwtAuthorizer::rs256_pem(b"not a key").unwrap_err();
    assert!(err.to_string().starts_with("invalid key: "), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
#[should_panic(expected = "at least one audience")]
fn an_empty_audience_list_is_a_programmer_error() {
    let _ = hs256().audience(Vec::<String>::new());
}

#[test]
#[should_panic(expected = "at least one issuer")]
fn an_empty_issuer_list_is_a_programmer_error() {
    let _ = hs256().issuer(Vec::<String>::new());
}
