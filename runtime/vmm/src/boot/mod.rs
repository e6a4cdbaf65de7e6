//! Everything that prepares guest memory and vCPU state for the kernel's
//! first instruction: image loading, boot data, paging, GDT, MP table,
//! CPUID and MSR policy.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;

use std::path::{Path, PathBuf};

use linux_loader::loader::Cmdline;
use vm_memory::GuestMemoryMmap;

pub use loader::{BootProtocolChoice, EntryProtocol};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} file {path}: {source}")]
    OpenFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat,
    #[error("bad kernel image: {0}")]
    LoadKernel(String),
    #[error("PVH boot requested but the kernel has no PVH entry note")]
    NoPvhEntry,
    #[error("the bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)")]
    No64BitEntry,
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooLarge { size: u64 },
    #[error("loading the initrd: {0}")]
    LoadInitrd(String),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("guest memory is too small to hold the {0}")]
    WriteBootData(&'static str),
    #[error("too many e820 entries for the zero page")]
    E820TooLarge,
    #[error("unsupported vCPU count {0} (1 to {max})", max = mptable::MAX_VCPUS)]
    TooManyVcpus(u8),
}

/// What the vCPUs need to start the loaded kernel.
pub struct BootInfo {
    pub protocol: EntryProtocol,
    pub entry: u64,
    pub cr3: u64,
    pub segments: gdt::BootSegments,
}

/// Inputs to [`prepare_boot`].
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a Cmdline,
    pub protocol: BootProtocolChoice,
    pub mem_size: u64,
    pub vcpu_count: u8,
}

/// Loads the kernel, initrd and command line and writes all boot data.
pub fn prepare_boot(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<BootInfo, BootError> {
    let kernel = loader::load_kernel(mem, spec.kernel, spec.protocol)?;
    let initrd = match spec.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, spec.mem_size, &kernel)?),
        None => None,
    };
    let cmdline_len = loader::write_cmdline(mem, spec.cmdline)?;
    mptable::write_mptable(mem, spec.vcpu_count)?;
    let long_mode = kernel.protocol == EntryProtocol::Linux64;
    let segments = gdt::write_gdt(mem, long_mode)?;
    let cr3 = match kernel.protocol {
        EntryProtocol::Linux64 => {
            zero_page::write_zero_page(
                mem,
                &zero_page::ZeroPageInput {
                    setup_header: kernel.setup_header,
                    cmdline_len,
                    initrd,
                    mem_size: spec.mem_size,
                },
            )?;
            paging::write_identity_page_tables(mem)?
        }
        EntryProtocol::Pvh => {
            pvh::write_start_info(mem, spec.mem_size, initrd)?;
            0
        }
    };
    Ok(BootInfo {
        protocol: kernel.protocol,
        entry: kernel.entry.0,
        cr3,
        segments,
    })
}
