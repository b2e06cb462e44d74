//! `SseStream`: any `Stream` of events as an axum SSE response.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::StreamConfig;
use super::body::{Batch, Piece, drain, expired, log_frame, sse_response};
use crate::event::Event;

/// Why a stream ended. See the module docs, section *Closing*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// The source stream returned `None`. The close message was sent.
    SourceEnded,
    /// [`StopHandle::stop`] was called. The close message was sent.
    Stopped,
    /// The configured timeout passed. The close message was sent.
    TimedOut,
    /// The [`Shutdown`](super::Shutdown) signal was triggered. No close
    /// message, so the browser reconnects.
    Shutdown,
    /// The client went away (the response body was dropped).
    ClientGone,
    /// The connection fell too far behind and was closed without the close
    /// message, so the browser reconnects and resumes with `Last-Event-ID`.
    Lagged,
    /// A newer connection with the same id took this one's place (the client
    /// came back); no close message.
    Replaced,
}

impl EndReason {
    pub(crate) fn sends_close(self) -> bool {
        matches!(
            self,
            EndReason::SourceEnded | EndReason::Stopped | EndReason::TimedOut
        )
    }
}

/// Ends one [`SseStream`] from anywhere, with its close message. Cheap to
/// clone; stopping twice is harmless.
#[derive(Debug, Clone)]
pub struct StopHandle {
    token: CancellationToken,
}

impl StopHandle {
    /// Ends the stream: items not yet sent are dropped, the close message
    /// goes out, and the response ends.
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Whether [`stop`](Self::stop) was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

pub(crate) type OnEnd = Box<dyn FnOnce(EndReason) + Send + 'static>;

/// A source stream served as Server-Sent Events: an axum response.
///
/// Items are anything that converts into an [`Event`]: `Event`,
/// [`Fragment`](crate::Fragment), `String`, `&'static str` and maud `Markup`
/// (the last four become unnamed events carrying HTML). See the
/// [module docs](super) for heartbeats, closing and shutdown.
///
/// ```
/// use axum::{routing::get, Router};
/// use htmx_sse::{Event, streaming::SseStream};
///
/// async fn progress() -> impl axum::response::IntoResponse {
///     SseStream::spawn(8, |tx| async move {
///         for pct in (0..=100).step_by(10) {
///             let html = format!("<progress value='{pct}' max='100'></progress>");
///             if tx.send(Event::message(html)).await.is_err() {
///                 return; // the client went away
///             }
///             tokio::time::sleep(std::time::Duration::from_millis(200)).await;
///         }
///     })
/// }
///
/// let app: Router = Router::new().route("/progress", get(progress));
/// ```
#[must_use]
pub struct SseStream<S> {
    source: S,
    config: StreamConfig,
    stop: CancellationToken,
    task: Option<AbortHandle>,
    on_end: Option<OnEnd>,
    /// The request's `Accept-Encoding`, for `StreamConfig::compression`.
    #[cfg(feature = "compression")]
    accept: Option<axum::http::HeaderValue>,
}

impl<S> fmt::Debug for SseStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("source", &std::any::type_name::<S>())
            .field("config", &self.config)
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<S> SseStream<S> {
    /// Serves `source` with the default [`StreamConfig`].
    pub fn new(source: S) -> Self {
        SseStream {
            source,
            config: StreamConfig::default(),
            stop: CancellationToken::new(),
            task: None,
            on_end: None,
            #[cfg(feature = "compression")]
            accept: None,
        }
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: StreamConfig) -> Self {
        self.config = config;
        self
    }

    /// A handle that ends this stream with its close message.
    #[must_use]
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            token: self.stop.clone(),
        }
    }

    /// Calls `f` once with the reason the stream ended, when the response
    /// body is dropped (after the last frame, or when the client goes away).
    pub fn on_end(mut self, f: impl FnOnce(EndReason) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    /// Applies `f` to every item of the source before it is encoded.
    pub fn transform<F, T>(self, f: F) -> SseStream<Transform<S, F>>
    where
        S: Stream,
        F: FnMut(S::Item) -> T,
    {
        SseStream {
            source: Transform {
                inner: self.source,
                f,
            },
            config: self.config,
            stop: self.stop,
            task: self.task,
            on_end: self.on_end,
            #[cfg(feature = "compression")]
            accept: self.accept,
        }
    }

    /// Reads the request's `Accept-Encoding` from `headers`, to choose the
    /// encoding when the config compresses
    /// ([`StreamConfig::compression`], feature `compression`); without it
    /// the stream goes out uncompressed.
    ///
    /// ```
    /// use axum::{http::HeaderMap, routing::get, Router};
    /// use htmx_sse::streaming::{Compression, SseStream, StreamConfig};
    ///
    /// async fn feed(headers: HeaderMap) -> impl axum::response::IntoResponse {
    ///     let updates = tokio_stream::iter(["<p>1</p>", "<p>2</p>"]);
    ///     SseStream::new(updates)
    ///         .config(StreamConfig::new().compression(Compression::new()))
    ///         .accept_encoding(&headers)
    /// }
    ///
    /// let app: Router = Router::new().route("/feed", get(feed));
    /// ```
    #[cfg(feature = "compression")]
    pub fn accept_encoding(mut self, headers: &axum::http::HeaderMap) -> Self {
        self.accept = headers.get(axum::http::header::ACCEPT_ENCODING).cloned();
        self
    }
}

