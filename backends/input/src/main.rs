//! `splitvm-input`: the vhost-user input backend. Not implemented yet: it takes
//! the common backend arguments and exits 1 so that callers see a clear error.

use clap::Parser;
use splitvm_backends::cli::CommonArgs;

/// splitvm vhost-user input backend (not implemented yet).
#[derive(Parser, Debug)]
#[command(name = "splitvm-input", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    let args = Args::parse();
    splitvm_backends::logging::init("splitvm-input", args.common.log_level);
    log::debug!("socket {}", args.common.socket_path.display());
    eprintln!("splitvm-input: not implemented yet");
    #[allow(clippy::exit)] // main is the one exit point
    std::process::exit(1);
}
