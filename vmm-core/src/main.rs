//! The `splitvm` binary. The only place that exits the process.

use std::process::ExitCode;

use clap::Parser;
use vmm_core::cli::{Cli, Command};
use vmm_core::config::VmConfig;
use vmm_core::vmm::Vmm;
use vmm_core::vstate::vcpu::VmExitEvent;

/// Bad input: a file, a size, a count the user gave.
const EXIT_USAGE: u8 = 2;
/// The guest or the host failed while running.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `up` reports what it starts and restarts; the VMM itself stays quiet.
    let level = match cli.command {
        Command::Up(_) | Command::Down(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Up(args) => match vmm_core::up::up(&args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("splitvm up: error: {e}");
                ExitCode::from(if e.is_user_input() {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                })
            }
        },
        Command::Down(args) => match vmm_core::up::down(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("splitvm down: error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Run(args) => run(args),
        Command::Ctl(args) => match vmm_core::ctl::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("splitvm ctl: error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

fn run(args: vmm_core::cli::RunArgs) -> ExitCode {
    let cfg = match VmConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("splitvm: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut vmm = match Vmm::build(&cfg) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("splitvm: error: {e}");
            let code = if e.is_user_input() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            return ExitCode::from(code);
        }
    };
    stop_on_signals(vmm.handle());
    let _api = match &cfg.api_socket {
        Some(path) => match vmm_core::api::http::spawn(path, vmm.handle()) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("splitvm: error: --api-socket {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let code = match vmm.run() {
        Ok(VmExitEvent::Reset | VmExitEvent::Shutdown | VmExitEvent::Killed) => ExitCode::SUCCESS,
        Ok(ev) => {
            eprintln!("splitvm: {ev}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("splitvm: error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    };
    // vCPU threads may still be inside KVM_RUN and use guest memory: end the
    // process without unmapping it first.
    std::mem::forget(vmm);
    code
}

/// SIGTERM (and SIGINT) shut the VM down gracefully, as `PUT /vm/shutdown`
/// does: the guest is paused and every device's queues are stopped, so the
/// backends finish what they have in flight before the VMM exits.
fn stop_on_signals(handle: std::sync::Arc<vmm_core::api::control::VmmHandle>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use vmm_core::api::VmmControl;
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("no SIGTERM handler ({e}): a signal ends the VMM abruptly");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("signal {sig}: shutting down");
                if let Err(e) = handle.shutdown() {
                    log::debug!("shutdown: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no signal thread ({e}): a signal ends the VMM abruptly");
    }
}
