//! The virtio devices without a VM: guest memory is anonymous host memory,
//! the driver side is virtio-queue's MockSplitQueue writing descriptor
//! chains, and the test runs the device's event loop (its epoll set and
//! queue eventfds) as the VMM does. The same device logic that
//! `guest_devices.rs` drives from a guest on /dev/kvm, in plain `cargo test`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podvisor_vmm::devices::virtio::block::Block;
use podvisor_vmm::devices::virtio::net::Net;
use podvisor_vmm::devices::virtio::rng::Rng;
use podvisor_vmm::devices::virtio::tap::Tap;
use podvisor_vmm::devices::virtio::vsock::{Header, Vsock, HOST_CID};
use podvisor_vmm::devices::virtio::{
    split_event_data, ActivateContext, EventRegistrar, Interrupt, VirtioDevice, INT_USED_RING,
    VIRTIO_F_VERSION_1,
};
use podvisor_vmm::metrics::DeviceCounters;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 16;
/// Queue i's rings at i * 64 KiB; buffers from 1 MiB up.
const RING_SPACING: u64 = 0x1_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One device activated on mock queues, and the VMM's side of its events.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    /// Next free descriptor slot and chains posted, per queue.
    next_slot: Vec<u16>,
    posted: Vec<u16>,
    notify: Vec<EventFd>,
    epoll: Arc<Epoll>,
    interrupt: Arc<Interrupt>,
}

/// Test sizes are small; a conversion that fails is a broken test.
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}

fn u16_of(n: usize) -> u16 {
    u16::try_from(n).unwrap()
}

fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

impl<'m> Rig<'m> {
    fn activate(mem: &'m Arc<GuestMemoryMmap>, dev: &mut dyn VirtioDevice, features: u64) -> Self {
        let n = dev.queue_max_sizes().len();
        let queues: Vec<_> = (0..n as u64)
            .map(|i| MockSplitQueue::create(&**mem, GuestAddress(i * RING_SPACING), QUEUE_SIZE))
            .collect();
        let device_queues: Vec<Queue> = queues.iter().map(|q| q.create_queue().unwrap()).collect();
        let evts: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let epoll = Arc::new(Epoll::new().unwrap());
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: device_queues,
            queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
            events: EventRegistrar::new(epoll.clone(), 7),
            acked_features: features,
        })
        .unwrap();
        Rig {
            mem,
            queues,
            next_slot: vec![0; n],
            posted: vec![0; n],
            notify: evts,
            epoll,
            interrupt,
        }
    }

    /// Posts one chain of (address, length, device-writable) buffers on
    /// queue `q` and returns its head index.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let start = self.next_slot[q];
        assert!(usize::from(start) + bufs.len() <= usize::from(QUEUE_SIZE));
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let i = u16_of(i);
                let last = usize::from(i) + 1 == bufs.len();
                let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                RawDescriptor::from(Descriptor::new(addr, len, flags, start + i + 1))
            })
            .collect();
        self.queues[q].add_desc_chains(&descs, start).unwrap();
        self.next_slot[q] += u16_of(bufs.len());
        self.posted[q] += 1;
        start
    }

    /// The driver's QueueNotify, as the ioeventfd delivers it.
    fn kick(&self, q: usize) {
        self.notify[q].write(1).unwrap();
    }

    /// Runs the device's events until nothing is ready for `quiet`.
    fn pump(&self, dev: &mut dyn VirtioDevice, quiet: Duration) {
        let mut events = vec![EpollEvent::default(); 16];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = self
                .epoll
                .wait(i32::try_from(quiet.as_millis()).unwrap(), &mut events)
                .unwrap();
            if n == 0 {
                return;
            }
            for e in &events[..n] {
                let (slot, token) = split_event_data(e.data());
                assert_eq!(slot, 7);
                dev.handle_event(token, e.event_set());
            }
            assert!(Instant::now() < deadline, "the device never went idle");
        }
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let mq = &self.queues[q];
        let n = mq.used().idx().load();
        (0..n)
            .map(|i| {
                let e = mq.used().ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

const BUF: u64 = 0x10_0000;
const SHORT: Duration = Duration::from_millis(50);

// ---- block ----

const BLK_IN: u32 = 0;
const BLK_OUT: u32 = 1;
const BLK_FLUSH: u32 = 4;
const BLK_GET_ID: u32 = 8;

fn blk_header(rig: &Rig, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    rig.write(addr, &h);
}

fn disk(dir: &Path, sectors: usize, sector: usize, text: &[u8]) -> std::path::PathBuf {
    let mut data = vec![0u8; sectors * 512];
    data[sector * 512..sector * 512 + text.len()].copy_from_slice(text);
    let path = dir.join("disk.img");
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn block_reads_writes_flushes_and_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), 8, 1, b"sector one");
    let mut dev = Block::open(&path, false, DeviceCounters::new("blk")).unwrap();
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut dev, VIRTIO_F_VERSION_1);

    // OUT to sector 2, then IN of sector 2 and sector 1, FLUSH, GET_ID.
    blk_header(&rig, BUF, BLK_OUT, 2);
    rig.write(BUF + 0x1000, b"written by the guest");
    rig.post(
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, false),
            (BUF + 0x2000, 1, true),
        ],
    );
    rig.kick(0);
    rig.pump(&mut dev, SHORT);
    assert_eq!(rig.read(BUF + 0x2000, 1), [0], "OUT status");
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[1024..1044], b"written by the guest");

    for (i, sector) in [2u64, 1].into_iter().enumerate() {
        let base = BUF + 0x1_0000 * (i as u64 + 1);
        blk_header(&rig, base, BLK_IN, sector);
        rig.post(
            0,
            &[
                (base, 16, false),
                (base + 0x1000, 512, true),
                (base + 0x2000, 1, true),
            ],
        );
    }
    blk_header(&rig, BUF + 0x4_0000, BLK_FLUSH, 0);
    rig.post(0, &[(BUF + 0x4_0000, 16, false), (BUF + 0x4_2000, 1, true)]);
    blk_header(&rig, BUF + 0x5_0000, BLK_GET_ID, 0);
    rig.post(
        0,
        &[
            (BUF + 0x5_0000, 16, false),
            (BUF + 0x5_1000, 20, true),
            (BUF + 0x5_2000, 1, true),
        ],
    );
    rig.kick(0);
    rig.pump(&mut dev, SHORT);

    assert_eq!(&rig.read(BUF + 0x1_1000, 20), b"written by the guest");
    assert_eq!(&rig.read(BUF + 0x2_1000, 10), b"sector one");
    assert_eq!(rig.read(BUF + 0x4_2000, 1), [0], "FLUSH status");
    assert_eq!(&rig.read(BUF + 0x5_1000, 12), b"podvisor-blk");
    // Used lengths: status only for OUT and FLUSH; data + status otherwise.
    let lens: Vec<u32> = rig.used(0).iter().map(|e| e.1).collect();
    assert_eq!(lens, [1, 513, 513, 1, 13]);
    assert_ne!(rig.interrupt.status() & INT_USED_RING, 0);
}

