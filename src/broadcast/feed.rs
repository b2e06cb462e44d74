//! `Feed`: one connection's side of the manager, merging what was missed,
//! what goes to everyone and what goes to it alone, in id order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use std::future::Future;

use futures_core::Stream;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::manager::{Direct, Filter, Inner, Recipient, Stored};
use crate::connections::{ConnectionState, Registration};
use crate::event::Event;
use crate::streaming::{EndReason, Piece};

/// What a connection receives before live messages.
pub(crate) struct Intro {
    pub(crate) connection: Event,
    pub(crate) reset: Option<Event>,
    pub(crate) replay: VecDeque<Arc<Stored>>,
    /// Messages up to this number were seen already.
    pub(crate) after: u64,
    /// Fires once the backend knows the connection (Redis): until then the
    /// page is not told its id, so a `send_to` from another instance
    /// cannot miss it.
    pub(crate) ready: Option<oneshot::Receiver<()>>,
}

/// What is still to go out before live messages, or to wait for: kept
/// apart and dropped once done, so an open connection carries none of it.
struct Opening {
    connection: Option<Event>,
    reset: Option<Event>,
    replay: VecDeque<Arc<Stored>>,
    ready: Option<oneshot::Receiver<()>>,
    started: bool,
}

/// The connection's id is its registration's, its subscription its
/// `Direct`'s: neither is kept twice.
pub(crate) struct Feed {
    filter: Option<Arc<Filter>>,
    manager: Weak<Inner>,
    ring: BroadcastStream<Arc<Stored>>,
    direct: Arc<Direct>,
    opening: Option<Box<Opening>>,
    ring_next: Option<Arc<Stored>>,
    direct_next: Option<Arc<Stored>>,
    /// Deliveries not yet counted in the registry: counted once per batch
    /// (when the feed runs dry or ends), not once per message.
    uncounted: u64,
    after: u64,
    registration: Registration,
}

impl Feed {
    pub(crate) fn new(
        manager: Weak<Inner>,
        ring: broadcast::Receiver<Arc<Stored>>,
        direct: Arc<Direct>,
        intro: Intro,
        registration: Registration,
    ) -> Self {
        let filter = manager.upgrade().and_then(|m| m.filter.clone());
        Feed {
            filter,
            manager,
            ring: BroadcastStream::new(ring),
            direct,
            opening: Some(Box::new(Opening {
                connection: Some(intro.connection),
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
        }
    }

    /// The frame of `stored` for this connection, if it is for it.
    fn frame(&mut self, stored: &Stored) -> Option<Piece> {
        if stored.seq <= self.after {
            return None;
        }
        let id = self.registration.id();
        let body = stored.body_for(id, &self.direct.sub)?;
        if let Some(filter) = &self.filter {
            let to = Recipient {
                connection: id,
                user: self.direct.sub.user.as_ref(),
            };
            if !filter(&stored.message, &to) {
                return None;
            }
        }
        self.uncounted += 1;
        Some(Piece::Tagged(stored.head.clone(), id.clone(), body.clone()))
    }

    /// The end of the stream, if the manager replaced or closed this
    /// connection.
    fn direct_end(&mut self) -> Option<Poll<Option<Piece>>> {
        if let Some(stop) = self.stop() {
            return Some(stop);
        }
        if self.direct.replaced.load(Ordering::Acquire) {
            return Some(self.end(EndReason::Replaced));
        }
        if self.direct.lagged.load(Ordering::Acquire) {
            return Some(self.end(EndReason::Lagged));
        }
        None
    }

    /// The end of the stream, with the close message, if the manager
    /// stopped this connection ([`unregister`](super::BroadcastManager::unregister)).
    fn stop(&mut self) -> Option<Poll<Option<Piece>>> {
        if !self.direct.stopped.load(Ordering::Acquire) {
            return None;
        }
        self.count();
        tracing::debug!(connection = %self.registration.id(), "stopping connection");
        Some(Poll::Ready(Some(Piece::End(EndReason::Stopped))))
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

impl Stream for Feed {
    type Item = Piece;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        let this = &mut *self;
        // A stop comes before anything else, even what is ready to send.
        if let Some(stop) = this.stop() {
            return stop;
        }
        while let Some(opening) = this.opening.as_deref_mut() {
            if let Some(ready) = &mut opening.ready {
                // Ready or failed (the sender is dropped then): go on either
                // way.
                if Pin::new(ready).poll(cx).is_pending() {
                    // A stop must wake us while we wait: register, look
                    // again.
                    this.direct.waker.register(cx.waker());
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
            if let Some(piece) = this.frame(&stored) {
                return Poll::Ready(Some(piece));
            }
        }

        if let Some(end) = this.direct_end() {
            return end;
        }

        loop {
            // Next shared message for us (for everyone, or on a topic).
            if let Some(done) = this.fill_ring(cx) {
                return done;
            }
            // Next message for us alone. The waker is registered only
            // before waiting (below), not for every message.
            if this.direct_next.is_none() {
                this.direct_next = this.direct.queue.lock().pop_front();
                if let Some(end) = this.direct_end() {
                    return end;
                }
                // A shared message published before this one (a smaller id)
                // may have reached the ring after it was looked at: both are
                // filled under the manager's lock, so it is there now.
                if this.direct_next.is_some()
                    && let Some(done) = this.fill_ring(cx)
                {
                    return done;
                }
            }
            // With both looked at in that order, when one has a message and
            // the other has none, no earlier message can still arrive on the
            // other: the smaller id goes first.
            let take_ring = match (&this.ring_next, &this.direct_next) {
                (Some(r), Some(d)) => r.seq < d.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => {
                    // Register first, then look again, so a push between
                    // the two is never missed.
                    this.direct.waker.register(cx.waker());
                    this.direct_next = this.direct.queue.lock().pop_front();
                    if let Some(end) = this.direct_end() {
                        return end;
                    }
                    if this.direct_next.is_none() {
                        this.count();
                        return Poll::Pending;
                    }
                    // Look at the ring again before sending it.
                    if let Some(done) = this.fill_ring(cx) {
                        return done;
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
            if let Some(piece) = stored.and_then(|s| this.frame(&s)) {
                return Poll::Ready(Some(piece));
            }
        }
    }
}

impl Feed {
    /// Takes the next shared message into `ring_next` if there is none
    /// yet; `Some` when the feed ends here instead.
    fn fill_ring(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<Piece>>> {
        while self.ring_next.is_none() {
            match Pin::new(&mut self.ring).poll_next(cx) {
                Poll::Ready(Some(Ok(stored))) => self.ring_next = Some(stored),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    tracing::debug!(connection = %self.registration.id(), missed, "lagging");
                    return Some(self.end(EndReason::Lagged));
                }
                // The manager is gone: nothing more will come.
                Poll::Ready(None) => {
                    self.count();
                    return Some(Poll::Ready(None));
                }
                Poll::Pending => break,
            }
        }
        None
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.count();
        if let Some(inner) = self.manager.upgrade() {
            inner.remove(self.registration.id(), &self.direct);
        }
    }
}
