//! Kernel, initrd and command line loading (linux-loader does the parsing
//! and copying; this module picks the format and the entry protocol).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{low_ram_end, CMDLINE_ADDR, HIGHMEM_START};
use super::BootError;

/// Which entry protocol the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocolChoice {
    /// PVH when the kernel has the note, else the 64-bit Linux protocol.
    #[default]
    Auto,
    Pvh,
    Linux64,
}

impl std::str::FromStr for BootProtocolChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "pvh" => Ok(Self::Pvh),
            "linux64" => Ok(Self::Linux64),
            other => Err(format!(
                "unknown boot protocol {other:?} (expected auto, pvh or linux64)"
            )),
        }
    }
}

/// The protocol the vCPU is actually entered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProtocol {
    /// 32-bit protected mode, paging off, EBX = start info.
    Pvh,
    /// Long mode with identity paging, RSI = zero page.
    Linux64,
}

/// Where and how the kernel was loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub protocol: EntryProtocol,
    /// Only for bzImage: the setup header to copy into the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded image.
    pub kernel_end: u64,
}

enum ImageFormat {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File) -> Result<ImageFormat, BootError> {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| BootError::UnknownKernelFormat)?;
    if magic == *b"\x7fELF" {
        return Ok(ImageFormat::Elf);
    }
    let mut hdr = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))
        .and_then(|_| file.read_exact(&mut hdr))
        .map_err(|_| BootError::UnknownKernelFormat)?;
    if hdr == *b"HdrS" {
        return Ok(ImageFormat::BzImage);
    }
    Err(BootError::UnknownKernelFormat)
}

fn open(path: &Path, what: &'static str) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Loads an ELF vmlinux or a bzImage into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    choice: BootProtocolChoice,
) -> Result<LoadedKernel, BootError> {
    let mut file = open(path, "kernel")?;
    match detect_format(&mut file)? {
        ImageFormat::Elf => {
            let res = Elf::load(mem, None, &mut file, Some(GuestAddress(HIGHMEM_START)))
                .map_err(|e| BootError::LoadKernel(e.to_string()))?;
            let pvh_entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr),
                _ => None,
            };
            let (entry, protocol) = match (choice, pvh_entry) {
                (BootProtocolChoice::Pvh, None) => return Err(BootError::NoPvhEntry),
                (BootProtocolChoice::Pvh | BootProtocolChoice::Auto, Some(addr)) => {
                    (addr, EntryProtocol::Pvh)
                }
                _ => (res.kernel_load, EntryProtocol::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                protocol,
                setup_header: None,
                kernel_end: res.kernel_end,
            })
        }
        ImageFormat::BzImage => {
            if choice == BootProtocolChoice::Pvh {
                return Err(BootError::NoPvhEntry);
            }
            let res = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGHMEM_START)))
                .map_err(|e| BootError::LoadKernel(e.to_string()))?;
            let hdr = res.setup_header.ok_or(BootError::UnknownKernelFormat)?;
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry);
            }
            // startup_64 sits 0x200 bytes into the protected-mode image.
            Ok(LoadedKernel {
                entry: res.kernel_load.unchecked_add(0x200),
                protocol: EntryProtocol::Linux64,
                setup_header: Some(hdr),
                kernel_end: res.kernel_end,
            })
        }
    }
}

/// Copies the initrd to the top of low RAM (page aligned, under the
/// kernel's `initrd_addr_max`) and returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), BootError> {
    let mut file = open(path, "initrd")?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenFile {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut limit = low_ram_end(mem_size);
    if let Some(hdr) = kernel.setup_header {
        if hdr.initrd_addr_max != 0 {
            limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.kernel_end)
        .ok_or(BootError::InitrdTooLarge { size })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::LoadInitrd(e.to_string()))?;
    Ok((addr, size))
}

/// Writes the command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::setup_header;
    use vm_memory::{ByteValued, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    /// A minimal bzImage: one setup sector after the boot sector, then the payload.
    fn fake_bzimage(xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 1024 + 4096];
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            xloadflags,
            initrd_addr_max: 0x37ff_ffff,
            ..Default::default()
        };
        img[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        img[1024..1028].copy_from_slice(b"KRNL");
        img
    }

    fn write_tmp(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("podvisor-vmm-{name}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn bzimage_enters_at_startup_64() {
        let m = mem();
        let path = write_tmp("bz", &fake_bzimage(XLF_KERNEL_64));
        let k = load_kernel(&m, &path, BootProtocolChoice::Auto).unwrap();
        assert_eq!(k.protocol, EntryProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        assert!(k.setup_header.is_some());
        let mut magic = [0u8; 4];
        m.read_slice(&mut magic, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&magic, b"KRNL");
        assert!(matches!(
            load_kernel(&m, &path, BootProtocolChoice::Pvh),
            Err(BootError::NoPvhEntry)
        ));
        let initrd = write_tmp("initrd", &[7u8; 5000]);
        let (addr, size) = load_initrd(&m, &initrd, 64 << 20, &k).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(initrd);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let path = write_tmp("bz32", &fake_bzimage(0));
        assert!(matches!(
            load_kernel(&mem(), &path, BootProtocolChoice::Linux64),
            Err(BootError::No64BitEntry)
        ));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let path = write_tmp("junk", &[1u8; 2048]);
        assert!(matches!(
            load_kernel(&mem(), &path, BootProtocolChoice::Auto),
            Err(BootError::UnknownKernelFormat)
        ));
        let _ = std::fs::remove_file(path);
    }
}
