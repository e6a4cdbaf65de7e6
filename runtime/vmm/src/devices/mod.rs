//! Device model: the port-I/O and MMIO buses, legacy PC devices and the
//! virtio-mmio devices.

pub mod bus;
pub mod legacy;
pub mod virtio;
