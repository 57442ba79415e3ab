//! Fuzz target `input_json`: see `splitvm_fuzz_harness` for what it runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    splitvm_fuzz_harness::input_json::run(data);
});
