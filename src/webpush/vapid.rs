//! VAPID (RFC 8292): the application server's key pair, its contact subject,
//! and the ES256-signed JWT that goes in every request's `Authorization`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p256::SecretKey;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;

use super::b64;
use super::error::{Error, cut};

/// How long a VAPID token is valid. RFC 8292 allows at most 24 hours; push
/// services compare with their own clock, so leave a margin.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// `{"typ":"JWT","alg":"ES256"}`, base64url.
const JWT_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

/// The application server's VAPID key pair (P-256), the identity push
/// services check on every message (RFC 8292).
///
/// Make one once with [`VapidKey::generate`], keep
/// [`private_key_base64`](Self::private_key_base64) secret (an environment
/// variable, a secrets store), and give
/// [`public_key_base64`](Self::public_key_base64) to the browser as the
/// `applicationServerKey` of `pushManager.subscribe`. A subscription is bound
/// to the public key it was made with: a new key means every browser must
/// subscribe again.
///
/// `Debug` prints the public key only.
///
/// ```
/// use htmx_sse::webpush::VapidKey;
///
/// # fn main() -> Result<(), htmx_sse::webpush::Error> {
/// let key = VapidKey::generate()?;
/// let stored = key.private_key_base64();
/// let again = VapidKey::from_base64(&stored)?;
/// assert_eq!(again.public_key_base64(), key.public_key_base64());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VapidKey {
    signing: SigningKey,
    public_b64: String,
}

impl VapidKey {
    /// Makes a new random key pair with the operating system's random number
    /// generator.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if the random number generator fails.
    ///
    /// ```
    /// let key = htmx_sse::webpush::VapidKey::generate()?;
    /// assert_eq!(key.public_key_base64().len(), 87); // 65 bytes, base64url
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    pub fn generate() -> Result<Self, Error> {
        let secret = SecretKey::try_generate().map_err(Error::random)?;
        Ok(Self::from_secret(&secret))
    }

