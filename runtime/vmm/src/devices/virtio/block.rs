//! virtio-blk on a raw image file: read, write, flush, get-id; optional
//! read-only mode (VIRTIO_BLK_F_RO, writes fail with IOERR).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    register_queue_events, ActivateContext, ActivateError, EventRegistrar, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::metrics::DeviceCounters;

const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const REQ_GET_ID: u32 = 8;

const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;

/// Largest single transfer we accept (a guest asking for more gets IOERR).
const MAX_TRANSFER: u64 = 16 << 20;
const DEVICE_ID: &[u8] = b"podvisor-blk";

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    evt: EventFd,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
}

/// The image file and what may be done with it.
struct Backend {
    file: File,
    read_only: bool,
    /// Capacity in bytes (rounded down to whole sectors).
    size: u64,
    counters: Arc<DeviceCounters>,
}

pub struct Block {
    backend: Backend,
    active: Option<Active>,
    config: [u8; 8],
}

/// A request that cannot even be answered with a status byte.
struct Malformed;

impl Block {
    pub fn open(
        path: &Path,
        read_only: bool,
        counters: Arc<DeviceCounters>,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len() / SECTOR_SIZE * SECTOR_SIZE;
        Ok(Block {
            backend: Backend {
                file,
                read_only,
                size,
                counters,
            },
            active: None,
            config: (size / SECTOR_SIZE).to_le_bytes(),
        })
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(mem.as_ref()) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let len = self
                .backend
                .handle_chain(&mem, &descs)
                .unwrap_or_else(|Malformed| {
                    self.backend.counters.add_bad_request();
                    0
                });
            if active.queue.add_used(mem.as_ref(), head, len).is_err() {
                self.backend.counters.add_bad_request();
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
    }
}

impl Backend {
    /// Parses and runs one descriptor chain: header, data..., status.
    /// Returns the used length (data written to the guest + status byte).
    fn handle_chain(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<u32, Malformed> {
        let (header, rest) = descs.split_first().ok_or(Malformed)?;
        let (status, data) = rest.split_last().ok_or(Malformed)?;
        if header.is_write_only() || header.len() < 16 || !status.is_write_only() {
            return Err(Malformed);
        }
        let mut hdr = [0u8; 16];
        mem.read_slice(&mut hdr, header.addr())
            .map_err(|_| Malformed)?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&hdr[8..16]);
        let (code, written) = self.execute(mem, kind, u64::from_le_bytes(sector), data);
        mem.write_obj(code, status.addr()).map_err(|_| Malformed)?;
        Ok(written + 1)
    }

    /// Executes one request; returns (status, bytes written into guest buffers).
    fn execute(
        &self,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> (u8, u32) {
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let start = sector.checked_mul(SECTOR_SIZE);
        let in_range = start
            .and_then(|o| o.checked_add(total))
            .is_some_and(|end| end <= self.size)
            && total <= MAX_TRANSFER;
        let mut pos = start.unwrap_or(0);
        match kind {
            REQ_IN => {
                if !in_range || data.iter().any(|d| !d.is_write_only()) {
                    return (STATUS_IOERR, 0);
                }
                let mut written = 0u32;
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    if self.file.read_exact_at(&mut buf, pos).is_err()
                        || mem.write_slice(&buf, d.addr()).is_err()
                    {
                        return (STATUS_IOERR, written);
                    }
                    pos += u64::from(d.len());
                    written += d.len();
                }
                self.counters.add_to_guest(written as usize);
                (STATUS_OK, written)
            }
            REQ_OUT => {
                if self.read_only || !in_range || data.iter().any(|d| d.is_write_only()) {
                    return (STATUS_IOERR, 0);
                }
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    if mem.read_slice(&mut buf, d.addr()).is_err()
                        || self.file.write_all_at(&buf, pos).is_err()
                    {
                        return (STATUS_IOERR, 0);
                    }
                    pos += u64::from(d.len());
                }
                // total <= MAX_TRANSFER (in_range).
                self.counters
                    .add_from_guest(usize::try_from(total).unwrap_or(usize::MAX));
                (STATUS_OK, 0)
            }
            REQ_FLUSH => {
                // SAFETY: fdatasync on a file we own.
                let ok = self.read_only || unsafe { libc::fdatasync(self.file.as_raw_fd()) } == 0;
                (if ok { STATUS_OK } else { STATUS_IOERR }, 0)
            }
            REQ_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    let n = DEVICE_ID.len().min(d.len() as usize);
                    if mem.write_slice(&DEVICE_ID[..n], d.addr()).is_err() {
                        return (STATUS_IOERR, 0);
                    }
                    (STATUS_OK, super::used_len(n))
                }
                _ => (STATUS_IOERR, 0),
            },
            _ => (STATUS_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        super::TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.backend.read_only {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        register_queue_events(&ctx)?;
        self.active = Some(Active {
            mem: ctx.mem,
            queue: ctx.queues.remove(0),
            evt: ctx.queue_evts.remove(0),
            interrupt: ctx.interrupt,
            events: ctx.events,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
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