impl<T: Send + 'static> SseStream<ReceiverStream<T>> {
    /// Runs `producer` as a task feeding the stream through a channel of
    /// `capacity` items, and aborts the task as soon as the stream ends or
    /// the client goes away, so a producer never outlives its reader.
    ///
    /// `send` on the channel waits while the client is slow (backpressure)
    /// and fails once the stream is gone.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or when `capacity` is zero.
    #[track_caller]
    pub fn spawn<F, Fut>(capacity: usize, producer: F) -> Self
    where
        F: FnOnce(mpsc::Sender<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity);
        let task = tokio::spawn(producer(tx));
        let mut stream = SseStream::new(ReceiverStream::new(rx));
        stream.task = Some(task.abort_handle());
        stream
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<S> IntoResponse for SseStream<S>
where
    S: Stream + Send + 'static,
    S::Item: Into<Event>,
{
    fn into_response(self) -> Response {
        let SseStream {
            source,
            config,
            stop,
            task,
            on_end,
            #[cfg(feature = "compression")]
            accept,
        } = self;
        let source = Transform {
            inner: source,
            f: event_piece::<S::Item>,
        };
        #[cfg(feature = "compression")]
        let compression = config.compression;
        let frames = Frames::new(source, config, TokenStop::new(stop), task, on_end);
        #[cfg(feature = "compression")]
        if let Some(compression) = compression {
            return super::sse_response_negotiated(frames, &compression, accept.as_ref());
        }
        sse_response(frames)
    }
}

fn event_piece<T: Into<Event>>(item: T) -> Piece {
    Piece::One(item.into().into_bytes())
}

pin_project! {
    /// The source mapped through a transform function: see
    /// [`SseStream::transform`].
    pub struct Transform<S, F> {
        #[pin]
        inner: S,
        f: F,
    }
}

impl<S, F> fmt::Debug for Transform<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transform")
            .field("inner", &std::any::type_name::<S>())
            .finish_non_exhaustive()
    }
}

