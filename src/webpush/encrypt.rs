//! RFC 8291 message encryption: one `aes128gcm` record (RFC 8188) keyed by an
//! ECDH agreement with the subscriber's key and its auth secret.
//!
//! Every primitive comes from RustCrypto (`p256` ECDH, `hkdf` with `sha2`,
//! `aes-gcm`); this file only composes them as RFC 8291 section 3.4 says:
//!
//! ```text
//! ecdh_secret = ECDH(as_private, ua_public)
//! IKM   = HKDF(salt = auth_secret, ikm = ecdh_secret,
//!              info = "WebPush: info" 0x00 ua_public as_public, L = 32)
//! PRK   = HKDF-Extract(salt, IKM)
//! CEK   = HKDF-Expand(PRK, "Content-Encoding: aes128gcm" 0x00, 16)
//! NONCE = HKDF-Expand(PRK, "Content-Encoding: nonce" 0x00, 12)
//! body  = salt(16) rs(4) idlen(1) = 65 keyid = as_public(65)
//!         AES-128-GCM(CEK, NONCE, plaintext 0x02)
//! ```

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::elliptic_curve::zeroize::Zeroize;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use super::Error;

/// The largest payload, in bytes, that fits in one push message: 3993.
///
/// RFC 8030 section 7.2 only obliges a push service to accept 4096 bytes of
/// message body, and RFC 8291 section 4 sends one `aes128gcm` record:
///
/// ```text
///   4096  push message body a push service must accept
/// -   86  header: salt (16) + record size (4) + key id length (1) + sender key (65)
/// -   16  AES-GCM authentication tag
/// -    1  padding delimiter (0x02, "last record")
/// = 3993  plaintext
/// ```
///
/// Larger payloads are refused with
/// [`Error::PayloadTooLarge`](super::Error::PayloadTooLarge) before anything
/// is sent.
///
/// ```
/// assert_eq!(htmx_sse::webpush::MAX_PAYLOAD_LEN, 4096 - 86 - 16 - 1);
/// ```
pub const MAX_PAYLOAD_LEN: usize = 4096 - HEADER_LEN - TAG_LEN - 1;

/// The record size written in the header (RFC 8291 uses 4096).
const RECORD_SIZE: u32 = 4096;
/// salt (16) + rs (4) + idlen (1) + keyid (65).
pub(crate) const HEADER_LEN: usize = 16 + 4 + 1 + 65;
const TAG_LEN: usize = 16;
/// The padding delimiter of the last (here: only) record, RFC 8188 section 2.
const LAST_RECORD: u8 = 0x02;

/// Encrypts `plaintext` for a subscriber with a fresh sender key pair and a
/// fresh salt, as every real message must be.
pub(crate) fn encrypt(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth_secret: &[u8; 16],
) -> Result<Vec<u8>, Error> {
    check_size(plaintext.len())?;
    let as_secret = SecretKey::try_generate().map_err(Error::random)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(Error::random)?;
    encrypt_with(plaintext, ua_public, auth_secret, &as_secret, &salt)
}

pub(crate) fn check_size(size: usize) -> Result<(), Error> {
    if size > MAX_PAYLOAD_LEN {
        return Err(Error::PayloadTooLarge {
            size,
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(())
}

/// The keys RFC 8291 derives; kept apart so the tests can compare each one
/// with the RFC's Appendix A.
pub(crate) struct Derived {
    pub(crate) ikm: [u8; 32],
    pub(crate) prk: [u8; 32],
    pub(crate) cek: [u8; 16],
    pub(crate) nonce: [u8; 12],
}

impl Drop for Derived {
    fn drop(&mut self) {
        self.ikm.zeroize();
        self.prk.zeroize();
        self.cek.zeroize();
        self.nonce.zeroize();
    }
}

/// RFC 8291 section 3.3 and 3.4: the content encryption key and nonce.
pub(crate) fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8; 16],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8; 16],
) -> Derived {
    // The lengths below are constants within HKDF-SHA256's limit (255 * 32).
    const OK: &str = "HKDF-SHA256 output lengths of 32, 16 and 12 are valid";
    let mut keys = Derived {
        ikm: [0; 32],
        prk: [0; 32],
        cek: [0; 16],
        nonce: [0; 12],
    };
    let key_hkdf = Hkdf::<Sha256>::new(Some(auth_secret), ecdh_secret);
    key_hkdf
        .expand_multi_info(&[b"WebPush: info\0", ua_public, as_public], &mut keys.ikm)
        .expect(OK);
    let (mut prk, hkdf) = Hkdf::<Sha256>::extract(Some(salt), &keys.ikm);
    keys.prk.copy_from_slice(&prk);
    prk.zeroize();
    hkdf.expand(b"Content-Encoding: aes128gcm\0", &mut keys.cek)
        .expect(OK);
    hkdf.expand(b"Content-Encoding: nonce\0", &mut keys.nonce)
        .expect(OK);
    keys
}

