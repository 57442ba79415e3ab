//! vmm-core: the splitvm VMM. Its process does only CPU and memory
//! virtualization, boot, the serial console and (later) the virtio-mmio
//! transport registers; devices live in separate vhost-user backends.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod arch;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod devices;
pub mod up;
pub mod vhost_user;
pub mod vmm;
pub mod vstate;