impl<S, F, T> Stream for Transform<S, F>
where
    S: Stream,
    F: FnMut(S::Item) -> T,
{
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.project();
        this.inner.poll_next(cx).map(|o| o.map(this.f))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Bookkeeping that must run however the body goes away.
struct Life {
    id: u64,
    opened: Instant,
    frames: u64,
    reason: Option<EndReason>,
    task: Option<AbortHandle>,
    on_end: Option<OnEnd>,
}

impl Drop for Life {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let reason = *self.reason.get_or_insert(EndReason::ClientGone);
        tracing::debug!(
            stream = self.id,
            ?reason,
            frames = self.frames,
            secs = self.opened.elapsed().as_secs_f64(),
            "sse stream ended"
        );
        if let Some(f) = self.on_end.take() {
            f(reason);
        }
    }
}

pin_project! {
    /// What ends a [`Frames`] with its close message besides its source:
    /// a [`StopHandle`]'s token.
    pub(crate) struct TokenStop {
        token: CancellationToken,
        #[pin]
        stopped: WaitForCancellationFutureOwned,
    }
}

impl TokenStop {
    pub(crate) fn new(token: CancellationToken) -> Self {
        TokenStop {
            stopped: token.clone().cancelled_owned(),
            token,
        }
    }
}

impl TokenStop {
    /// Whether the stream was stopped.
    fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether the stream was stopped; if not, `cx` is woken when it is.
    fn poll_stopped(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        self.project().stopped.poll(cx).is_ready()
    }
}

pin_project! {
    /// The body of an SSE response: the source's frames, heartbeats, and the
    /// initial and close messages.
    pub(crate) struct Frames<S> {
        #[pin]
        source: Option<S>,
        #[pin]
        heartbeat: Option<Sleep>,
        every: Duration,
        last_sent: Option<Instant>,
        // Boxed: rarely set, and a `Sleep` is 112 bytes of every stream.
        deadline: Option<Pin<Box<Sleep>>>,
        #[pin]
        stop: TokenStop,
        shutdown_token: Option<CancellationToken>,
        #[pin]
        shutdown: Option<WaitForCancellationFutureOwned>,
        // The waker the cancellation futures were last polled with: they
        // wake it when cancelled, so they are polled again only for another
        // waker.
        registered: Option<Waker>,
        initial: Option<Event>,
        close: Option<Event>,
        shutdown_retry: Option<Duration>,
        debug: bool,
        coalesce: bool,
        // The size of the last chunk of several frames.
        size_hint: u32,
        life: Life,
    }
}

impl<S> Frames<S> {
    pub(crate) fn new(
        source: S,
        config: StreamConfig,
        stop: TokenStop,
        task: Option<AbortHandle>,
        on_end: Option<OnEnd>,
    ) -> Self {
        let now = Instant::now();
        let every = config.heartbeat.unwrap_or(Duration::MAX);
        let life = Life {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            opened: now,
            frames: 0,
            reason: None,
            task,
            on_end,
        };
        tracing::debug!(stream = life.id, "sse stream opened");
        let shutdown_token = config.shutdown.map(|s| s.token().clone());
        Frames {
            source: Some(source),
            heartbeat: config.heartbeat.map(|d| tokio::time::sleep_until(now + d)),
            every,
            last_sent: None,
            deadline: config
                .timeout
                .map(|d| Box::pin(tokio::time::sleep_until(now + d))),
            stop,
            shutdown: shutdown_token
                .clone()
                .map(CancellationToken::cancelled_owned),
            shutdown_token,
            registered: None,
            initial: config.initial,
            close: config.close,
            shutdown_retry: config.shutdown_retry,
            debug: config.debug,
            coalesce: config.coalesce,
            size_hint: 0,
            life,
        }
    }
}