/// Encrypts with a given sender key and salt. Only the RFC 8291 worked
/// example may reuse them; real messages go through [`encrypt`].
pub(crate) fn encrypt_with(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth_secret: &[u8; 16],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, Error> {
    check_size(plaintext.len())?;
    let ua_bytes = ua_public.to_sec1_point(false);
    let as_bytes = as_secret.public_key().to_sec1_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    let keys = derive(
        shared.raw_secret_bytes(),
        auth_secret,
        ua_bytes.as_bytes(),
        as_bytes.as_bytes(),
        salt,
    );

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_bytes.as_bytes());
    debug_assert_eq!(body.len(), HEADER_LEN);
    body.extend_from_slice(plaintext);
    body.push(LAST_RECORD);

    let cipher = Aes128Gcm::new(&keys.cek.into());
    // AES-GCM only fails on inputs near 64 GiB; the size was checked above.
    let tag = cipher
        .encrypt_inout_detached(&keys.nonce.into(), &[], (&mut body[HEADER_LEN..]).into())
        .map_err(|_| Error::PayloadTooLarge {
            size: plaintext.len(),
            max: MAX_PAYLOAD_LEN,
        })?;
    body.extend_from_slice(&tag);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    // RFC 8291 section 5 and Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const ECDH_SECRET: &str = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs";
    const IKM: &str = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg";
    const PRK: &str = "09_eUZGrsvxChDCGRCdkLiDXrReGOEVeSCdCcPBSJSc";
    const CEK: &str = "oIhVW04MRdy2XN9CiKLxTg";
    const NONCE: &str = "4h_95klXJ5E_qnoN";
    const BODY: &str = concat!(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmY",
        "WAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexS",
        "gSxsj_Qulcy4a-fN",
    );

    fn d(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    fn rfc_inputs() -> (PublicKey, [u8; 16], SecretKey, [u8; 16]) {
        let ua = PublicKey::from_sec1_bytes(&d(UA_PUBLIC)).unwrap();
        let auth: [u8; 16] = d(AUTH).try_into().unwrap();
        let as_secret = SecretKey::from_slice(&d(AS_PRIVATE)).unwrap();
        let salt: [u8; 16] = d(SALT).try_into().unwrap();
        (ua, auth, as_secret, salt)
    }

    #[test]
    fn rfc8291_worked_example_byte_for_byte() {
        let (ua, auth, as_secret, salt) = rfc_inputs();
        assert_eq!(
            B64.encode(as_secret.public_key().to_sec1_point(false).as_bytes()),
            AS_PUBLIC
        );
        let body = encrypt_with(PLAINTEXT.as_bytes(), &ua, &auth, &as_secret, &salt).unwrap();
        assert_eq!(B64.encode(&body), BODY);
        assert_eq!(body.len(), HEADER_LEN + PLAINTEXT.len() + 1 + TAG_LEN);
    }

    #[test]
    fn rfc8291_appendix_a_intermediate_keys() {
        let (ua, auth, as_secret, salt) = rfc_inputs();
        let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
        assert_eq!(B64.encode(shared.raw_secret_bytes()), ECDH_SECRET);
        let keys = derive(
            shared.raw_secret_bytes(),
            &auth,
            &d(UA_PUBLIC),
            &d(AS_PUBLIC),
            &salt,
        );
        assert_eq!(B64.encode(keys.ikm), IKM);
        assert_eq!(B64.encode(keys.prk), PRK);
        assert_eq!(B64.encode(keys.cek), CEK);
        assert_eq!(B64.encode(keys.nonce), NONCE);
    }

    #[test]
    fn header_layout() {
        let (ua, auth, _, _) = rfc_inputs();
        let body = encrypt(b"hi", &ua, &auth).unwrap();
        assert_eq!(&body[16..20], &[0, 0, 0x10, 0]);
        assert_eq!(body[20], 65);
        assert_eq!(body[21], 0x04);
        assert_eq!(body.len(), HEADER_LEN + 2 + 1 + TAG_LEN);
    }

    #[test]
    fn fresh_key_and_salt_per_message() {
        let (ua, auth, _, _) = rfc_inputs();
        let a = encrypt(b"same", &ua, &auth).unwrap();
        let b = encrypt(b"same", &ua, &auth).unwrap();
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "sender key");
    }

    #[test]
    fn largest_payload_fills_exactly_4096_bytes() {
        let (ua, auth, _, _) = rfc_inputs();
        let body = encrypt(&[7; MAX_PAYLOAD_LEN], &ua, &auth).unwrap();
        assert_eq!(body.len(), 4096);
        let err = encrypt(&[7; MAX_PAYLOAD_LEN + 1], &ua, &auth).unwrap_err();
        assert!(matches!(
            err,
            Error::PayloadTooLarge {
                size: 3994,
                max: 3993
            }
        ));
    }
}
