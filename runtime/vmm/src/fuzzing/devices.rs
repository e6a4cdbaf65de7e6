//! One entry point per device: the input is a little program of driver
//! actions (post chains, notify, act as the host side) run against the
//! device activated on queues in plain host memory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest::Guest;
use super::input::Input;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::tap::Tap;
use crate::devices::virtio::vsock::{Header, Vsock, HOST_CID};
use crate::devices::virtio::{
    ActivateContext, EventRegistrar, Interrupt, VirtioDevice, FIRST_DEVICE_TOKEN,
};
use crate::metrics::DeviceCounters;

/// Most driver actions per input: keeps one run short.
const MAX_STEPS: usize = 256;

/// Activates `device` on `guest`'s queues as the MMIO transport would at
/// DRIVER_OK. Returns the epoll set the device registered its fds in.
pub fn activate(
    device: &mut dyn VirtioDevice,
    guest: &Guest,
    acked_features: u64,
) -> Option<Arc<Epoll>> {
    let epoll = Arc::new(Epoll::new().ok()?);
    let queues = guest.device_queues();
    let queue_evts = (0..queues.len())
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let ctx = ActivateContext {
        mem: guest.mem.clone(),
        queues,
        queue_evts,
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).ok()?)),
        events: EventRegistrar::new(epoll.clone(), 1),
        acked_features: acked_features & device.avail_features(),
    };
    device.activate(ctx).ok()?;
    Some(epoll)
}

/// A memfd of `size` bytes, opened by path as the VMM opens a disk image.
fn memfd_path(size: u64) -> Option<(File, PathBuf)> {
    // SAFETY: a static NUL-terminated name; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(c"podvisor-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).ok()?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Some((file, path))
}

/// virtio-blk: request chains (header, data, status) against a small disk.
pub fn virtio_block(data: &[u8]) {
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 != 0;
    // Sizes around sector boundaries, up to 1 MiB.
    let size = u64::from(input.u16()) * 16;
    let Some((_disk, path)) = memfd_path(size) else {
        return;
    };
    let Ok(mut dev) = Block::open(&path, read_only, DeviceCounters::new("fuzz-blk")) else {
        return;
    };
    let mut guest = Guest::new(1);
    if activate(&mut dev, &guest, input.u64()).is_none() {
        return;
    }
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 | 1 => guest.add_chain(0, &mut input),
            2 => guest.set_avail_idx(0, input.u16()),
            _ => dev.handle_event(0, EventSet::IN),
        }
    }
    dev.handle_event(0, EventSet::IN);
    dev.reset();
}

/// virtio-rng: buffers of any shape.
pub fn virtio_rng(data: &[u8]) {
    let mut input = Input::new(data);
    let mut dev = Rng::new(DeviceCounters::new("fuzz-rng"));
    let mut guest = Guest::new(1);
    if activate(&mut dev, &guest, input.u64()).is_none() {
        return;
    }
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 | 1 => guest.add_chain(0, &mut input),
            2 => guest.set_avail_idx(0, input.u16()),
            _ => dev.handle_event(0, EventSet::IN),
        }
    }
    dev.handle_event(0, EventSet::IN);
    dev.reset();
}

const NET_RX: usize = 0;
const NET_TX: usize = 1;

/// virtio-net on a tap stand-in: TX chains from the guest, frames from the
/// host into RX buffers of any shape.
pub fn virtio_net(data: &[u8]) {
    let mut input = Input::new(data);
    let Ok((tap, peer)) = Tap::socket_pair() else {
        return;
    };
    if peer.set_nonblocking(true).is_err() {
        return;
    }
    let mut dev = Net::with_tap(tap, [2, 0, 0, 0, 0, 1], DeviceCounters::new("fuzz-net"));
    let mut guest = Guest::new(2);
    if activate(&mut dev, &guest, input.u64()).is_none() {
        return;
    }
    let mut frame = vec![0u8; 70_000];
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 7 {
            0 => guest.add_chain(NET_RX, &mut input),
            1 => guest.add_chain(NET_TX, &mut input),
            2 => dev.handle_event(NET_RX as u32, EventSet::IN),
            3 => dev.handle_event(NET_TX as u32, EventSet::IN),
            4 => {
                // A frame from the host side; the device reads it on tap readiness.
                let len = usize::from(input.u16());
                let _ = peer.send(input.bytes(len));
                dev.handle_event(FIRST_DEVICE_TOKEN, EventSet::IN);
            }
            5 => while peer.recv(&mut frame).is_ok() {},
            _ => {
                let q = usize::from(input.u8() % 2);
                guest.set_avail_idx(q, input.u16());
            }
        }
    }
    dev.handle_event(NET_TX as u32, EventSet::IN);
    dev.handle_event(NET_RX as u32, EventSet::IN);
    dev.reset();
}

