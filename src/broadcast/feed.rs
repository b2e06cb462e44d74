//! `Feed`: one connection's side of the manager, merging what was missed,
//! what goes to everyone and what goes to it alone, in id order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::Sleep;

use super::engine::Engine;
use super::fanout::{Fanout, Read};
use super::stage::{Recipient, Stored};
use super::subscriber::Subscriber;
use crate::connections::{ConnectionState, Registration};
use crate::event::Event;
use crate::streaming::{Batch, EndReason, Piece, drain, expired, log_frame};

/// What a connection receives before live messages.
pub(crate) struct Intro {
    /// The `connection` event, unless the manager sends none.
    pub(crate) connection: Option<Event>,
    pub(crate) reset: Option<Event>,
    pub(crate) replay: VecDeque<Arc<Stored>>,
    /// Messages up to this number were seen already.
    pub(crate) after: u64,
    /// Fires once the backend knows the connection (Redis): until then the
    /// page is not told its id, so a `send_to` from another instance
    /// cannot miss it.
    pub(crate) ready: Option<crate::backend::BoxFuture<'static, ()>>,
}

/// What is still to go out before live messages, or to wait for: kept
/// apart and dropped once done, so an open connection carries none of it.
struct Opening {
    connection: Option<Event>,
    reset: Option<Event>,
    replay: VecDeque<Arc<Stored>>,
    ready: Option<crate::backend::BoxFuture<'static, ()>>,
    started: bool,
}

/// The connection's id is its registration's, its subscription its
/// `Subscriber`'s: neither is kept twice.
pub(crate) struct Feed {
    manager: Weak<Engine>,
    /// The position of the next message to read in the fanout's ring.
    ring: u64,
    /// Where the ring was when the connection was last listed as waiting
    /// (`u64::MAX` before that): see [`Fanout::skippable`].
    since: u64,
    subscriber: Arc<Subscriber>,
    opening: Option<Box<Opening>>,
    ring_next: Option<Arc<Stored>>,
    direct_next: Option<Arc<Stored>>,
    /// Deliveries not yet counted in the registry: counted once per batch
    /// (when the feed runs dry or ends), not once per message.
    uncounted: u64,
    after: u64,
    registration: Registration,
    /// `htmx_sse.connection`: see `BroadcastManager::open`.
    span: tracing::Span,
    /// Each event's id carries a freshly masked proof rather than the
    /// connection's tag (a compressed stream: see `proof::masked`).
    masked: bool,
}

impl Feed {
    pub(crate) fn new(
        manager: Weak<Engine>,
        ring: u64,
        subscriber: Arc<Subscriber>,
        intro: Intro,
        registration: Registration,
        span: tracing::Span,
    ) -> Self {
        Feed {
            manager,
            ring,
            since: u64::MAX,
            subscriber,
            opening: Some(Box::new(Opening {
                connection: intro.connection,
                reset: intro.reset,
                replay: intro.replay,
                ready: intro.ready,
                started: false,
            })),
            ring_next: None,
            direct_next: None,
            uncounted: 0,
            after: intro.after,
            registration,
            span,
            masked: false,
        }
    }

    /// The frame of `stored` for this connection, if it is for it: written
    /// into `batch` when there is one, else as a piece.
    fn frame(
        &mut self,
        fanout: &Fanout,
        stored: &Stored,
        batch: Option<&mut Batch>,
    ) -> Option<Piece> {
        // Seen already (replayed, or numbered by another instance before
        // this one read it). An unnumbered message is in the ring only if
        // pushed after the connection opened, and in the replay only as
        // the latest badge: never seen.
        if stored.unnumbered.is_none() && stored.seq <= self.after {
            return None;
        }
        let id = self.registration.id();
        let body = stored.body_for(id, &self.subscriber.sub)?;
        if let Some(filter) = &fanout.filter {
            let to = Recipient {
                connection: Some(id),
                user: self.subscriber.sub.user.as_ref(),
            };
            if !filter(&stored.message, &to) {
                return None;
            }
        }
        self.uncounted += 1;
        tracing::trace!(parent: &self.span, message.id = %stored.message.id, "delivered");
        if stored.unnumbered.is_some() {
            // No `id:` line: the page's Last-Event-ID stays where it was.
            return Some(match batch {
                Some(batch) => {
                    batch.push(body.clone());
                    Piece::Written(1)
                }
                None => Piece::One(body.clone()),
            });
        }
        if self.masked {
            let tag = super::proof::masked(&self.subscriber.tag);
            return Some(match batch {
                Some(batch) => {
                    batch.push_tagged(&stored.head, &tag, body);
                    Piece::Written(1)
                }
                None => Piece::Tagged(stored.head.clone(), tag.into(), body.clone()),
            });
        }
        Some(match batch {
            Some(batch) => {
                batch.push_tagged(&stored.head, &self.subscriber.tag, body);
                Piece::Written(1)
            }
            None => Piece::Tagged(
                stored.head.clone(),
                Arc::clone(&self.subscriber.tag),
                body.clone(),
            ),
        })
    }

