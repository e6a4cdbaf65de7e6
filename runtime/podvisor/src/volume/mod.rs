//! File systems shared into pod VMs.

pub mod virtiofsd;
