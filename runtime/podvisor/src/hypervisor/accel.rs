//! Can this host's KVM boot our (ordinary, non-PVM) guest kernel?
//!
//! A PVM-only KVM (module `kvm_pvm`, as inside some cloud VMs) runs a
//! freestanding 64-bit guest but not a stock Linux kernel: its real-mode
//! setup code is emulated instruction by instruction. Hardware KVM
//! (`kvm_intel` / `kvm_amd`) boots it.

use std::fs::OpenOptions;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmSupport {
    /// Hardware-assisted KVM: the guest kernel boots.
    Usable,
    /// KVM cannot boot the guest kernel; the reason says why.
    Unusable(String),
}

/// Decides from /dev/kvm and the loaded KVM modules.
pub fn probe() -> KvmSupport {
    probe_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn probe_at(dev: &Path, modules: &Path) -> KvmSupport {
    if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
        return KvmSupport::Unusable(format!("{} cannot be opened: {e}", dev.display()));
    }
    let loaded = |m: &str| modules.join(m).exists();
    if loaded("kvm_intel") || loaded("kvm_amd") {
        return KvmSupport::Usable;
    }
    if loaded("kvm_pvm") {
        return KvmSupport::Unusable(
            "the host's KVM is PVM-only (kvm_pvm) and the guest kernel is not PVM-enabled".into(),
        );
    }
    KvmSupport::Unusable("no kvm_intel or kvm_amd module is loaded".into())
}

/// The host's TSC frequency in kHz, for `tsc_early_khz=` under TCG: QEMU's
/// TCG guests read the host TSC, and on `-M microvm` (no HPET, no PM timer)
/// the kernel otherwise hangs at random calibrating it against the PIT.
pub fn host_tsc_khz() -> Option<u64> {
    if let Ok(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(khz) = khz.trim().parse() {
            return Some(khz);
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    // `as` saturates (NaN to 0); a CPU's kHz is far below u64::MAX.
    #[allow(clippy::cast_possible_truncation)]
    let khz = (mhz * 1000.0).round() as u64;
    Some(khz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_only_kvm_is_not_usable_for_the_guest_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let modules = dir.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        assert!(matches!(probe_at(&dev, &modules), KvmSupport::Unusable(r) if r.contains("PVM")));
        std::fs::create_dir_all(modules.join("kvm_amd")).unwrap();
        assert_eq!(probe_at(&dev, &modules), KvmSupport::Usable);
        assert!(matches!(
            probe_at(&dir.path().join("missing"), &modules),
            KvmSupport::Unusable(r) if r.contains("cannot be opened")
        ));
    }

    #[test]
    fn reads_a_plausible_tsc_frequency() {
        let khz = host_tsc_khz().expect("x86 hosts report cpu MHz");
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
