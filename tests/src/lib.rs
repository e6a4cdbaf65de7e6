//! Fixtures shared by Podvisor's integration and end-to-end tests.

pub mod agent;
pub mod registry;
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

pub mod cpio;
pub mod critest_images;
pub mod daemon;
pub mod kubeproxy;
pub mod nested;
pub mod netns;
pub mod nfs;
pub mod streaming;
pub mod vm;

/// True when `what` is available. When not: outside CI the test prints why
/// it is skipped and returns false; in CI (`CI` set) a missing prerequisite
/// is a failure, so CI never passes by skipping.
pub fn prerequisite(test: &str, what: &str, available: bool, hint: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {what} is missing in CI: {hint}");
    }
    eprintln!("SKIPPED {test}: {what} is missing ({hint})");
    false
}
