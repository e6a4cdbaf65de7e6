//! Intel MultiProcessor Specification 1.4 table (hand-written: no
//! rust-vmm crate builds one). It tells Linux how many CPUs there are, where
//! the IOAPIC is, and how ISA IRQs 0-23 reach IOAPIC pins, without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{addr32, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};
use super::BootError;

/// Highest vCPU count the table (and APIC ID space we hand out) supports.
pub const MAX_VCPUS: u8 = 64;
/// IOAPIC pins routed.
const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// CPU signature: family 6 (stepping/model 0), features FPU + APIC.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer followed by the configuration table, as they
/// are laid out at [`MPTABLE_ADDR`].
pub fn build_mptable(vcpu_count: u8) -> Result<Vec<u8>, BootError> {
    if vcpu_count == 0 || vcpu_count > MAX_VCPUS {
        return Err(BootError::TooManyVcpus(vcpu_count));
    }
    let ioapic_id = vcpu_count;
    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&const { addr32(IOAPIC_ADDR) }.to_le_bytes());
    entry_count += 1;
    for pin in 0..IOAPIC_PINS {
        // Bus IRQ n -> IOAPIC pin n, polarity/trigger "conforms to bus".
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        entry_count += 1;
    }
    // LINT0 = ExtINT (legacy PIC), LINT1 = NMI, on every local APIC.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_addr = const { addr32(MPTABLE_ADDR) } + 16;
    let mut table: Vec<u8> = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    // Bounded by MAX_VCPUS processor entries; the field is 16 bits.
    let table_len =
        u16::try_from(44 + entries.len()).map_err(|_| BootError::TooManyVcpus(vcpu_count))?;
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"PODVISOR");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&const { addr32(LAPIC_ADDR) }.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating: Vec<u8> = Vec::with_capacity(16 + table.len());
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision
    floating.push(0); // checksum
    floating.extend_from_slice(&[0u8; 5]); // no default configuration, no IMCR
    floating[10] = checksum(&floating);
    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table to guest memory.
pub fn write_mptable(mem: &GuestMemoryMmap, vcpu_count: u8) -> Result<(), BootError> {
    let bytes = build_mptable(vcpu_count)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|_| BootError::WriteBootData("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        let t = build_mptable(2).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // Second processor entry is enabled but not the BSP.
        assert_eq!(table[44 + 20], ENTRY_PROCESSOR);
        assert_eq!(table[44 + 20 + 1], 1);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn rejects_bad_counts() {
        for n in [0, MAX_VCPUS + 1] {
            let err = build_mptable(n).unwrap_err();
            assert!(
                matches!(err, BootError::TooManyVcpus(m) if m == n),
                "{err:?}"
            );
        }
    }
}
