//! The KVM VM: /dev/kvm, the VM fd, guest RAM slots, in-kernel irqchip + PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::{create_guest_ram, GuestRam, MemoryError};

/// KVM needs a 3-page TSS region on Intel; put it just below the BIOS ROM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm is not available: {0} (is the kvm module loaded and do you have access?)")]
    NoKvm(std::io::Error),
    #[error("unsupported KVM API version {0} (need {KVM_API_VERSION})")]
    KvmApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("creating the KVM VM: {0}")]
    CreateVm(std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("registering guest memory with KVM: {0}")]
    SetMemoryRegion(std::io::Error),
    #[error("setting up the in-kernel {what}: {source}")]
    IrqChip {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

pub struct Vm {
    pub kvm: Kvm,
    /// Shared with vCPU threads, which create their vCPUs themselves.
    pub fd: Arc<VmFd>,
    pub ram: GuestRam,
}

impl Vm {
    /// Opens KVM, creates the VM and its RAM, irqchip and PIT.
    pub fn new(mem_size: u64, shared_memory: bool) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(|e| VmError::NoKvm(io(e)))?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::KvmApiVersion(version));
        }
        for (cap, name) in [
            (kvm_ioctls::Cap::Irqchip, "irqchip"),
            (kvm_ioctls::Cap::Ioeventfd, "ioeventfd"),
            (kvm_ioctls::Cap::Irqfd, "irqfd"),
            (kvm_ioctls::Cap::UserMemory, "user memory"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(|e| VmError::CreateVm(io(e)))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmError::CreateVm(io(e)))?;
        let ram = create_guest_ram(mem_size, shared_memory)?;
        for (slot, region) in (0u32..).zip(ram.mem.iter()) {
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmError::SetMemoryRegion(std::io::Error::other(e.to_string())))?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the mapping lives in `ram`, which the Vm owns for as long as the VM fd.
            unsafe { fd.set_user_memory_region(desc) }
                .map_err(|e| VmError::SetMemoryRegion(io(e)))?;
        }
        fd.create_irq_chip().map_err(|e| VmError::IrqChip {
            what: "irqchip",
            source: io(e),
        })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|e| VmError::IrqChip {
            what: "PIT",
            source: io(e),
        })?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            ram,
        })
    }
}