    /// Reads a private key from base64 (URL-safe or standard alphabet,
    /// padding optional): either the raw 32-byte scalar, as the `web-push`
    /// tools and [`private_key_base64`](Self::private_key_base64) write it, or
    /// a DER document (PKCS#8 or SEC1), as `py_vapid` can write it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidVapidKey`] if the text is not base64, has the wrong
    /// length, or is not a valid P-256 private key (zero, or not less than
    /// the curve order).
    ///
    /// ```
    /// use htmx_sse::webpush::{Error, VapidKey};
    ///
    /// let key = VapidKey::from_base64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")?;
    /// assert!(matches!(VapidKey::from_base64("AAAA"), Err(Error::InvalidVapidKey { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn from_base64(encoded: &str) -> Result<Self, Error> {
        let bytes = b64::decode(encoded.trim())
            .map_err(|e| Error::vapid_key(format!("not base64url: {e}")))?;
        match bytes.len() {
            32 => {
                let secret = SecretKey::from_slice(&bytes).map_err(|_| {
                    Error::vapid_key("not a P-256 private key (zero or not below the curve order)")
                })?;
                Ok(Self::from_secret(&secret))
            }
            0..32 => Err(Error::vapid_key(format!(
                "expected 32 bytes (a raw P-256 private key) or a DER document, got {} bytes",
                bytes.len()
            ))),
            _ => {
                let secret = SecretKey::from_der(&bytes).map_err(|_| {
                    Error::vapid_key(format!(
                        "expected 32 bytes (a raw P-256 private key), got {} bytes that are \
                         not a P-256 PKCS#8 or SEC1 DER document either",
                        bytes.len()
                    ))
                })?;
                Ok(Self::from_secret(&secret))
            }
        }
    }

    /// Reads a PEM private key: `-----BEGIN PRIVATE KEY-----` (PKCS#8, as
    /// `py_vapid` and `openssl genpkey` write it) or
    /// `-----BEGIN EC PRIVATE KEY-----` (SEC1, as `openssl ecparam -genkey`
    /// writes it, with or without its `EC PARAMETERS` block). Line widths and
    /// line endings do not matter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidVapidKey`] if the text holds no such block or the
    /// block is not a P-256 private key.
    ///
    /// ```
    /// use htmx_sse::webpush::{Error, VapidKey};
    ///
    /// let pem = "-----BEGIN PRIVATE KEY-----\n\
    ///     MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9icIcjV/ZsFDBV1w\n\
    ///     vPjtVjQAu7bGeGdn8L7TuzMjoaShRANCAARaygZ80444MfZSCX1Rrc0kvVZZz1/b\n\
    ///     eChq4ewHw1enUuNaErg6+T6Ah08dzJRpfBA0AaJqxCGFmpzd7gHDg6Kr\n\
    ///     -----END PRIVATE KEY-----\n";
    /// let key = VapidKey::from_pem(pem)?;
    /// assert!(matches!(VapidKey::from_pem("not pem"), Err(Error::InvalidVapidKey { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der = pem_private_key(pem).ok_or_else(|| {
            Error::vapid_key(
                "no PRIVATE KEY or EC PRIVATE KEY block of base64 found in the PEM text",
            )
        })?;
        let secret = SecretKey::from_der(&der)
            .map_err(|_| Error::vapid_key("not a PEM P-256 private key (PKCS#8 or SEC1)"))?;
        Ok(Self::from_secret(&secret))
    }

    fn from_secret(secret: &SecretKey) -> Self {
        let public = secret.public_key().to_sec1_point(false);
        Self {
            signing: SigningKey::from(secret),
            public_b64: b64::encode(public.as_bytes()),
        }
    }

    /// The public key, 65 bytes (an uncompressed P-256 point) in base64url
    /// without padding: the `applicationServerKey` for
    /// `pushManager.subscribe` in the browser, and the `k=` of every request.
    ///
    /// ```
    /// let key = htmx_sse::webpush::VapidKey::generate()?;
    /// assert!(key.public_key_base64().starts_with('B')); // 0x04 prefix
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn public_key_base64(&self) -> &str {
        &self.public_b64
    }

    /// The private key, the raw 32-byte scalar in base64url without padding,
    /// the format [`from_base64`](Self::from_base64) reads. Keep it secret.
    ///
    /// ```
    /// let key = htmx_sse::webpush::VapidKey::generate()?;
    /// assert_eq!(key.private_key_base64().len(), 43);
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn private_key_base64(&self) -> String {
        b64::encode(&self.signing.to_bytes())
    }

    /// The `Authorization` header value for one audience (the origin of a
    /// push endpoint): `vapid t=<ES256 JWT>, k=<public key>`.
    pub(crate) fn authorization(&self, audience: &str, subject: &VapidSubject) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let exp = (now + TOKEN_LIFETIME).as_secs();
        let claims = serde_json::json!({ "aud": audience, "exp": exp, "sub": subject.as_str() });
        let mut token = String::with_capacity(256);
        token.push_str(JWT_HEADER);
        token.push('.');
        token.push_str(&b64::encode(claims.to_string().as_bytes()));
        let signature: Signature = self.signing.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64::encode(&signature.to_bytes()));
        format!("vapid t={token}, k={}", self.public_b64)
    }
}

/// The DER bytes of the first `PRIVATE KEY` or `EC PRIVATE KEY` block of a
/// PEM text (RFC 7468 framing, read leniently: any line width, CRLF, other
/// blocks such as `EC PARAMETERS` skipped).
fn pem_private_key(pem: &str) -> Option<Vec<u8>> {
    let mut lines = pem.lines().map(str::trim);
    let label = loop {
        let line = lines.next()?;
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .filter(|l| matches!(*l, "PRIVATE KEY" | "EC PRIVATE KEY"))
        {
            break label;
        }
    };
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines {
        if line == end {
            return b64::decode(&body).ok();
        }
        body.push_str(line);
    }
    None
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .finish_non_exhaustive()
    }
}