#[test]
fn block_refuses_writes_when_read_only_and_requests_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), 4, 0, b"keep");
    let counters = DeviceCounters::new("blk");
    let mut dev = Block::open(&path, true, counters.clone()).unwrap();
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut dev, VIRTIO_F_VERSION_1);

    // A write on a read-only disk, a read past its end, an unknown type.
    blk_header(&rig, BUF, BLK_OUT, 0);
    rig.write(BUF + 0x1000, b"overwrite");
    rig.post(
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, false),
            (BUF + 0x2000, 1, true),
        ],
    );
    blk_header(&rig, BUF + 0x1_0000, BLK_IN, 4);
    rig.post(
        0,
        &[
            (BUF + 0x1_0000, 16, false),
            (BUF + 0x1_1000, 512, true),
            (BUF + 0x1_2000, 1, true),
        ],
    );
    blk_header(&rig, BUF + 0x2_0000, 99, 0);
    rig.post(0, &[(BUF + 0x2_0000, 16, false), (BUF + 0x2_2000, 1, true)]);
    // Malformed: the header is device-writable, so there is no status to set.
    rig.post(0, &[(BUF + 0x3_0000, 16, true), (BUF + 0x3_2000, 1, true)]);
    rig.write(BUF + 0x2000, &[0xff]);
    rig.kick(0);
    rig.pump(&mut dev, SHORT);

    assert_eq!(rig.read(BUF + 0x2000, 1), [1], "read-only write: IOERR");
    assert_eq!(rig.read(BUF + 0x1_2000, 1), [1], "past the end: IOERR");
    assert_eq!(rig.read(BUF + 0x2_2000, 1), [2], "unknown type: UNSUPP");
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"keep");
    let lens: Vec<u32> = rig.used(0).iter().map(|e| e.1).collect();
    assert_eq!(lens, [1, 1, 1, 0]);
    assert_eq!(counters.bad_requests.load(Ordering::Relaxed), 1);
}