    /// The end of the stream, if the manager replaced or closed this
    /// connection.
    #[inline]
    fn direct_end(&mut self) -> Option<Poll<Option<Piece>>> {
        let flags = self.subscriber.flags();
        if flags == 0 {
            return None;
        }
        Some(if flags & Subscriber::STOPPED != 0 {
            self.stopped()
        } else if flags & Subscriber::REPLACED != 0 {
            self.end(EndReason::Replaced)
        } else {
            self.end(EndReason::Lagged)
        })
    }

    /// The end of the stream, with the close message, if the manager
    /// stopped this connection ([`disconnect`](super::BroadcastManager::disconnect)).
    #[inline]
    fn stop(&mut self) -> Option<Poll<Option<Piece>>> {
        (self.subscriber.flags() & Subscriber::STOPPED != 0).then(|| self.stopped())
    }

    fn stopped(&mut self) -> Poll<Option<Piece>> {
        self.count();
        tracing::debug!(connection = %self.registration.id(), "stopping connection");
        Poll::Ready(Some(Piece::End(EndReason::Stopped)))
    }

    /// Counts the deliveries made since the last call in the registry.
    fn count(&mut self) {
        if self.uncounted > 0 {
            self.registration
                .record_messages(std::mem::take(&mut self.uncounted));
        }
    }

    fn end(&mut self, reason: EndReason) -> Poll<Option<Piece>> {
        self.count();
        self.registration.set_state(ConnectionState::Error);
        tracing::debug!(connection = %self.registration.id(), ?reason, "closing connection");
        Poll::Ready(Some(Piece::End(reason)))
    }
}

