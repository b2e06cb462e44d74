//! Test keys made with the openssl command line tool (Debian package
//! `openssl`, which scripts/test.sh installs).

use std::path::PathBuf;
use std::process::Command;

/// Keys made for this run with the openssl command line tool.
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// Makes EC (P-256, SEC1 and PKCS#8) and RSA (2048) key pairs: `ec.pem`,
    /// `ec8.pem`, `ec.pub`, `rsa.pem`, `rsa.pub`, in a folder named after `tag`.
    pub fn make(tag: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("htmx-sse-{tag}-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl not found: apt-get install -y openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ]);
        run(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "ec8.pem",
        ]);
        run(&["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ]);
        run(&["rsa", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
        Keys { dir }
    }
    /// The bytes of one of the files.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unpadded base64url, as JWTs are written (for hand-made tokens).
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}
