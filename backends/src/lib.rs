//! Code shared by the splitvm vhost-user backends (`splitvm-blk`,
//! `splitvm-net`, `splitvm-input`): the common command line, the one serve
//! loop every backend runs, the listening socket (own or inherited), and logging setup for the binaries.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod abi;
pub mod avail;
pub mod backing;
pub mod cli;
pub mod daemon;
pub mod exit;
pub mod inherited;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod sandbox;
