//! Finding the one element in unwrapped content: a small scanner after
//! the WHATWG tokenizer, enough of it to find the root element of the
//! HTML given to `add_unwrapped`, where its start tag's name ends, and
//! that nothing follows its end tag.

//
// A small scanner after the WHATWG tokenizer: enough of it to find the root
// element's start tag (quoted attribute values may hold `>`), its attributes,
// and its matching end tag (counting nested elements of the same name,
// skipping comments and the raw text of `<script>`, `<style>`, ...).

pub(super) const EMPTY: &str = "empty content";
pub(super) const TEXT_FIRST: &str = "content must start with an element start tag";
pub(super) const UNTERMINATED_COMMENT: &str = "unterminated comment";
pub(super) const UNTERMINATED_TAG: &str = "unterminated start tag";
pub(super) const ALREADY_OOB: &str = "the element already has an hx-swap-oob attribute";
pub(super) const NO_END_TAG: &str = "the element's end tag is missing";
pub(super) const TRAILING: &str = "content goes on after the element's end tag";

/// Where the parts of a single-element content sit, as byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Anatomy {
    /// The `<` of the root start tag (after leading whitespace and comments).
    pub(super) start: usize,
    /// Just after the root tag name: where attributes may be inserted.
    pub(super) name_end: usize,
    /// Just after the root start tag's `>`.
    pub(super) inner_start: usize,
    /// The `<` of the root end tag; `inner_start` when there is none.
    pub(super) inner_end: usize,
    /// Just after the root element (its end tag, or its start tag when it
    /// has no end tag).
    pub(super) end: usize,
}

/// A start or end tag, as scanned.
struct Tag {
    /// Just after the name.
    name_end: usize,
    /// Just after the closing `>`.
    end: usize,
    /// Ends in `/>`.
    self_closing: bool,
    /// Has an `hx-swap-oob` or `data-hx-swap-oob` attribute.
    has_oob: bool,
}

impl Anatomy {
    pub(super) fn of(html: &str) -> Result<Anatomy, &'static str> {
        let b = html.as_bytes();
        let start = skip_prefix(b)?;
        if start == b.len() {
            return Err(EMPTY);
        }
        if !(b[start] == b'<' && b.get(start + 1).is_some_and(u8::is_ascii_alphabetic)) {
            return Err(TEXT_FIRST);
        }
        let root = scan_tag(b, start + 1)?;
        if root.has_oob {
            return Err(ALREADY_OOB);
        }
        let name = &b[start + 1..root.name_end];
        let rest_is_blank = b[root.end..].iter().all(|&c| is_space(c));
        let (inner_end, end) = if rest_is_blank || root.self_closing || is_void(name) {
            (root.end, root.end)
        } else {
            find_end_tag(b, name, root.end)?
        };
        if !b[end..].iter().all(|&c| is_space(c)) {
            return Err(TRAILING);
        }
        Ok(Anatomy {
            start,
            name_end: root.name_end,
            inner_start: root.end,
            inner_end,
            end,
        })
    }
}

/// HTML's whitespace (CR included, as the tokenizer sees it after
/// normalising line ends).
fn is_space(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// Skips leading whitespace and comments; returns where the rest starts.
fn skip_prefix(b: &[u8]) -> Result<usize, &'static str> {
    let mut i = 0;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if b[i..].starts_with(b"<!--") {
            i = comment_end(b, i).ok_or(UNTERMINATED_COMMENT)?;
        } else {
            return Ok(i);
        }
    }
}

/// `b[i..]` starts with `<!--`: returns the index just after the comment.
fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    let body = i + 4;
    // `<!-->` and `<!--->` are (abruptly closed) empty comments.
    if b[body..].starts_with(b">") {
        return Some(body + 1);
    }
    if b[body..].starts_with(b"->") {
        return Some(body + 2);
    }
    let close = memchr::memmem::find(&b[body..], b"-->").map(|p| body + p + 3);
    let bang = memchr::memmem::find(&b[body..], b"--!>").map(|p| body + p + 4);
    match (close, bang) {
        (Some(c), Some(x)) => Some(c.min(x)),
        (c, x) => c.or(x),
    }
}

