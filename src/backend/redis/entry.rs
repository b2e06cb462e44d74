//! How an [`Envelope`] is kept in the Redis stream: one entry per
//! message, its frame bytes as they are and the rest as JSON, in a layout
//! that instances of older versions read too.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::Value;
use redis::streams::StreamId;
use serde::{Serialize, Serializer};

use crate::backend::{Envelope, Epoch, Target};
use crate::connections::{ConnectionId, UserId};
use crate::event::EventName;
use crate::topics::Topic;

pub(super) struct Decoded {
    pub(super) seq: u64,
    pub(super) epoch: Epoch,
    pub(super) envelope: Envelope,
}

/// Connection ids as JSON strings, written in place.
struct Ids<'a>(&'a [ConnectionId]);

impl Serialize for Ids<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ConnectionId::as_str))
    }
}

/// Topics as JSON strings, written in place.
struct Topics<'a>(&'a [Topic]);

impl Serialize for Topics<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Topic::as_str))
    }
}

/// The target as it is kept: `{"k": kind, …}`.
#[derive(Serialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum TargetOut<'a> {
    All { x: Ids<'a> },
    One { to: &'a str, u: Option<&'a str> },
    Topics { t: Topics<'a>, p: bool, x: Ids<'a> },
    User { u: &'a str, x: Ids<'a> },
}

/// The entry's `m` field, serialised straight from the envelope (no JSON
/// value built on the way).
#[derive(Serialize)]
struct MetaOut<'a> {
    target: TargetOut<'a>,
    #[serde(rename = "type")]
    message_type: &'a str,
    data: &'a serde_json::Value,
    html: bool,
    ts: String,
    meta: &'a Option<serde_json::Value>,
}

pub(super) fn encode(p: &Envelope, epoch: Epoch) -> Vec<(String, Bytes)> {
    let target = match &p.target {
        Target::All { exclude } => TargetOut::All { x: Ids(exclude) },
        Target::One { to, user } => TargetOut::One {
            to: to.as_str(),
            u: user.as_ref().map(UserId::as_str),
        },
        Target::Topics {
            topics,
            private,
            exclude,
        } => TargetOut::Topics {
            t: Topics(topics),
            p: *private,
            x: Ids(exclude),
        },
        Target::User { user, exclude } => TargetOut::User {
            u: user.as_str(),
            x: Ids(exclude),
        },
    };
    let meta = MetaOut {
        target,
        message_type: p.message_type.as_str(),
        data: &p.data,
        html: p.html,
        ts: p.timestamp.to_rfc3339(),
        meta: &p.metadata,
    };
    // Serialising strings, numbers and JSON values cannot fail.
    let meta = serde_json::to_vec(&meta).unwrap_or_default();
    let mut fields = vec![
        ("v".to_owned(), Bytes::from(p.format.to_string())),
        ("e".to_owned(), Bytes::from(epoch.to_string())),
        ("o".to_owned(), Bytes::from(p.origin.to_string())),
        ("n".to_owned(), Bytes::from(p.nonce.to_string())),
        ("m".to_owned(), Bytes::from(meta)),
        ("b".to_owned(), p.body.clone()),
    ];
    if let Some(bodies) = &p.topic_bodies {
        for (i, b) in bodies.iter().enumerate() {
            fields.push((format!("t{i}"), b.clone()));
        }
    }
    fields
}

/// One stream entry as Redis sent it: its id and its fields, owned, so
/// that decoding moves the bytes rather than copying them.
pub(super) struct RawEntry {
    pub(super) id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let at = self.fields.iter().position(|(k, _)| k == name.as_bytes())?;
        Some(self.fields.swap_remove(at).1)
    }

    fn take_str(&mut self, name: &str) -> Option<String> {
        String::from_utf8(self.take(name)?).ok()
    }

    /// The number in the entry's id (`0-SEQ`), when it is one of ours.
    pub(super) fn seq(&self) -> Option<u64> {
        self.id.strip_prefix("0-").and_then(|s| s.parse().ok())
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// `[id, [field, value, …]]`, or `None` for anything else.
fn raw_entry(v: Value) -> Option<RawEntry> {
    let Value::Array(parts) = v else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = String::from_utf8(bytes_of(parts.next()?)?).ok()?;
    let flat = match parts.next()? {
        Value::Array(flat) => flat,
        Value::Nil => Vec::new(),
        _ => return None,
    };
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
            fields.push((k, v));
        }
    }
    Some(RawEntry { id, fields })
}

/// The entries of an `XREAD` reply on one stream, in order, taken apart
/// without copying them (RESP2 arrays or RESP3 maps; nothing on a timeout).
pub(super) fn read_reply(reply: Value) -> Vec<RawEntry> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(key_and_entries) = stream else {
            continue;
        };
        if let Some(Value::Array(entries)) = key_and_entries.into_iter().nth(1) {
            out.reserve(entries.len());
            out.extend(entries.into_iter().filter_map(raw_entry));
        }
    }
    out
}

