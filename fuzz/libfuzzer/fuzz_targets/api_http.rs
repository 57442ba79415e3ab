//! Fuzz target `api_http`: see `splitvm_fuzz_harness` for what it runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    splitvm_fuzz_harness::api::run(data);
});
