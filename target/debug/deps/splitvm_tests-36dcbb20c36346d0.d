/work/main/target/debug/deps/splitvm_tests-36dcbb20c36346d0.d: tests/src/lib.rs tests/src/proc.rs tests/src/wait.rs

/work/main/target/debug/deps/libsplitvm_tests-36dcbb20c36346d0.rlib: tests/src/lib.rs tests/src/proc.rs tests/src/wait.rs

/work/main/target/debug/deps/libsplitvm_tests-36dcbb20c36346d0.rmeta: tests/src/lib.rs tests/src/proc.rs tests/src/wait.rs

tests/src/lib.rs:
tests/src/proc.rs:
tests/src/wait.rs:

# env-dep:CARGO_MANIFEST_DIR=/work/main/tests
