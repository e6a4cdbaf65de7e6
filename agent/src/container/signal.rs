//! Signals to container processes that may be the init of their PID
//! namespace.
//!
//! The kernel drops a signal sent from an ancestor namespace to a
//! namespace's init when that init has neither a handler for it nor
//! SIG_IGN (SIGKILL and SIGSTOP excepted). StartContainer returns once the
//! container's process exists, which is before the command has run far
//! enough to install its handlers: a StopContainer right after StartContainer
//! (critest does exactly that with busybox `top`) would lose its SIGTERM and
//! wait out the whole grace period. So for such a target the signal is held
//! until the handler appears, for at most [`HANDLER_WAIT`], and then sent
//! once. A process that never installs one gets it anyway, with the
//! kernel's usual result.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How long a signal waits for a namespace init to install its handler.
/// Holding longer costs nothing (the kernel would drop the signal, and the
/// caller's grace period runs meanwhile); a loaded emulated guest has been
/// seen to take more than 5 s from exec to `top`'s handler.
pub const HANDLER_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

/// What a process does with a signal, from /proc/PID/status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Caught,
    Ignored,
    Default,
}

/// Parses the `SigCgt`, `SigIgn` and `NSpid` lines of /proc/PID/status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalState {
    caught: u64,
    ignored: u64,
    /// PID in the innermost namespace the process is in.
    innermost_pid: Option<u32>,
}

impl SignalState {
    pub fn parse(status: &str) -> Option<SignalState> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
        Some(SignalState {
            caught: mask("SigCgt:")?,
            ignored: mask("SigIgn:")?,
            innermost_pid: field("NSpid:")
                .and_then(|v| v.split_whitespace().last())
                .and_then(|p| p.parse().ok()),
        })
    }

    pub fn disposition(&self, signal: Signal) -> Disposition {
        // Signal numbers start at 1; bit N-1 stands for signal N.
        let bit = 1u64 << ((signal as i32 - 1) & 63);
        if self.caught & bit != 0 {
            Disposition::Caught
        } else if self.ignored & bit != 0 {
            Disposition::Ignored
        } else {
            Disposition::Default
        }
    }

    /// Whether the kernel would drop `signal` sent from outside the
    /// process's namespace.
    pub fn would_drop(&self, signal: Signal) -> bool {
        self.innermost_pid == Some(1)
            && !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP)
            && self.disposition(signal) == Disposition::Default
    }
}

fn state_of(pid: Pid) -> Option<SignalState> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    SignalState::parse(&status)
}

/// What one look at the target decided.
enum Step {
    /// The process has ended: nothing to send.
    Gone,
    /// Sent (or failed to send).
    Sent(nix::Result<()>),
    /// The kernel would drop it now: try again later.
    Hold,
}

/// Sends `signal` to `pid` at once, unless the kernel would drop it: then
/// a thread of its own sends it as soon as a handler appears, or at
/// [`HANDLER_WAIT`], and this returns at once (the caller's grace period
/// runs meanwhile). `locked(f)` runs `f` while the pid cannot be reaped and
/// reused, and returns false without running it when the process has ended.
pub fn deliver<L>(pid: Pid, signal: Signal, locked: L) -> nix::Result<()>
where
    L: Fn(&mut dyn FnMut()) -> bool + Send + 'static,
{
    match look(pid, signal, &locked, false) {
        Step::Gone => return Ok(()),
        Step::Sent(result) => return result,
        Step::Hold => {}
    }
    tracing::debug!(%pid, ?signal, "held until the namespace init installs a handler");
    let deadline = Instant::now() + HANDLER_WAIT;
    std::thread::spawn(move || loop {
        std::thread::sleep(POLL);
        match look(pid, signal, &locked, Instant::now() >= deadline) {
            Step::Gone => return,
            Step::Sent(Ok(())) => return,
            Step::Sent(Err(e)) => {
                tracing::warn!(%pid, ?signal, %e, "sending a held signal");
                return;
            }
            Step::Hold => {}
        }
    });
    Ok(())
}

/// One look at the target under the caller's lock; `force` sends even a
/// signal the kernel would drop.
fn look(pid: Pid, signal: Signal, locked: &dyn Fn(&mut dyn FnMut()) -> bool, force: bool) -> Step {
    let mut step = Step::Gone;
    locked(&mut || {
        let dropped = state_of(pid).is_some_and(|s| s.would_drop(signal));
        step = if dropped && !force {
            Step::Hold
        } else {
            Step::Sent(kill(pid, signal))
        };
    });
    step
}

fn kill(pid: Pid, signal: Signal) -> nix::Result<()> {
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT_STATUS: &str = "Name:\ttop\nNSpid:\t742\t1\nSigQ:\t0/3\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000004000\n";

    #[test]
    fn dispositions_come_from_the_masks() {
        let s = SignalState::parse(INIT_STATUS).unwrap();
        // SigCgt bit 14 is SIGTERM (15), SigIgn bit 2 is SIGQUIT (3).
        assert_eq!(s.disposition(Signal::SIGTERM), Disposition::Caught);
        assert_eq!(s.disposition(Signal::SIGQUIT), Disposition::Ignored);
        assert_eq!(s.disposition(Signal::SIGINT), Disposition::Default);
        assert_eq!(s.innermost_pid, Some(1));
    }

    #[test]
    fn only_a_namespace_init_without_a_handler_drops_signals() {
        let init = SignalState::parse(INIT_STATUS).unwrap();
        assert!(!init.would_drop(Signal::SIGTERM), "caught");
        assert!(
            !init.would_drop(Signal::SIGQUIT),
            "ignored: nothing to wait for"
        );
        assert!(init.would_drop(Signal::SIGINT));
        assert!(!init.would_drop(Signal::SIGKILL));
        let child = SignalState::parse(&INIT_STATUS.replace("742\t1", "742\t9")).unwrap();
        assert!(
            !child.would_drop(Signal::SIGINT),
            "not an init: default action"
        );
        let host =
            SignalState::parse(&INIT_STATUS.replace("NSpid:\t742\t1", "NSpid:\t742")).unwrap();
        assert!(!host.would_drop(Signal::SIGINT));
    }

    #[test]
    fn a_missing_mask_is_no_state() {
        assert_eq!(SignalState::parse("Name:\tx\n"), None);
    }

    /// A real namespace init: the signal waits for the handler it installs
    /// after a delay, instead of being dropped.
    #[test]
    fn a_signal_waits_for_the_handler_of_a_namespace_init() {
        if !podvisor_test_skip::require_root("a_signal_waits_for_the_handler_of_a_namespace_init") {
            return;
        }
        // The shell is PID 1 of a new PID namespace and installs its TERM
        // trap half a second after it starts; it gives up (exit 3) after
        // about ten seconds, so a dropped signal fails the test instead of
        // hanging it.
        let mut child = std::process::Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--kill-child",
                "sh",
                "-c",
                "sleep 0.5; trap 'exit 7' TERM; for i in $(seq 200); do sleep 0.05; done; exit 3",
            ])
            .spawn()
            .expect("unshare");
        // unshare forks: the namespace init is its child.
        let init = loop {
            let children = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                child.id(),
                child.id()
            ))
            .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break Pid::from_raw(pid.parse().unwrap());
            }
            std::thread::sleep(POLL);
        };
        deliver(init, Signal::SIGTERM, |f: &mut dyn FnMut()| {
            f();
            true
        })
        .unwrap();
        let status = child.wait().unwrap();
        // unshare reports its child's exit: 7 from the trap; 3 if the
        // signal was dropped.
        assert_eq!(status.code(), Some(7), "{status:?}");
    }
}
