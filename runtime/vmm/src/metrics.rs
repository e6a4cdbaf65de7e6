//! Counters the control API reports: vCPU exits by reason and bytes per device.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why KVM_RUN returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    SystemEvent,
    Interrupted,
    FailEntry,
    InternalError,
    Other,
}

impl ExitReason {
    pub const ALL: [ExitReason; 11] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::Interrupted,
        ExitReason::FailEntry,
        ExitReason::InternalError,
        ExitReason::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system_event",
            ExitReason::Interrupted => "interrupted",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
            ExitReason::Other => "other",
        }
    }
}

/// Per-vCPU exit counters, written only by that vCPU's thread.
#[derive(Default)]
pub struct VcpuCounters {
    exits: [AtomicU64; ExitReason::ALL.len()],
    /// Accesses to addresses or ports with no device behind them.
    pub unhandled_mmio: AtomicU64,
    pub unhandled_pio: AtomicU64,
}

impl VcpuCounters {
    pub fn count(&self, reason: ExitReason) {
        self.exits[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: ExitReason) -> u64 {
        self.exits[reason as usize].load(Ordering::Relaxed)
    }
}

/// Byte and request counters of one device.
pub struct DeviceCounters {
    pub name: String,
    /// Bytes from the guest to the host side (TX, writes).
    pub bytes_from_guest: AtomicU64,
    /// Bytes from the host side to the guest (RX, reads).
    pub bytes_to_guest: AtomicU64,
    /// Requests or packets the device rejected as malformed.
    pub bad_requests: AtomicU64,
}

impl DeviceCounters {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(DeviceCounters {
            name: name.into(),
            bytes_from_guest: AtomicU64::new(0),
            bytes_to_guest: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
        })
    }

    pub fn add_from_guest(&self, n: usize) {
        self.bytes_from_guest.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_to_guest(&self, n: usize) {
        self.bytes_to_guest.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// All counters of one VM.
#[derive(Default)]
pub struct Metrics {
    pub vcpus: Mutex<Vec<Arc<VcpuCounters>>>,
    pub devices: Mutex<Vec<Arc<DeviceCounters>>>,
}

impl Metrics {
    pub fn add_vcpu(&self) -> Arc<VcpuCounters> {
        let c = Arc::new(VcpuCounters::default());
        self.vcpus.lock().unwrap().push(c.clone());
        c
    }

    pub fn add_device(&self, name: impl Into<String>) -> Arc<DeviceCounters> {
        let c = DeviceCounters::new(name);
        self.devices.lock().unwrap().push(c.clone());
        c
    }

    /// Sum of one exit reason over all vCPUs.
    pub fn total_exits(&self, reason: ExitReason) -> u64 {
        self.vcpus
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.get(reason))
            .sum()
    }

    /// JSON object: {"vcpu_exits": {...}, "vcpus": [...], "devices": {...}}.
    pub fn to_json(&self) -> String {
        let vcpus = self.vcpus.lock().unwrap();
        let mut out = String::from("{\"vcpu_exits\":{");
        for (i, reason) in ExitReason::ALL.iter().enumerate() {
            let total: u64 = vcpus.iter().map(|c| c.get(*reason)).sum();
            let _ = write!(
                out,
                "{}\"{}\":{}",
                if i == 0 { "" } else { "," },
                reason.name(),
                total
            );
        }
        let mmio: u64 = vcpus
            .iter()
            .map(|c| c.unhandled_mmio.load(Ordering::Relaxed))
            .sum();
        let pio: u64 = vcpus
            .iter()
            .map(|c| c.unhandled_pio.load(Ordering::Relaxed))
            .sum();
        let _ = write!(
            out,
            "}},\"unhandled_mmio\":{mmio},\"unhandled_pio\":{pio},\"vcpus\":["
        );
        for (i, c) in vcpus.iter().enumerate() {
            let total: u64 = ExitReason::ALL.iter().map(|r| c.get(*r)).sum();
            let _ = write!(
                out,
                "{}{{\"id\":{i},\"exits\":{total}}}",
                if i == 0 { "" } else { "," }
            );
        }
        out.push_str("],\"devices\":{");
        for (i, d) in self.devices.lock().unwrap().iter().enumerate() {
            let _ = write!(
                out,
                "{}\"{}\":{{\"bytes_from_guest\":{},\"bytes_to_guest\":{},\"bad_requests\":{}}}",
                if i == 0 { "" } else { "," },
                d.name,
                d.bytes_from_guest.load(Ordering::Relaxed),
                d.bytes_to_guest.load(Ordering::Relaxed),
                d.bad_requests.load(Ordering::Relaxed)
            );
        }
        out.push_str("}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_reason_and_device() {
        let m = Metrics::default();
        let v = m.add_vcpu();
        v.count(ExitReason::IoOut);
        v.count(ExitReason::IoOut);
        let d = m.add_device("blk0");
        d.add_to_guest(512);
        let json = m.to_json();
        assert!(json.contains("\"io_out\":2"), "{json}");
        assert!(json.contains("\"blk0\":{\"bytes_from_guest\":0,\"bytes_to_guest\":512"));
        assert_eq!(m.total_exits(ExitReason::IoOut), 2);
    }
}
