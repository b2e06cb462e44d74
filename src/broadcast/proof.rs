//! Resume proofs: the part of an event id that shows this server issued a
//! connection id to this client.
//!
//! A page's ids read `EPOCH-SEQ.ID.PROOF`, where `PROOF` is an HMAC-SHA256
//! (cut to 96 bits, as hex) over the connection id and the user the
//! connection belongs to, under the manager's resume key. A reconnecting
//! page gets its id back only when the proof holds for the user it now
//! presents; knowing a page's connection id (it is in that page's forms)
//! is not enough to take it over.

use std::fmt;
use std::sync::Arc;

use hmac::{KeyInit, Mac};

use crate::connections::{ConnectionId, UserId};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of the MAC kept in a proof.
const PROOF_BYTES: usize = 12;

/// The shortest resume key accepted from the application.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// The key resume proofs are made with.
#[derive(Clone)]
pub(crate) struct ResumeKey(Arc<[u8]>);

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    /// A fresh random key (two v4 UUIDs: 244 random bits from the
    /// operating system's generator).
    pub(crate) fn random() -> Self {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        ResumeKey(key.into())
    }

    pub(crate) fn new(key: &[u8]) -> Self {
        ResumeKey(key.into())
    }

    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, id: &ConnectionId, user: Option<&UserId>) -> HmacSha256 {
        // Infallible: HMAC takes keys of any length.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(id.as_str().as_bytes());
        // 0: anonymous; 1 then the user's id. A user id holds no control
        // characters, so the input cannot be read two ways.
        match user {
            None => mac.update(&[0]),
            Some(u) => {
                mac.update(&[1]);
                mac.update(u.as_str().as_bytes());
            }
        }
        mac
    }

    /// `ID.PROOF`: what follows `EPOCH-SEQ.` in every id the connection is
    /// sent.
    pub(crate) fn tag(&self, id: &ConnectionId, user: Option<&UserId>) -> Arc<str> {
        let digest = self.mac(id, user).finalize().into_bytes();
        let mut tag = String::with_capacity(id.as_str().len() + 1 + 2 * PROOF_BYTES);
        tag.push_str(id.as_str());
        tag.push('.');
        for b in &digest[..PROOF_BYTES] {
            tag.push(char::from(HEX[usize::from(b >> 4)]));
            tag.push(char::from(HEX[usize::from(b & 15)]));
        }
        tag.into()
    }

    /// Whether `proof` (hex, plain as [`tag`](Self::tag) writes it or
    /// [masked](masked)) was made for this connection and user; compared in
    /// constant time.
    pub(crate) fn verify(&self, id: &ConnectionId, user: Option<&UserId>, proof: &str) -> bool {
        // From a query parameter or a cookie it may be any UTF-8: only
        // ASCII hex can be a proof (and splitting below is then safe).
        if !proof.is_ascii() {
            return false;
        }
        let bytes = if proof.len() == 4 * PROOF_BYTES {
            let (mask, hidden) = proof.split_at(2 * PROOF_BYTES);
            match (
                from_hex::<PROOF_BYTES>(mask),
                from_hex::<PROOF_BYTES>(hidden),
            ) {
                (Some(mask), Some(mut hidden)) => {
                    for (h, m) in hidden.iter_mut().zip(mask) {
                        *h ^= m;
                    }
                    hidden
                }
                _ => return false,
            }
        } else {
            match from_hex::<PROOF_BYTES>(proof) {
                Some(bytes) => bytes,
                None => return false,
            }
        };
        self.mac(id, user).verify_truncated_left(&bytes).is_ok()
    }
}

