//! Identity page tables for the 64-bit entry: the first 4 GiB (RAM below
//! the hole and the MMIO hole itself) in 2 MiB pages. Linux replaces them
//! early; freestanding guests keep using them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};
use super::BootError;

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes PML4 -> PDPT -> 4 PDs and returns the CR3 value.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let err = |_| BootError::WriteBootData("page tables");
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))
        .map_err(err)?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT_ADDR + pd * 8))
            .map_err(err)?;
        // One page directory is 512 entries; write it as one slice.
        let mut entries = [0u64; 512];
        for (i, entry) in entries.iter_mut().enumerate() {
            let phys = ((pd * 512 + i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M;
            *entry = phys;
        }
        let mut bytes = [0u8; 4096];
        for (i, e) in entries.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&bytes, GuestAddress(pd_addr))
            .map_err(err)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_identity_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_identity_page_tables(&mem).unwrap(), PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 3 * 0x1000) | 3);
        // The PD entry for 0xd000_0000 (virtio window) maps itself.
        let gpa = 0xd000_0000u64;
        let pd = gpa >> 30;
        let idx = (gpa >> 21) & 511;
        let e: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + pd * 0x1000 + idx * 8))
            .unwrap();
        assert_eq!(e & !0xfff, gpa);
        assert_eq!(e & 0xff, 0x83);
    }
}
