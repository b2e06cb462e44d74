//! [`check_page`]: does a rendered page have what a stream's names need?

use std::collections::HashSet;
use std::fmt;

/// The names a page lacks, from [`check_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingNames {
    /// Target ids no element of the page has.
    pub targets: Vec<String>,
    /// Event names no element of the page listens to.
    pub events: Vec<String>,
}

impl fmt::Display for MissingNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the page lacks")?;
        if !self.targets.is_empty() {
            write!(f, " elements with the ids {:?}", self.targets)?;
        }
        if !self.targets.is_empty() && !self.events.is_empty() {
            f.write_str(" and")?;
        }
        if !self.events.is_empty() {
            write!(f, " listeners for the events {:?}", self.events)?;
        }
        Ok(())
    }
}

impl std::error::Error for MissingNames {}

/// Checks, without a browser, that the rendered page `html` has an element
/// with each of `targets` as its id and an element listening to each of
/// `events`, so that a stream using them updates the page rather than
/// doing nothing. Pass the `TARGETS` and `EVENTS` a
/// [`names!`](crate::names!) declaration makes, or plain strings.
///
/// An element listens to an event when (htmx 2) its `sse-swap` lists it or
/// its `hx-trigger` says `sse:NAME`, or (htmx 4) its `data-sse-swap`
/// lists it (what [`SseElement`](crate::connections::scripts::SseElement)
/// and `connection_id_slot` write); an `hx-sse:connect` element also
/// listens to unnamed `message` events, which htmx 4 swaps by itself.
/// Script and style contents, comments and end tags are skipped.
///
/// ```
/// use htmx_sse::testing::check_page;
///
/// let page = r#"<div hx-ext="sse" sse-connect="/sse" sse-swap="tick"><span id="clock"></span></div>"#;
/// assert!(check_page(page, &["tick"], &["clock"]).is_ok());
/// let missing = check_page(page, &["tock"], &["clock", "log"]).unwrap_err();
/// assert_eq!(missing.targets, ["log"]);
/// assert_eq!(missing.events, ["tock"]);
/// ```
///
/// # Errors
///
/// [`MissingNames`] with every target and event the page lacks.
pub fn check_page<E: AsRef<str>, T: AsRef<str>>(
    html: &str,
    events: &[E],
    targets: &[T],
) -> Result<(), MissingNames> {
    let mut ids = HashSet::new();
    let mut heard = HashSet::new();
    for attrs in start_tags(html) {
        for (name, value) in &attrs {
            match name.as_str() {
                "id" => {
                    ids.insert(value.clone());
                }
                "sse-swap" | "data-sse-swap" => {
                    heard.extend(value.split(',').map(|n| n.trim().to_owned()));
                }
                "hx-trigger" => {
                    for part in value.split([',', ' ']) {
                        if let Some(event) = part.trim().strip_prefix("sse:") {
                            let event = event.split('[').next().unwrap_or(event);
                            heard.insert(event.to_owned());
                        }
                    }
                }
                "hx-sse:connect" => {
                    heard.insert("message".to_owned());
                }
                _ => {}
            }
        }
    }
    let missing = MissingNames {
        targets: targets
            .iter()
            .map(AsRef::as_ref)
            .filter(|t| !ids.contains(*t))
            .map(str::to_owned)
            .collect(),
        events: events
            .iter()
            .map(AsRef::as_ref)
            .filter(|e| !heard.contains(*e))
            .map(str::to_owned)
            .collect(),
    };
    if missing.targets.is_empty() && missing.events.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// The attributes (names lowercased) of every start tag in `html`.
fn start_tags(html: &str) -> Vec<Vec<(String, String)>> {
    let b = html.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'<', &b[i..]) {
        i += off + 1;
        if html[i..].starts_with("!--") {
            i = html[i..].find("-->").map_or(b.len(), |e| i + e + 3);
            continue;
        }
        if !b.get(i).is_some_and(u8::is_ascii_alphabetic) {
            // An end tag, a doctype, or a `<` in text.
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' && b[i] != b'/' {
            i += 1;
        }
        let name = html[start..i].to_ascii_lowercase();
        let mut attrs = Vec::new();
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' {
                i += 1;
                break;
            }
            let a = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/')
            {
                i += 1;
            }
            let attr = html[a..i].to_ascii_lowercase();
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if b.get(i) == Some(&b'=') {
                i += 1;
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                match b.get(i) {
                    Some(&q @ (b'"' | b'\'')) => {
                        let end = memchr::memchr(q, &b[i + 1..]).map_or(b.len(), |e| i + 1 + e);
                        value = html[i + 1..end].to_owned();
                        i = (end + 1).min(b.len());
                    }
                    _ => {
                        let v = i;
                        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                            i += 1;
                        }
                        value = html[v..i].to_owned();
                    }
                }
            }
            attrs.push((attr, value));
        }
        tags.push(attrs);
        // Raw text: nothing in it is markup.
        if matches!(name.as_str(), "script" | "style" | "textarea" | "title") {
            let close = format!("</{name}");
            let lower = html[i.min(b.len())..].to_ascii_lowercase();
            i = lower.find(&close).map_or(b.len(), |e| i + e);
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_flavours_and_what_is_not_markup() {
        let htmx4 = concat!(
            r#"<div hx-sse:connect="/sse" data-sse-swap="note, toast" hx-target='#log'>"#,
            r#"<span data-sse-swap="connection" hx-target="this"></span>"#,
            r#"<script>if (a < b) { x.innerHTML = '<p id="fake" sse-swap="fake">'; }</script>"#,
            r#"<!-- <p id="commented" sse-swap="commented"> -->"#,
            r#"<ul id=log></ul></div>"#,
        );
        assert!(check_page(htmx4, &["note", "toast", "connection", "message"], &["log"]).is_ok());
        let missing =
            check_page(htmx4, &["fake", "commented"], &["fake", "commented"]).unwrap_err();
        assert_eq!(missing.targets, ["fake", "commented"]);
        assert_eq!(missing.events, ["fake", "commented"]);
        assert_eq!(
            missing.to_string(),
            r#"the page lacks elements with the ids ["fake", "commented"] and listeners for the events ["fake", "commented"]"#
        );

        let htmx2 = r#"<body hx-ext="sse" sse-connect="/sse"><ul id="items" hx-get="/items" hx-trigger="load, sse:reset"></ul><p sse-swap="message"></p>"#;
        assert!(check_page(htmx2, &["reset", "message"], &["items"]).is_ok());
        // In htmx 2 unnamed messages need an element that says so.
        let bare = r#"<div hx-ext="sse" sse-connect="/sse"></div>"#;
        assert_eq!(
            check_page(bare, &["message"], &[] as &[&str])
                .unwrap_err()
                .events,
            ["message"]
        );
    }
}
