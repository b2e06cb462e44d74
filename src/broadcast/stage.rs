//! The stages of a message inside the manager, below everything else in
//! this folder: what the renderer sees ([`Outgoing`]), what a publish
//! reports ([`Sent`]), what every connection shares once it is numbered
//! (`Stored`), and who it is about to reach ([`Recipient`]). The envelope
//! a backend carries is [`crate::backend::Envelope`].

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::Subscription;
use super::message::{BroadcastMessage, MessageId};
use crate::backend::Target;
use crate::connections::{ConnectionId, UserId};
use crate::error::Error;
use crate::event::EventName;
use crate::fragment::Fragment;

/// A message about to be published, as the renderer sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outgoing<'a> {
    /// Its type (the SSE event name).
    pub message_type: &'a EventName,
    /// Its data.
    pub data: &'a serde_json::Value,
    /// Its metadata.
    pub metadata: Option<&'a serde_json::Value>,
    /// When it is published.
    pub timestamp: DateTime<Utc>,
}

pub(crate) type Render = dyn Fn(&Outgoing<'_>) -> Result<Fragment, Error> + Send + Sync;

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The id the message got.
    pub id: MessageId,
    /// How many connections it was queued for.
    pub delivered: usize,
}

/// A published message, encoded once, as every connection shares it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    /// `id: EPOCH-SEQ` (the receiving connection adds `.ID\n`).
    pub(crate) head: Bytes,
    /// `event: …\ndata: …\n\n`.
    pub(crate) body: Bytes,
    /// With the topic as event type: one body per topic, in topic order.
    pub(crate) topic_bodies: Option<Box<[Bytes]>>,
    pub(crate) target: Target,
    pub(crate) message: BroadcastMessage,
    /// `Some` for a message sent without a number (a presence badge): no
    /// `id:` line, never in the history (see [`Unnumbered`]).
    pub(crate) unnumbered: Option<Unnumbered>,
}

/// A message sent without a number: its frame has no `id:` line (so a
/// page's `Last-Event-ID` stays on the last numbered message it got and a
/// resume neither skips nor misses one), it is never kept in the history
/// and takes no number from the real messages. `seq` is the number of the
/// last numbered message before it, `order` its place after that one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unnumbered {
    /// Counts the unnumbered messages of a manager (from 1), so that two
    /// after the same numbered one keep their order.
    pub(crate) order: u64,
    /// Only for connections with a user (signed in).
    pub(crate) signed_in: bool,
}

impl Stored {
    /// Where it goes among a connection's messages: after the numbered
    /// message `seq` (and before `seq + 1`) when unnumbered.
    pub(crate) fn order(&self) -> (u64, u64) {
        (self.seq, self.unnumbered.map_or(0, |u| u.order))
    }

    /// What it counts for in [`Limits::history_bytes`]: its encoded frames.
    pub(crate) fn weight(&self) -> usize {
        self.head.len()
            + self.body.len()
            + self
                .topic_bodies
                .as_deref()
                .map_or(0, |b| b.iter().map(Bytes::len).sum())
    }

    /// The body to send to this connection, or `None` when the message is
    /// not for it.
    pub(crate) fn body_for(&self, id: &ConnectionId, sub: &Subscription) -> Option<&Bytes> {
        if self.unnumbered.is_some_and(|u| u.signed_in) && sub.user.is_none() {
            return None;
        }
        let index = match &self.target {
            Target::All { exclude } => (!exclude.contains(id)).then_some(0),
            Target::One { to, user } => {
                (to == id && user.as_ref() == sub.user.as_ref()).then_some(0)
            }
            Target::Topics {
                topics,
                private,
                exclude,
            } => {
                if exclude.contains(id) {
                    None
                } else {
                    sub.wants(topics, *private)
                }
            }
            Target::User { user, exclude } => {
                (sub.user.as_ref() == Some(user) && !exclude.contains(id)).then_some(0)
            }
        }?;
        Some(match &self.topic_bodies {
            Some(bodies) => bodies.get(index).unwrap_or(&self.body),
            None => &self.body,
        })
    }
}

/// Who a message is about to reach, as the recipient filter sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Recipient<'a> {
    /// The connection; `None` when the message is listed for a history
    /// reader ([`BroadcastManager::history_for`](super::BroadcastManager::history_for)) rather than sent.
    pub connection: Option<&'a ConnectionId>,
    /// The user it belongs to, if any.
    pub user: Option<&'a UserId>,
}

pub(crate) type Filter = dyn Fn(&BroadcastMessage, &Recipient<'_>) -> bool + Send + Sync;
