//! A host process the runtime supervises (qemu, podvisor-vmm, virtiofsd):
//! spawned in its own process group so it outlives a daemon restart, watched
//! for its exit, and stopped with SIGTERM then SIGKILL.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{Result, VmError};

/// How a VM process ended. Code and signal are known for our own children;
/// a process re-attached after a daemon restart reports neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig}"),
            (None, None) => write!(f, "exited"),
        }
    }
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: watch::Receiver<Option<Exit>>) -> Exit {
    loop {
        if let Some(exit) = *rx.borrow_and_update() {
            return exit;
        }
        if rx.changed().await.is_err() {
            return Exit {
                code: None,
                signal: None,
            };
        }
    }
}

pub struct Supervised {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
}

impl Supervised {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(
        mut command: tokio::process::Command,
        what: &str,
        log: &std::path::Path,
    ) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            what: what.to_string(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let exit = match child.wait().await {
                Ok(status) => Exit {
                    code: status.code(),
                    signal: status.signal(),
                },
                Err(_) => Exit {
                    code: None,
                    signal: None,
                },
            };
            let _ = tx.send(Some(exit));
        });
        Ok(Supervised { pid, exit: rx })
    }

    /// Watches a VM process that is not our child (after a daemon restart).
    pub fn attach(pid: u32) -> Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let fd = RawFd::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: the syscall just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor while it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            // A pidfd polls readable once the process has exited.
            let _ = fd.readable().await;
            let _ = tx.send(Some(Exit {
                code: None,
                signal: None,
            }));
        });
        Ok(Supervised { pid, exit: rx })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> Exit {
        wait_exit(self.exit.clone()).await
    }

    /// A handle to wait on without borrowing the process.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    fn signal(&self, signal: Signal) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    pub async fn terminate(&self, grace: Duration) -> Exit {
        self.signal(Signal::SIGTERM);
        if let Some(exit) = self.wait_timeout(grace).await {
            return exit;
        }
        self.kill().await
    }

    pub async fn kill(&self) -> Exit {
        self.signal(Signal::SIGKILL);
        self.wait().await
    }
}
