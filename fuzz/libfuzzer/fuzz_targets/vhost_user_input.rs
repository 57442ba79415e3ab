//! Fuzz target `vhost_user_input`: see `splitvm_fuzz_harness` for what it runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    splitvm_fuzz_harness::vhost_msg::run_input(data);
});
