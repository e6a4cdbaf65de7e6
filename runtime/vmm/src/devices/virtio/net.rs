//! virtio-net on a tap: one RX and one TX queue, MAC in config space,
//! checksum/TSO/UFO offloads passed through to the tap when the guest
//! negotiates them (frames carry the 12-byte virtio-net header both ways).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, VNET_HDR_LEN};
use super::{
    register_queue_events, ActivateContext, ActivateError, EventRegistrar, Interrupt, VirtioDevice,
    FIRST_DEVICE_TOKEN, VIRTIO_F_VERSION_1,
};
use crate::config::{parse_mac, NetConfig};
use crate::metrics::DeviceCounters;

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
const TOKEN_TAP: u32 = FIRST_DEVICE_TOKEN;

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_UFO: u64 = 1 << 10;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_UFO: u64 = 1 << 14;

/// Header plus the largest (TSO) frame.
const MAX_FRAME: usize = VNET_HDR_LEN + 65550;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("{0}")]
    Config(String),
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    counters: Arc<DeviceCounters>,
    active: Option<Active>,
    /// A frame read from the tap that found no RX buffer yet.
    pending: Option<Vec<u8>>,
    /// Whether the tap fd is currently polled for input.
    tap_polled: bool,
    buf: Vec<u8>,
}

impl Net {
    pub fn new(cfg: &NetConfig, counters: Arc<DeviceCounters>) -> Result<Net, NetError> {
        let tap = match (&cfg.tap, cfg.fd) {
            (Some(name), None) => Tap::open_named(name)?,
            (None, Some(fd)) => Tap::from_fd(fd)?,
            _ => return Err(NetError::Config("give exactly one of tap= or fd=".into())),
        };
        let mac = match &cfg.mac {
            Some(m) => parse_mac(m).map_err(NetError::Config)?,
            None => random_mac(),
        };
        Ok(Net::with_tap(tap, mac, counters))
    }

    /// The device on an already opened tap (or its test stand-in).
    #[doc(hidden)]
    pub fn with_tap(tap: Tap, mac: [u8; 6], counters: Arc<DeviceCounters>) -> Net {
        Net {
            tap,
            mac,
            counters,
            active: None,
            pending: None,
            tap_polled: false,
            buf: vec![0u8; MAX_FRAME],
        }
    }

    fn set_tap_polling(&mut self, on: bool) {
        if self.tap_polled == on {
            return;
        }
        if let Some(a) = &self.active {
            let events = if on { EventSet::IN } else { EventSet::empty() };
            if a.events
                .modify(self.tap.as_raw_fd(), TOKEN_TAP, events)
                .is_ok()
            {
                self.tap_polled = on;
            }
        }
    }

    /// Puts one frame into the next RX buffer. Returns false if there is none.
    fn deliver(&mut self, frame: &mut [u8]) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mem = a.mem.clone();
        let Some(chain) = a.queues[RX].pop_descriptor_chain(mem.as_ref()) else {
            return false;
        };
        let head = chain.head_index();
        // num_buffers = 1: without MRG_RXBUF every frame fits one chain.
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut used = 0u32;
        match Writer::new(mem.as_ref(), chain) {
            Ok(mut w) if w.available_bytes() >= frame.len() => {
                use std::io::Write;
                if w.write_all(frame).is_ok() {
                    used = super::used_len(frame.len());
                    self.counters.add_to_guest(frame.len() - VNET_HDR_LEN);
                } else {
                    self.counters.add_bad_request();
                }
            }
            _ => self.counters.add_bad_request(),
        }
        if a.queues[RX].add_used(mem.as_ref(), head, used).is_err() {
            self.counters.add_bad_request();
        }
        a.interrupt.signal_used_queue();
        true
    }

    /// Moves frames from the tap to the guest until one side runs dry.
    fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        loop {
            let mut frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = std::mem::take(&mut self.buf);
                    let r = self.tap.read_frame(&mut buf);
                    let frame = match r {
                        Ok(n) if n >= VNET_HDR_LEN => Some(buf[..n].to_vec()),
                        Ok(_) => Some(Vec::new()),
                        Err(_) => None,
                    };
                    self.buf = buf;
                    match frame {
                        Some(f) if f.is_empty() => continue,
                        Some(f) => f,
                        None => {
                            // Tap drained (EAGAIN): wait for its next readiness.
                            self.set_tap_polling(true);
                            return;
                        }
                    }
                }
            };
            if !self.deliver(&mut frame) {
                // No guest buffer: hold the frame and stop polling the tap until the
                // guest posts buffers (RX queue notification).
                self.pending = Some(frame);
                self.set_tap_polling(false);
                return;
            }
        }
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut used_any = false;
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(mem.as_ref()) {
            let head = chain.head_index();
            match Reader::new(mem.as_ref(), chain) {
                Ok(mut r)
                    if r.available_bytes() >= VNET_HDR_LEN && r.available_bytes() <= MAX_FRAME =>
                {
                    use std::io::Read;
                    let n = r.available_bytes();
                    if r.read_exact(&mut self.buf[..n]).is_ok() {
                        match self.tap.write_frame(&self.buf[..n]) {
                            Ok(_) => self.counters.add_from_guest(n - VNET_HDR_LEN),
                            // A full tap queue drops the frame, as a NIC would.
                            Err(e) => log::debug!("net: tap write: {e}"),
                        }
                    } else {
                        self.counters.add_bad_request();
                    }
                }
                _ => self.counters.add_bad_request(),
            }
            if a.queues[TX].add_used(mem.as_ref(), head, 0).is_err() {
                self.counters.add_bad_request();
            }
            used_any = true;
        }
        if used_any {
            a.interrupt.signal_used_queue();
        }
    }
}

fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most mac.len() bytes.
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    // Locally administered, unicast.
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        super::TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | F_MAC
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_UFO
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_UFO
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let f = ctx.acked_features;
        let mut offload = 0;
        if f & F_GUEST_CSUM != 0 {
            offload |= TUN_F_CSUM;
            if f & F_GUEST_TSO4 != 0 {
                offload |= TUN_F_TSO4;
            }
            if f & F_GUEST_TSO6 != 0 {
                offload |= TUN_F_TSO6;
            }
            if f & F_GUEST_UFO != 0 {
                offload |= TUN_F_UFO;
            }
        }
        self.tap
            .set_offload(offload)
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        register_queue_events(&ctx)?;
        ctx.events
            .add(self.tap.as_raw_fd(), TOKEN_TAP, EventSet::IN)
            .map_err(ActivateError::Events)?;
        self.tap_polled = true;
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            events: ctx.events,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
            for e in &a.evts {
                a.events.remove(e.as_raw_fd());
            }
            a.events.remove(self.tap.as_raw_fd());
        }
        self.pending = None;
        self.tap_polled = false;
    }

    fn handle_event(&mut self, token: u32, _events: EventSet) {
        // A queue's token is its index.
        let queue = usize::try_from(token).ok();
        match token {
            _ if queue == Some(RX) => {
                if let Some(a) = &self.active {
                    let _ = a.evts[RX].read();
                }
                self.process_rx();
            }
            _ if queue == Some(TX) => {
                if let Some(a) = &self.active {
                    let _ = a.evts[TX].read();
                }
                self.process_tx();
            }
            TOKEN_TAP => self.process_rx(),
            _ => {}
        }
    }
}
