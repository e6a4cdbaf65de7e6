//! mount(2) with a deadline. A thread blocked in an NFS mount cannot be
//! interrupted (a silent server holds it for timeo x (retrans+1), minutes
//! with EFS's options), but a process can be killed: the mount runs in a
//! forked child, which the agent SIGKILLs when the deadline passes.

use std::ffi::CString;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::{Duration, Instant};

use crate::error::{AgentError, Result};
use crate::reaper::{self, Reaper};

/// What became of one mount call.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Mounted,
    Failed(Errno),
    /// The deadline passed; the child was killed.
    TimedOut,
}

/// One mount(2) call, its strings ready before the fork: the child must not
/// allocate (another thread may have held the allocator's lock).
pub struct MountCall {
    source: CString,
    target: CString,
    fstype: CString,
    data: CString,
    flags: MsFlags,
}

impl MountCall {
    pub fn new(
        source: &str,
        target: &str,
        fstype: &str,
        data: &str,
        flags: MsFlags,
    ) -> Result<Self> {
        let c = |what: &str, s: &str| {
            CString::new(s).map_err(|_| {
                AgentError::InvalidArgument(format!("volume {what} {s:?} contains a NUL byte"))
            })
        };
        Ok(MountCall {
            source: c("source", source)?,
            target: c("target", target)?,
            fstype: c("type", fstype)?,
            data: c("options", data)?,
            flags,
        })
    }
}

/// How long a killed mount child may take to die before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Runs `call` in a child process and waits for it until `deadline`.
pub async fn mount(reaper: &Reaper, call: MountCall, deadline: Instant) -> Result<Outcome> {
    let reaper_for_fork = reaper.clone();
    let forked = tokio::task::spawn_blocking(move || {
        // Under the guard the reaper cannot collect the child before we
        // have subscribed to its exit.
        let guard = reaper_for_fork.spawn_guard();
        // SAFETY: the child only calls mount(2) and _exit(2), both
        // async-signal-safe, on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child(&call);
        }
        if pid < 0 {
            return Err(AgentError::sys("fork the mount helper", Errno::last()));
        }
        let pid = Pid::from_raw(pid);
        Ok((pid, guard.register(pid)))
    })
    .await
    .map_err(|e| AgentError::runtime("fork the mount helper", e))?;
    let (pid, exit_rx) = forked?;

    match tokio::time::timeout_at(deadline, reaper::wait_exit(exit_rx.clone())).await {
        Ok(Some(exit)) if exit.signal == 0 && exit.code == 0 => Ok(Outcome::Mounted),
        Ok(Some(exit)) if exit.signal == 0 => Ok(Outcome::Failed(Errno::from_raw(exit.code))),
        Ok(Some(exit)) => Err(AgentError::runtime(
            "mount helper",
            format!("killed by signal {}", exit.signal),
        )),
        Ok(None) => Err(AgentError::runtime(
            "mount helper",
            "its exit status was lost",
        )),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            if tokio::time::timeout(KILL_WAIT, reaper::wait_exit(exit_rx))
                .await
                .is_err()
            {
                tracing::warn!(
                    pid = pid.as_raw(),
                    "mount helper did not die within 10 s of SIGKILL"
                );
            }
            Ok(Outcome::TimedOut)
        }
    }
}

/// The forked child: mount, then exit with 0 or the errno.
fn child(call: &MountCall) -> ! {
    // SAFETY: raw syscalls on valid NUL-terminated strings; _exit never
    // returns and runs no destructors or atexit handlers of the parent.
    unsafe {
        let rc = libc::mount(
            call.source.as_ptr(),
            call.target.as_ptr(),
            call.fstype.as_ptr(),
            call.flags.bits(),
            call.data.as_ptr().cast(),
        );
        let code = if rc == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        libc::_exit(code & 0xff)
    }
}
