//! Fixtures shared by Podvisor's integration and end-to-end tests.

pub mod agent;
pub mod rootfs;

/// True when the test may do what only root can (mounts, cgroups). When not,
/// prints why the test is skipped: a skip is never silent.
pub fn running_as_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (mounts, namespaces, cgroups)");
    false
}
