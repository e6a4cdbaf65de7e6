//! File systems shared into pod VMs.

pub mod share;
pub mod virtiofsd;
