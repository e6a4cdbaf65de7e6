//! virtio-fs as a vhost-user frontend (vhost crate): virtiofsd does the
//! FUSE work directly on guest memory, which is a shared memfd handed over
//! with SET_MEM_TABLE. The queue notify ioeventfds are the vrings' kick fds;
//! the backend's call eventfds come back to the event loop, which sets
//! InterruptStatus and raises the irqfd (a direct irqfd would leave the
//! virtio-mmio status register empty and Linux would ignore the interrupt).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateContext, ActivateError, EventRegistrar, Interrupt, VirtioDevice, FIRST_DEVICE_TOKEN,
    VIRTIO_F_VERSION_1,
};
use crate::config::FsConfig;

/// High-priority queue + one request queue.
const NUM_QUEUES: usize = 2;
const TAG_LEN: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("connecting to the vhost-user backend at {path}: {msg}")]
    Connect { path: String, msg: String },
    #[error("vhost-user {step}: {msg}")]
    Protocol { step: &'static str, msg: String },
    #[error("tag {0:?} must be 1 to 36 bytes")]
    Tag(String),
    #[error("queue size {0} must be a power of two up to 32768")]
    QueueSize(u16),
    #[error("creating eventfds: {0}")]
    Events(std::io::Error),
}

fn proto(step: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |e| FsError::Protocol {
        step,
        msg: e.to_string(),
    }
}

struct Active {
    kick_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
}

pub struct Fs {
    frontend: Frontend,
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    config: [u8; TAG_LEN + 4],
    queue_sizes: [u16; NUM_QUEUES],
    mem: Arc<GuestMemoryMmap>,
    mem_file: Arc<File>,
    /// The backend signals used buffers here (created up front: no new fds after setup).
    call_evts: Vec<EventFd>,
    active: Option<Active>,
}

impl Fs {
    /// Connects to virtiofsd and does the feature handshake. Guest memory
    /// must be backed by `mem_file` (the shared memfd).
    pub fn connect(
        cfg: &FsConfig,
        mem: Arc<GuestMemoryMmap>,
        mem_file: Arc<File>,
    ) -> Result<Fs, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(FsError::Tag(cfg.tag.clone()));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(FsError::QueueSize(cfg.queue_size));
        }
        let mut frontend =
            Frontend::connect(&cfg.socket, NUM_QUEUES as u64).map_err(|e| FsError::Connect {
                path: cfg.socket.display().to_string(),
                msg: e.to_string(),
            })?;
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            protocol_features =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(protocol_features)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let call_evts = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::Events)?;
        Ok(Fs {
            call_evts,
            frontend,
            backend_features,
            protocol_features,
            config,
            queue_sizes: [cfg.queue_size; NUM_QUEUES],
            mem,
            mem_file,
            active: None,
        })
    }

    fn mem_table(&self) -> Vec<VhostUserMemoryRegionInfo> {
        let mut offset = 0u64;
        self.mem
            .iter()
            .map(|region| {
                let info = VhostUserMemoryRegionInfo {
                    guest_phys_addr: region.start_addr().0,
                    memory_size: region.len(),
                    userspace_addr: region
                        .get_host_address(vm_memory::MemoryRegionAddress(0))
                        .map(|p| p as u64)
                        .unwrap_or(0),
                    mmap_offset: region.file_offset().map(|f| f.start()).unwrap_or(offset),
                    mmap_handle: self.mem_file.as_raw_fd(),
                };
                offset += region.len();
                info
            })
            .collect()
    }

    fn host_addr(&self, gpa: u64) -> Result<u64, ActivateError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| ActivateError::Backend(format!("ring address {gpa:#x}: {e}")))
    }

    fn setup_backend(&mut self, ctx: &ActivateContext) -> Result<(), ActivateError> {
        let b = |e: vhost::Error| ActivateError::Backend(e.to_string());
        let mut features = ctx.acked_features;
        if !self.protocol_features.is_empty()
            || self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
        {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend.set_features(features).map_err(b)?;
        self.frontend.set_mem_table(&self.mem_table()).map_err(b)?;
        for (i, queue) in ctx.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            self.frontend.set_vring_num(i, queue.size()).map_err(b)?;
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: self.host_addr(queue.desc_table())?,
                used_ring_addr: self.host_addr(queue.used_ring())?,
                avail_ring_addr: self.host_addr(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_addr(i, &config).map_err(b)?;
            self.frontend.set_vring_base(i, 0).map_err(b)?;
            self.frontend
                .set_vring_call(i, &self.call_evts[i])
                .map_err(b)?;
            self.frontend
                .set_vring_kick(i, &ctx.queue_evts[i])
                .map_err(b)?;
            if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                self.frontend.set_vring_enable(i, true).map_err(b)?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        super::TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        // What the backend can do, minus the vhost-user-only bit, plus VERSION_1.
        (self.backend_features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            | VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        for (i, evt) in (0u32..).zip(&self.call_evts) {
            ctx.events
                .add(evt.as_raw_fd(), FIRST_DEVICE_TOKEN + i, EventSet::IN)
                .map_err(ActivateError::Events)?;
        }
        if let Err(e) = self.setup_backend(&ctx) {
            for evt in &self.call_evts {
                ctx.events.remove(evt.as_raw_fd());
            }
            return Err(e);
        }
        self.active = Some(Active {
            kick_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            events: ctx.events,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
            for (i, evt) in self.call_evts.iter().enumerate() {
                a.events.remove(evt.as_raw_fd());
                // GET_VRING_BASE stops the backend's processing of this ring.
                let _ = self.frontend.get_vring_base(i);
            }
            drop(a.kick_evts);
        }
    }

    fn handle_event(&mut self, token: u32, _events: EventSet) {
        let Some(a) = &self.active else { return };
        let Some(evt) = token
            .checked_sub(FIRST_DEVICE_TOKEN)
            .and_then(|i| self.call_evts.get(i as usize))
        else {
            return;
        };
        let _ = evt.read();
        a.interrupt.signal_used_queue();
    }
}
