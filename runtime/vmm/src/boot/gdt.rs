//! Boot GDT and the matching KVM segment descriptors (hand-written: no
//! rust-vmm crate provides x86 descriptor encoding).

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{GDT_ADDR, IDT_ADDR};
use super::BootError;

/// Selectors of the boot GDT, as the Linux boot protocol names them
/// (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18).
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Access/flag words (low byte: access byte; high nibble: G, D/B, L, AVL).
const CODE64_FLAGS: u16 = 0xa09b; // present, ring 0, exec/read, accessed, L=1, G=1
const CODE32_FLAGS: u16 = 0xc09b; // same, 32-bit (D=1)
const DATA_FLAGS: u16 = 0xc093; // present, ring 0, read/write, accessed, D=1, G=1
const TSS_FLAGS: u16 = 0x008b; // present, busy 32/64-bit TSS

/// Encodes one 8-byte segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes a descriptor into the form KVM_SET_SREGS takes.
pub fn segment_from_entry(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granular = (entry >> 55) & 1 == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        // 20 bits, at most scaled by 4 KiB: always fits.
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, null, code, data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Segments to load: (code, data, tss).
pub struct BootSegments {
    pub code: kvm_segment,
    pub data: kvm_segment,
    pub tss: kvm_segment,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
}

/// Writes the GDT and an empty IDT to guest memory and returns the segments.
pub fn write_gdt(mem: &GuestMemoryMmap, long_mode: bool) -> Result<BootSegments, BootError> {
    let gdt = boot_gdt(long_mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))
            .map_err(|_| BootError::WriteBootData("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|_| BootError::WriteBootData("IDT"))?;
    Ok(BootSegments {
        code: segment_from_entry(gdt[2], CODE_SELECTOR),
        data: segment_from_entry(gdt[3], DATA_SELECTOR),
        tss: segment_from_entry(gdt[4], TSS_SELECTOR),
        gdt_base: GDT_ADDR,
        // A handful of 8-byte entries.
        gdt_limit: u16::try_from(std::mem::size_of_val(&gdt) - 1).unwrap_or(u16::MAX),
        idt_base: IDT_ADDR,
        idt_limit: 7,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment_decodes() {
        let seg = segment_from_entry(gdt_entry(CODE64_FLAGS, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.s, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn known_encodings() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let e = gdt_entry(0x008b, 0x1234_5678, 0x67);
        let seg = segment_from_entry(e, 0x20);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x67);
    }
}
