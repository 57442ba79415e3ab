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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
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
    let sandbox = args.sandbox;
    let cfg = match VmConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("splitvm: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before any thread: Landlock binds the calling thread and its later
    // threads only.
    if let Err(e) = vmm_core::sandbox::restrict_files(sandbox, &cfg) {
        eprintln!("splitvm: error: sandbox: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
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
    match vmm_core::sandbox::restrict_syscalls(sandbox) {
        Ok(vcpu) => vmm.set_vcpu_filter(vcpu),
        Err(e) => {
            eprintln!("splitvm: error: sandbox: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
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
