//! The Linux `boot_params` ("zero page") for the 64-bit boot protocol.
//! Structures and the writer come from linux-loader; we fill in the fields.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header, CAN_USE_HEAP, LOADED_HIGH};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{
    addr32, low_ram_end, CMDLINE_ADDR, EBDA_START, HIGHMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    ZERO_PAGE_ADDR,
};
use super::BootError;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// One e820 range: (start, size, type).
pub type E820Entry = (u64, u64, u32);

/// The guest's physical memory map as Linux and PVH see it.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    let low_end = low_ram_end(mem_size);
    if low_end > HIGHMEM_START {
        map.push((HIGHMEM_START, low_end - HIGHMEM_START, E820_RAM));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    map
}

/// What the zero page describes.
pub struct ZeroPageInput {
    /// Setup header read from a bzImage; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Command line length in bytes, without the NUL.
    pub cmdline_len: usize,
    /// Initrd (address, size), if any.
    pub initrd: Option<(u64, u64)>,
    pub mem_size: u64,
}

/// Builds the zero page contents.
pub fn build_boot_params(input: &ZeroPageInput) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
        params.hdr.loadflags |= CAN_USE_HEAP | LOADED_HIGH;
        // Heap end is relative to the real-mode segment; unused by the 64-bit entry but set
        // as the boot protocol asks of loaders that set CAN_USE_HEAP.
        params.hdr.heap_end_ptr = 0xfe00;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = const { addr32(CMDLINE_ADDR) };
    params.hdr.cmdline_size = u32::try_from(input.cmdline_len + 1)
        .map_err(|_| BootError::Cmdline(format!("{} bytes is too long", input.cmdline_len)))?;
    if let Some((addr, size)) = input.initrd {
        // 64-bit values split into the low and the ext_ high halves.
        params.hdr.ramdisk_image = (addr & 0xffff_ffff) as u32;
        params.hdr.ramdisk_size = (size & 0xffff_ffff) as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(input.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::E820TooLarge);
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(map.iter()) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = *kind;
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| BootError::E820TooLarge)?;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub fn write_zero_page(mem: &GuestMemoryMmap, input: &ZeroPageInput) -> Result<(), BootError> {
    let params = build_boot_params(input)?;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|_| BootError::WriteBootData("zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_for_small_and_large_guests() {
        assert_eq!(
            e820_map(128 << 20),
            vec![
                (0, EBDA_START, E820_RAM),
                (HIGHMEM_START, (128 << 20) - HIGHMEM_START, E820_RAM)
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(big.len(), 3);
        assert_eq!(big[2], (MMIO_GAP_END, (5 << 30) - MMIO_GAP_START, E820_RAM));
    }

    #[test]
    fn elf_zero_page_fields() {
        let p = build_boot_params(&ZeroPageInput {
            setup_header: None,
            cmdline_len: 10,
            initrd: Some((0x700_0000, 0x1234)),
            mem_size: 128 << 20,
        })
        .unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_ADDR);
        assert_eq!({ p.hdr.cmdline_size }, 11);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 2);
    }
}
