//! Guest physical memory map shared by the boot code and the device model.
//!
//! Low memory follows the PC conventions Linux expects; devices live in a
//! 768 MiB hole below 4 GiB, and RAM that does not fit below the hole is
//! mapped from 4 GiB up.

/// GDT used for the boot entry (Linux reloads its own right away).
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT: any exception before the kernel sets its own becomes a triple fault.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` followed by its memory map and module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer handed to the kernel (grows down, below the page tables).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, then four page directories (4 GiB of 2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories, each mapping 1 GiB.
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux x86 COMMAND_LINE_SIZE (including the NUL).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and table sit in the BIOS area Linux scans (0xf0000-0xfffff).
pub const MPTABLE_ADDR: u64 = 0xf0000;
/// First byte above the legacy 1 MiB area.
pub const HIGHMEM_START: u64 = 0x10_0000;
/// Hole for MMIO devices, IOAPIC and LAPIC below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, one page each, from the bottom of the hole.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// `addr` for a 32-bit boot field (MP table, zero page). Call it in a
/// `const` so that an address at or above 4 GiB fails the build.
#[allow(clippy::cast_possible_truncation)] // the assert rules truncation out
pub const fn addr32(addr: u64) -> u32 {
    assert!(
        addr <= u32::MAX as u64,
        "a 32-bit boot field needs an address below 4 GiB"
    );
    addr as u32
}

/// Legacy ISA interrupt lines.
pub const IRQ_KEYBOARD: u32 = 1;
pub const IRQ_SERIAL: u32 = 4;
/// IOAPIC pins handed to virtio-mmio devices, in creation order.
pub const IRQ_VIRTIO_FIRST: u32 = 5;
pub const IRQ_VIRTIO_LAST: u32 = 23;

/// COM1 ports.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_LEN: u16 = 8;
/// i8042 keyboard controller ports (data 0x60, command/status 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;

/// Guest RAM ranges for `mem_size` bytes: one below the MMIO hole and,
/// if needed, one above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big[0], (0, MMIO_GAP_START));
        assert_eq!(big[1], (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START));
    }

    // The boot structures must not overlap.
    const _: () = assert!(PD_ADDR + PD_COUNT * 0x1000 <= CMDLINE_ADDR);
    const _: () = assert!(BOOT_STACK_TOP < PML4_ADDR);
}
