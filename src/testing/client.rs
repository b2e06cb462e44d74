//! `TestClient`: one live SSE connection over real HTTP.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::parser::{Parser, ReceivedEvent, SseItem};

/// What went wrong with a test connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The HTTP request or the body read failed.
    Http(reqwest::Error),
    /// The server answered, but not `200 text/event-stream`.
    NotAnEventStream {
        /// The status it answered with.
        status: u16,
        /// Its `Content-Type`, if any.
        content_type: Option<String>,
        /// The start of the body, to see what it said instead.
        body: String,
    },
    /// Nothing arrived in time.
    Timeout,
    /// The server ended the stream.
    Closed,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Http(_) => f.write_str("http request failed"),
            ClientError::NotAnEventStream {
                status,
                content_type,
                body,
            } => write!(
                f,
                "not an event stream: status {status}, content type {content_type:?}, body {body:?}"
            ),
            ClientError::Timeout => f.write_str("timed out waiting for the stream"),
            ClientError::Closed => f.write_str("the server ended the stream"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Http(e) => Some(e),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Http(e)
    }
}

/// Prepares a connection: the URL, headers, `Last-Event-ID`.
#[derive(Debug)]
#[must_use]
pub struct TestClientBuilder {
    url: String,
    headers: HeaderMap,
    connect_timeout: Duration,
}

impl TestClientBuilder {
    /// Adds a request header.
    ///
    /// # Panics
    ///
    /// When the name or value is not a valid header: test code, not data.
    #[track_caller]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).expect("valid header name");
        let value = HeaderValue::try_from(value).expect("valid header value");
        self.headers.append(name, value);
        self
    }

    /// Sends `Last-Event-ID`, as a browser does when it reconnects.
    #[track_caller]
    pub fn last_event_id(self, id: &str) -> Self {
        self.header("last-event-id", id)
    }

    /// How long to wait for the response headers (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Opens the connection and checks the answer is an event stream.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotAnEventStream`] for any other answer,
    /// [`ClientError::Timeout`] when the headers do not come in time,
    /// [`ClientError::Http`] when the request fails.
    pub async fn connect(self) -> Result<TestClient, ClientError> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let req = client.get(&self.url).headers(self.headers);
        let resp = tokio::time::timeout(self.connect_timeout, req.send())
            .await
            .map_err(|_| ClientError::Timeout)??;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_sse = content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if status != 200 || !is_sse {
            let body = tokio::time::timeout(Duration::from_secs(1), resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|mut b| {
                    let mut end = b.len().min(512);
                    while !b.is_char_boundary(end) {
                        end -= 1;
                    }
                    b.truncate(end);
                    b
                })
                .unwrap_or_default();
            return Err(ClientError::NotAnEventStream {
                status,
                content_type,
                body,
            });
        }
        Ok(TestClient {
            headers: resp.headers().clone(),
            resp: Some(resp),
            parser: Parser::new(),
            pending: VecDeque::new(),
            last_id: String::new(),
            raw: Vec::new(),
        })
    }
}

/// One open SSE connection, read item by item.
#[derive(Debug)]
pub struct TestClient {
    resp: Option<reqwest::Response>,
    headers: HeaderMap,
    parser: Parser,
    pending: VecDeque<SseItem>,
    raw: Vec<u8>,
    last_id: String,
}

impl TestClient {
    /// Prepares a `GET` of `url`.
    pub fn get(url: impl Into<String>) -> TestClientBuilder {
        TestClientBuilder {
            url: url.into(),
            headers: HeaderMap::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The response headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Every byte received so far, as sent.
    #[must_use]
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The last event id of the events read so far: what a page that
    /// handled them would send back. Events that arrived in the same chunk
    /// but were not read yet do not count.
    #[must_use]
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// The reconnection time the stream last set with `retry:`.
    #[must_use]
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }

    /// The next item: an event or a comment (heartbeats are comments).
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the stream ended, [`ClientError::Http`]
    /// when reading failed.
    pub async fn next_item(&mut self) -> Result<SseItem, ClientError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let SseItem::Event(ev) = &item {
                    self.last_id.clone_from(&ev.last_event_id);
                }
                return Ok(item);
            }
            let Some(resp) = self.resp.as_mut() else {
                return Err(ClientError::Closed);
            };
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.pending.extend(self.parser.feed(&chunk));
                }
                Ok(None) => {
                    self.resp = None;
                    return Err(ClientError::Closed);
                }
                Err(e) => {
                    self.resp = None;
                    return Err(ClientError::Http(e));
                }
            }
        }
    }

    /// The next item, waiting at most `within`.
    ///
    /// # Errors
    ///
    /// As [`next_item`](Self::next_item), and [`ClientError::Timeout`].
    pub async fn next_item_within(&mut self, within: Duration) -> Result<SseItem, ClientError> {
        tokio::time::timeout(within, self.next_item())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// The next dispatched event, skipping comments.
    ///
    /// # Errors
    ///
    /// As [`next_item`](Self::next_item).
    pub async fn next_event(&mut self) -> Result<ReceivedEvent, ClientError> {
        loop {
            if let SseItem::Event(e) = self.next_item().await? {
                return Ok(e);
            }
        }
    }

    /// The next dispatched event, waiting at most `within`.
    ///
    /// # Errors
    ///
    /// As [`next_item`](Self::next_item), and [`ClientError::Timeout`].
    pub async fn next_event_within(
        &mut self,
        within: Duration,
    ) -> Result<ReceivedEvent, ClientError> {
        tokio::time::timeout(within, self.next_event())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Reads until the server ends the stream (or `within` passes) and
    /// returns the events it sent.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] when the stream is still open after
    /// `within`; [`ClientError::Http`] when reading failed.
    pub async fn collect_until_closed(
        &mut self,
        within: Duration,
    ) -> Result<Vec<ReceivedEvent>, ClientError> {
        let mut out = Vec::new();
        let read = async {
            loop {
                match self.next_item().await {
                    Ok(SseItem::Event(e)) => out.push(e),
                    Ok(SseItem::Comment(_)) => {}
                    Err(ClientError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(out)
    }

    /// Closes the connection, as a browser tab does when it goes away.
    pub fn close(mut self) {
        self.resp = None;
    }
}
