//! The pod's shared PID namespace (CRI `NamespaceMode::POD`,
//! Kubernetes' shareProcessNamespace).
//!
//! A holder process is PID 1 of a fresh PID namespace; containers created
//! with `PID_NAMESPACE_POD` join it through `/proc/<holder>/ns/pid`, so they
//! see each other's processes and a PID 1 that belongs to none of them, as
//! under kubelet's pause container. The holder reaps the namespace's
//! orphans. It is started with the first container that asks for the
//! namespace and killed when the last one is deleted (which also ends
//! whatever is left in the namespace), so nothing outlives its users.

use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{AgentError, Result};
use crate::reaper::Reaper;

/// The holder's stack: it calls a handful of libc functions and no more.
const HOLDER_STACK: usize = 64 * 1024;

/// The holder of the pod's PID namespace, and how many containers use it.
#[derive(Default)]
pub struct PodPidNamespace {
    holder: Option<Pid>,
    users: usize,
}

impl PodPidNamespace {
    /// The namespace's path for one more container, starting the holder
    /// if no container uses the namespace yet. Call from blocking code.
    pub fn acquire(&mut self, reaper: &Reaper) -> Result<PathBuf> {
        let pid = match self.holder {
            Some(pid) => pid,
            None => {
                let pid = spawn_holder(reaper)?;
                tracing::info!(pid = pid.as_raw(), "pod PID namespace created");
                self.holder = Some(pid);
                pid
            }
        };
        self.users += 1;
        Ok(ns_path(pid))
    }

    /// One container less; the last one ends the holder.
    pub fn release(&mut self) {
        self.users = self.users.saturating_sub(1);
        if self.users == 0 {
            if let Some(pid) = self.holder.take() {
                // The agent's child, not yet reaped: the pid is still ours.
                match kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(nix::Error::ESRCH) => {}
                    Err(e) => {
                        tracing::warn!(%e, pid = pid.as_raw(), "killing the PID namespace holder")
                    }
                }
                tracing::info!(pid = pid.as_raw(), "pod PID namespace released");
            }
        }
    }

    #[cfg(test)]
    pub fn holder(&self) -> Option<Pid> {
        self.holder
    }
}

impl Drop for PodPidNamespace {
    fn drop(&mut self) {
        self.users = 0;
        self.release();
    }
}

pub fn ns_path(pid: Pid) -> PathBuf {
    PathBuf::from(format!("/proc/{}/ns/pid", pid.as_raw()))
}

fn spawn_holder(reaper: &Reaper) -> Result<Pid> {
    let mut stack = vec![0u8; HOLDER_STACK];
    // Registered under the guard, so the reaper cannot take its exit status
    // unclaimed; nobody waits for it, the receiver is dropped.
    let guard = reaper.spawn_guard();
    // SAFETY: the child runs `holder_main`, which only makes async-signal-
    // safe system calls and never returns, on its own copy of the memory.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(holder_main),
            &mut stack,
            CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| AgentError::sys("clone a PID namespace holder", e))?;
    drop(guard.register(pid));
    Ok(pid)
}

/// PID 1 of the pod's namespace: holds it open and reaps orphans. Signals
/// from inside the namespace cannot reach it (an init ignores signals it
/// has no handler for, and every signal is blocked here); the agent ends it
/// with SIGKILL.
fn holder_main() -> isize {
    // SAFETY: plain system calls on local memory, in a single-threaded child.
    unsafe {
        // None of the agent's descriptors: its sockets and the containers'
        // pipes must close when the agent closes them.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_NAME, c"pod-pid-ns".as_ptr());
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        loop {
            // A blocked SIGCHLD stays pending, so none is lost between waits.
            libc::sigwaitinfo(&chld, std::ptr::null_mut());
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn holder_lives_while_used_and_is_pid_1_of_its_namespace() {
        if !root() {
            eprintln!("SKIPPED holder_lives_while_used: needs root (CLONE_NEWPID)");
            return;
        }
        let reaper = Reaper::new();
        let mut ns = PodPidNamespace::default();
        let first = ns.acquire(&reaper).unwrap();
        let second = ns.acquire(&reaper).unwrap();
        assert_eq!(first, second, "one namespace for the pod");
        let pid = ns.holder().unwrap();
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let held = std::fs::read_link(&first).unwrap();
        assert_ne!(own, held, "the holder has a namespace of its own");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");

        ns.release();
        assert_eq!(ns.holder(), Some(pid), "one user left");
        ns.release();
        assert_eq!(ns.holder(), None);
        // Killed: it becomes a zombie of ours, or is gone once reaped.
        for _ in 0..100 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z") {
                let _ = nix::sys::wait::waitpid(pid, None);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the holder survived its release");
    }
}
