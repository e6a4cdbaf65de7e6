//! Guest RAM: anonymous private memory by default, or a shared memfd when
//! a vhost-user backend must map the same pages. Either way the mapping is
//! MAP_NORESERVE and never prefaulted: only pages the guest (or a device)
//! touches become resident.

use std::fs::File;
use std::sync::Arc;

use vm_memory::FileOffset;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::boot::layout::ram_ranges;

/// Smallest guest the boot layout fits in (page tables, zero page, 1 MiB hole).
pub const MIN_MEM_SIZE: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "guest memory of {requested_mib} MiB is too large: this host has {host_mib} MiB of RAM"
    )]
    TooLarge { requested_mib: u64, host_mib: u64 },
    #[error("guest memory of {0} bytes is too small (minimum {MIN_MEM_SIZE})")]
    TooSmall(u64),
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    #[error("creating the shared guest memory file: {0}")]
    Memfd(std::io::Error),
    #[error("mapping guest memory: {0}")]
    Mmap(String),
}

/// Guest RAM plus, when shared, the file behind it.
pub struct GuestRam {
    pub mem: Arc<GuestMemoryMmap>,
    /// memfd backing the RAM (region i starts at `file offsets[i]`).
    pub shared_file: Option<Arc<File>>,
    pub size: u64,
}

fn host_ram_bytes() -> Option<u64> {
    // SAFETY: sysinfo only writes into the struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct for the call.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram as u64 * u64::from(info.mem_unit))
}

/// Validates `size` and maps guest RAM.
/// A RAM range's length as the mmap length it becomes.
fn mappable(len: u64) -> Result<usize, MemoryError> {
    usize::try_from(len)
        .map_err(|_| MemoryError::Mmap(format!("{len} bytes exceed this host's address space")))
}

pub fn create_guest_ram(size: u64, shared: bool) -> Result<GuestRam, MemoryError> {
    if size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(size));
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned(size));
    }
    if let Some(host) = host_ram_bytes() {
        if size > host {
            return Err(MemoryError::TooLarge {
                requested_mib: size >> 20,
                host_mib: host >> 20,
            });
        }
    }
    let ranges = ram_ranges(size);
    if !shared {
        let ranges = ranges
            .iter()
            .map(|&(a, s)| Ok((GuestAddress(a), mappable(s)?)))
            .collect::<Result<Vec<_>, MemoryError>>()?;
        let mem =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Mmap(e.to_string()))?;
        return Ok(GuestRam {
            mem: Arc::new(mem),
            shared_file: None,
            size,
        });
    }
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"podvisor-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is not owned by anything else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let file = Arc::new(file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ranges {
        let mapping =
            MmapRegion::from_file(FileOffset::from_arc(file.clone(), offset), mappable(len)?)
                .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(addr))
            .ok_or_else(|| MemoryError::Mmap("region overflows the address space".into()))?;
        regions.push(region);
        offset += len;
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Mmap(e.to_string()))?;
    Ok(GuestRam {
        mem: Arc::new(mem),
        shared_file: Some(file),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            create_guest_ram(1 << 20, false),
            Err(MemoryError::TooSmall(_))
        ));
        assert!(matches!(
            create_guest_ram((64 << 20) + 1, false),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            create_guest_ram(1 << 50, false),
            Err(MemoryError::TooLarge { .. })
        ));
    }

    #[test]
    fn shared_ram_is_file_backed() {
        let ram = create_guest_ram(8 << 20, true).unwrap();
        assert!(ram.shared_file.is_some());
        assert_eq!(ram.mem.num_regions(), 1);
    }
}
