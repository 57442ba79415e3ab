//! Replays every saved fuzz input through the same function its fuzz
//! target runs, on stable: `fuzz/regressions/<target>/*` (crashes found and
//! fixed: a fixed bug stays fixed) and `fuzz/seeds/<target>/*` (the seed
//! corpus: well-formed sessions that reach deep into each target, so the
//! harness itself is exercised by the normal test suite).

use std::fs;
use std::path::PathBuf;

#[test]
fn fuzz_regressions_replay() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for (name, run) in splitvm_fuzz_harness::TARGETS {
        for kind in ["regressions", "seeds"] {
            let dir = root.join(kind).join(name);
            assert!(dir.is_dir(), "{} missing", dir.display());
            let mut files: Vec<PathBuf> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.'))
                })
                .collect();
            files.sort();
            for f in files {
                eprintln!("{name}: {}", f.display());
                run(&fs::read(&f).unwrap());
                replayed += 1;
            }
        }
    }
    eprintln!("{replayed} saved inputs replayed");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("libfuzzer");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in splitvm_fuzz_harness::TARGETS {
        let src = root.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(src.is_file(), "{} missing", src.display());
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} not a [[bin]] of fuzz/libfuzzer/Cargo.toml"
        );
    }
}

/// The seed sessions get through negotiation and queue setup: every
/// GET_* is answered, up to the GET_CONFIG after the queues are running,
/// so the fuzzer starts from a device with memory and live queues rather
/// than from the first error.
#[test]
fn vhost_seed_sessions_are_answered() {
    use splitvm_fuzz_harness::{devices, vhost_msg};
    let _ = env_logger::builder().is_test(true).try_init();
    let seed = |t: &str| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("seeds/{t}/session"));
        fs::read(p).unwrap()
    };
    // GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG, and
    // the final GET_FEATURES. (The harness does not wait for each reply
    // before the next request as a frontend does, so replies from blk's
    // message hook may overtake the daemon's.)
    let want = [1, 15, 17, 24, 1];
    let blk = vhost_msg::session(devices::blk(), &seed("vhost_user_blk"));
    let daemon: Vec<u32> = blk.iter().copied().filter(|&c| c != 31).collect();
    assert_eq!(daemon, want, "blk replies {blk:?}");
    // And GET_INFLIGHT_FD, answered by blk's own message hook.
    assert!(blk.contains(&31), "blk replies {blk:?}");
    let input = vhost_msg::session(devices::input(), &seed("vhost_user_input"));
    assert_eq!(input, want, "input replies");
}

/// A connection leaves no descriptor behind: vhost-user-backend 0.24 leaked
/// each worker's exit eventfd per connection until the backends closed it
/// themselves (`backends/src/exit.rs`); the fuzz targets hit EMFILE.
#[test]
fn vhost_sessions_leave_no_descriptors() {
    use splitvm_fuzz_harness::{devices, vhost_msg};
    let fds = || fs::read_dir("/proc/self/fd").unwrap().count();
    // Warm up: what is built once per process (image, hub) is not a leak.
    let _ = vhost_msg::session(devices::blk(), &[]);
    let _ = vhost_msg::session(devices::input(), &[]);
    let before = fds();
    for _ in 0..50 {
        let _ = vhost_msg::session(devices::blk(), &[3, 0, 0]);
        let _ = vhost_msg::session(devices::input(), &[3, 0, 0]);
    }
    let after = fds();
    // 150 with the leak; a little slack for the other tests of this binary.
    assert!(
        after < before + 10,
        "{before} -> {after} descriptors after 100 connections"
    );
}
