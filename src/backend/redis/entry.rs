//! How an [`Envelope`] is kept in the Redis stream: one entry per
//! message, its frame bytes as they are and the rest as JSON, in a layout
//! that instances of older versions read too.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::Value;
use redis::streams::StreamId;
use serde_json::json;

use crate::backend::{Envelope, Epoch, Target};
use crate::connections::{ConnectionId, UserId};
use crate::event::EventName;
use crate::topics::Topic;

pub(super) struct Decoded {
    pub(super) seq: u64,
    pub(super) epoch: Epoch,
    pub(super) envelope: Envelope,
}

fn ids(ids: &[ConnectionId]) -> Vec<&str> {
    ids.iter().map(ConnectionId::as_str).collect()
}

pub(super) fn encode(p: &Envelope, epoch: Epoch) -> Vec<(String, Bytes)> {
    let target = match &p.target {
        Target::All { exclude } => json!({"k": "all", "x": ids(exclude)}),
        Target::One { to, user } => json!({
            "k": "one", "to": to.as_str(), "u": user.as_ref().map(UserId::as_str)
        }),
        Target::Topics {
            topics,
            private,
            exclude,
        } => json!({
            "k": "topics",
            "t": topics.iter().map(Topic::as_str).collect::<Vec<_>>(),
            "p": private,
            "x": ids(exclude),
        }),
        Target::User { user, exclude } => {
            json!({"k": "user", "u": user.as_str(), "x": ids(exclude)})
        }
    };
    let meta = json!({
        "target": target,
        "type": p.message_type.as_str(),
        "data": p.data,
        "html": p.html,
        "ts": p.timestamp.to_rfc3339(),
        "meta": p.metadata,
    });
    let mut fields = vec![
        ("v".to_owned(), Bytes::from(p.format.to_string())),
        ("e".to_owned(), Bytes::from(epoch.to_string())),
        ("o".to_owned(), Bytes::from(p.origin.to_string())),
        ("n".to_owned(), Bytes::from(p.nonce.to_string())),
        ("m".to_owned(), Bytes::from(meta.to_string())),
        ("b".to_owned(), p.body.clone()),
    ];
    if let Some(bodies) = &p.topic_bodies {
        for (i, b) in bodies.iter().enumerate() {
            fields.push((format!("t{i}"), b.clone()));
        }
    }
    fields
}

fn field_bytes(entry: &StreamId, name: &str) -> Option<Vec<u8>> {
    match entry.map.get(name)? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn field_str(entry: &StreamId, name: &str) -> Option<String> {
    String::from_utf8(field_bytes(entry, name)?).ok()
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
    let seq = entry
        .id
        .strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or("not an id of ours")?;
    let epoch = field_str(entry, "e")
        .and_then(|e| Epoch::parse(&e))
        .ok_or("no epoch")?;
    // Entries written before origins were numbers are nobody's own.
    let origin = field_str(entry, "o")
        .ok_or("no origin")?
        .parse()
        .unwrap_or(0);
    let nonce = field_str(entry, "n")
        .and_then(|n| n.parse().ok())
        .ok_or("no nonce")?;
    let meta: serde_json::Value = field_str(entry, "m")
        .and_then(|m| serde_json::from_str(&m).ok())
        .ok_or("no message")?;
    let body = Bytes::from(field_bytes(entry, "b").ok_or("no body")?);
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
    while let Some(b) = field_bytes(entry, &format!("t{}", bodies.len())) {
        bodies.push(Bytes::from(b));
    }
    let envelope = Envelope {
        format: field_str(entry, "v")
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
