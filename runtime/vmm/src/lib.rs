//! podvisor-vmm: a small KVM micro-VMM that runs one pod's VM per process.
//!
//! Layout: [`boot`] prepares guest memory and the entry state, [`vstate`]
//! owns KVM objects (VM, vCPUs), [`devices`] is the device model (buses,
//! legacy devices, virtio-mmio), [`control`] is the API socket, [`seccomp`]
//! and [`privileges`] confine the process after setup, [`vmm`] wires it all
//! together and runs the event loop.

pub mod boot;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod logger;
pub mod metrics;
pub mod privileges;
pub mod seccomp;
pub mod test_guest;
pub mod vmm;
pub mod vstate;
