//! Top-level error and the process exit codes.

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::control::ControlError;
use crate::privileges::PrivilegeError;
use crate::seccomp::SeccompError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;
use crate::vstate::StopReason;

/// Process exit codes (documented in `--help` and the README of the crate).
pub mod exit_code {
    /// The guest stopped itself (reset, power-off) or a graceful shutdown was asked.
    pub const OK: i32 = 0;
    /// The VMM failed while the guest was running.
    pub const VMM_ERROR: i32 = 1;
    /// Bad command line or config file.
    pub const USAGE: i32 = 2;
    /// /dev/kvm missing, inaccessible or lacking a needed capability.
    pub const KVM: i32 = 3;
    /// Kernel, initrd or command line could not be loaded.
    pub const BOOT: i32 = 4;
    /// Guest memory could not be created (too large, too small, mmap failed).
    pub const MEMORY: i32 = 5;
    /// A device could not be set up (tap, block file, sockets, vhost-user backend).
    pub const DEVICE: i32 = 6;
    /// The guest crashed (triple fault, failed VM entry, KVM emulation error).
    pub const GUEST_CRASH: i32 = 7;
    /// Killed through the control API.
    pub const KILLED: i32 = 8;
    /// Dropping privileges or installing seccomp filters failed.
    pub const CONFINEMENT: i32 = 9;
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("block device {path}: {source}")]
    Block {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("net device: {0}")]
    Net(String),
    #[error("vsock device: {0}")]
    Vsock(String),
    #[error("fs device {tag}: {msg}")]
    Fs { tag: String, msg: String },
    #[error("console {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("too many virtio devices (at most {0})")]
    TooMany(u32),
    #[error("wiring device to KVM (irqfd/ioeventfd): {0}")]
    Kvm(std::io::Error),
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("creating event fds: {0}")]
    Events(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
}

impl VmmError {
    pub fn exit_code(&self) -> i32 {
        use crate::vstate::memory::MemoryError;
        match self {
            VmmError::Config(_) => exit_code::USAGE,
            VmmError::Vm(VmError::Memory(MemoryError::Memfd(_) | MemoryError::Mmap(_)))
            | VmmError::Vm(VmError::Memory(_)) => exit_code::MEMORY,
            VmmError::Vm(VmError::SetMemoryRegion(_)) => exit_code::MEMORY,
            VmmError::Vm(_) | VmmError::Vcpu(_) => exit_code::KVM,
            VmmError::Boot(_) => exit_code::BOOT,
            VmmError::Device(_) | VmmError::Control(_) => exit_code::DEVICE,
            VmmError::Privileges(_) | VmmError::Seccomp(_) => exit_code::CONFINEMENT,
            VmmError::EventLoop(_) => exit_code::VMM_ERROR,
        }
    }
}

/// Exit code for the way the VM stopped.
pub fn stop_exit_code(reason: &StopReason) -> i32 {
    match reason {
        StopReason::GuestReset
        | StopReason::GuestPowerOff
        | StopReason::ShutdownRequested
        | StopReason::AllVcpusHalted => exit_code::OK,
        StopReason::Killed => exit_code::KILLED,
        StopReason::GuestCrash(_) => exit_code::GUEST_CRASH,
        StopReason::VmmError(_) => exit_code::VMM_ERROR,
    }
}
