//! `Subscription`: what one connection listens to, and who it belongs to.

use std::sync::Arc;

use crate::connections::UserId;
use crate::topics::{Topic, TopicSelector, any_match};

/// What a connection receives besides messages for everyone: the topics it
/// subscribed to, the user it belongs to (for per-user delivery), and the
/// topics it may read privately.
///
/// Usually made by a route installer from the request and the
/// [`Authorizer`](crate::auth::Authorizer)'s answer; build one by hand for
/// your own handlers.
///
/// ```
/// use htmx_sse::broadcast::Subscription;
/// use htmx_sse::connections::UserId;
/// use htmx_sse::topics::TopicSelector;
///
/// let sub = Subscription::new()
///     .topics(vec![TopicSelector::new("todos/{id}")?])
///     .user(UserId::new("alice")?)
///     .private(vec![TopicSelector::new("todos/**")?]);
/// assert_eq!(sub.user_id().map(|u| u.as_str()), Some("alice"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Subscription {
    pub(crate) topics: Option<Arc<[TopicSelector]>>,
    pub(crate) user: Option<UserId>,
    pub(crate) private: Arc<[TopicSelector]>,
}

impl Subscription {
    /// Messages for everyone only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also receive topic messages whose topics match one of `selectors`.
    pub fn topics(mut self, selectors: Vec<TopicSelector>) -> Self {
        self.topics = Some(selectors.into());
        self
    }

    /// The connection belongs to `user`: it receives what is sent to that
    /// user.
    pub fn user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }

    /// Private topic messages whose topics match one of `selectors` may
    /// reach this connection (still only if it subscribed to them).
    pub fn private(mut self, selectors: Vec<TopicSelector>) -> Self {
        self.private = selectors.into();
        self
    }

    /// The user it belongs to, if any.
    #[must_use]
    pub fn user_id(&self) -> Option<&UserId> {
        self.user.as_ref()
    }

    /// The topic selectors it subscribed to.
    #[must_use]
    pub fn topic_selectors(&self) -> &[TopicSelector] {
        self.topics.as_deref().unwrap_or(&[])
    }

    /// Whether a message on `topics` (private or not) is for this
    /// connection, and if so the index of the first topic it matched.
    pub(crate) fn wants(&self, topics: &[Topic], private: bool) -> Option<usize> {
        let selectors = self.topics.as_deref()?;
        let hit = topics
            .iter()
            .position(|t| selectors.iter().any(|s| s.matches(t)))?;
        if private && !any_match(&self.private, topics) {
            return None;
        }
        Some(hit)
    }

    /// Whether it subscribed to exactly this topic, or a selector that
    /// matches it.
    pub(crate) fn listens_to(&self, topic: &Topic) -> bool {
        self.topic_selectors().iter().any(|s| s.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> TopicSelector {
        TopicSelector::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn private_needs_both_subscription_and_authorization() {
        let open = Subscription::new().topics(vec![sel("a/*")]);
        let authorized = open.clone().private(vec![sel("a/**")]);
        assert_eq!(open.wants(&[t("a/1")], false), Some(0));
        assert_eq!(open.wants(&[t("a/1")], true), None);
        assert_eq!(authorized.wants(&[t("b"), t("a/1")], true), Some(1));
        assert_eq!(authorized.wants(&[t("b")], true), None);
        assert_eq!(Subscription::new().wants(&[t("a/1")], false), None);
    }
}
