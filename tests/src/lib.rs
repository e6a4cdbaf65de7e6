//! Fixtures shared by Podvisor's integration and end-to-end tests.

pub mod agent;
pub mod registry;
pub mod rootfs;

/// True when the test may do what only root can (mounts, cgroups); the
/// workspace's one skip rule ([`podvisor_test_skip`]): a failure in CI, a
/// logged skip elsewhere.
pub use podvisor_test_skip::require_root as running_as_root;

pub mod cpio;
pub mod critest_images;
pub mod daemon;
pub mod kubeproxy;
pub mod nested;
pub mod netns;
pub mod nfs;
pub mod streaming;
pub mod vm;

/// True when `what` is available; the workspace's one skip rule
/// ([`podvisor_test_skip::require`]): in CI a missing prerequisite is a
/// failure, elsewhere a skip written to stderr and `PODVISOR_SKIP_LOG`.
pub use podvisor_test_skip::require as prerequisite;
