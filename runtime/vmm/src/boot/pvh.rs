//! PVH boot: `hvm_start_info`, its memory map and the initrd module entry
//! (structures and writer from linux-loader).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_ADDR, PVH_INFO_ADDR};
use super::zero_page::e820_map;
use super::BootError;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes the start info at [`PVH_INFO_ADDR`], followed by the memory map
/// and (if present) the initrd module entry.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .into_iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        })
        .collect();
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr = PVH_INFO_ADDR + info_size;
    let modlist_addr =
        memmap_addr + (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: memmap_addr,
        memmap_entries: u32::try_from(memmap.len()).map_err(|_| BootError::E820TooLarge)?,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(memmap_addr));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
        params.set_sections(&memmap, GuestAddress(memmap_addr));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(modlist_addr),
        );
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|_| BootError::WriteBootData("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn start_info_with_memmap_and_initrd() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_start_info(&mem, 16 << 20, Some((0x80_0000, 1234))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let e1: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                info.memmap_paddr + std::mem::size_of::<hvm_memmap_table_entry>() as u64,
            ))
            .unwrap();
        assert_eq!(
            (e1.addr, e1.size, e1.type_),
            (0x10_0000, (16 << 20) - 0x10_0000, 1)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 1234));
    }
}
