//! File systems shared into pod VMs.

pub mod efs;
pub mod host_path;
pub mod mode;
pub mod mount_api;
pub mod share;
pub mod virtiofsd;
