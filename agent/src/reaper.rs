//! Collects the exit status of every child, including orphans re-parented to
//! the agent (it is PID 1 in the guest, a subreaper in host mode).
//!
//! One reaper owns `waitpid`; everything else subscribes by pid. libcontainer
//! waits for its own helper process while it builds a container, so builds
//! hold the [`SpawnGuard`] and the reaper does not run meanwhile; the pid of
//! the new process is registered before the guard is released, so its exit
//! can never be reaped unclaimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended, as the reaper saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal when killed by a signal.
    pub code: i32,
    /// The terminating signal, 0 for a normal exit.
    pub signal: i32,
    pub at: SystemTime,
}

pub type ExitReceiver = watch::Receiver<Option<Exit>>;

#[derive(Default)]
struct Subscribers {
    by_pid: HashMap<i32, watch::Sender<Option<Exit>>>,
}

#[derive(Clone)]
pub struct Reaper {
    subscribers: Arc<Mutex<Subscribers>>,
    spawn_gate: Arc<Mutex<()>>,
}

/// Held while a child is being created; see the module comment.
pub struct SpawnGuard<'a> {
    reaper: &'a Reaper,
    _gate: MutexGuard<'a, ()>,
}

impl SpawnGuard<'_> {
    /// Subscribes to the exit of a process created under this guard.
    pub fn register(&self, pid: Pid) -> ExitReceiver {
        self.reaper.register(pid)
    }
}

impl Default for Reaper {
    fn default() -> Self {
        Self::new()
    }
}

impl Reaper {
    pub fn new() -> Self {
        Reaper {
            subscribers: Arc::new(Mutex::new(Subscribers::default())),
            spawn_gate: Arc::new(Mutex::new(())),
        }
    }

    /// Blocks reaping until the guard is dropped. Call from blocking code.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            reaper: self,
            _gate: self.spawn_gate.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn register(&self, pid: Pid) -> ExitReceiver {
        let (tx, rx) = watch::channel(None);
        self.lock_subscribers().by_pid.insert(pid.as_raw(), tx);
        rx
    }

    fn lock_subscribers(&self) -> MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs forever: reaps on every SIGCHLD, and once a second as a safety
    /// net against coalesced signals that arrived while a build held the gate.
    pub async fn run(self) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, "cannot watch SIGCHLD; falling back to polling");
                loop {
                    self.reap_in_background().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.reap_in_background().await;
        }
    }

    async fn reap_in_background(&self) {
        let reaper = self.clone();
        // The gate may be held by a build for tens of milliseconds.
        let _ = tokio::task::spawn_blocking(move || reaper.reap_all()).await;
    }

    /// Reaps every child that has exited; returns how many.
    pub fn reap_all(&self) -> usize {
        let _gate = self.spawn_gate.lock().unwrap_or_else(|e| e.into_inner());
        let mut reaped = 0;
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.deliver(pid, code, 0);
                    reaped += 1;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.deliver(pid, 128 + sig as i32, sig as i32);
                    reaped += 1;
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return reaped;
                }
            }
        }
    }

    fn deliver(&self, pid: Pid, code: i32, signal: i32) {
        let exit = Exit {
            code,
            signal,
            at: SystemTime::now(),
        };
        match self.lock_subscribers().by_pid.remove(&pid.as_raw()) {
            Some(tx) => {
                tracing::debug!(pid = pid.as_raw(), code, signal, "process exited");
                let _ = tx.send(Some(exit));
            }
            None => tracing::trace!(pid = pid.as_raw(), code, "reaped orphan"),
        }
    }
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: ExitReceiver) -> Option<Exit> {
    loop {
        if let Some(exit) = *rx.borrow_and_update() {
            return Some(exit);
        }
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}