impl Feed {
    /// The next frame for this connection, in id order; before returning
    /// `Pending`, the task is registered with the connection's `Subscriber`,
    /// which everything that may wake it (the ring, its own queue, the
    /// manager's flags, the fanout's timer task) wakes.
    fn poll_piece(
        &mut self,
        fanout: &Fanout,
        cx: &mut Context<'_>,
        mut batch: Option<&mut Batch>,
    ) -> Poll<Option<Piece>> {
        let this = self;
        // A stop comes before anything else, even what is ready to send.
        if let Some(stop) = this.stop() {
            return stop;
        }
        while let Some(opening) = this.opening.as_deref_mut() {
            if let Some(ready) = &mut opening.ready {
                // Recorded (or failed to be: the backend says so in its
                // logs): go on either way.
                if ready.as_mut().poll(cx).is_pending() {
                    // A stop must wake us while we wait: register, look
                    // again.
                    this.subscriber.waker.register(cx.waker());
                    if let Some(stop) = this.stop() {
                        return stop;
                    }
                    return Poll::Pending;
                }
                opening.ready = None;
            }
            if !opening.started {
                opening.started = true;
                this.registration.set_state(if opening.replay.is_empty() {
                    ConnectionState::Connected
                } else {
                    ConnectionState::Reconnecting
                });
            }
            if let Some(ev) = opening.connection.take() {
                return Poll::Ready(Some(Piece::One(ev.into_bytes())));
            }
            if let Some(ev) = opening.reset.take() {
                return Poll::Ready(Some(Piece::One(ev.into_bytes())));
            }
            let Some(stored) = opening.replay.pop_front() else {
                this.opening = None;
                break;
            };
            if opening.replay.is_empty() {
                this.registration.set_state(ConnectionState::Connected);
            }
            if let Some(piece) = this.frame(fanout, &stored, batch.as_deref_mut()) {
                return Poll::Ready(Some(piece));
            }
        }

        if let Some(end) = this.direct_end() {
            return end;
        }

        loop {
            // The common case, at speed: nothing for us alone, shared
            // messages waiting in the ring, written straight into the chunk,
            // as many as fit, under one look at the ring.
            if let Some(batch) = batch.as_deref_mut()
                && this.ring_next.is_none()
                && this.direct_next.is_none()
            {
                let written = this.write_run(fanout, batch);
                if written > 0 {
                    return Poll::Ready(Some(Piece::Written(written)));
                }
            }
            // Next shared message for us (for everyone, or on a topic).
            if let Some(done) = this.fill_ring(fanout) {
                return done;
            }
            // Next message for us alone. The waker is registered only
            // before waiting (below), not for every message.
            if this.direct_next.is_none() {
                this.direct_next = this.subscriber.pop();
                if let Some(end) = this.direct_end() {
                    return end;
                }
                // A shared message published before this one (a smaller id)
                // may have reached the ring after it was looked at: both are
                // filled under the manager's lock, so it is there now.
                if this.direct_next.is_some()
                    && let Some(done) = this.fill_ring(fanout)
                {
                    return done;
                }
            }
            // With both looked at in that order, when one has a message and
            // the other has none, no earlier message can still arrive on the
            // other: the smaller id goes first.
            let take_ring = match (&this.ring_next, &this.direct_next) {
                (Some(r), Some(d)) => r.order() < d.order(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => {
                    // Register first, then look again (both: the ring's
                    // pushes wake through the `Subscriber` too), so a push
                    // between the two is never missed.
                    this.subscriber.waker.register(cx.waker());
                    if let Some(since) = fanout.wait_for_ring(&this.subscriber) {
                        this.since = since;
                    }
                    this.direct_next = this.subscriber.pop();
                    if let Some(end) = this.direct_end() {
                        return end;
                    }
                    if let Some(done) = this.fill_ring(fanout) {
                        return done;
                    }
                    if this.direct_next.is_none() && this.ring_next.is_none() {
                        this.count();
                        return Poll::Pending;
                    }
                    continue;
                }
            };
            let stored = if take_ring {
                this.ring_next.take()
            } else {
                this.direct_next.take()
            };
            // A shared message that is not for us is skipped; look again.
            if let Some(piece) = stored.and_then(|s| this.frame(fanout, &s, batch.as_deref_mut())) {
                return Poll::Ready(Some(piece));
            }
        }
    }
}

impl Feed {
    /// Writes the shared messages for us waiting from our ring position on
    /// into `batch`, under one read of the ring, while nothing waits for us
    /// alone, no flag is raised and the batch has room; returns how many
    /// frames it wrote (it may also have moved past messages not for us).
    /// What it stops at is left to the general path: a message for us alone
    /// may come first, or the ring may have moved on without us.
    fn write_run(&mut self, fanout: &Fanout, batch: &mut Batch) -> u32 {
        self.skip_to_wake(fanout);
        let mut written = 0;
        let taken = fanout.ring.run(self.ring, |stored| {
            // A message for us alone queued before this one was pushed is
            // seen here (both are filled under the manager's lock), and
            // goes first: the general path merges the two.
            if !batch.has_room() || self.subscriber.queued() != 0 || self.subscriber.flags() != 0 {
                return false;
            }
            if self.frame(fanout, stored, Some(&mut *batch)).is_some() {
                written += 1;
            }
            true
        });
        self.ring += taken;
        written
    }

    /// Moves past the messages pushed while we waited that did not wake
    /// us, when a push woke us (see [`Fanout::woken_at`]).
    fn skip_to_wake(&mut self, fanout: &Fanout) {
        if let Some(pos) = fanout.woken_at(&self.subscriber, self.ring, self.since) {
            self.ring = pos;
        }
    }

    /// Takes the next shared message into `ring_next` if there is none
    /// yet; `Some` when the feed ends here instead.
    fn fill_ring(&mut self, fanout: &Fanout) -> Option<Poll<Option<Piece>>> {
        if self.ring_next.is_none() {
            self.skip_to_wake(fanout);
            match fanout.ring.read(self.ring) {
                Read::Message(stored) => {
                    self.ring += 1;
                    self.ring_next = Some(stored);
                }
                Read::Empty => {}
                Read::Lagged(missed) => {
                    // What left the ring unread may not have been for us:
                    // messages pushed while we waited that did not wake us.
                    if let Some(pos) = fanout.skippable(&self.subscriber, self.ring, self.since)
                        && pos > self.ring
                    {
                        self.ring = pos;
                        return self.fill_ring(fanout);
                    }
                    tracing::debug!(connection = %self.registration.id(), missed, "lagging");
                    return Some(self.end(EndReason::Lagged));
                }
                // The manager is gone: nothing more will come.
                Read::Closed => {
                    self.count();
                    return Some(Poll::Ready(None));
                }
            }
        }
        None
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.count();
        if let Some(inner) = self.manager.upgrade() {
            inner.fanout.stop_waiting(&self.subscriber);
            inner.remove(self.registration.id(), &self.subscriber);
        }
    }
}

/// The response body of a manager's connection: the feed's frames, as many
/// as are ready in one chunk, with the heartbeats, the shutdown and the
/// settings from the manager's [`Fanout`]. Nothing of it is a timer or a
/// future but the rarely set timeout.
pub(crate) struct FeedBody {
    fanout: Arc<Fanout>,
    /// `None` once the stream ended (dropping it leaves the manager at once).
    feed: Option<Feed>,
    // Boxed: rarely set, and a `Sleep` is 112 bytes.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The size of the last chunk of several frames.
    size_hint: u32,
}

impl FeedBody {
    /// Masks the proof in every event id from now on (the stream is
    /// compressed: see `proof::masked`).
    #[cfg(feature = "compression")]
    pub(crate) fn mask_proofs(&mut self) {
        if let Some(feed) = &mut self.feed {
            feed.masked = true;
        }
    }

