//! An incremental EventSource parser that follows the WHATWG "interpret an
//! event stream" algorithm, byte for byte: the judge of every frame this crate
//! encodes.

/// One thing read off an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event, as a browser's `EventSource` would fire it.
    Event(ReceivedEvent),
    /// A comment line (the text after the colon, as sent). Browsers ignore
    /// these; heartbeats are comments.
    Comment(String),
}

/// An event as a browser would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The event type: the `event:` field, or `message` when there was none.
    pub event: String,
    /// The data, `data:` lines joined with LF.
    pub data: String,
    /// The last event id at dispatch time (it persists across events; empty
    /// when none was ever set).
    pub last_event_id: String,
}

/// Incremental parser; feed it bytes as they arrive, in chunks of any size.
///
/// ```
/// use htmx_sse::testing::parser::{Parser, SseItem};
///
/// let mut p = Parser::new();
/// assert!(p.feed(b"event: a\ndata: x\r").is_empty());
/// let items = p.feed(b"\ndata: y\n\n");
/// match &items[0] {
///     SseItem::Event(e) => assert_eq!((e.event.as_str(), e.data.as_str()), ("a", "x\ny")),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    started: bool,
    after_cr: bool,
    data: String,
    event: String,
    /// The last event ID buffer: set by `id:` fields.
    id_buffer: String,
    /// The last event ID string: the buffer as of the last blank line.
    last_event_id: String,
    retry: Option<u64>,
}

