//! `SseStream`: any `Stream` of events as an axum SSE response.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
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
    fn sends_close(self) -> bool {
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
        }
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

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

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
        } = self;
        let source = Transform {
            inner: source,
            f: event_piece::<S::Item>,
        };
        sse_response(Frames::new(source, config, stop, task, on_end))
    }
}

fn event_piece<T: Into<Event>>(item: T) -> Piece {
    Piece::One(item.into().into_bytes())
}

/// What a crate-internal source yields to [`Frames`]: a whole frame, possibly
/// in several shared pieces (written back to back, never split by a
/// heartbeat or a close message), or the end of the stream.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A frame in one buffer.
    One(Bytes),
    /// A frame in three buffers, e.g. a shared id head, a per-connection id
    /// suffix, and a shared body: no per-receiver copy.
    Three(Bytes, Bytes, Bytes),
    /// End the stream for this reason (a close message only if the reason
    /// sends one).
    End(EndReason),
}

/// The SSE response around a body of frames.
pub(crate) fn sse_response<S>(frames: Frames<S>) -> Response
where
    S: Stream<Item = Piece> + Send + 'static,
{
    let mut res = Response::new(Body::from_stream(frames));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    res
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
    /// The body of an SSE response: the source's frames, heartbeats, and the
    /// initial and close messages.
    pub(crate) struct Frames<S> {
        #[pin]
        source: Option<S>,
        #[pin]
        heartbeat: Option<Sleep>,
        every: Duration,
        last_sent: Option<Instant>,
        #[pin]
        deadline: Option<Sleep>,
        #[pin]
        stopped: WaitForCancellationFutureOwned,
        #[pin]
        shutdown: Option<WaitForCancellationFutureOwned>,
        initial: Option<Event>,
        close: Option<Event>,
        rest: Option<(Bytes, Bytes)>,
        debug: bool,
        life: Life,
    }
}

impl<S> Frames<S> {
    pub(crate) fn new(
        source: S,
        config: StreamConfig,
        stop: CancellationToken,
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
        Frames {
            source: Some(source),
            heartbeat: config.heartbeat.map(|d| tokio::time::sleep_until(now + d)),
            every,
            last_sent: None,
            deadline: config.timeout.map(|d| tokio::time::sleep_until(now + d)),
            stopped: stop.cancelled_owned(),
            shutdown: config.shutdown.map(|s| s.token().clone().cancelled_owned()),
            initial: config.initial,
            close: config.close,
            rest: None,
            debug: config.debug,
            life,
        }
    }
}

fn log_frame(life: &Life, debug: bool, bytes: &Bytes) {
    if debug {
        tracing::debug!(stream = life.id, frame = %String::from_utf8_lossy(bytes), "sse frame");
    }
}

impl<S> Stream for Frames<S>
where
    S: Stream<Item = Piece>,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let emit = |life: &mut Life, debug: bool, ev: Event| {
            life.frames += 1;
            log_frame(life, debug, ev.as_bytes());
            Poll::Ready(Some(Ok(ev.into_bytes())))
        };
        // The rest of a frame in pieces goes out before anything else.
        if let Some((second, third)) = this.rest.take() {
            if third.is_empty() {
                return Poll::Ready(Some(Ok(second)));
            }
            *this.rest = Some((third, Bytes::new()));
            return Poll::Ready(Some(Ok(second)));
        }
        if let Some(ev) = this.initial.take() {
            return emit(this.life, *this.debug, ev);
        }
        if this.life.reason.is_some() {
            // Ended; the close message, if one was staged, is the last frame.
            return match this.close.take() {
                Some(ev) => emit(this.life, *this.debug, ev),
                None => Poll::Ready(None),
            };
        }

        let shut = this
            .shutdown
            .as_mut()
            .as_pin_mut()
            .is_some_and(|f| f.poll(cx).is_ready());
        let reason = if shut {
            Some(EndReason::Shutdown)
        } else if this.stopped.as_mut().poll(cx).is_ready() {
            Some(EndReason::Stopped)
        } else if this
            .deadline
            .as_mut()
            .as_pin_mut()
            .is_some_and(|d| d.poll(cx).is_ready())
        {
            Some(EndReason::TimedOut)
        } else {
            match this.source.as_mut().as_pin_mut() {
                Some(src) => match src.poll_next(cx) {
                    Poll::Ready(Some(Piece::End(reason))) => Some(reason),
                    Poll::Ready(Some(piece)) => {
                        // Only noted: the timer is moved when it fires, not
                        // on every frame (a timer reset per delivery is a
                        // measurable cost at thousands of connections).
                        *this.last_sent = Some(Instant::now());
                        this.life.frames += 1;
                        let first = match piece {
                            Piece::One(bytes) => bytes,
                            Piece::Three(a, b, c) => {
                                *this.rest = Some((b, c));
                                a
                            }
                            Piece::End(_) => unreachable!("matched above"),
                        };
                        if *this.debug {
                            match this.rest.as_ref() {
                                Some((b, c)) => {
                                    let mut all =
                                        Vec::with_capacity(first.len() + b.len() + c.len());
                                    all.extend_from_slice(&first);
                                    all.extend_from_slice(b);
                                    all.extend_from_slice(c);
                                    log_frame(this.life, true, &Bytes::from(all));
                                }
                                None => log_frame(this.life, true, &first),
                            }
                        }
                        return Poll::Ready(Some(Ok(first)));
                    }
                    Poll::Ready(None) => Some(EndReason::SourceEnded),
                    Poll::Pending => None,
                },
                None => Some(EndReason::SourceEnded),
            }
        };

        if let Some(reason) = reason {
            this.life.reason = Some(reason);
            // Drop the source (and with it any producer) right away.
            this.source.set(None);
            if let Some(task) = this.life.task.take() {
                task.abort();
            }
            if !reason.sends_close() {
                *this.close = None;
            }
            return match this.close.take() {
                Some(ev) => emit(this.life, *this.debug, ev),
                None => Poll::Ready(None),
            };
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
                return emit(this.life, *this.debug, Event::HEARTBEAT);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::Shutdown;
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
        Box::pin(Frames::new(source, s.config, s.stop, s.task, s.on_end))
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
        let s = SseStream::new(tokio_stream::iter(vec!["<p>1</p>"]))
            .config(StreamConfig::new().initial_message(None));
        let mut f = frames(s);
        assert_eq!(next_text(&mut f).await.unwrap(), "data: <p>1</p>\n\n");
        assert_eq!(
            next_text(&mut f).await.unwrap(),
            "event: close\ndata: connection closed\n\n"
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
            .transform(|n: i32| format!("<i>{n}</i>"))
            .config(
                StreamConfig::new()
                    .initial_message(None)
                    .close_message(Event::builder().event("bye").build().unwrap()),
            );
        let stop = s.stop_handle();
        let mut f = frames(s);
        for n in 0..3 {
            assert_eq!(
                next_text(&mut f).await.unwrap(),
                format!("data: <i>{n}</i>\n\n")
            );
        }
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
        assert_eq!(next_text(&mut f).await.unwrap(), ": connected\n\n");
        assert_eq!(next_text(&mut f).await.unwrap(), "data: x\n\n");
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
}
