//! `splitvm-net`: the vhost-user net backend. Not implemented yet: it takes
//! the common backend arguments and exits 1 so that callers see a clear error.

use clap::Parser;
use splitvm_backends::cli::CommonArgs;

/// splitvm vhost-user net backend (not implemented yet).
#[derive(Parser, Debug)]
#[command(name = "splitvm-net", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    let args = Args::parse();
    splitvm_backends::logging::init("splitvm-net", args.common.log_level);
    log::debug!("socket {}", args.common.socket_path.display());
    eprintln!("splitvm-net: not implemented yet");
    #[allow(clippy::exit)] // main is the one exit point
    std::process::exit(1);
}