impl Parser {
    /// A parser at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The reconnection time the stream last set with a valid `retry:`.
    #[must_use]
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// The last event id as a browser would send it back on reconnection
    /// (`Last-Event-ID`): the spec's last event ID string, taken from the
    /// `id:` fields at each blank line, so an `id:` in a block not yet ended
    /// does not count.
    #[must_use]
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds bytes and returns what they completed. An unterminated last event
    /// stays buffered (and is discarded at end of stream, as browsers do).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<SseItem> {
        let out = Vec::new();
        if !self.started && !bytes.is_empty() {
            // One leading UTF-8 BOM is stripped; wait until we can tell.
            self.line.extend_from_slice(bytes);
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                return out;
            }
            self.started = true;
            let buffered = std::mem::take(&mut self.line);
            let rest = buffered.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffered);
            return self.feed_started(rest, out);
        }
        if bytes.is_empty() {
            return out;
        }
        if self.after_cr && bytes[0] == b'\n' {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        self.feed_started(bytes, out)
    }

    fn feed_started(&mut self, bytes: &[u8], mut out: Vec<SseItem>) -> Vec<SseItem> {
        let mut i = 0;
        while i < bytes.len() {
            match memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
                None => {
                    self.line.extend_from_slice(&bytes[i..]);
                    break;
                }
                Some(off) => {
                    let end = i + off;
                    self.line.extend_from_slice(&bytes[i..end]);
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, &mut out);
                    i = end + 1;
                    if bytes[end] == b'\r' {
                        if i < bytes.len() {
                            if bytes[i] == b'\n' {
                                i += 1;
                            }
                        } else {
                            self.after_cr = true;
                        }
                    }
                }
            }
        }
        out
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(comment.to_owned()));
            return;
        }
        let (field, value) = match line.find(':') {
            Some(pos) => {
                let v = &line[pos + 1..];
                (&line[..pos], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits beyond u64 are ignored, as Chromium does (the spec
                // would take the huge integer; no browser waits that long).
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = match std::mem::take(&mut self.event) {
            e if e.is_empty() => "message".to_owned(),
            e => e,
        };
        out.push(SseItem::Event(ReceivedEvent {
            event,
            data,
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<SseItem>) -> Vec<ReceivedEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some(e),
                SseItem::Comment(_) => None,
            })
            .collect()
    }

    #[test]
    fn follows_the_spec_examples() {
        let mut p = Parser::new();
        let evs = events(p.feed(b"\xEF\xBB\xBFdata: YHOO\ndata: +2\ndata: 10\n\n"));
        assert_eq!(evs[0].data, "YHOO\n+2\n10");
        // Event-only blocks are not dispatched; the name does not leak on.
        let evs = events(p.feed(b"event: x\n\ndata: y\n\n"));
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, "message");
        // `data` without colon appends an empty line; two of them: one LF.
        let evs = events(p.feed(b"data\ndata\n\n"));
        assert_eq!(evs[0].data, "\n");
        // Only one space is stripped.
        let evs = events(p.feed(b"data:  x\n\n"));
        assert_eq!(evs[0].data, " x");
    }

    #[test]
    fn ids_persist_and_nul_ids_are_ignored() {
        let mut p = Parser::new();
        let evs =
            events(p.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n"));
        let ids: Vec<_> = evs.iter().map(|e| e.last_event_id.as_str()).collect();
        assert_eq!(ids, ["1", "1", "1", ""]);
    }

    #[test]
    fn retry_needs_digits() {
        let mut p = Parser::new();
        p.feed(b"retry: 1x\n\n");
        assert_eq!(p.retry(), None);
        p.feed(b"retry: 1500\n\n");
        assert_eq!(p.retry(), Some(1500));
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let mut p = Parser::new();
        let mut items = p.feed(b"data: a\r");
        items.extend(p.feed(b"\n\r"));
        items.extend(p.feed(b"\n"));
        let evs = events(items);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "a");
    }

    #[test]
    fn bom_split_across_chunks() {
        let mut p = Parser::new();
        assert!(p.feed(b"\xEF").is_empty());
        assert!(p.feed(b"\xBB").is_empty());
        let evs = events(p.feed(b"\xBFdata: z\n\n"));
        assert_eq!(evs[0].data, "z");
    }

    // The tests below cite the steps of the WHATWG HTML spec, 9.2.6
    // "Interpreting an event stream" and "dispatch the event".

    #[test]
    fn last_event_id_is_taken_at_the_blank_line() {
        // Dispatch step 1: "Set the last event ID string of the event source
        // to the value of the last event ID buffer", at every blank line,
        // even when step 2 then dispatches nothing; an `id:` field alone only
        // sets the buffer.
        let mut p = Parser::new();
        events(p.feed(b"id: 1\ndata: a\n\nid: 2\n"));
        assert_eq!(p.last_event_id(), "1");
        assert!(events(p.feed(b"\n")).is_empty());
        assert_eq!(p.last_event_id(), "2");
        // "If the field value does not contain U+0000 NULL, then set the last
        // event ID buffer to the field value. Otherwise, ignore the field."
        p.feed(b"id: 3\0\n\n");
        assert_eq!(p.last_event_id(), "2");
        // An empty value resets it.
        p.feed(b"id:\n\n");
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn retry_is_only_ascii_digits() {
        // "If the field value consists of only ASCII digits, then interpret
        // the field value as an integer in base ten, and set the event
        // stream's reconnection time to that integer. Otherwise, ignore the
        // field."
        let mut p = Parser::new();
        p.feed(b"retry: 1500\n\n");
        for ignored in [
            &b"retry: -1\n\n"[..],
            b"retry: 1 \n\n",
            b"retry:  1\n\n",
            b"retry: \xD9\xA1\n\n", // ARABIC-INDIC DIGIT ONE is no ASCII digit
            b"retry:\n\n",
            b"retry\n\n",
            // Beyond u64: ignored, as Chromium does, not a reset.
            b"retry: 99999999999999999999999\n\n",
        ] {
            p.feed(ignored);
            assert_eq!(p.retry(), Some(1500), "{ignored:?}");
        }
        p.feed(b"retry: 007\n\n");
        assert_eq!(p.retry(), Some(7));
    }

    #[test]
    fn every_line_ending_ends_a_line() {
        // "a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair,
        // a single U+000A LINE FEED (LF) character not preceded by a U+000D
        // CARRIAGE RETURN (CR) character, and a single U+000D CARRIAGE
        // RETURN (CR) character not followed by a U+000A LINE FEED (LF)
        // character being the ways in which a line can end."
        let mut p = Parser::new();
        let evs = events(p.feed(b"data: a\rdata: b\r\ndata: c\ndata: d\r\r\ndata\n\r"));
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "a\nb\nc\nd");
        // CR CRLF: a line end, then a blank line (not CR LF LF).
        assert_eq!(evs[1].data, "");
    }

    #[test]
    fn fields_split_at_the_first_colon_and_are_case_sensitive() {
        // "Collect the characters on the line before the first U+003A COLON
        // character (:), and let field be that string. Collect the
        // characters on the line after the first U+003A COLON character (:),
        // and let value be that string. If value starts with a U+0020 SPACE
        // character, remove it from value."
        let mut p = Parser::new();
        let evs = events(p.feed(b"event:a: b\nData: no\nDATA: no\ndata:x: y\n\n"));
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].event.as_str(), evs[0].data.as_str()),
            ("a: b", "x: y")
        );
        // "Otherwise, ignore the field": an unknown field name.
        let evs = events(p.feed(b"foo: 1\ndata: z\n\n"));
        assert_eq!(evs[0].data, "z");
    }

    #[test]
    fn the_end_of_the_stream_discards_a_pending_event() {
        // "Once the end of the file is reached, any pending data must be
        // discarded. (If the file ends in the middle of an event, before the
        // final empty line, the incomplete event is not dispatched.)"
        let mut p = Parser::new();
        assert!(p.feed(b"data: a\n").is_empty());
        assert!(p.feed(b"data: b\n\ndata: c").len() == 1);
    }

    #[test]
    fn only_one_leading_bom_is_stripped() {
        // The stream is decoded with "UTF-8 decode", which strips one leading
        // BOM: a second one is part of the first line, whose field name is
        // then "\u{FEFF}data", an unknown field.
        let mut p = Parser::new();
        let evs = events(p.feed(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"));
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "b");
        // A BOM later on is just a character.
        let evs = events(p.feed(b"data: \xEF\xBB\xBFc\n\n"));
        assert_eq!(evs[0].data, "\u{FEFF}c");
    }

    #[test]
    fn comments_are_reported() {
        let mut p = Parser::new();
        assert_eq!(
            p.feed(b":\n: hi\n"),
            vec![
                SseItem::Comment(String::new()),
                SseItem::Comment(" hi".into())
            ]
        );
    }
}
