//! virtio-mmio devices. The transport ([`mmio`]) owns feature negotiation
//! and queue setup; each device module implements [`VirtioDevice`] and does
//! its work on the VMM event loop thread when a queue eventfd (ioeventfd)
//! or one of its host fds fires. Interrupts go out through irqfds.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;
pub mod vhost_user_fs;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid")]
    BadQueue(usize),
    #[error("registering device events: {0}")]
    Events(std::io::Error),
    #[error("{0}")]
    Backend(String),
}

/// The device's interrupt line: InterruptStatus plus the irqfd.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Marks `bits` pending and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::warn!("raising virtio interrupt: {e}");
        }
    }

    pub fn signal_used_queue(&self) {
        self.trigger(INT_USED_RING);
    }
}

/// Lets a device add and remove its fds on the event loop. Events come
/// back to [`VirtioDevice::handle_event`] with the token given here.
#[derive(Clone)]
pub struct EventRegistrar {
    epoll: Arc<Epoll>,
    slot: u32,
}

impl EventRegistrar {
    pub fn new(epoll: Arc<Epoll>, slot: u32) -> Self {
        EventRegistrar { epoll, slot }
    }

    fn data(&self, token: u32) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(token)
    }

    pub fn add(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.data(token)),
        )
    }

    pub fn modify(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.data(token)),
        )
    }

    pub fn remove(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// Splits epoll data into (slot, token).
pub fn split_event_data(data: u64) -> (u32, u32) {
    ((data >> 32) as u32, (data & 0xffff_ffff) as u32)
}

/// A byte count the device bounded itself (a header, a frame that fit the
/// guest's buffer, a capped request) as the u32 the used ring carries.
/// Saturates rather than panics: the guest must not be able to crash us.
pub fn used_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: Arc<GuestMemoryMmap>,
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (the ioeventfds on QueueNotify).
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    pub events: EventRegistrar,
    pub acked_features: u64,
}

/// Queue tokens are the queue index; device-specific tokens start here.
pub const FIRST_DEVICE_TOKEN: u32 = 0x100;

/// Registers every queue eventfd with token = queue index.
pub fn register_queue_events(ctx: &ActivateContext) -> Result<(), ActivateError> {
    use std::os::fd::AsRawFd;
    for (i, evt) in (0u32..).zip(&ctx.queue_evts) {
        ctx.events
            .add(evt.as_raw_fd(), i, EventSet::IN)
            .map_err(ActivateError::Events)?;
    }
    Ok(())
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn avail_features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Drops the active state (the fds it registered included).
    fn reset(&mut self);
    /// An fd registered by this device became ready.
    fn handle_event(&mut self, token: u32, events: EventSet);
}

/// Copies `data.len()` bytes of a config struct image at `offset`; reads
/// past the end return zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}
