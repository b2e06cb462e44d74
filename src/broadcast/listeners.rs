//! `Listeners`: the connections that listen to topics, by topic, so that a
//! topic message looks at the connections that may want it and not at
//! every connection of the manager.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::subscriber::Subscriber;
use crate::connections::ConnectionId;
use crate::topics::Topic;

/// A connection as the manager's sets hold it: found by the id its
/// `Subscriber` holds, so the id is not kept a second time as a key (one
/// pointer per slot).
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) subscriber: Arc<Subscriber>,
}

impl Conn {
    pub(crate) fn id(&self) -> &ConnectionId {
        self.subscriber.entry.id()
    }
}

impl std::borrow::Borrow<ConnectionId> for Conn {
    fn borrow(&self) -> &ConnectionId {
        self.id()
    }
}

impl std::hash::Hash for Conn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the id hashes: lookups by `&ConnectionId` find it.
        self.id().hash(state);
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for Conn {}

/// The connections that listen to topics. One whose selectors are all
/// exact topics is listed under each of them; one with a pattern among
/// them (`*`, `{id}`, `**`) is listed once, among those a topic message
/// always looks at. A connection that listens to no topic is in neither.
#[derive(Default)]
pub(crate) struct Listeners {
    exact: HashMap<Topic, HashSet<Conn>>,
    patterned: HashSet<Conn>,
}

impl Listeners {
    /// Lists `conn` under what it listens to.
    pub(crate) fn add(&mut self, conn: &Conn) {
        let Some(selectors) = conn.subscriber.sub.topics.as_deref() else {
            return;
        };
        let exact: Option<Vec<Topic>> = selectors.iter().map(|s| s.as_topic()).collect();
        match exact {
            Some(topics) => {
                for topic in topics {
                    self.exact.entry(topic).or_default().replace(conn.clone());
                }
            }
            None => {
                self.patterned.replace(conn.clone());
            }
        }
    }

    /// Takes `conn` off, where it (not a newer connection with its id) is
    /// listed.
    pub(crate) fn remove(&mut self, conn: &Conn) {
        let Some(selectors) = conn.subscriber.sub.topics.as_deref() else {
            return;
        };
        let is_it = |c: &Conn| Arc::ptr_eq(&c.subscriber, &conn.subscriber);
        if self.patterned.get(conn.id()).is_some_and(is_it) {
            self.patterned.remove(conn.id());
        }
        for topic in selectors.iter().filter_map(|s| s.as_topic()) {
            if let Some(set) = self.exact.get_mut(&topic) {
                if set.get(conn.id()).is_some_and(is_it) {
                    set.remove(conn.id());
                }
                if set.is_empty() {
                    self.exact.remove(&topic);
                }
            }
        }
    }

    /// Calls `f` once with every connection that may want a message on
    /// `topics`, with the index of the topic it was found under (`None`
    /// when it has a pattern). A connection listed under two of the topics
    /// is met twice: count it where its first match is.
    pub(crate) fn each_candidate(
        &self,
        topics: &[Topic],
        mut f: impl FnMut(&Arc<Subscriber>, Option<usize>),
    ) {
        for (i, topic) in topics.iter().enumerate() {
            for conn in self.exact.get(topic).into_iter().flatten() {
                f(&conn.subscriber, Some(i));
            }
        }
        for conn in &self.patterned {
            f(&conn.subscriber, None);
        }
    }

    /// How many connections listen to `topic`.
    pub(crate) fn count(&self, topic: &Topic) -> usize {
        let exact = self.exact.get(topic).map_or(0, HashSet::len);
        exact
            + self
                .patterned
                .iter()
                .filter(|c| c.subscriber.sub.listens_to(topic))
                .count()
    }

    /// How many connections are listed under exact topics and with
    /// patterns (for tests).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let exact: HashSet<&ConnectionId> = self.exact.values().flatten().map(Conn::id).collect();
        (exact.len(), self.patterned.len())
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse as _;
    use tokio_stream::StreamExt as _;

