//! The code behind splitvm's fuzz targets, kept out of the cargo-fuzz crate
//! (`fuzz/libfuzzer/`, nightly, its own workspace) so that it builds on stable as a
//! workspace member: `tests/regressions.rs` replays every input saved in
//! `fuzz/regressions/<target>/` through the same function the fuzzer ran.
//!
//! Each target is one `fn(&[u8])` in [`TARGETS`]; it must never panic or
//! hang on any input. The vhost-user targets drive the real backends'
//! `VhostUserBackend` implementations through the real daemon (and, for
//! blk and net, the real message proxy) over a socketpair; the others call
//! the parsers the backends and the VMM use.

pub mod api;
pub mod chains;
pub mod devices;
pub mod input_json;
pub mod vhost_msg;

/// A fuzz target: its name (the file in `fuzz/fuzz_targets/`) and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("vhost_user_blk", vhost_msg::run_blk),
    ("vhost_user_net", vhost_msg::run_net),
    ("vhost_user_input", vhost_msg::run_input),
    ("virtq_chains", chains::run),
    ("input_json", input_json::run),
    ("api_http", api::run),
];

/// The body of target `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
