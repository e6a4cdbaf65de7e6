//! KVM state: the VM (memory, irqchip) and its vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stops; the first reason reported wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 reset, KVM reset event): a clean stop.
    GuestReset,
    /// The guest powered off (KVM shutdown system event).
    GuestPowerOff,
    /// Graceful shutdown asked through the control API.
    ShutdownRequested,
    /// Kill asked through the control API.
    Killed,
    /// Every vCPU halted with no way to wake up.
    AllVcpusHalted,
    /// The guest crashed (triple fault, failed entry, emulation error).
    GuestCrash(String),
    /// The VMM itself failed while running the guest.
    VmmError(String),
}

/// One-shot "the VM must stop" signal, pollable through an eventfd.
pub struct StopSignal {
    pub evt: EventFd,
    reason: Mutex<Option<StopReason>>,
}

impl StopSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    pub fn request(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
