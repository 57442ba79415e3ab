//! Shared bits of the guest helper binaries (std + libc only, built static
//! with `scripts/build-guest-tools`).