impl<S> Stream for Frames<S>
where
    S: Stream<Item = Piece>,
{
    type Item = Result<Bytes, Infallible>;

    /// Everything ready goes out as one chunk: the initial message, then the
    /// source's frames until it is pending or the chunk holds
    /// [`BATCH_BYTES`], then the close message if the stream ends. Stop and
    /// shutdown are checked as flags on every call; their futures (and the
    /// heartbeat) are polled only when there is nothing to send.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if this.life.reason.is_some() {
            // Ended, and the close message (if any) went out with the last
            // chunk.
            return Poll::Ready(None);
        }
        let mut batch = Batch::new(*this.size_hint);
        if let Some(ev) = this.initial.take() {
            this.life.frames += 1;
            log_frame(&this.life.id, *this.debug, ev.as_bytes());
            batch.push(ev.into_bytes());
        }

        let mut reason = if this
            .shutdown_token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            Some(EndReason::Shutdown)
        } else if this.stop.is_stopped() {
            Some(EndReason::Stopped)
        } else if expired(this.deadline, cx) {
            Some(EndReason::TimedOut)
        } else {
            None
        };
        if reason.is_none() {
            let sent = this.life.frames;
            match this.source.as_mut().as_pin_mut() {
                Some(mut src) => {
                    let id = this.life.id;
                    let (n, end) = drain(
                        cx,
                        &mut batch,
                        *this.coalesce,
                        this.debug.then_some(&id as &dyn fmt::Display),
                        |cx, _| src.as_mut().poll_next(cx),
                    );
                    this.life.frames += n;
                    reason = end;
                }
                None => reason = Some(EndReason::SourceEnded),
            }
            if this.life.frames != sent {
                // Only noted, once per chunk: the timer is moved when it
                // fires, not on every frame (a timer reset per delivery is a
                // measurable cost at thousands of connections).
                *this.last_sent = Some(Instant::now());
            }
        }
        if reason.is_none() && batch.is_empty() {
            // About to wait: make sure a stop or a shutdown wakes us.
            let waker = cx.waker();
            if this.registered.as_ref().is_none_or(|w| !w.will_wake(waker)) {
                if this
                    .shutdown
                    .as_mut()
                    .as_pin_mut()
                    .is_some_and(|f| f.poll(cx).is_ready())
                {
                    reason = Some(EndReason::Shutdown);
                } else if this.stop.as_mut().poll_stopped(cx) {
                    reason = Some(EndReason::Stopped);
                } else {
                    *this.registered = Some(waker.clone());
                }
            }
        }

        if let Some(reason) = reason {
            this.life.reason = Some(reason);
            // Drop the source (and with it any producer) right away.
            this.source.set(None);
            if let Some(task) = this.life.task.take() {
                task.abort();
            }
            if let Some(ev) = this.close.take().filter(|_| reason.sends_close()) {
                this.life.frames += 1;
                log_frame(&this.life.id, *this.debug, ev.as_bytes());
                batch.push(ev.into_bytes());
            }
            if let Some(window) = this
                .shutdown_retry
                .filter(|_| reason == EndReason::Shutdown)
            {
                let frame = super::config::shutdown_retry_frame(window);
                this.life.frames += 1;
                log_frame(&this.life.id, *this.debug, &frame);
                batch.push(frame);
            }
            return Poll::Ready(batch.finish().map(Ok));
        }
        if !batch.is_empty() {
            *this.size_hint = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        }
        if let Some(chunk) = batch.finish() {
            return Poll::Ready(Some(Ok(chunk)));
        }

        if let Some(mut hb) = this.heartbeat.as_mut().as_pin_mut() {
            loop {
                ready!(hb.as_mut().poll(cx));
                // Something went out since the timer was set: wait until the
                // stream has been quiet for a whole interval.
                if let Some(sent) = this.last_sent.take() {
                    let due = sent + *this.every;
                    if due > hb.deadline() {
                        hb.as_mut().reset(due);
                        continue;
                    }
                }
                hb.as_mut().reset(Instant::now() + *this.every);
                this.life.frames += 1;
                log_frame(&this.life.id, *this.debug, Event::HEARTBEAT.as_bytes());
                return Poll::Ready(Some(Ok(Event::HEARTBEAT.into_bytes())));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::Shutdown;
    use crate::streaming::body::{BATCH_BYTES, event_name};
    use std::sync::Arc;
    use tokio_stream::StreamExt as _;

    type TestFrames<S> = Pin<Box<Frames<Transform<S, fn(<S as Stream>::Item) -> Piece>>>>;

    fn frames<S>(s: SseStream<S>) -> TestFrames<S>
    where
        S: Stream,
        S::Item: Into<Event>,
    {
        let source = Transform {
            inner: s.source,
            f: event_piece::<S::Item> as fn(S::Item) -> Piece,
        };
        Box::pin(Frames::new(
            source,
            s.config,
            TokenStop::new(s.stop),
            s.task,
            s.on_end,
        ))
    }

    async fn next_text<S>(f: &mut TestFrames<S>) -> Option<String>
    where
        S: Stream,
        S::Item: Into<Event>,
    {
        f.next()
            .await
            .map(|r| String::from_utf8(r.unwrap().to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_when_idle_without_losing_items() {
        let (tx, rx) = mpsc::channel::<Event>(4);
        let s = SseStream::new(ReceiverStream::new(rx))
            .config(StreamConfig::new().heartbeat(Duration::from_secs(1)));
        let mut f = frames(s);
        assert_eq!(next_text(&mut f).await.unwrap(), ": connected\n\n");
        let t0 = Instant::now();
        assert_eq!(next_text(&mut f).await.unwrap(), ":\n\n");
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        // An item that arrives in the middle of a heartbeat wait is delivered
        // and postpones the next heartbeat.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Event::message("a")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10_000)).await;
            drop(tx);
        });
        let t1 = Instant::now();
        assert_eq!(next_text(&mut f).await.unwrap(), "data: a\n\n");
        assert_eq!(t1.elapsed(), Duration::from_millis(500));
        assert_eq!(next_text(&mut f).await.unwrap(), ":\n\n");
        assert_eq!(t1.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_ends_with_close() {
        let s = SseStream::new(tokio_stream::pending::<Event>()).config(
            StreamConfig::new()
                .no_heartbeat()
                .initial_message(None)
                .timeout(Duration::from_secs(5)),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let s = s.on_end(move |r| tx.send(r).unwrap());
        let mut f = frames(s);
        let t0 = Instant::now();
        assert_eq!(
            next_text(&mut f).await.unwrap(),
            "event: close\ndata: connection closed\n\n"
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        assert_eq!(next_text(&mut f).await, None);
        drop(f);
        assert_eq!(rx.recv().unwrap(), EndReason::TimedOut);
    }

    #[tokio::test]
    async fn source_end_sends_close_and_shutdown_does_not() {
        let s = SseStream::new(tokio_stream::iter(vec![crate::Fragment::trusted(
            "<p>1</p>",
        )]))
        .config(StreamConfig::new().initial_message(None));
        let mut f = frames(s);
        // The last item and the close message were ready together: one chunk.
        assert_eq!(
            next_text(&mut f).await.unwrap(),
            "data: <p>1</p>\n\nevent: close\ndata: connection closed\n\n"
        );
        assert_eq!(next_text(&mut f).await, None);

        let shutdown = Shutdown::new();
        let s = SseStream::new(tokio_stream::pending::<Event>())
            .config(StreamConfig::new().shutdown(&shutdown));
        let mut f = frames(s);
        assert_eq!(next_text(&mut f).await.unwrap(), ": connected\n\n");
        shutdown.trigger();
        assert_eq!(next_text(&mut f).await, None);
    }

    #[tokio::test]
    async fn stop_handle_and_transform() {
        let s = SseStream::new(tokio_stream::iter(0..3).chain(tokio_stream::pending()))
            .transform(|n: i32| crate::Fragment::trusted(format!("<i>{n}</i>")))
            .config(
                StreamConfig::new()
                    .initial_message(None)
                    .close_message(Event::builder().event("bye").build().unwrap()),
            );
        let stop = s.stop_handle();
        let mut f = frames(s);
        assert_eq!(
            next_text(&mut f).await.unwrap(),
            "data: <i>0</i>\n\ndata: <i>1</i>\n\ndata: <i>2</i>\n\n"
        );
        stop.stop();
        assert!(stop.is_stopped());
        assert_eq!(next_text(&mut f).await.unwrap(), "event: bye\ndata:\n\n");
        assert_eq!(next_text(&mut f).await, None);
    }

    #[tokio::test]
    async fn spawned_producer_is_aborted_when_body_is_dropped() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let s = SseStream::spawn(1, move |tx| async move {
            let _flag = flag;
            tx.send(Event::message("x")).await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut f = frames(s);
        // The item comes with the initial message or in the next chunk,
        // depending on when the producer runs.
        let mut text = String::new();
        while text.len() < ": connected\n\ndata: x\n\n".len() {
            text.push_str(&next_text(&mut f).await.unwrap());
        }
        assert_eq!(text, ": connected\n\ndata: x\n\n");
        drop(f);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("producer still alive a second after the body was dropped");
    }

    #[tokio::test]
    async fn debug_names_the_source() {
        let s = SseStream::new(tokio_stream::empty::<Event>());
        assert!(format!("{s:?}").contains("Empty"));
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&frames(s));
    }

    fn piece_frames<S: Stream<Item = Piece>>(
        source: S,
        config: StreamConfig,
    ) -> Pin<Box<Frames<S>>> {
        Box::pin(Frames::new(
            source,
            config,
            TokenStop::new(CancellationToken::new()),
            None,
            None,
        ))
    }

    #[tokio::test]
    async fn one_ready_frame_is_passed_on_without_a_copy() {
        let frame = Bytes::from_static(b"data: alone\n\n");
        let source =
            tokio_stream::iter(vec![Piece::One(frame.clone())]).chain(tokio_stream::pending());
        let mut f = piece_frames(source, StreamConfig::new().initial_message(None));
        let chunk = f.next().await.unwrap().unwrap();
        assert_eq!(chunk, frame);
        assert_eq!(chunk.as_ptr(), frame.as_ptr());
    }

    #[tokio::test]
    async fn frames_ready_together_go_out_as_one_chunk() {
        let (tx, rx) = mpsc::channel::<Piece>(8);
        tx.send(Piece::Tagged(
            Bytes::from_static(b"id: 1"),
            std::sync::Arc::from("c"),
            Bytes::from_static(b"data: a\n\n"),
        ))
        .await
        .unwrap();
        tx.send(Piece::One(Bytes::from_static(b"data: b\n\n")))
            .await
            .unwrap();
        let mut f = piece_frames(ReceiverStream::new(rx), StreamConfig::new());
        assert_eq!(
            &*f.next().await.unwrap().unwrap(),
            b": connected\n\nid: 1.c\ndata: a\n\ndata: b\n\n"
        );
        // Nothing more is ready: the next poll waits, and a new frame wakes it.
        let polled = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll_next(cx))).await;
        assert!(polled.is_pending());
        tx.send(Piece::One(Bytes::from_static(b"data: c\n\n")))
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), f.next()).await;
        assert_eq!(&*next.unwrap().unwrap().unwrap(), b"data: c\n\n");
    }

    #[tokio::test]
    async fn a_chunk_stops_growing_at_the_batch_size() {
        let frame = Bytes::from(format!("data: {}\n\n", "x".repeat(1000)));
        let n = 3 * BATCH_BYTES / frame.len();
        let source = tokio_stream::iter((0..n).map(|_| Piece::One(frame.clone())));
        let mut f = piece_frames(
            source,
            StreamConfig::new()
                .initial_message(None)
                .close_message(None),
        );
        let mut chunks = Vec::new();
        while let Some(chunk) = f.next().await {
            chunks.push(chunk.unwrap());
        }
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(c.len() < BATCH_BYTES + frame.len());
            assert_eq!(c.len() % frame.len(), 0);
        }
        assert_eq!(
            chunks.iter().map(Bytes::len).sum::<usize>(),
            n * frame.len()
        );
    }

    #[tokio::test]
    async fn stop_is_seen_while_the_source_is_always_ready() {
        let s = SseStream::new(tokio_stream::iter(std::iter::repeat(Event::message(
            "<b>x</b>",
        ))))
        .config(StreamConfig::new().initial_message(None));
        let stop = s.stop_handle();
        let mut f = frames(s);
        assert!(
            next_text(&mut f)
                .await
                .unwrap()
                .starts_with("data: <b>x</b>\n\n")
        );
        stop.stop();
        assert_eq!(
            next_text(&mut f).await.unwrap(),
            "event: close\ndata: connection closed\n\n"
        );
        assert_eq!(next_text(&mut f).await, None);
    }

    #[test]
    fn event_name_is_read_from_the_frame() {
        let name = |s: &'static str| event_name(&Bytes::from_static(s.as_bytes()));
        assert_eq!(
            name("event: cpu\ndata: 1\n\n").as_deref(),
            Some(&b"cpu"[..])
        );
        assert_eq!(
            name(": c\nid: 4\nevent:mem\ndata: 1\n\n").as_deref(),
            Some(&b"mem"[..])
        );
        assert_eq!(name("data: event: no\n\n"), None);
        assert_eq!(name("event:\ndata: x\n\n"), None);
        assert_eq!(name("data: x\n\nevent: next\n\n"), None);
        assert_eq!(name(":\n\n"), None);
    }

    #[tokio::test]
    async fn coalescing_keeps_the_newest_frame_per_event_name() {
        let one = |s: &'static str| Piece::One(Bytes::from_static(s.as_bytes()));
        let source = tokio_stream::iter(vec![
            one("event: cpu\ndata: 1\n\n"),
            Piece::Tagged(
                Bytes::from_static(b"id: 2"),
                std::sync::Arc::from("c"),
                Bytes::from_static(b"event: mem\ndata: 1\n\n"),
            ),
            one("data: log\n\n"),
            one("event: cpu\ndata: 2\n\n"),
            Piece::Tagged(
                Bytes::from_static(b"id: 5"),
                std::sync::Arc::from("c"),
                Bytes::from_static(b"event: mem\ndata: 2\n\n"),
            ),
            one(":\n\n"),
        ])
        .chain(tokio_stream::pending());
        let config = StreamConfig::new()
            .initial_message(None)
            .coalesce_by_event(true);
        let mut f = piece_frames(source, config);
        assert_eq!(
            &*f.next().await.unwrap().unwrap(),
            b"data: log\n\nevent: cpu\ndata: 2\n\nid: 5.c\nevent: mem\ndata: 2\n\n:\n\n"
        );
    }

    #[tokio::test]
    async fn shutdown_is_seen_while_the_source_is_always_ready() {
        let shutdown = Shutdown::new();
        let s = SseStream::new(tokio_stream::iter(std::iter::repeat(Event::message(
            "<b>x</b>",
        ))))
        .config(
            StreamConfig::new()
                .initial_message(None)
                .shutdown(&shutdown),
        );
        let mut f = frames(s);
        assert!(
            next_text(&mut f)
                .await
                .unwrap()
                .starts_with("data: <b>x</b>\n\n")
        );
        shutdown.trigger();
        // Checked on every poll, even when the source is never dry (it may
        // still return `Pending` to yield, as `iter` does every 32 items):
        // at most one chunk after the trigger, never the close message.
        let mut chunks = 0;
        while let Some(text) = next_text(&mut f).await {
            assert!(!text.contains("close"), "{text}");
            chunks += 1;
            assert!(chunks <= 1, "the stream went on after shutdown");
        }
    }
}
