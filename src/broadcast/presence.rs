//! Presence: who is connected to a manager, for everyone, a topic or a
//! user ([`BroadcastManager::presence`], and `GET {prefix}/presence` on the
//! broadcast routes).
//!
//! Read from the connections the manager holds when asked: nothing is kept
//! per connection for it, so presence costs nothing until it is read.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manager::BroadcastManager;
use crate::connections::UserId;
use crate::error::Error;
use crate::topics::Topic;

/// Whose presence to read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceScope {
    /// Every connection.
    Everyone,
    /// The connections that listen to this topic (subscribed to it, or to
    /// a selector that matches it).
    Topic(Topic),
    /// One user's connections (tabs).
    User(UserId),
}

/// Who is connected in a [`PresenceScope`].
///
/// ```
/// use htmx_sse::BroadcastManager;
/// use htmx_sse::broadcast::{PresenceScope, Subscription};
/// use htmx_sse::connections::UserId;
///
/// let manager = BroadcastManager::new();
/// let ann = UserId::new("ann")?;
/// let _tab1 = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
/// let _tab2 = manager.subscribe(Subscription::new().user(ann.clone()), None, serde_json::Value::Null)?;
/// let _visitor = manager.connect(None, serde_json::Value::Null)?;
///
/// let here = manager.presence(&PresenceScope::Everyone)?;
/// assert_eq!((here.connections, here.anonymous), (3, 1));
/// assert_eq!(here.users.len(), 1);
/// assert_eq!((here.users[0].user.as_str(), here.users[0].connections), ("ann", 2));
/// # Ok::<(), htmx_sse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Presence {
    /// Connections in the scope, anonymous ones included.
    pub connections: usize,
    /// The users with at least one connection, the longest here first.
    pub users: Vec<PresentUser>,
    /// Connections without a user.
    pub anonymous: usize,
}

/// One user's connections in a [`Presence`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PresentUser {
    /// The user.
    pub user: UserId,
    /// How many of the user's connections (tabs) are in the scope.
    pub connections: usize,
    /// When the oldest of them connected.
    pub since: DateTime<Utc>,
}

impl BroadcastManager {
    /// Who is connected to this manager in `scope`: the users (with how
    /// many connections each and since when) and the anonymous
    /// connections.
    ///
    /// Reading it goes through every connection of this process once,
    /// under the manager's lock: for a live badge, read it when it may have
    /// changed, not for every page view.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] on a shared backend (Redis, NATS): presence
    /// across instances is not read yet, and this instance's alone would
    /// be wrong.
    ///
    /// ```
    /// use htmx_sse::BroadcastManager;
    /// use htmx_sse::broadcast::{PresenceScope, Subscription};
    /// use htmx_sse::topics::{Topic, TopicSelector};
    ///
    /// let manager = BroadcastManager::new();
    /// let doc = Topic::new("docs/7")?;
    /// let _editor = manager.subscribe(
    ///     Subscription::new().topics(vec![TopicSelector::exact(&doc)]),
    ///     None,
    ///     serde_json::Value::Null,
    /// )?;
    /// let _elsewhere = manager.connect(None, serde_json::Value::Null)?;
    /// assert_eq!(manager.presence(&PresenceScope::Topic(doc))?.connections, 1);
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    pub fn presence(&self, scope: &PresenceScope) -> Result<Presence, Error> {
        if self.is_distributed() {
            return Err(Error::Backend(format!(
                "presence across instances is not available on the {} backend yet",
                self.backend_name()
            )));
        }
        let mut presence = Presence {
            connections: 0,
            users: Vec::new(),
            anonymous: 0,
        };
        let mut index: std::collections::HashMap<UserId, usize> = std::collections::HashMap::new();
        let core = self.inner.core.lock();
        for conn in core.connections.iter() {
            let subscriber = &conn.subscriber;
            let sub = &subscriber.sub;
            let in_scope = match scope {
                PresenceScope::Everyone => true,
                PresenceScope::Topic(topic) => sub.listens_to(topic),
                PresenceScope::User(user) => sub.user.as_ref() == Some(user),
            };
            if !in_scope {
                continue;
            }
            presence.connections += 1;
            let since = subscriber.entry.created_at();
            match &sub.user {
                None => presence.anonymous += 1,
                Some(user) => match index.get(user) {
                    Some(&i) => {
                        let p = &mut presence.users[i];
                        p.connections += 1;
                        p.since = p.since.min(since);
                    }
                    None => {
                        index.insert(user.clone(), presence.users.len());
                        presence.users.push(PresentUser {
                            user: user.clone(),
                            connections: 1,
                            since,
                        });
                    }
                },
            }
        }
        drop(core);
        presence
            .users
            .sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.user.cmp(&b.user)));
        Ok(presence)
    }
}
