//! File systems shared into pod VMs.

pub mod efs;
pub mod share;
pub mod virtiofsd;
