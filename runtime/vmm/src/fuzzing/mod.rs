//! Entry points for the fuzz targets in `fuzz/vmm` and for the regression
//! tests that replay their findings (`tests/fuzz_regressions.rs`): each one
//! takes the raw bytes a guest could control and drives the device model
//! with them, with guest memory in plain host memory (no KVM). Not part of
//! the VMM's API; nothing here runs in `podvisor-vmm`.

// Harness code: fuzzer bytes are cut to register, length and id widths on
// purpose, and the device code under test checks every value it is given.
#![allow(clippy::cast_possible_truncation)]

mod devices;
mod guest;
mod input;
mod mmio;

pub use devices::{virtio_block, virtio_net, virtio_rng, virtio_vsock};
pub use guest::Guest;
pub use input::Input;
pub use mmio::virtio_mmio;

/// A fuzz target's entry point: any bytes in, a panic only on a bug.
pub type Entry = fn(&[u8]);

/// Every target by name, as `fuzz/regressions/<name>/` names them.
pub const TARGETS: &[(&str, Entry)] = &[
    ("virtio_mmio", virtio_mmio),
    ("virtio_block", virtio_block),
    ("virtio_net", virtio_net),
    ("virtio_rng", virtio_rng),
    ("virtio_vsock", virtio_vsock),
];
