//! Initial vCPU register state for the two entry protocols (hand-written:
//! values follow the Linux x86 boot protocol and the PVH ABI).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::BootSegments;
use super::layout::{BOOT_STACK_TOP, PVH_INFO_ADDR, ZERO_PAGE_ADDR};
use super::loader::EntryProtocol;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

/// General registers: entry point, stack, and the boot data pointer
/// (RSI = zero page for Linux, RBX = start info for PVH).
pub fn boot_regs(protocol: EntryProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        ..Default::default()
    };
    match protocol {
        EntryProtocol::Linux64 => regs.rsi = ZERO_PAGE_ADDR,
        EntryProtocol::Pvh => regs.rbx = PVH_INFO_ADDR,
    }
    regs
}

/// Segment and control registers: flat segments from the boot GDT; long
/// mode with identity paging for Linux64, protected mode without paging for PVH.
pub fn boot_sregs(
    mut sregs: kvm_sregs,
    protocol: EntryProtocol,
    segs: &BootSegments,
    cr3: u64,
) -> kvm_sregs {
    sregs.cs = segs.code;
    sregs.ds = segs.data;
    sregs.es = segs.data;
    sregs.fs = segs.data;
    sregs.gs = segs.data;
    sregs.ss = segs.data;
    sregs.tr = segs.tss;
    sregs.gdt.base = segs.gdt_base;
    sregs.gdt.limit = segs.gdt_limit;
    sregs.idt.base = segs.idt_base;
    sregs.idt.limit = segs.idt_limit;
    match protocol {
        EntryProtocol::Linux64 => {
            sregs.cr3 = cr3;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryProtocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// x87 and SSE control words at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// LAPIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI, as the MP table says.
pub fn configure_lint(regs: &mut [std::os::raw::c_char]) {
    set_delivery_mode(regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(regs, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        configure_lint(&mut regs);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x7);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 0x4);
    }

    #[test]
    fn linux64_regs() {
        let r = boot_regs(EntryProtocol::Linux64, 0x100_0000);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_ADDR);
        let p = boot_regs(EntryProtocol::Pvh, 0x100_0000);
        assert_eq!(p.rbx, PVH_INFO_ADDR);
    }
}
