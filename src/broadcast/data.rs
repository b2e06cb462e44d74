//! What a published message carries, decided by the type handed in: text
//! (escaped on the way out), HTML (sent as it is), or JSON.

use std::borrow::Cow;

use crate::error::Error;
use crate::fragment::{Fragment, IntoFragment};

/// A message's data, as [`IntoData`] made it.
///
/// How the manager writes it (without a
/// [renderer](super::BroadcastBuilder::render)):
///
/// | data | on the wire | in the history (`data`) |
/// | --- | --- | --- |
/// | `Text` | HTML-escaped: the page shows it as written | the text |
/// | `Html` | as it is | the HTML |
/// | `Json` (a string counts as `Text`) | compact JSON with `<`, `>`, `&` as `\u` escapes | the value |
///
/// A renderer is called for `Text` and `Json` (as a JSON string or value);
/// `Html` is HTML already and goes out as it is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Data {
    /// Text, shown as written.
    Text(String),
    /// HTML from a template engine or [`Fragment::trusted`].
    Html(Fragment),
    /// Any other JSON value.
    Json(serde_json::Value),
}

impl Data {
    /// `value` serialised to JSON (a string becomes [`Data::Text`]).
    ///
    /// ```
    /// use htmx_sse::broadcast::Data;
    ///
    /// #[derive(serde::Serialize)]
    /// struct Load { cpu: u8 }
    ///
    /// assert_eq!(Data::json(&Load { cpu: 7 })?, Data::Json(serde_json::json!({"cpu": 7})));
    /// # Ok::<(), htmx_sse::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Json`] when `value` does not serialise.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Data, Error> {
        serde_json::to_value(value)
            .map(Data::from_value)
            .map_err(Error::Json)
    }

    fn from_value(value: serde_json::Value) -> Data {
        match value {
            serde_json::Value::String(s) => Data::Text(s),
            other => Data::Json(other),
        }
    }
}

/// What [`BroadcastManager::broadcast`](super::BroadcastManager::broadcast),
/// `send_to`, `send_to_user` and `message` accept as data. The type decides
/// how it is sent (see [`Data`]):
///
/// - **text**: `&str`, `String`, `&String`, `Cow<str>`: escaped, so a
///   string from a user is shown, never run;
/// - **HTML**: [`Fragment`] (from a template or [`Fragment::trusted`]),
///   maud's `Markup`, askama templates in
///   `Askama`, the
///   [`OobStreamBuilder`](crate::streaming::OobStreamBuilder);
/// - **JSON**: `serde_json::Value`, `axum::Json(value)` for any
///   `Serialize` value, numbers and booleans.
///
/// ```
/// use htmx_sse::{BroadcastManager, Fragment};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), htmx_sse::Error> {
/// let manager = BroadcastManager::new();
/// manager.message("chat", "<b>shown as text</b>").send().await?;
/// manager.message("chat", Fragment::trusted("<hr>")).send().await?;
/// manager.message("load", axum::Json([1, 2, 3])).send().await?;
/// let data: Vec<_> = manager.history(None).into_iter().map(|m| m.data).collect();
/// assert_eq!(data, [serde_json::json!("<b>shown as text</b>"), "<hr>".into(), serde_json::json!([1, 2, 3])]);
/// # Ok(()) }
/// ```
pub trait IntoData {
    /// The data.
    ///
    /// # Errors
    ///
    /// [`Error::Render`] when a template fails, [`Error::Json`] when a
    /// value does not serialise.
    fn into_data(self) -> Result<Data, Error>;
}

impl IntoData for Data {
    fn into_data(self) -> Result<Data, Error> {
        Ok(self)
    }
}

impl IntoData for &str {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Text(self.to_owned()))
    }
}

impl IntoData for String {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Text(self))
    }
}

impl IntoData for &String {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Text(self.clone()))
    }
}

impl IntoData for Cow<'_, str> {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Text(self.into_owned()))
    }
}

impl IntoData for Fragment {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Html(self))
    }
}

impl IntoData for &Fragment {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Html(self.clone()))
    }
}

#[cfg(feature = "maud")]
impl IntoData for maud::Markup {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::Html(Fragment::trusted(self.into_string())))
    }
}

#[cfg(feature = "askama")]
impl<T: askama::Template> IntoData for crate::fragment::Askama<T> {
    fn into_data(self) -> Result<Data, Error> {
        self.into_fragment().map(Data::Html)
    }
}

impl IntoData for crate::streaming::OobStreamBuilder {
    fn into_data(self) -> Result<Data, Error> {
        self.into_fragment().map(Data::Html)
    }
}

impl IntoData for serde_json::Value {
    fn into_data(self) -> Result<Data, Error> {
        Ok(Data::from_value(self))
    }
}

impl<T: serde::Serialize> IntoData for axum::Json<T> {
    fn into_data(self) -> Result<Data, Error> {
        Data::json(&self.0)
    }
}

macro_rules! json_scalars {
    ($($t:ty),*) => {$(
        impl IntoData for $t {
            fn into_data(self) -> Result<Data, Error> {
                Ok(Data::Json(serde_json::Value::from(self)))
            }
        }
    )*};
}

json_scalars!(bool, i32, i64, u32, u64, usize, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_decides() {
        let text = "<b>".into_data().unwrap();
        assert_eq!(text, Data::Text("<b>".into()));
        assert_eq!(String::from("<b>").into_data().unwrap(), text);
        assert_eq!(serde_json::json!("<b>").into_data().unwrap(), text);
        assert_eq!(axum::Json("<b>").into_data().unwrap(), text);
        assert_eq!(
            Fragment::trusted("<b>").into_data().unwrap(),
            Data::Html(Fragment::trusted("<b>"))
        );
        assert_eq!(
            axum::Json(serde_json::json!({"a": [1]}))
                .into_data()
                .unwrap(),
            Data::Json(serde_json::json!({"a": [1]}))
        );
        assert_eq!(7u64.into_data().unwrap(), Data::Json(7.into()));
    }
}