    use crate::BroadcastManager;
    use crate::broadcast::Subscription;
    use crate::streaming::StreamConfig;
    use crate::topics::{Topic, TopicSelector};

    type Body = axum::body::BodyDataStream;

    fn manager() -> BroadcastManager {
        BroadcastManager::builder()
            .stream(StreamConfig::new().no_heartbeat())
            .build()
    }

    fn on(m: &BroadcastManager, selectors: &[&str], resume: Option<&str>) -> Body {
        let sub = Subscription::new().topics(
            selectors
                .iter()
                .map(|s| TopicSelector::new(s).unwrap())
                .collect(),
        );
        let c = m.subscribe(sub, resume, serde_json::Value::Null).unwrap();
        c.into_response().into_body().into_data_stream()
    }

    async fn next(body: &mut Body) -> String {
        let chunk = body.next().await.unwrap().unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[tokio::test]
    async fn connections_are_listed_by_exact_topic_or_as_patterned_and_forgotten() {
        let m = manager();
        let counts = || m.inner.listener_counts();
        let exact = on(&m, &["a", "b/c"], None);
        let patterned = on(&m, &["a", "b/*"], None);
        let (_, plain) = {
            let c = m.connect(None, serde_json::Value::Null).unwrap();
            (c.id().clone(), c)
        };
        assert_eq!(counts(), (1, 1));
        assert_eq!(m.subscriber_count(&topic("a")), 2);
        assert_eq!(m.subscriber_count(&topic("b/c")), 2);
        assert_eq!(m.subscriber_count(&topic("b/d")), 1);
        assert_eq!(m.subscriber_count(&topic("c")), 0);
        drop(exact);
        assert_eq!(counts(), (0, 1));
        assert_eq!(m.subscriber_count(&topic("b/c")), 1);
        drop(patterned);
        drop(plain);
        assert_eq!(counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_connection_that_comes_back_is_listed_once_and_stays_listed() {
        let m = manager();
        let mut first = on(&m, &["a"], None);
        let opening = next(&mut first).await;
        let id_line = opening.lines().find(|l| l.starts_with("id: ")).unwrap();
        let resume = id_line.trim_start_matches("id: ").to_owned();
        // The same page reconnects before its old stream is dropped: the
        // new connection takes the id; dropping the old one later must not
        // take the new one off.
        let mut second = on(&m, &["a"], Some(&resume));
        assert_eq!(m.connection_count(), 1, "the id was not taken over");
        assert_eq!(m.inner.listener_counts(), (1, 0));
        drop(first);
        assert_eq!(m.inner.listener_counts(), (1, 0));
        next(&mut second).await;
        let sent = m
            .message("t", "x")
            .topics([topic("a")])
            .send()
            .await
            .unwrap();
        assert_eq!(sent.delivered, 1);
        assert!(next(&mut second).await.contains("data: x\n"));
    }

    #[tokio::test]
    async fn a_message_on_two_topics_reaches_a_listener_of_both_once() {
        let m = manager();
        let mut both = on(&m, &["a", "b"], None);
        let mut pattern = on(&m, &["*"], None);
        let mut one = on(&m, &["b"], None);
        for body in [&mut both, &mut pattern, &mut one] {
            next(body).await;
        }
        let sent = m
            .message("t", "x")
            .topics([topic("a"), topic("b")])
            .send()
            .await
            .unwrap();
        assert_eq!(sent.delivered, 3);
        m.broadcast("t", "end", None, &[]).await.unwrap();
        for body in [&mut both, &mut pattern, &mut one] {
            let mut text = String::new();
            while !text.contains("data: end\n") {
                text.push_str(&next(body).await);
            }
            assert_eq!(text.matches("data: x\n").count(), 1, "{text}");
        }
    }
}
