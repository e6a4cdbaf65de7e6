//! A network namespace per test: the daemon creates taps, routes and
//! nftables rules for its pods, and none of that may touch the host's
//! network. The namespace lives as long as the test's process and the
//! processes it starts (daemon, VMs, registry), so nothing is left to
//! delete.

use std::future::Future;
use std::process::Command;

use nix::sched::{unshare, CloneFlags};

/// Runs `test_body` on a tokio runtime whose threads, and every process
/// they start, are in a fresh network namespace with loopback up. Skips
/// (returns None) without root.
pub fn isolated<F: Future>(test: &str, test_body: F) -> Option<F::Output> {
    if !crate::running_as_root(test) {
        return None;
    }
    // Only this thread moves; the runtime's threads are created after, as
    // its children, and inherit the namespace.
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("running ip (iproute2)");
    assert!(lo.success(), "ip link set lo up failed");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    Some(runtime.block_on(test_body))
}