/// The contact for the push service's operators, the `sub` claim of the
/// VAPID token: a `mailto:` address or an `https:` URL (RFC 8292 section 2.1).
///
/// Use a real address: some push services (Apple's) refuse `localhost` URLs
/// and malformed addresses.
///
/// ```
/// use htmx_sse::webpush::VapidSubject;
///
/// let subject = VapidSubject::new("mailto:ops@example.com")?;
/// assert_eq!(subject.as_str(), "mailto:ops@example.com");
/// assert!(VapidSubject::new("ops@example.com").is_err());
/// # Ok::<(), htmx_sse::webpush::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VapidSubject(String);

impl VapidSubject {
    /// Checks and wraps a subject.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSubject`] unless the subject is `mailto:` followed by
    /// an address with an `@`, or an `https:` URL with a host; whitespace and
    /// control characters are refused.
    ///
    /// ```
    /// use htmx_sse::webpush::VapidSubject;
    ///
    /// assert!(VapidSubject::new("https://example.com/contact").is_ok());
    /// assert!(VapidSubject::new("http://example.com").is_err());
    /// ```
    pub fn new(subject: impl Into<String>) -> Result<Self, Error> {
        let subject = subject.into();
        let fail = |reason| {
            Err(Error::InvalidSubject {
                subject: cut(&subject),
                reason,
            })
        };
        if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("contains whitespace or a control character");
        }
        if let Some(address) = subject.strip_prefix("mailto:") {
            match address.split_once('@') {
                Some((user, host)) if !user.is_empty() && !host.is_empty() => Ok(Self(subject)),
                _ => fail("expected mailto: followed by an email address"),
            }
        } else if subject.starts_with("https:") {
            match reqwest::Url::parse(&subject) {
                Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(Self(subject)),
                _ => fail("not a valid https: URL"),
            }
        } else {
            fail("expected a mailto: address or an https: URL")
        }
    }

    /// The subject as given.
    ///
    /// ```
    /// let s = htmx_sse::webpush::VapidSubject::new("mailto:a@b.example")?;
    /// assert_eq!(s.as_str(), "mailto:a@b.example");
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VapidSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    use super::*;

    #[test]
    fn jwt_header_constant_is_the_es256_header() {
        assert_eq!(
            b64::decode(JWT_HEADER).unwrap(),
            br#"{"typ":"JWT","alg":"ES256"}"#
        );
    }

    #[test]
    fn authorization_is_a_verifiable_es256_jwt() {
        let key = VapidKey::generate().unwrap();
        let subject = VapidSubject::new("mailto:ops@example.com").unwrap();
        let header = key.authorization("https://push.example.net", &subject);
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (token, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, key.public_key_base64());
        let (signed, sig) = token.rsplit_once('.').unwrap();
        let verifying = VerifyingKey::from_sec1_bytes(&b64::decode(k).unwrap()).unwrap();
        let sig = Signature::from_slice(&b64::decode(sig).unwrap()).unwrap();
        verifying.verify(signed.as_bytes(), &sig).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64::decode(signed.split_once('.').unwrap().1).unwrap())
                .unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > now && exp <= now + 24 * 3600);
    }

    #[test]
    fn debug_hides_the_private_key() {
        let key = VapidKey::generate().unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(key.public_key_base64()));
        assert!(!debug.contains(&key.private_key_base64()));
    }

    #[test]
    fn subjects() {
        for ok in [
            "mailto:ops@example.com",
            "https://example.com",
            "https://example.com/x",
        ] {
            assert!(VapidSubject::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ops@example.com",
            "mailto:",
            "mailto:ops",
            "mailto:@example.com",
            "mailto: ops@example.com",
            "http://example.com",
            "https://",
            "https:// example.com",
        ] {
            assert!(
                matches!(VapidSubject::new(bad), Err(Error::InvalidSubject { .. })),
                "{bad}"
            );
        }
    }
}