/// `tag` (`ID.PROOF`, from [`ResumeKey::tag`]) with its proof masked by a
/// fresh random mask: `ID.MASK` then `PROOF xor MASK`, 48 hex digits that
/// [`ResumeKey::verify`] accepts like the plain proof. Never the same
/// twice, so that a compressed stream, which repeats the id in every
/// event, gives a BREACH attacker (who injects text into the stream and
/// watches its size) nothing to match the proof against. Used for every
/// event of a compressed stream, and for the events a stream opens with.
pub(crate) fn masked(tag: &str) -> String {
    let (id, proof) = tag.rsplit_once('.').unwrap_or((tag, ""));
    let proof = from_hex::<PROOF_BYTES>(proof).unwrap_or([0; PROOF_BYTES]);
    let mut mask = [0u8; PROOF_BYTES];
    if getrandom::fill(&mut mask).is_err() {
        // No random source: a v4 UUID's random bits (its own source may
        // differ), rather than an unmasked proof.
        mask.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..PROOF_BYTES]);
    }
    let mut out = String::with_capacity(id.len() + 1 + 4 * PROOF_BYTES);
    out.push_str(id);
    out.push('.');
    for b in mask
        .iter()
        .copied()
        .chain(proof.iter().zip(mask).map(|(p, m)| p ^ m))
    {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_proof_holds_like_the_plain_one_and_is_never_the_same() {
        let key = ResumeKey::random();
        let id = ConnectionId::new("abc").unwrap();
        let ann = UserId::new("ann").unwrap();
        let tag = key.tag(&id, Some(&ann));
        let a = masked(&tag);
        let b = masked(&tag);
        assert_ne!(a, b, "a fresh mask each time");
        for m in [&a, &b] {
            let (m_id, proof) = m.split_once('.').unwrap();
            assert_eq!(m_id, "abc");
            assert_eq!(proof.len(), 48);
            assert!(key.verify(&id, Some(&ann), proof));
            assert!(!key.verify(&id, None, proof), "another user");
            assert!(!ResumeKey::random().verify(&id, Some(&ann), proof));
            // One digit changed anywhere: refused.
            for at in [0, 23, 24, 47] {
                let mut bad = proof.as_bytes().to_vec();
                bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
                assert!(!key.verify(&id, Some(&ann), std::str::from_utf8(&bad).unwrap()));
            }
        }
        // The plain proof never appears in the masked one.
        let plain = tag.split_once('.').unwrap().1;
        assert!(!a.contains(plain) && !b.contains(plain));
    }

    #[test]
    fn a_proof_that_is_not_ascii_is_refused_without_panicking() {
        let key = ResumeKey::random();
        let id = ConnectionId::new("abc").unwrap();
        // 48 bytes with a two-byte character across the middle, and 24.
        let across = format!("{}é{}", "a".repeat(23), "a".repeat(23));
        assert_eq!(across.len(), 48);
        assert!(!key.verify(&id, None, &across));
        let short = format!("{}é{}", "a".repeat(11), "a".repeat(11));
        assert_eq!(short.len(), 24);
        assert!(!key.verify(&id, None, &short));
    }

    #[test]
    fn a_proof_holds_for_its_id_and_user_only() {
        let key = ResumeKey::random();
        let id = ConnectionId::new("abc").unwrap();
        let ann = UserId::new("ann").unwrap();
        let tag = key.tag(&id, Some(&ann));
        let (tag_id, proof) = tag.split_once('.').unwrap();
        assert_eq!(tag_id, "abc");
        assert_eq!(proof.len(), 24);
        assert!(key.verify(&id, Some(&ann), proof));
        // Another user, anonymous, another id, another key: refused.
        assert!(!key.verify(&id, Some(&UserId::new("bob").unwrap()), proof));
        assert!(!key.verify(&id, None, proof));
        assert!(!key.verify(&ConnectionId::new("abd").unwrap(), Some(&ann), proof));
        assert!(!ResumeKey::random().verify(&id, Some(&ann), proof));
        // Malformed proofs.
        for bad in [
            "",
            "00",
            &proof[..23],
            &proof.to_uppercase(),
            &format!("{proof}0"),
        ] {
            if bad != proof {
                assert!(!key.verify(&id, Some(&ann), bad), "{bad:?}");
            }
        }
        // One flipped digit.
        let mut flipped = proof.as_bytes().to_vec();
        flipped[5] = if flipped[5] == b'0' { b'1' } else { b'0' };
        assert!(!key.verify(&id, Some(&ann), std::str::from_utf8(&flipped).unwrap()));
        // The same key makes the same proof (instances sharing a key).
        assert_eq!(ResumeKey::new(key.as_bytes()).tag(&id, Some(&ann)), tag);
    }
}
