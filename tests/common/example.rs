//! An example's binary for tests that run it as its own process.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/debug/examples/NAME`, built with this test's features by
/// `cargo build --example NAME` (a no-op when it is fresh, and the library
/// is not built again): `cargo test` does not build every example as a
/// binary (one with `test = true` is built as its test instead), and
/// `cargo test --test X` builds none.
pub fn example_binary(name: &str) -> PathBuf {
    let features: Vec<&str> = [
        ("maud", cfg!(feature = "maud")),
        ("askama", cfg!(feature = "askama")),
        ("jwt", cfg!(feature = "jwt")),
        ("testing", cfg!(feature = "testing")),
        ("redis", cfg!(feature = "redis")),
        ("metrics", cfg!(feature = "metrics")),
        ("compression", cfg!(feature = "compression")),
        ("nats", cfg!(feature = "nats")),
        ("webpush", cfg!(feature = "webpush")),
        ("webpush-rustls", cfg!(feature = "webpush-rustls")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .args(["--no-default-features", "--features", &features.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}