fn id_list(v: &serde_json::Value) -> Result<Box<[ConnectionId]>, String> {
    v.as_array()
        .ok_or("exclusions are not a list")?
        .iter()
        .map(|i| {
            i.as_str()
                .and_then(|s| ConnectionId::new(s).ok())
                .ok_or_else(|| "bad connection id".to_owned())
        })
        .collect()
}

pub(super) fn decode(entry: &StreamId) -> Result<Decoded, String> {
    let fields = entry
        .map
        .iter()
        .filter_map(|(k, v)| Some((k.clone().into_bytes(), bytes_of(v.clone())?)))
        .collect();
    decode_raw(RawEntry {
        id: entry.id.clone(),
        fields,
    })
}

pub(super) fn decode_raw(mut entry: RawEntry) -> Result<Decoded, String> {
    let seq = entry.seq().ok_or("not an id of ours")?;
    let epoch = entry
        .take_str("e")
        .and_then(|e| Epoch::parse(&e))
        .ok_or("no epoch")?;
    // Entries written before origins were numbers are nobody's own.
    let origin = entry.take_str("o").ok_or("no origin")?.parse().unwrap_or(0);
    let nonce = entry
        .take_str("n")
        .and_then(|n| n.parse().ok())
        .ok_or("no nonce")?;
    let meta: serde_json::Value = entry
        .take("m")
        .and_then(|m| serde_json::from_slice(&m).ok())
        .ok_or("no message")?;
    let body = Bytes::from(entry.take("b").ok_or("no body")?);
    let t = &meta["target"];
    let user = |v: &serde_json::Value| -> Result<Option<UserId>, String> {
        match v.as_str() {
            None => Ok(None),
            Some(u) => UserId::new(u).map(Some).map_err(|e| e.to_string()),
        }
    };
    let target = match t["k"].as_str() {
        Some("all") => Target::All {
            exclude: id_list(&t["x"])?,
        },
        Some("one") => Target::One {
            to: t["to"]
                .as_str()
                .and_then(|s| ConnectionId::new(s).ok())
                .ok_or("bad connection id")?,
            user: user(&t["u"])?,
        },
        Some("topics") => Target::Topics {
            topics: t["t"]
                .as_array()
                .ok_or("topics are not a list")?
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| Topic::new(s).ok())
                        .ok_or_else(|| "bad topic".to_owned())
                })
                .collect::<Result<_, _>>()?,
            private: t["p"].as_bool().unwrap_or(false),
            exclude: id_list(&t["x"])?,
        },
        Some("user") => Target::User {
            user: user(&t["u"])?.ok_or("no user")?,
            exclude: id_list(&t["x"])?,
        },
        _ => return Err("unknown target".to_owned()),
    };
    let mut bodies = Vec::new();
    while let Some(b) = entry.take(&format!("t{}", bodies.len())) {
        bodies.push(Bytes::from(b));
    }
    let envelope = Envelope {
        format: entry
            .take_str("v")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        body,
        topic_bodies: (!bodies.is_empty()).then(|| bodies.into_boxed_slice()),
        target,
        message_type: meta["type"]
            .as_str()
            .and_then(|s| EventName::new(s.to_owned()).ok())
            .ok_or("bad type")?,
        data: meta["data"].clone(),
        html: meta["html"].as_bool().unwrap_or(false),
        metadata: (!meta["meta"].is_null()).then(|| meta["meta"].clone()),
        timestamp: meta["ts"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
        origin,
        nonce,
    };
    if envelope.format > Envelope::FORMAT {
        return Err(format!(
            "format {} is newer than this instance reads ({})",
            envelope.format,
            Envelope::FORMAT
        ));
    }
    Ok(Decoded {
        seq,
        epoch,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use redis::Value;
    use serde_json::json;

    fn entry(fields: Vec<(String, Bytes)>, seq: u64) -> StreamId {
        StreamId {
            id: format!("0-{seq}"),
            map: fields
                .into_iter()
                .map(|(k, v)| (k, Value::BulkString(v.to_vec())))
                .collect(),
            ..StreamId::default()
        }
    }

    fn envelope(body: Bytes, target: Target) -> Envelope {
        Envelope {
            format: Envelope::FORMAT,
            body,
            topic_bodies: None,
            target,
            message_type: EventName::new("message".to_owned()).unwrap(),
            data: json!("x"),
            html: false,
            metadata: None,
            timestamp: Utc::now(),
            origin: 7,
            nonce: 1,
        }
    }

    #[test]
    fn entries_round_trip() {
        let body = Event::builder()
            .event("chat")
            .data("<li>hi</li>")
            .build()
            .unwrap()
            .into_bytes();
        let mut sent = envelope(
            body,
            Target::Topics {
                topics: vec![Topic::new("lists/7").unwrap()].into(),
                private: true,
                exclude: vec![ConnectionId::new("c1").unwrap()].into(),
            },
        );
        sent.topic_bodies = Some(vec![Bytes::from_static(b"event: a\ndata: x\n\n")].into());
        sent.message_type = EventName::new("chat".to_owned()).unwrap();
        sent.data = json!({"text": "hi"});
        sent.html = true;
        sent.metadata = Some(json!({"by": "ann"}));
        sent.origin = 0xfeed;
        sent.nonce = 9;
        let epoch = Epoch(0x1234_abcd);
        let d = decode(&entry(encode(&sent, epoch), 42)).unwrap();
        assert_eq!((d.seq, d.epoch), (42, epoch));
        let mut back = d.envelope;
        // Redis keeps times to the microsecond or better; RFC 3339 keeps
        // nanoseconds: the same instant.
        assert_eq!(back.timestamp, sent.timestamp);
        back.timestamp = sent.timestamp;
        assert_eq!(back, sent, "every field crosses Redis");
    }

    /// The `m` field is the JSON older versions wrote and read, for every
    /// kind of target.
    #[test]
    fn the_message_field_keeps_its_layout() {
        let c1 = ConnectionId::new("c1").unwrap();
        let ann = UserId::new("ann").unwrap();
        let cases = [
            (
                Target::All {
                    exclude: vec![c1.clone()].into(),
                },
                json!({"k": "all", "x": ["c1"]}),
            ),
            (
                Target::One {
                    to: c1.clone(),
                    user: Some(ann.clone()),
                },
                json!({"k": "one", "to": "c1", "u": "ann"}),
            ),
            (
                Target::One {
                    to: c1.clone(),
                    user: None,
                },
                json!({"k": "one", "to": "c1", "u": null}),
            ),
            (
                Target::Topics {
                    topics: vec![Topic::new("a/1").unwrap()].into(),
                    private: true,
                    exclude: Box::new([]),
                },
                json!({"k": "topics", "t": ["a/1"], "p": true, "x": []}),
            ),
            (
                Target::User {
                    user: ann,
                    exclude: vec![c1].into(),
                },
                json!({"k": "user", "u": "ann", "x": ["c1"]}),
            ),
        ];
        for (target, want) in cases {
            let mut e = envelope(Bytes::from_static(b"data: x\n\n"), target);
            e.metadata = Some(json!({"by": 1}));
            let fields = encode(&e, Epoch(1));
            let m = &fields.iter().find(|(k, _)| k == "m").unwrap().1;
            let got: serde_json::Value = serde_json::from_slice(m).unwrap();
            assert_eq!(
                got,
                json!({
                    "target": want,
                    "type": "message",
                    "data": "x",
                    "html": false,
                    "ts": e.timestamp.to_rfc3339(),
                    "meta": {"by": 1},
                })
            );
        }
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn xread_replies_are_taken_apart_in_order() {
        let fields = |seq: u64| {
            let e = envelope(
                Bytes::from(format!("data: {seq}\n\n")),
                Target::All {
                    exclude: Box::new([]),
                },
            );
            Value::Array(
                encode(&e, Epoch(3))
                    .into_iter()
                    .flat_map(|(k, v)| [bulk(k.as_bytes()), bulk(&v)])
                    .collect(),
            )
        };
        let entries = Value::Array(vec![
            Value::Array(vec![bulk(b"0-1"), fields(1)]),
            Value::Int(7), // not an entry: skipped
            Value::Array(vec![bulk(b"0-2"), fields(2)]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk(b"s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk(b"s"), entries)]);
        for reply in [resp2, resp3] {
            let got: Vec<(u64, Bytes)> = read_reply(reply)
                .into_iter()
                .map(|e| {
                    let d = decode_raw(e).unwrap();
                    (d.seq, d.envelope.body)
                })
                .collect();
            assert_eq!(
                got,
                [
                    (1, Bytes::from_static(b"data: 1\n\n")),
                    (2, Bytes::from_static(b"data: 2\n\n"))
                ]
            );
        }
        assert!(read_reply(Value::Nil).is_empty(), "a timeout");
    }

    #[test]
    fn bad_entries_are_refused_not_panicked_on() {
        let good = envelope(
            Bytes::from_static(b"data: x\n\n"),
            Target::All {
                exclude: Box::new([]),
            },
        );
        let fields = encode(&good, Epoch(1));
        assert!(decode(&entry(fields.clone(), 1)).is_ok());
        for drop in ["e", "o", "n", "m", "b"] {
            let fewer = fields.iter().filter(|(k, _)| k != drop).cloned().collect();
            assert!(decode(&entry(fewer, 1)).is_err(), "without {drop}");
        }
        let meta = fields.iter().position(|(k, _)| k == "m").unwrap();
        let mut bad_target = fields.clone();
        bad_target[meta].1 = Bytes::from(r#"{"target":{"k":"one","to":"a\nb"},"type":"x"}"#);
        assert!(decode(&entry(bad_target, 1)).is_err());
        // From a newer version of the crate: refused, not misread.
        let mut newer = fields.clone();
        newer[0].1 = Bytes::from((Envelope::FORMAT + 1).to_string());
        assert!(decode(&entry(newer, 1)).is_err());
        let mut bad_id = entry(fields, 1);
        bad_id.id = "1700000000000-0".to_owned();
        assert!(decode(&bad_id).is_err());
    }
}
