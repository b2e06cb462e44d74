//! Model-scoped topics: a type names a class topic (`TodoList`), an
//! instance names its own (`TodoList/42`).

use super::{InvalidTopic, Topic, TopicSelector};

/// A type whose values have topics of their own.
///
/// Implement it by hand, or with [`model_topic!`](crate::model_topic):
///
/// ```
/// use htmx_sse::model_topic;
/// use htmx_sse::topics::ModelTopic;
///
/// struct TodoList { id: u64 }
/// model_topic!(TodoList, |list| list.id);
///
/// let list = TodoList { id: 42 };
/// assert_eq!(TodoList::class_topic()?.as_str(), "TodoList");
/// assert_eq!(list.topic()?.as_str(), "TodoList/42");
/// assert!(TodoList::every_instance()?.matches(&list.topic()?));
/// # Ok::<(), htmx_sse::topics::InvalidTopic>(())
/// ```
pub trait ModelTopic {
    /// The class topic: usually the type's name.
    const CLASS: &'static str;

    /// This value's id within its class.
    fn topic_id(&self) -> String;

    /// The class topic, e.g. `TodoList`: publish here what concerns every
    /// list (a new list was made).
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] when `CLASS` is not a valid topic.
    fn class_topic() -> Result<Topic, InvalidTopic> {
        Topic::new(Self::CLASS)
    }

    /// This value's topic, `CLASS/ID`, e.g. `TodoList/42`.
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] when the id holds white space, control characters,
    /// `{`, `}` or `*`.
    fn topic(&self) -> Result<Topic, InvalidTopic> {
        Topic::new(&format!("{}/{}", Self::CLASS, self.topic_id()))
    }

    /// A selector for every value's topic: `CLASS/{id}`.
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] when `CLASS` is not a valid topic.
    fn every_instance() -> Result<TopicSelector, InvalidTopic> {
        TopicSelector::new(&format!("{}/{{id}}", Self::CLASS))
    }
}

/// Implements [`ModelTopic`](crate::topics::ModelTopic) for a type, with
/// the type's name as class and an expression for the id.
///
/// `model_topic!(TodoList, |list| list.id)` uses `"TodoList"`;
/// `model_topic!(TodoList = "lists", |list| list.id)` picks the class name.
#[macro_export]
macro_rules! model_topic {
    ($ty:ident, |$v:ident| $id:expr) => {
        $crate::model_topic!($ty = stringify!($ty), |$v| $id);
    };
    ($ty:ty = $class:expr, |$v:ident| $id:expr) => {
        impl $crate::topics::ModelTopic for $ty {
            const CLASS: &'static str = $class;
            fn topic_id(&self) -> String {
                let $v = self;
                ::std::string::ToString::to_string(&$id)
            }
        }
    };
}
