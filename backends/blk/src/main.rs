//! `splitvm-blk` entry point: parse, validate, serve; log any error once and
//! exit 1.

use clap::Parser;
use splitvm_blk::cli::Args;
use splitvm_blk::{start_backend, Config};

fn main() {
    // SAFETY: nothing in this process has opened or adopted a descriptor
    // yet.
    let inherited = unsafe { splitvm_backends::inherited::close_at_start() };
    let args = Args::parse();
    splitvm_backends::logging::init("splitvm-blk", args.common.log_level);
    splitvm_backends::inherited::report(&inherited);
    let result = Config::try_from(args)
        .map_err(|e| e.to_string())
        .and_then(|c| start_backend(c).map_err(|e| e.to_string()));
    if let Err(e) = result {
        log::error!("{e}");
        #[allow(clippy::exit)] // main is the one exit point
        std::process::exit(1);
    }
}
