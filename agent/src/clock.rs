//! The guest's wall clock, set from the host's at sandbox setup: the VM has
//! no RTC the kernel trusts (none at all on the kvm backend), and exit
//! times and log timestamps the runtime reports must read like the host's.

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use podvisor_proto::Timestamp;

use crate::Mode;

pub fn set_from_host(host: &Timestamp, mode: Mode) {
    // In host test mode the clock is the host's already, and not ours to set.
    if mode != Mode::Guest {
        return;
    }
    let time = TimeSpec::new(host.seconds, i64::from(host.nanos));
    match clock_settime(ClockId::CLOCK_REALTIME, time) {
        Ok(()) => tracing::info!(seconds = host.seconds, "guest clock set from the host"),
        Err(e) => tracing::warn!(%e, "setting the guest clock from the host"),
    }
}
