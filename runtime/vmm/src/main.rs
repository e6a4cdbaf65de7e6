//! `podvisor-vmm`: one KVM micro-VM per process.

use podvisor_vmm::config::{Command, VmConfig, USAGE};
use podvisor_vmm::error::{exit_code, stop_exit_code};
use podvisor_vmm::vstate::StopReason;

fn main() {
    podvisor_vmm::logger::init();
    let cfg = match VmConfig::from_args(std::env::args().skip(1)) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{USAGE}");
            std::process::exit(exit_code::OK);
        }
        Ok(Command::Version) => {
            println!("podvisor-vmm {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(exit_code::OK);
        }
        Err(e) => {
            eprintln!("podvisor-vmm: {e}");
            std::process::exit(exit_code::USAGE);
        }
    };
    match podvisor_vmm::vmm::run(&cfg) {
        Ok(reason) => {
            let code = stop_exit_code(&reason);
            match &reason {
                StopReason::GuestCrash(msg) => eprintln!("podvisor-vmm: guest crashed: {msg}"),
                StopReason::VmmError(msg) => eprintln!("podvisor-vmm: error: {msg}"),
                other => log::info!("VM stopped: {other:?}"),
            }
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("podvisor-vmm: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
