//! Guest CPUID: KVM's supported set, adjusted per vCPU (hand-written; the
//! rust-vmm crates leave CPUID policy to the VMM).
//!
//! What changes: the hypervisor bit is set, APIC IDs and topology describe
//! `count` single-threaded cores in one package, and leaves for features
//! the VM does not offer (power management, perfmon) are cleared.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_POWER_MGMT: u32 = 0x6;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_MONITOR: u32 = 1 << 3;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn topology_entry(entry: &mut kvm_cpuid_entry2, vcpu_id: u32, count: u32) {
    entry.edx = vcpu_id;
    match entry.index {
        0 => {
            // SMT level: one thread per core.
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (LEVEL_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = id_bits(count);
            entry.ebx = count;
            entry.ecx = (LEVEL_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

/// Adjusts `cpuid` for vCPU `vcpu_id` out of `count`.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_id: u8, count: u8) {
    let (id, count) = (u32::from(vcpu_id), u32::from(count.max(1)));
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ecx |= ECX_HYPERVISOR;
                // MONITOR/MWAIT would let the guest idle in a way KVM cannot see.
                entry.ecx &= !ECX_MONITOR;
                // EBX: [31:24] initial APIC ID, [23:16] logical CPUs per package,
                // [15:8] CLFLUSH line size in 8-byte units.
                entry.ebx = (id << 24) | (count << 16) | (8 << 8) | (entry.ebx & 0xff);
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing
                // this cache - 1 (the last level is shared by all vCPUs).
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            LEAF_POWER_MGMT | LEAF_PERFMON => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => topology_entry(entry, id, count),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn sets_hypervisor_bit_and_topology() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(LEAF_FEATURES, 0),
            leaf(LEAF_TOPOLOGY, 0),
            leaf(LEAF_TOPOLOGY, 1),
            leaf(LEAF_PERFMON, 0),
        ])
        .unwrap();
        cpuid.as_mut_slice()[3].eax = 0x1234;
        filter_cpuid(&mut cpuid, 1, 2);
        let e = cpuid.as_slice();
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ebx >> 24, 1);
        assert_eq!((e[0].ebx >> 16) & 0xff, 2);
        assert_eq!(e[1].edx, 1);
        assert_eq!(e[2].ebx, 2);
        assert_eq!(e[2].eax, 1);
        assert_eq!(e[3].eax, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
