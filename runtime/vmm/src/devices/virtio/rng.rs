//! virtio-rng: fills the guest's buffers from getrandom(2).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{
    register_queue_events, ActivateContext, ActivateError, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::metrics::DeviceCounters;

const QUEUE_SIZES: [u16; 1] = [256];
/// Most bytes handed out per request (the rest of a huge buffer stays unused).
const MAX_REQUEST: usize = 64 << 10;

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    evt: vmm_sys_util::eventfd::EventFd,
    interrupt: Arc<Interrupt>,
    events: super::EventRegistrar,
}

pub struct Rng {
    counters: Arc<DeviceCounters>,
    active: Option<Active>,
}

impl Rng {
    pub fn new(counters: Arc<DeviceCounters>) -> Self {
        Rng {
            counters,
            active: None,
        }
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(mem.as_ref()) {
            let head = chain.head_index();
            let mut written = 0usize;
            let mut buf = [0u8; 4096];
            for desc in chain.writable() {
                let mut remaining = (desc.len() as usize).min(MAX_REQUEST - written);
                let mut addr = desc.addr();
                while remaining > 0 {
                    let n = remaining.min(buf.len());
                    fill_random(&mut buf[..n]);
                    if mem.write_slice(&buf[..n], addr).is_err() {
                        self.counters.add_bad_request();
                        remaining = 0;
                        continue;
                    }
                    written += n;
                    remaining -= n;
                    addr = vm_memory::GuestAddress(addr.0 + n as u64);
                }
                if written >= MAX_REQUEST {
                    break;
                }
            }
            self.counters.add_to_guest(written);
            if active
                .queue
                .add_used(mem.as_ref(), head, super::used_len(written))
                .is_err()
            {
                self.counters.add_bad_request();
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most len bytes into the given buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n <= 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        filled += n as usize;
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        super::TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        register_queue_events(&ctx)?;
        let queue = ctx.queues.remove(0);
        let evt = ctx.queue_evts.remove(0);
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            evt,
            interrupt: ctx.interrupt,
            events: ctx.events,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
            use std::os::fd::AsRawFd;
            a.events.remove(a.evt.as_raw_fd());
        }
    }

    fn handle_event(&mut self, token: u32, _events: EventSet) {
        if token == 0 {
            if let Some(a) = &self.active {
                let _ = a.evt.read();
            }
            self.process_queue();
        }
    }
}