// ---- net ----

const VNET_HDR: usize = 12;

fn ethernet_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn net_moves_frames_between_the_guest_and_the_tap() {
    let (tap, peer) = Tap::socket_pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let counters = DeviceCounters::new("net");
    let mut dev = Net::with_tap(tap, [2, 0x50, 0x44, 0x56, 0x53, 1], counters.clone());
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0x50, 0x44, 0x56, 0x53, 1]);
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut dev, VIRTIO_F_VERSION_1);

    // TX: header and frame in two descriptors come out as one tap frame.
    let out = ethernet_frame(b"from the guest");
    rig.write(BUF, &out[..VNET_HDR]);
    rig.write(BUF + 0x1000, &out[VNET_HDR..]);
    rig.post(
        1,
        &[
            (BUF, u32_of(VNET_HDR), false),
            (BUF + 0x1000, u32_of(out.len() - VNET_HDR), false),
        ],
    );
    rig.kick(1);
    rig.pump(&mut dev, SHORT);
    let mut got = vec![0u8; 2048];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &out[..]);
    assert_eq!(rig.used(1), [(0, 0)]);

    // RX: a frame waits for a buffer, then lands in it with num_buffers = 1.
    let inbound = ethernet_frame(b"from the host");
    peer.send(&inbound).unwrap();
    rig.pump(&mut dev, SHORT);
    assert!(rig.used(0).is_empty(), "no buffer was posted yet");
    // One too small (it is returned empty), then one that fits.
    rig.post(0, &[(BUF + 0x2000, 16, true)]);
    rig.post(0, &[(BUF + 0x3000, 2048, true)]);
    rig.kick(0);
    rig.pump(&mut dev, SHORT);
    peer.send(&inbound).unwrap();
    rig.pump(&mut dev, SHORT);
    let used = rig.used(0);
    assert_eq!(used, [(0, 0), (1, u32_of(inbound.len()))]);
    let mut expect = inbound.clone();
    expect[10] = 1;
    assert_eq!(rig.read(BUF + 0x3000, inbound.len()), expect);
    assert_eq!(counters.bad_requests.load(Ordering::Relaxed), 1);
}

// ---- vsock ----

const GUEST_CID: u64 = 3;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
const RX: usize = 0;
const TX: usize = 1;

fn packet(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: 1,
        op,
        flags: 0,
        buf_alloc: 64 << 10,
        fwd_cnt: 0,
    }
}

/// The guest sends `h` (and `payload`) as one TX chain at `addr`.
fn guest_send(rig: &mut Rig, addr: u64, h: Header, payload: &[u8]) {
    rig.write(addr, &h.to_bytes());
    if payload.is_empty() {
        rig.post(TX, &[(addr, 44, false)]);
    } else {
        rig.write(addr + 0x100, payload);
        rig.post(
            TX,
            &[
                (addr, 44, false),
                (addr + 0x100, u32_of(payload.len()), false),
            ],
        );
    }
    rig.kick(TX);
}

/// The header (and payload) the device put in the RX buffer at `addr`.
fn guest_recv(rig: &Rig, addr: u64) -> (Header, Vec<u8>) {
    let h = Header::from_bytes(&rig.read(addr, 44).try_into().unwrap());
    let payload = rig.read(addr + 44, h.len as usize);
    (h, payload)
}

struct VsockSetup {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    dev: Vsock,
    counters: Arc<DeviceCounters>,
}

fn vsock() -> VsockSetup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("v.sock");
    let counters = DeviceCounters::new("vsock");
    let dev = Vsock::new(GUEST_CID, &socket, counters.clone()).unwrap();
    VsockSetup {
        _dir: dir,
        socket,
        dev,
        counters,
    }
}

