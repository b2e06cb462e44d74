//! `auth::from_extractor`: the application's own session extractor as the
//! authorizer of the crate's routes, over real HTTP on 127.0.0.1. A session
//! user gets their own messages on the stream and may publish what the
//! subject allows; no session is anonymous (public messages, 401 to
//! publish); an extractor's 403 is a 403; nothing leaks across users.
#![cfg(feature = "testing")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use htmx_sse::BroadcastManager;
use htmx_sse::auth::{self, Subject};
use htmx_sse::connections::UserId;
use htmx_sse::routes::BroadcastRoutes;
use htmx_sse::testing::TestClient;
use htmx_sse::topics::TopicSelector;
use serde_json::json;

/// The application's session store: session id → (user, banned).
#[derive(Clone)]
struct Sessions(Arc<HashMap<&'static str, (&'static str, bool)>>);

#[derive(Clone)]
struct AppState {
    sessions: Sessions,
}

impl FromRef<AppState> for Sessions {
    fn from_ref(state: &AppState) -> Sessions {
        state.sessions.clone()
    }
}

/// What the application's own handlers extract: 401 without a known
/// session, 403 for a banned user.
struct SessionUser(&'static str);

impl<S: Send + Sync> FromRequestParts<S> for SessionUser
where
    Sessions: FromRef<S>,
{
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let sessions = Sessions::from_ref(state);
        let id = auth::cookie(parts, "session").ok_or((StatusCode::UNAUTHORIZED, "no session"))?;
        if id == "s-store-down" {
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "session store down"));
        }
        match sessions.0.get(id) {
            None => Err((StatusCode::UNAUTHORIZED, "unknown session")),
            Some((_, true)) => Err((StatusCode::FORBIDDEN, "secret ban reason")),
            Some((user, false)) => Ok(SessionUser(user)),
        }
    }
}

async fn open(url: &str, session: Option<&str>) -> TestClient {
    let mut b = TestClient::get(url);
    if let Some(s) = session {
        b = b.header("cookie", &format!("session={s}"));
    }
    let mut c = b.connect().await.unwrap();
    let ev = c.next_event_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ev.event, "connection");
    c
}

#[tokio::test]
async fn a_session_extractor_authorizes_the_routes() {
    let state = AppState {
        sessions: Sessions(Arc::new(HashMap::from([
            ("s-ann", ("ann", false)),
            ("s-bob", ("bob", false)),
            ("s-eve", ("eve", true)),
        ]))),
    };
    let manager = BroadcastManager::new();
    let routes = BroadcastRoutes::new(manager.clone()).authorizer(auth::from_extractor(
        state.clone(),
        |SessionUser(name): SessionUser| {
            let subject = Subject::user(UserId::new(name).unwrap());
            // Ann may publish notes; Bob only reads.
            Some(if name == "ann" {
                subject.with_publish(vec![TopicSelector::new("note").unwrap()])
            } else {
                subject
            })
        },
    ));
    let app: Router = Router::new().merge(routes.router()).with_state(state);
    let (base, _task) = common::serve(app).await;
    let url = format!("{base}/sse");

    let mut ann = open(&url, Some("s-ann")).await;
    let mut bob = open(&url, Some("s-bob")).await;
    let mut anon = open(&url, None).await;
    let mut unknown = open(&url, Some("s-nobody")).await;

    // The banned user's extractor says 403: the stream refuses them, and
    // the extractor's own words stay on the server.
    let banned = reqwest::Client::new()
        .get(&url)
        .header("cookie", "session=s-eve")
        .send()
        .await
        .unwrap();
    assert_eq!(banned.status(), 403);
    assert!(!banned.text().await.unwrap().contains("secret"));

    // Per-user delivery follows the session's user.
    manager
        .send_to_user(&UserId::new("ann").unwrap(), "dm", "for ann", None)
        .await
        .unwrap();
    manager
        .broadcast("news", "for all", None, &[])
        .await
        .unwrap();
    let got = ann.next_event_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.data, "for ann");
    for c in [&mut ann, &mut bob, &mut anon, &mut unknown] {
        let got = c.next_event_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.data, "for all", "nobody but ann got the dm first");
    }

    // Publishing: ann's grant, bob 403, no session 401.
    let http = reqwest::Client::new();
    let post = |session: Option<&'static str>| {
        let mut req = http
            .post(format!("{base}/sse/broadcast"))
            .json(&json!({"type": "note", "data": "hi"}));
        if let Some(s) = session {
            req = req.header("cookie", format!("session={s}"));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(Some("s-ann")).await, 200);
    assert_eq!(post(Some("s-bob")).await, 403);
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("s-eve")).await, 403);
    // The application's store failing is not a sign-out: 503, retry.
    assert_eq!(post(Some("s-store-down")).await, 503);
    let down = reqwest::Client::new()
        .get(&url)
        .header("cookie", "session=s-store-down")
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    assert!(!down.text().await.unwrap().contains("session store"));
    assert_eq!(manager.history(None).len(), 2, "news and ann's note only");
}