    pub(crate) fn new(fanout: Arc<Fanout>, feed: Feed) -> Self {
        FeedBody {
            deadline: fanout.timeout.map(|d| Box::pin(tokio::time::sleep(d))),
            fanout,
            feed: Some(feed),
            size_hint: 0,
        }
    }
}

impl Stream for FeedBody {
    type Item = Result<Bytes, Infallible>;

    /// Everything ready goes out as one chunk (see `drain`); with nothing to
    /// send, a heartbeat if the connection has been quiet for long enough.
    /// The shutdown and the timeout end the stream without and with the
    /// close message.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let fanout = &*this.fanout;
        let Some(feed) = &mut this.feed else {
            return Poll::Ready(None);
        };
        if feed.opening.is_some()
            && let Some(inner) = feed.manager.upgrade()
        {
            // The first poll runs in a runtime, whether or not the
            // connection was opened in one.
            inner.start_timer();
        }
        let mut batch = Batch::new(this.size_hint);
        let mut frames = 0;
        let mut reason = if fanout.is_shut() {
            Some(EndReason::Shutdown)
        } else if expired(&mut this.deadline, cx) {
            Some(EndReason::TimedOut)
        } else {
            None
        };
        let label = fanout.debug.then(|| feed.registration.id().clone());
        if reason.is_none() {
            let (n, end) = drain(
                cx,
                &mut batch,
                fanout.coalesce,
                label.as_ref().map(|id| id as &dyn fmt::Display),
                |cx, batch| feed.poll_piece(fanout, cx, batch),
            );
            frames = n;
            reason = end;
        }
        if reason.is_none() && batch.is_empty() {
            // The feed registered the task with its `Subscriber` before it
            // returned `Pending`: a shutdown or a tick from now on wakes it.
            if fanout.is_shut() {
                reason = Some(EndReason::Shutdown);
            } else if fanout.heartbeat_due(feed.subscriber.sent.load(Ordering::Relaxed)) {
                if let Some(id) = &label {
                    log_frame(id, true, Event::HEARTBEAT.as_bytes());
                }
                batch.push(Event::HEARTBEAT.into_bytes());
                frames += 1;
            }
        }
        if frames > 0 {
            feed.subscriber.sent.store(fanout.tick(), Ordering::Relaxed);
        }
        if let Some(reason) = reason {
            if reason.sends_close()
                && let Some(ev) = &fanout.close
            {
                if let Some(id) = &label {
                    log_frame(id, true, ev.as_bytes());
                }
                batch.push(ev.clone().into_bytes());
            }
            if let Some(window) = fanout
                .shutdown_retry
                .filter(|_| reason == EndReason::Shutdown)
            {
                let frame = crate::streaming::shutdown_retry_frame(window);
                if let Some(id) = &label {
                    log_frame(id, true, &frame);
                }
                batch.push(frame);
            }
            tracing::debug!(connection = %feed.registration.id(), ?reason, "sse stream ended");
            feed.span
                .record("end_reason", tracing::field::debug(reason));
            fanout.meter.ended(reason);
            // Leaves the manager now, not when the body is dropped.
            this.feed = None;
            fanout.meter.wrote(batch.len());
            return Poll::Ready(batch.finish().map(Ok));
        }
        if !batch.is_empty() {
            this.size_hint = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            fanout.meter.wrote(batch.len());
        }
        match batch.finish() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None => Poll::Pending,
        }
    }
}

impl Drop for FeedBody {
    fn drop(&mut self) {
        if let Some(feed) = &self.feed {
            tracing::debug!(
                connection = %feed.registration.id(),
                reason = ?EndReason::ClientGone,
                "sse stream ended"
            );
            feed.span
                .record("end_reason", tracing::field::debug(EndReason::ClientGone));
            self.fanout.meter.ended(EndReason::ClientGone);
        }
    }
}
