//! `splitvm-input` entry point: parse, validate, serve; log any error once
//! and exit 1. `splitvm-input send ...` runs the event-socket client.

use clap::Parser;
use splitvm_input::cli::Args;
use splitvm_input::send::{self, SendArgs};
use splitvm_input::{start_backend, Config};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("send") {
        let args = SendArgs::parse_from(std::env::args().skip(1));
        splitvm_backends::logging::init("splitvm-input", log::LevelFilter::Warn);
        let mut out = std::io::stdout();
        if let Err(e) = send::run(&args, &mut out) {
            eprintln!("splitvm-input send: {e}");
            #[allow(clippy::exit)] // main is the one exit point
            std::process::exit(1);
        }
        return;
    }
    // SAFETY: nothing in this process has opened or adopted a descriptor
    // yet.
    let inherited = unsafe { splitvm_backends::inherited::close_at_start() };
    let args = Args::parse();
    splitvm_backends::logging::init("splitvm-input", args.common.log_level);
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
