//! base64url as Web Push uses it: written without padding, read leniently.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_NO_PAD_INDIFFERENT};

/// base64url without padding, as browsers and RFC 8292 write keys.
pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads base64url with or without padding; the standard alphabet (`+`, `/`)
/// is accepted too, since some stores keep keys that way.
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    if text.contains(['+', '/']) {
        let url_safe: String = text
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        URL_SAFE_NO_PAD_INDIFFERENT.decode(url_safe)
    } else {
        URL_SAFE_NO_PAD_INDIFFERENT.decode(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_decoding() {
        assert_eq!(decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert!(decode("a b").is_err());
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }
}