const VSOCK_RX: usize = 0;
const VSOCK_TX: usize = 1;
const GUEST_CID: u64 = 3;
/// The host port a guest can reach (a listener at `<socket>_1024`).
const HOST_PORT: u32 = 1024;

/// A directory of our own for the vsock's unix sockets, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Option<ScratchDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pvfz-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A vsock packet whose addressing is right, so that the rest of the header
/// (op, ports, flags, credit) and the payload reach the connection logic.
fn vsock_packet(input: &mut Input) -> Vec<u8> {
    let ctl = input.u8();
    let header = Header {
        src_cid: if ctl & 1 != 0 { input.u64() } else { GUEST_CID },
        dst_cid: if ctl & 2 != 0 { input.u64() } else { HOST_CID },
        src_port: u32::from(input.u8() % 4) + 50_000,
        dst_port: if ctl & 4 != 0 { input.u32() } else { HOST_PORT },
        len: input.u32(),
        type_: if ctl & 8 != 0 { input.u16() } else { 1 },
        op: u16::from(input.u8() % 9),
        flags: input.u32(),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    };
    let mut packet = header.to_bytes().to_vec();
    let len = usize::from(input.u16());
    packet.extend_from_slice(input.bytes(len));
    packet
}

/// virtio-vsock with host sockets on both sides: guest packets (raw chains
/// or well-addressed headers), RX buffers, host clients that send CONNECT
/// lines, a host listener the guest connects to, host data and hang-ups.
pub fn virtio_vsock(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(dir) = ScratchDir::new() else {
        return;
    };
    let socket = dir.0.join("v.sock");
    let Ok(listener) = UnixListener::bind(dir.0.join(format!("v.sock_{HOST_PORT}"))) else {
        return;
    };
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut dev) = Vsock::new(GUEST_CID, &socket, DeviceCounters::new("fuzz-vsock")) else {
        return;
    };
    let mut guest = Guest::new(3);
    if activate(&mut dev, &guest, input.u64()).is_none() {
        return;
    }
    let mut host: Vec<UnixStream> = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 11 {
            0 => guest.add_chain(VSOCK_TX, &mut input),
            1 => guest.add_chain(VSOCK_RX, &mut input),
            2 => {
                let packet = vsock_packet(&mut input);
                let addr = Guest::data_addr(&mut input);
                guest.write(addr, &packet);
                // Header and payload in one buffer or split after the header.
                if input.u8() & 1 == 0 {
                    guest.add_buffers(VSOCK_TX, &[(addr, packet.len() as u32, false)]);
                } else {
                    let tail = (packet.len() - 44) as u32;
                    guest.add_buffers(VSOCK_TX, &[(addr, 44, false), (addr + 44, tail, false)]);
                }
                dev.handle_event(VSOCK_TX as u32, EventSet::IN);
            }
            3 => {
                let addr = Guest::data_addr(&mut input);
                let len = u32::from(input.u16());
                guest.add_buffers(VSOCK_RX, &[(addr, len, true)]);
                dev.handle_event(VSOCK_RX as u32, EventSet::IN);
            }
            4 => dev.handle_event(VSOCK_TX as u32, EventSet::IN),
            5 => {
                // A host client: its connect line, then the device's turn.
                if let Ok(mut s) = UnixStream::connect(&socket) {
                    let len = usize::from(input.u8());
                    let _ = s.write_all(input.bytes(len));
                    let _ = s.set_nonblocking(true);
                    host.push(s);
                }
                dev.handle_event(FIRST_DEVICE_TOKEN, EventSet::IN);
            }
            6 => {
                let token = FIRST_DEVICE_TOKEN + u32::from(input.u8() % 32);
                let events = EventSet::from_bits_truncate(input.u32());
                dev.handle_event(token, events);
            }
            7 => {
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    host.push(s);
                }
            }
            8 => {
                let pick = usize::from(input.u8());
                let len = usize::from(input.u16());
                let bytes = input.bytes(len);
                if !host.is_empty() {
                    let n = host.len();
                    let _ = host[pick % n].write(bytes);
                    let _ = host[pick % n].read(&mut buf);
                }
            }
            9 => {
                let pick = usize::from(input.u8());
                if !host.is_empty() {
                    let n = host.len();
                    host.swap_remove(pick % n);
                }
            }
            _ => {
                let q = usize::from(input.u8() % 3);
                guest.set_avail_idx(q, input.u16());
            }
        }
    }
    dev.handle_event(VSOCK_TX as u32, EventSet::IN);
    dev.reset();
}