/// Scans a tag whose name starts at `name` (just after `<` or `</`), up to
/// and including its `>`. Quoted attribute values may hold `>`.
fn scan_tag(b: &[u8], name: usize) -> Result<Tag, &'static str> {
    #[derive(Clone, Copy)]
    enum State {
        BeforeName,
        Name(usize),
        AfterName,
        BeforeValue,
        Quoted(u8),
        AfterQuoted,
        Unquoted,
        SelfClosing,
    }
    let mut i = name;
    while i < b.len() && !(is_space(b[i]) || b[i] == b'/' || b[i] == b'>') {
        i += 1;
    }
    let name_end = i;
    let mut has_oob = false;
    let mut state = State::BeforeName;
    while i < b.len() {
        let c = b[i];
        state = match state {
            State::BeforeName | State::AfterName if is_space(c) => state,
            State::BeforeName | State::AfterName | State::AfterQuoted | State::Unquoted
                if c == b'>' =>
            {
                return Ok(Tag {
                    name_end,
                    end: i + 1,
                    self_closing: false,
                    has_oob,
                });
            }
            State::BeforeName | State::AfterName | State::AfterQuoted if c == b'/' => {
                State::SelfClosing
            }
            State::AfterName if c == b'=' => State::BeforeValue,
            State::BeforeName | State::AfterName => State::Name(i),
            State::Name(from) if is_space(c) || c == b'/' || c == b'>' || c == b'=' => {
                let attr = &b[from..i];
                has_oob |= attr.eq_ignore_ascii_case(b"hx-swap-oob")
                    || attr.eq_ignore_ascii_case(b"data-hx-swap-oob");
                if c == b'=' {
                    State::BeforeValue
                } else {
                    // Look at `c` again in the state after the name.
                    state = State::AfterName;
                    continue;
                }
            }
            State::Name(_) => state,
            State::BeforeValue if is_space(c) => state,
            State::BeforeValue if c == b'"' || c == b'\'' => State::Quoted(c),
            State::BeforeValue if c == b'>' => {
                return Ok(Tag {
                    name_end,
                    end: i + 1,
                    self_closing: false,
                    has_oob,
                });
            }
            State::BeforeValue => State::Unquoted,
            State::Quoted(q) if c == q => State::AfterQuoted,
            State::Quoted(_) => state,
            State::AfterQuoted if is_space(c) => State::BeforeName,
            State::AfterQuoted => {
                // A missing space between attributes: start the next one here.
                state = State::BeforeName;
                continue;
            }
            State::Unquoted if is_space(c) => State::BeforeName,
            State::Unquoted => state,
            State::SelfClosing if c == b'>' => {
                return Ok(Tag {
                    name_end,
                    end: i + 1,
                    self_closing: true,
                    has_oob,
                });
            }
            State::SelfClosing => {
                state = State::BeforeName;
                continue;
            }
        };
        i += 1;
    }
    Err(UNTERMINATED_TAG)
}

/// Elements that never have content or an end tag.
fn is_void(name: &[u8]) -> bool {
    const VOID: [&[u8]; 18] = [
        b"area",
        b"base",
        b"basefont",
        b"bgsound",
        b"br",
        b"col",
        b"embed",
        b"frame",
        b"hr",
        b"img",
        b"input",
        b"keygen",
        b"link",
        b"meta",
        b"param",
        b"source",
        b"track",
        b"wbr",
    ];
    VOID.iter().any(|v| v.eq_ignore_ascii_case(name))
}

/// Elements whose content is text up to their end tag: a `<` inside starts
/// no tag.
fn is_raw_text(name: &[u8]) -> bool {
    const RAW: [&[u8]; 9] = [
        b"script",
        b"style",
        b"textarea",
        b"title",
        b"xmp",
        b"iframe",
        b"noembed",
        b"noframes",
        b"noscript",
    ];
    RAW.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Whether `b[i..]` is `</name` followed by the end of the name.
fn is_end_tag_of(b: &[u8], i: usize, name: &[u8]) -> bool {
    let after = i + 2 + name.len();
    b[i..].starts_with(b"</")
        && b.get(i + 2..after)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
        && b.get(after)
            .is_none_or(|&c| is_space(c) || c == b'/' || c == b'>')
}

/// The `<` of the first `</name` end tag at or after `i` (raw text ends only
/// there).
fn raw_text_end(b: &[u8], mut i: usize, name: &[u8]) -> Option<usize> {
    while let Some(p) = memchr::memmem::find(&b[i..], b"</") {
        let at = i + p;
        if is_end_tag_of(b, at, name) {
            return Some(at);
        }
        i = at + 2;
    }
    None
}

/// Finds the end tag matching the root `name`, whose content starts at `i`:
/// returns the end tag's `<` and the index just after its `>`.
fn find_end_tag(b: &[u8], name: &[u8], mut i: usize) -> Result<(usize, usize), &'static str> {
    let mut depth = 1usize;
    if is_raw_text(name) {
        i = raw_text_end(b, i, name).ok_or(NO_END_TAG)?;
    }
    while let Some(p) = memchr::memchr(b'<', &b[i..]) {
        let at = i + p;
        let next = b.get(at + 1).copied();
        if b[at..].starts_with(b"<!--") {
            i = comment_end(b, at).ok_or(UNTERMINATED_COMMENT)?;
        } else if next == Some(b'/') && b.get(at + 2).is_some_and(u8::is_ascii_alphabetic) {
            let tag = scan_tag(b, at + 2)?;
            if b[at + 2..tag.name_end].eq_ignore_ascii_case(name) {
                depth -= 1;
                if depth == 0 {
                    return Ok((at, tag.end));
                }
            }
            i = tag.end;
        } else if matches!(next, Some(b'!' | b'?' | b'/')) {
            // `<!DOCTYPE`, `<![CDATA[`, `<?`, `</3`: a bogus comment up to `>`.
            i = memchr::memchr(b'>', &b[at..]).map_or(b.len(), |p| at + p + 1);
        } else if next.is_some_and(|c| c.is_ascii_alphabetic()) {
            let tag = scan_tag(b, at + 1)?;
            let tag_name = &b[at + 1..tag.name_end];
            if tag_name.eq_ignore_ascii_case(name) && !tag.self_closing {
                depth += 1;
            }
            i = if is_raw_text(tag_name) {
                raw_text_end(b, tag.end, tag_name).ok_or(NO_END_TAG)?
            } else {
                tag.end
            };
        } else {
            i = at + 1;
        }
    }
    Err(NO_END_TAG)
}