#[test]
fn vsock_guest_connects_to_a_host_listener() {
    let mut v = vsock();
    let listener = UnixListener::bind(format!("{}_1024", v.socket.display())).unwrap();
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut v.dev, VIRTIO_F_VERSION_1);
    for i in 0..4 {
        rig.post(RX, &[(BUF + 0x1_0000 * i, 4096, true)]);
    }
    guest_send(
        &mut rig,
        BUF + 0x8_0000,
        packet(5000, 1024, OP_REQUEST, 0),
        b"",
    );
    rig.pump(&mut v.dev, SHORT);
    let (h, _) = guest_recv(&rig, BUF);
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (OP_RESPONSE, 1024, 5000, GUEST_CID)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    guest_send(
        &mut rig,
        BUF + 0x9_0000,
        packet(5000, 1024, OP_RW, 5),
        b"hello",
    );
    rig.pump(&mut v.dev, SHORT);
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world").unwrap();
    rig.pump(&mut v.dev, SHORT);
    let (h, payload) = guest_recv(&rig, BUF + 0x1_0000);
    assert_eq!((h.op, h.len), (OP_RW, 5));
    assert_eq!(payload, b"world");
    assert_eq!(h.fwd_cnt, 5, "the device has forwarded the guest's 5 bytes");
}

#[test]
fn vsock_host_connects_with_a_connect_line() {
    let mut v = vsock();
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut v.dev, VIRTIO_F_VERSION_1);
    for i in 0..4 {
        rig.post(RX, &[(BUF + 0x1_0000 * i, 4096, true)]);
    }
    let mut client = UnixStream::connect(&v.socket).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 1024\nearly").unwrap();
    rig.pump(&mut v.dev, SHORT);
    let (h, _) = guest_recv(&rig, BUF);
    assert_eq!((h.op, h.dst_port, h.dst_cid), (OP_REQUEST, 1024, GUEST_CID));
    let host_port = h.src_port;

    guest_send(
        &mut rig,
        BUF + 0x8_0000,
        packet(1024, host_port, OP_RESPONSE, 0),
        b"",
    );
    rig.pump(&mut v.dev, SHORT);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line).unwrap(),
        format!("OK {host_port}\n")
    );
    // What the client sent after its CONNECT line reaches the guest.
    let (h, payload) = guest_recv(&rig, BUF + 0x1_0000);
    assert_eq!((h.op, payload.as_slice()), (OP_RW, &b"early"[..]));
}

#[test]
fn vsock_resets_misaddressed_packets_and_unknown_ports() {
    let mut v = vsock();
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut v.dev, VIRTIO_F_VERSION_1);
    for i in 0..2 {
        rig.post(RX, &[(BUF + 0x1_0000 * i, 4096, true)]);
    }
    let mut spoofed = packet(5000, 1024, OP_REQUEST, 0);
    spoofed.src_cid = 9;
    guest_send(&mut rig, BUF + 0x8_0000, spoofed, b"");
    // Nobody listens on port 4242.
    guest_send(
        &mut rig,
        BUF + 0x9_0000,
        packet(5001, 4242, OP_REQUEST, 0),
        b"",
    );
    rig.pump(&mut v.dev, SHORT);
    let (a, _) = guest_recv(&rig, BUF);
    let (b, _) = guest_recv(&rig, BUF + 0x1_0000);
    assert_eq!((a.op, a.dst_port), (OP_RST, 5000));
    assert_eq!((b.op, b.dst_port), (OP_RST, 5001));
    assert_eq!(v.counters.bad_requests.load(Ordering::Relaxed), 1);
}

// ---- rng ----

#[test]
fn rng_fills_buffers_and_caps_a_request() {
    let mut dev = Rng::new(DeviceCounters::new("rng"));
    let mem = guest_memory();
    let mut rig = Rig::activate(&mem, &mut dev, VIRTIO_F_VERSION_1);
    rig.post(0, &[(BUF, 32, true), (BUF + 0x1000, 64, true)]);
    // 128 KiB asked, 64 KiB given.
    rig.post(0, &[(BUF + 0x10_0000, 128 << 10, true)]);
    // Device-readable only: nothing to fill.
    rig.post(0, &[(BUF + 0x20_0000, 64, false)]);
    rig.kick(0);
    rig.pump(&mut dev, SHORT);
    assert_eq!(rig.used(0), [(0, 96), (2, 64 << 10), (3, 0)]);
    assert!(rig.read(BUF, 32).iter().any(|&b| b != 0));
    assert!(rig.read(BUF + 0x1000, 64).iter().any(|&b| b != 0));
    let big = rig.read(BUF + 0x10_0000, 128 << 10);
    assert!(big[..64 << 10].iter().any(|&b| b != 0));
    assert!(
        big[64 << 10..].iter().all(|&b| b == 0),
        "past the cap stays untouched"
    );
}
