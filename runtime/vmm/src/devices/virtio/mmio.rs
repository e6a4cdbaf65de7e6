//! virtio-mmio transport, version 2 (virtio 1.2, 4.2.2). Hand-written: the
//! rust-vmm crates provide queues, not the register file.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, EventRegistrar, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5044_5653; // "PDVS"

pub const REG_QUEUE_NOTIFY: u64 = 0x50;
const CONFIG_SPACE: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Arc<GuestMemoryMmap>,
        irqfd: EventFd,
        events: EventRegistrar,
    ) -> std::io::Result<Self> {
        let sizes = device.lock().unwrap().queue_max_sizes().to_vec();
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for _ in &sizes {
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            queues: fresh_queues(&sizes),
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            events,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        })
    }

    /// The eventfds to register as ioeventfds on QueueNotify (datamatch = index).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn with_queue<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.lock().unwrap().reset();
        }
        let sizes = self.device.lock().unwrap().queue_max_sizes().to_vec();
        self.queues = fresh_queues(&sizes);
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Only accept a subset of what we offered, and only modern drivers.
            let offered = self.device.lock().unwrap().avail_features();
            if self.acked_features & !offered != 0 || self.acked_features & VIRTIO_F_VERSION_1 == 0
            {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        let wants_activation =
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !self.activated && value & wants_activation == wants_activation {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem.as_ref()))
        {
            log::warn!("virtio-mmio: queue {i} has an invalid layout; device needs reset");
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            match evt.try_clone() {
                Ok(e) => queue_evts.push(e),
                Err(e) => {
                    log::error!("virtio-mmio: cloning queue eventfd: {e}");
                    self.status |= STATUS_FAILED;
                    return;
                }
            }
        }
        let sizes = self.device.lock().unwrap().queue_max_sizes().to_vec();
        let queues = std::mem::replace(&mut self.queues, fresh_queues(&sizes));
        let ctx = ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            events: self.events.clone(),
            acked_features: self.acked_features,
        };
        match self.device.lock().unwrap().activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio-mmio: activating device: {e}");
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.lock().unwrap().device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = self.device.lock().unwrap().avail_features();
                match self.device_features_sel {
                    0 => (features & 0xffff_ffff) as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map(|q| q.max_size()).unwrap_or(0) as u32,
            0x44 => self.selected_queue().map(|q| q.ready()).unwrap_or(false) as u32,
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let driver_setup = self.status & STATUS_DRIVER != 0
            && self.status & (STATUS_FEATURES_OK | STATUS_FAILED) == 0;
        let queue_setup = self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0;
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 if driver_setup => match self.driver_features_sel {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
                1 => {
                    self.acked_features =
                        (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            // QueueNum is 32 bits wide, a queue size 16: the rest is ignored.
            0x38 if queue_setup => self.with_queue(|q| q.set_size((value & 0xffff) as u16)),
            0x44 if queue_setup => self.with_queue(|q| q.set_ready(value == 1)),
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; an unmatched value lands here.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(value),
            0x70 => self.set_status(value),
            0x80 if queue_setup => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x84 if queue_setup => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x90 if queue_setup => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x94 if queue_setup => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0xa0 if queue_setup => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            0xa4 if queue_setup => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            _ => log::debug!("virtio-mmio: ignored write {value:#x} at {offset:#x}"),
        }
    }
}

fn fresh_queues(sizes: &[u16]) -> Vec<Queue> {
    sizes
        .iter()
        // Sizes are compile-time powers of two, so Queue::new cannot fail.
        .map(|&s| Queue::new(s).expect("valid queue size"))
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device
                .lock()
                .unwrap()
                .read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device
                .lock()
                .unwrap()
                .write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use vm_memory::GuestAddress;
    use vmm_sys_util::epoll::{Epoll, EventSet};

    struct Dummy {
        activated: Arc<AtomicBool>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, _ctx: ActivateContext) -> Result<(), super::super::ActivateError> {
            self.activated.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {
            self.activated.store(false, Ordering::SeqCst);
        }
        fn handle_event(&mut self, _token: u32, _events: EventSet) {}
    }

    fn transport() -> (MmioTransport, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let t = MmioTransport::new(
            Arc::new(Mutex::new(Dummy {
                activated: flag.clone(),
            })),
            mem,
            EventFd::new(0).unwrap(),
            EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 1),
        )
        .unwrap();
        (t, flag)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn negotiates_and_activates() {
        let (mut t, flag) = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0x1000);
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(flag.load(Ordering::SeqCst));
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        w(&mut t, 0x70, 0);
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!(r(&mut t, 0x70), 0);
    }

    #[test]
    fn refuses_legacy_drivers_and_bad_queues() {
        let (mut t, flag) = transport();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // No VERSION_1: FEATURES_OK must not stick.
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        // Rings outside guest memory.
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_0000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(!flag.load(Ordering::SeqCst));
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    }
}
