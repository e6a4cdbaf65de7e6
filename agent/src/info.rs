//! Facts about the guest for GetGuestInfo.

use std::fs;

use podvisor_proto::{GuestInfo, PROTOCOL_VERSION};

use crate::container::{detect_version, CgroupVersion};
use crate::Mode;

pub fn guest_info(mode: Mode) -> GuestInfo {
    let uname = nix::sys::utsname::uname().ok();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let meminfo_kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let uptime_ms = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, secs_to_ms);
    GuestInfo {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: uname
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        agent_pid: std::process::id(),
        cgroup_version: match detect_version() {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        },
        memory_total_bytes: meminfo_kib("MemTotal:") * 1024,
        memory_available_bytes: meminfo_kib("MemAvailable:") * 1024,
        online_cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        uptime_ms,
        mode: match mode {
            Mode::Guest => "guest",
            Mode::Host => "host",
        }
        .to_string(),
    }
}

/// Seconds to whole milliseconds. An uptime in ms is far below u64::MAX,
/// and a float-to-int cast saturates rather than wraps.
#[allow(clippy::cast_possible_truncation)]
fn secs_to_ms(secs: f64) -> u64 {
    (secs * 1000.0) as u64
}
