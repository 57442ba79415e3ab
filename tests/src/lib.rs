//! Helpers for splitvm's integration tests: deadline waits, child-process
//! guards and the nested lab. Tests live in `tests/it/`, one file per area.

pub mod hostile;
pub mod lab;
pub mod microguest;
pub mod proc;
pub mod qemu;
pub mod stats;
pub mod wait;

use std::path::PathBuf;

/// Root of the workspace (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a binary of this workspace, built in the same profile as the tests.
///
/// `cargo test` builds the workspace's binaries before running integration
/// tests of the crate that owns them, but this crate does not own them, so
/// the test command builds them first (see README: `cargo build --workspace`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/it-xxxx -> target/<profile>/
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}
