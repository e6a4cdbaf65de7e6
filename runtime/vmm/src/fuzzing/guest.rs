//! The driver side of split virtqueues in plain host memory: the fuzz
//! input becomes descriptor chains (sensible or hostile) that the device
//! under test then pops.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::input::Input;

pub const MEM_SIZE: u64 = 1 << 20;
pub const QUEUE_SIZE: u16 = 64;
/// Queue i's rings live at i * RING_AREA: descriptors, then avail, then used.
const RING_AREA: u64 = 0x2000;
const AVAIL_OFFSET: u64 = 0x800;
const USED_OFFSET: u64 = 0x1000;
/// Buffers go here, above the rings of up to four queues.
pub const DATA_START: u64 = 0x8000;
const DATA_LEN: u64 = MEM_SIZE - DATA_START;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

pub struct Guest {
    pub mem: Arc<GuestMemoryMmap>,
    queues: Vec<DriverQueue>,
}

struct DriverQueue {
    base: u64,
    next_slot: u16,
    avail_idx: u16,
}

impl Guest {
    pub fn new(queues: usize) -> Guest {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("anonymous guest memory");
        Guest {
            mem: Arc::new(mem),
            queues: (0..queues as u64)
                .map(|i| DriverQueue {
                    base: i * RING_AREA,
                    next_slot: 0,
                    avail_idx: 0,
                })
                .collect(),
        }
    }

    pub fn desc_table(&self, q: usize) -> u64 {
        self.queues[q].base
    }

    pub fn avail_ring(&self, q: usize) -> u64 {
        self.queues[q].base + AVAIL_OFFSET
    }

    pub fn used_ring(&self, q: usize) -> u64 {
        self.queues[q].base + USED_OFFSET
    }

    /// The device's view of queue `q`, set up as a driver would.
    pub fn device_queue(&self, q: usize) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).expect("power-of-two queue size");
        queue.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc_table(q));
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail_ring(q));
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_ring(q));
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        queue
    }

    pub fn device_queues(&self) -> Vec<Queue> {
        (0..self.queues.len())
            .map(|q| self.device_queue(q))
            .collect()
    }

    /// Writes what fits; addresses outside guest memory are the point of
    /// some inputs, so a failed write is not an error.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// A buffer address in the data area chosen by the input.
    pub fn data_addr(input: &mut Input) -> u64 {
        DATA_START + (u64::from(input.u16()) * 8) % DATA_LEN
    }

    /// Decodes one descriptor chain from `input` into queue `q` and makes it
    /// available. Most descriptors are well formed (in guest memory, linked
    /// in order); a mode byte with the two top bits set takes address,
    /// length, flags and next verbatim from the input.
    pub fn add_chain(&mut self, q: usize, input: &mut Input) {
        let n = 1 + u16::from(input.u8() % 8);
        let head = self.queues[q].next_slot;
        for k in 0..n {
            let slot = (head + k) % QUEUE_SIZE;
            let mode = input.u8();
            let (addr, len, flags, next) = if mode & 0xc0 == 0xc0 {
                (input.u64(), input.u32(), input.u16(), input.u16())
            } else {
                let addr = Self::data_addr(input);
                let mut len = u32::from(input.u16());
                if mode & 0x40 != 0 {
                    len <<= 4;
                }
                let mut flags = 0;
                if mode & 1 != 0 {
                    flags |= F_WRITE;
                }
                if mode & 0x20 != 0 {
                    flags |= F_INDIRECT;
                }
                if k + 1 < n {
                    flags |= F_NEXT;
                }
                (addr, len, flags, (slot + 1) % QUEUE_SIZE)
            };
            if mode & 2 != 0 {
                let want = usize::from(input.u16()).min(len as usize);
                let payload = input.bytes(want);
                self.write(addr, payload);
            }
            self.put_desc(q, slot, addr, len, flags, next);
        }
        self.queues[q].next_slot = (head + n) % QUEUE_SIZE;
        self.publish(q, head);
    }

    /// Puts a well-formed chain of (buffer, length, device-writable) into
    /// queue `q` and makes it available.
    pub fn add_buffers(&mut self, q: usize, bufs: &[(u64, u32, bool)]) {
        let head = self.queues[q].next_slot;
        let n = bufs.len() as u16;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let k = k as u16;
            let slot = (head + k) % QUEUE_SIZE;
            let mut flags = if write { F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= F_NEXT;
            }
            self.put_desc(q, slot, addr, len, flags, (slot + 1) % QUEUE_SIZE);
        }
        self.queues[q].next_slot = (head + n) % QUEUE_SIZE;
        self.publish(q, head);
    }

    fn put_desc(&self, q: usize, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(self.desc_table(q) + u64::from(slot) * 16, &d);
    }

    fn publish(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let entry = dq.base + AVAIL_OFFSET + 4 + u64::from(dq.avail_idx % QUEUE_SIZE) * 2;
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let idx = dq.avail_idx;
        let idx_addr = dq.base + AVAIL_OFFSET + 2;
        self.write(entry, &head.to_le_bytes());
        self.write(idx_addr, &idx.to_le_bytes());
    }

    /// A driver bug or attack: the avail index jumps anywhere.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].avail_idx = idx;
        self.write(self.avail_ring(q) + 2, &idx.to_le_bytes());
    }

    /// How many buffers the device has returned on queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(self.used_ring(q) + 2))
            .unwrap_or(0)
    }
}
