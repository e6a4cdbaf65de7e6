//! The virtio-mmio register file driven by arbitrary reads and writes, with
//! a real device behind it so that a completed handshake activates it.

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest::Guest;
use super::input::Input;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{EventRegistrar, VirtioDevice};
use crate::metrics::DeviceCounters;

const MAX_STEPS: usize = 512;

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Programs queue `q` with `guest`'s ring layout, as a driver would.
fn program_queue(t: &mut MmioTransport, guest: &Guest, q: usize, size: u32) {
    let split = |a: u64| (a as u32, (a >> 32) as u32);
    write_reg(t, 0x30, q as u32);
    write_reg(t, 0x38, size);
    for (reg, addr) in [
        (0x80, guest.desc_table(q)),
        (0x90, guest.avail_ring(q)),
        (0xa0, guest.used_ring(q)),
    ] {
        let (lo, hi) = split(addr);
        write_reg(t, reg, lo);
        write_reg(t, reg + 4, hi);
    }
    write_reg(t, 0x44, 1);
}

pub fn virtio_mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let mut guest = Guest::new(1);
    let mem: Arc<GuestMemoryMmap> = guest.mem.clone();
    let device: Arc<Mutex<dyn VirtioDevice>> = if input.u8() & 1 == 0 {
        Arc::new(Mutex::new(Rng::new(DeviceCounters::new("fuzz-rng"))))
    } else {
        // An empty disk: the transport is under test, not the image.
        let Ok(block) = Block::open(
            std::path::Path::new("/dev/null"),
            true,
            DeviceCounters::new("fuzz-blk"),
        ) else {
            return;
        };
        Arc::new(Mutex::new(block))
    };
    let Ok(epoll) = Epoll::new() else {
        return;
    };
    let Ok(irqfd) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let events = EventRegistrar::new(Arc::new(epoll), 1);
    let Ok(mut t) = MmioTransport::new(device.clone(), mem, irqfd, events) else {
        return;
    };
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 | 1 => {
                let offset = u64::from(input.u16() % 0x200);
                let mut buf = [0u8; 8];
                let len = [1, 2, 4, 8][usize::from(input.u8() % 4)];
                t.read(offset, &mut buf[..len]);
            }
            2 | 3 => {
                // Register offsets mostly aligned, so that writes land.
                let offset = u64::from(input.u16() % 0x200);
                let offset = if offset < 0x100 { offset & !3 } else { offset };
                let len = [4, 4, 1, 8][usize::from(input.u8() % 4)];
                let value = input.u64().to_le_bytes();
                t.write(offset, &value[..len]);
            }
            4 => {
                // A driver's whole handshake, with features from the input.
                write_reg(&mut t, 0x70, 0);
                write_reg(&mut t, 0x70, 3);
                write_reg(&mut t, 0x24, 0);
                write_reg(&mut t, 0x20, input.u32());
                write_reg(&mut t, 0x24, 1);
                write_reg(&mut t, 0x20, input.u32());
                write_reg(&mut t, 0x70, 0xb);
                let size = u32::from(input.u16());
                program_queue(&mut t, &guest, 0, size);
                write_reg(&mut t, 0x70, 0xf);
            }
            5 => guest.add_chain(0, &mut input),
            6 => {
                // QueueNotify reaches the device through its eventfd.
                write_reg(&mut t, 0x50, u32::from(input.u8() % 2));
                device.lock().unwrap().handle_event(0, EventSet::IN);
            }
            _ => guest.set_avail_idx(0, input.u16()),
        }
    }
    write_reg(&mut t, 0x70, 0);
}
