/work/main/target/debug/libsplitvm_tests.rlib: /work/main/tests/src/lib.rs /work/main/tests/src/proc.rs /work/main/tests/src/wait.rs
