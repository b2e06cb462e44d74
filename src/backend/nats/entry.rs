//! How an [`Envelope`] is kept in the JetStream stream: one message per
//! envelope, its number the stream sequence. The payload is the epoch and
//! the envelope's fields as JSON, then the frames as they are, each after
//! its length:
//!
//! ```text
//! u32 (big-endian) length | {"e": EPOCH, "m": ENVELOPE without frames}
//! u32 length | body
//! (u32 length | topic body)*
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::backend::{Envelope, Epoch};

#[derive(Serialize)]
struct MetaOut<'a> {
    e: Epoch,
    m: &'a Envelope,
}

#[derive(Deserialize)]
struct MetaIn {
    e: Epoch,
    m: Envelope,
}

fn put_part(buf: &mut BytesMut, part: &[u8]) -> Result<(), String> {
    let len = u32::try_from(part.len()).map_err(|_| "a part longer than 4 GiB".to_owned())?;
    buf.put_u32(len);
    buf.put_slice(part);
    Ok(())
}

fn take_part(payload: &mut Bytes) -> Result<Bytes, String> {
    if payload.remaining() < 4 {
        return Err("a truncated part".to_owned());
    }
    let len = usize::try_from(payload.get_u32()).map_err(|_| "a part too long".to_owned())?;
    if payload.remaining() < len {
        return Err("a truncated part".to_owned());
    }
    Ok(payload.split_to(len))
}

/// The payload of `envelope` published in `epoch`.
pub(super) fn encode(envelope: &Envelope, epoch: Epoch) -> Result<Bytes, String> {
    let stripped = Envelope {
        body: Bytes::new(),
        topic_bodies: None,
        ..envelope.clone()
    };
    let meta = serde_json::to_vec(&MetaOut {
        e: epoch,
        m: &stripped,
    })
    .map_err(|e| e.to_string())?;
    let bodies = envelope.topic_bodies.as_deref().unwrap_or(&[]);
    let size =
        8 + meta.len() + envelope.body.len() + bodies.iter().map(|b| 4 + b.len()).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    put_part(&mut buf, &meta)?;
    put_part(&mut buf, &envelope.body)?;
    for b in bodies {
        put_part(&mut buf, b)?;
    }
    Ok(buf.freeze())
}

/// The epoch and envelope of a payload; an error for one this version
/// cannot read (damaged, foreign, or of a newer format).
pub(super) fn decode(mut payload: Bytes) -> Result<(Epoch, Envelope), String> {
    let meta = take_part(&mut payload)?;
    let MetaIn { e, mut m } =
        serde_json::from_slice(&meta).map_err(|e| format!("bad envelope: {e}"))?;
    if m.format > Envelope::FORMAT {
        return Err(format!(
            "format {} is newer than this instance reads ({})",
            m.format,
            Envelope::FORMAT
        ));
    }
    m.body = take_part(&mut payload)?;
    let mut bodies = Vec::new();
    while payload.has_remaining() {
        bodies.push(take_part(&mut payload)?);
    }
    m.topic_bodies = (!bodies.is_empty()).then(|| bodies.into_boxed_slice());
    Ok((e, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Target;
    use crate::connections::ConnectionId;
    use crate::event::EventName;
    use crate::topics::Topic;
    use chrono::Utc;
    use serde_json::json;

    fn envelope() -> Envelope {
        Envelope {
            format: Envelope::FORMAT,
            body: Bytes::from_static(b"event: chat\ndata: <li>hi</li>\n\n"),
            topic_bodies: Some(vec![Bytes::from_static(b"event: lists/7\ndata: x\n\n")].into()),
            target: Target::Topics {
                topics: vec![Topic::new("lists/7").unwrap()].into(),
                private: true,
                exclude: vec![ConnectionId::new("c1").unwrap()].into(),
            },
            message_type: EventName::new("chat".to_owned()).unwrap(),
            data: json!({"text": "hi"}),
            html: true,
            metadata: Some(json!({"by": "ann"})),
            timestamp: Utc::now(),
            origin: 0xfeed,
            nonce: 9,
        }
    }

    #[test]
    fn payloads_round_trip() {
        let sent = envelope();
        let epoch = Epoch(0x1234_abcd);
        let (e, back) = decode(encode(&sent, epoch).unwrap()).unwrap();
        assert_eq!(e, epoch);
        assert_eq!(back, sent, "every field crosses NATS");
        let mut plain = envelope();
        plain.topic_bodies = None;
        let (_, back) = decode(encode(&plain, epoch).unwrap()).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn bad_payloads_are_refused_not_panicked_on() {
        let good = encode(&envelope(), Epoch(1)).unwrap();
        for cut in [0, 3, 4, 20, good.len() - 1] {
            assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode(Bytes::from_static(b"\xff\xff\xff\xffjunk")).is_err());
        assert!(decode(Bytes::from_static(b"\0\0\0\x02{}\0\0\0\0")).is_err());
        // From a newer version of the crate: refused, not misread.
        let mut newer = envelope();
        newer.format = Envelope::FORMAT + 1;
        assert!(decode(encode(&newer, Epoch(1)).unwrap()).is_err());
    }
}
