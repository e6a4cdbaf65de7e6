//! virtio-vsock with Firecracker-style "hybrid" host sockets (hand-written
//! connection multiplexer; the queues come from virtio-queue).
//!
//! Host to guest: a host process connects to the unix socket `socket`,
//! writes `CONNECT <port>\n` and, once the guest accepts, reads
//! `OK <host port>\n`; the stream then carries the connection's bytes.
//! Guest to host: a guest connection to CID 2, port P is forwarded to a
//! unix socket at `<socket>_P`.
//!
//! Flow control follows the virtio-vsock credit scheme: we never send more
//! than the guest's advertised buffer space, and we advertise
//! [`CONN_BUF_ALLOC`] bytes of our own, buffering what the host side has not
//! taken yet.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    register_queue_events, ActivateContext, ActivateError, EventRegistrar, Interrupt, VirtioDevice,
    FIRST_DEVICE_TOKEN, VIRTIO_F_VERSION_1,
};
use crate::metrics::DeviceCounters;

const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;

pub const HOST_CID: u64 = 2;
const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer we advertise per connection.
pub const CONN_BUF_ALLOC: u32 = 256 << 10;
/// Largest payload we put in one RX packet.
const MAX_PKT_PAYLOAD: usize = 64 << 10;
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
const TOKEN_LISTENER: u32 = FIRST_DEVICE_TOKEN;
const FIRST_STREAM_TOKEN: u32 = FIRST_DEVICE_TOKEN + 1;
/// A CONNECT line longer than this is rejected.
const MAX_CONNECT_LINE: usize = 64;

/// `n` modulo 2^32: fwd_cnt and tx_cnt are free-running counters (virtio
/// 1.2, 5.10.6.3), so only the low 32 bits of a byte count matter.
#[allow(clippy::cast_possible_truncation)] // modulo 2^32 is the intent
fn wrapping_u32(n: usize) -> u32 {
    n as u32
}

/// A vsock packet header (virtio 1.2, 5.10.6), little endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// We told the guest the host side closed; waiting for its RST.
    Closing,
}

/// (host port, guest port).
type ConnKey = (u32, u32);

struct Conn {
    stream: UnixStream,
    token: u32,
    state: ConnState,
    /// Guest's receive buffer size and how much of our data it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we have sent the guest.
    tx_cnt: u32,
    /// Bytes of guest data we have handed to the host stream.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest data the host stream has not accepted yet.
    to_stream: Vec<u8>,
    /// Host data read before the connection was established (after CONNECT).
    from_stream: Vec<u8>,
    /// The stream may have unread data (edge-triggered readiness).
    readable: bool,
    host_eof: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, state: ConnState) -> Conn {
        Conn {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_stream: Vec::new(),
            from_stream: Vec::new(),
            readable: true,
            host_eof: false,
        }
    }

    /// How much more the guest can take from us.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn wants_rx(&self) -> bool {
        self.state == ConnState::Established
            && self.peer_credit() > 0
            && (!self.from_stream.is_empty() || (self.readable && !self.host_eof))
    }

    /// Writes buffered guest data to the host stream; returns bytes written.
    fn flush_to_stream(&mut self) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.to_stream.is_empty() {
            match self.stream.write(&self.to_stream) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_stream.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(wrapping_u32(total));
        Ok(total)
    }
}

/// A host client that has connected but not yet sent its CONNECT line.
struct Handshake {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
}

pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    socket_path: PathBuf,
    listener: UnixListener,
    counters: Arc<DeviceCounters>,
    active: Option<Active>,
    conns: HashMap<ConnKey, Conn>,
    tokens: HashMap<u32, ConnKey>,
    handshakes: HashMap<u32, Handshake>,
    /// Header-only packets waiting for RX buffers.
    control: VecDeque<Header>,
    next_token: u32,
    next_host_port: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Vsock {
    pub fn new(cid: u64, socket: &Path, counters: Arc<DeviceCounters>) -> Result<Self, VsockError> {
        let bind_err = |source| VsockError::Bind {
            path: socket.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Vsock {
            cid,
            config: cid.to_le_bytes(),
            socket_path: socket.to_path_buf(),
            listener,
            counters,
            active: None,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_host_port: FIRST_HOST_PORT,
        })
    }

    fn events(&self) -> Option<&EventRegistrar> {
        self.active.as_ref().map(|a| &a.events)
    }

    fn alloc_token(&mut self) -> u32 {
        let t = self.next_token;
        self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_STREAM_TOKEN);
        t
    }

    fn reply_header(&self, key: ConnKey, op: u16, conn: Option<&Conn>) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: conn.map(|c| c.fwd_cnt).unwrap_or(0),
        }
    }

    fn send_rst(&mut self, key: ConnKey) {
        let h = self.reply_header(key, OP_RST, None);
        self.control.push_back(h);
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if let Some(ev) = self.events() {
                ev.remove(conn.stream.as_raw_fd());
            }
        }
    }

    fn register_stream(&self, stream: &UnixStream, token: u32, edge: bool) -> bool {
        let Some(ev) = self.events() else {
            return false;
        };
        let set = if edge {
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED
        } else {
            EventSet::IN
        };
        ev.add(stream.as_raw_fd(), token, set).is_ok()
    }

    fn accept_clients(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            if self.register_stream(&stream, token, false) {
                self.handshakes.insert(
                    token,
                    Handshake {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads a pending client's CONNECT line; on success asks the guest to accept.
    fn handle_handshake(&mut self, token: u32) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut chunk = [0u8; MAX_CONNECT_LINE];
        let closed = match hs.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                hs.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted,
        };
        let newline = hs.buf.iter().position(|&b| b == b'\n');
        if newline.is_none() && !closed && hs.buf.len() <= MAX_CONNECT_LINE {
            return;
        }
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        if let Some(ev) = self.events() {
            ev.remove(hs.stream.as_raw_fd());
        }
        let Some(nl) = newline else {
            return; // closed or garbage: drop the client
        };
        let line = String::from_utf8_lossy(&hs.buf[..nl]).trim().to_string();
        let port = line
            .strip_prefix("CONNECT ")
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(guest_port) = port else {
            let mut s = hs.stream;
            let _ = s.write_all(b"ERR bad CONNECT line\n");
            return;
        };
        let host_port = self.next_host_port;
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        let key = (host_port, guest_port);
        let stream_token = self.alloc_token();
        let mut conn = Conn::new(hs.stream, stream_token, ConnState::Connecting);
        conn.from_stream = hs.buf[nl + 1..].to_vec();
        if !self.register_stream(&conn.stream, stream_token, true) {
            return;
        }
        self.tokens.insert(stream_token, key);
        let h = self.reply_header(key, OP_REQUEST, Some(&conn));
        self.conns.insert(key, conn);
        self.control.push_back(h);
    }

    /// Handles one packet from the guest's TX queue.
    fn handle_guest_packet(&mut self, hdr: Header, payload: Vec<u8>) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.counters.add_bad_request();
            if hdr.op != OP_RST {
                self.send_rst(key);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = hdr.buf_alloc;
            conn.peer_fwd_cnt = hdr.fwd_cnt;
        }
        match hdr.op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.send_rst(key);
                    return;
                }
                let target = format!("{}_{}", self.socket_path.display(), hdr.dst_port);
                match UnixStream::connect(&target) {
                    Ok(stream) if stream.set_nonblocking(true).is_ok() => {
                        let token = self.alloc_token();
                        let mut conn = Conn::new(stream, token, ConnState::Established);
                        conn.peer_buf_alloc = hdr.buf_alloc;
                        conn.peer_fwd_cnt = hdr.fwd_cnt;
                        if !self.register_stream(&conn.stream, token, true) {
                            self.send_rst(key);
                            return;
                        }
                        self.tokens.insert(token, key);
                        let h = self.reply_header(key, OP_RESPONSE, Some(&conn));
                        self.conns.insert(key, conn);
                        self.control.push_back(h);
                    }
                    _ => {
                        log::debug!("vsock: no host listener at {target}");
                        self.send_rst(key);
                    }
                }
            }
            OP_RESPONSE => match self.conns.get_mut(&key) {
                Some(conn) if conn.state == ConnState::Connecting => {
                    conn.state = ConnState::Established;
                    let ok = format!("OK {}\n", key.0);
                    // The client waits for this line; a full socket this early means it is gone.
                    if conn.stream.write_all(ok.as_bytes()).is_err() {
                        self.remove_conn(key);
                        self.send_rst(key);
                    }
                }
                _ => self.send_rst(key),
            },
            OP_RW => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.send_rst(key);
                    return;
                };
                if conn.state != ConnState::Established {
                    return;
                }
                self.counters.add_from_guest(payload.len());
                conn.to_stream.extend_from_slice(&payload);
                // A guest ignoring our credit gets cut off rather than growing our memory.
                if conn.to_stream.len() > 2 * CONN_BUF_ALLOC as usize {
                    self.counters.add_bad_request();
                    self.remove_conn(key);
                    self.send_rst(key);
                    return;
                }
                self.flush_conn(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let h = self.reply_header(key, OP_CREDIT_UPDATE, self.conns.get(&key));
                if let Some(c) = self.conns.get_mut(&key) {
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                }
                self.control.push_back(h);
            }
            OP_SHUTDOWN => {
                let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
                if hdr.flags & both == both {
                    self.remove_conn(key);
                    self.send_rst(key);
                } else if hdr.flags & SHUTDOWN_SEND != 0 {
                    if let Some(c) = self.conns.get_mut(&key) {
                        let _ = c.flush_to_stream();
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            OP_RST => self.remove_conn(key),
            _ => {
                self.counters.add_bad_request();
                self.send_rst(key);
            }
        }
    }

    fn flush_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.flush_to_stream() {
            Ok(_) => {
                // Tell the guest about freed space once a quarter of the buffer drained.
                if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CONN_BUF_ALLOC / 4 {
                    conn.last_fwd_cnt_sent = conn.fwd_cnt;
                    let h = self.reply_header(key, OP_CREDIT_UPDATE, self.conns.get(&key));
                    self.control.push_back(h);
                }
            }
            Err(_) => {
                self.remove_conn(key);
                self.send_rst(key);
            }
        }
    }

    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut packets = Vec::new();
        let mut used_any = false;
        while let Some(chain) = active.queues[TX].pop_descriptor_chain(mem.as_ref()) {
            let head = chain.head_index();
            match Reader::new(mem.as_ref(), chain) {
                Ok(mut reader) => {
                    let mut hdr = [0u8; HDR_LEN];
                    if reader.read_exact(&mut hdr).is_ok() {
                        let hdr = Header::from_bytes(&hdr);
                        let len = (hdr.len as usize)
                            .min(reader.available_bytes())
                            .min(MAX_PKT_PAYLOAD);
                        let mut payload = vec![0u8; len];
                        if reader.read_exact(&mut payload).is_ok() {
                            packets.push((hdr, payload));
                        } else {
                            self.counters.add_bad_request();
                        }
                    } else {
                        self.counters.add_bad_request();
                    }
                }
                Err(_) => self.counters.add_bad_request(),
            }
            if active.queues[TX].add_used(mem.as_ref(), head, 0).is_err() {
                self.counters.add_bad_request();
            }
            used_any = true;
        }
        if used_any {
            active.interrupt.signal_used_queue();
        }
        for (hdr, payload) in packets {
            self.handle_guest_packet(hdr, payload);
        }
    }

    /// Picks the next connection with data (and credit) for the guest.
    fn next_rx_conn(&self) -> Option<ConnKey> {
        self.conns
            .iter()
            .find(|(_, c)| c.wants_rx())
            .map(|(k, _)| *k)
    }

    /// Fills the guest's RX buffers with control packets, then stream data.
    fn process_rx(&mut self) {
        let mut used_any = false;
        loop {
            if self.control.is_empty() && self.next_rx_conn().is_none() {
                break;
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let mem = active.mem.clone();
            let Some(chain) = active.queues[RX].pop_descriptor_chain(mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            let mut writer = match Writer::new(mem.as_ref(), chain) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    self.counters.add_bad_request();
                    let _ = active.queues[RX].add_used(mem.as_ref(), head, 0);
                    used_any = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HDR_LEN).min(MAX_PKT_PAYLOAD);
            let mut used_len = 0u32;
            if let Some(h) = self.control.pop_front() {
                if writer.write_all(&h.to_bytes()).is_ok() {
                    used_len = super::used_len(HDR_LEN);
                }
            } else if let Some(key) = self.next_rx_conn() {
                let Some(conn) = self.conns.get_mut(&key) else {
                    break;
                };
                let want = room.min(conn.peer_credit() as usize);
                let mut buf = vec![0u8; want];
                let n = if !conn.from_stream.is_empty() {
                    let n = want.min(conn.from_stream.len());
                    buf[..n].copy_from_slice(&conn.from_stream[..n]);
                    conn.from_stream.drain(..n);
                    Some(n)
                } else {
                    match conn.stream.read(&mut buf) {
                        Ok(0) => None,
                        Ok(n) => Some(n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            conn.readable = false;
                            Some(0)
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => Some(0),
                        Err(_) => None,
                    }
                };
                let mut h = Header {
                    src_cid: HOST_CID,
                    dst_cid: self.cid,
                    src_port: key.0,
                    dst_port: key.1,
                    len: 0,
                    type_: TYPE_STREAM,
                    op: OP_RW,
                    flags: 0,
                    buf_alloc: CONN_BUF_ALLOC,
                    fwd_cnt: conn.fwd_cnt,
                };
                match n {
                    Some(0) => {
                        // Nothing after all: give the buffer back.
                        let Some(active) = self.active.as_mut() else {
                            return;
                        };
                        active.queues[RX].go_to_previous_position();
                        continue;
                    }
                    Some(n) => {
                        // n <= MAX_PKT_PAYLOAD.
                        h.len = super::used_len(n);
                        conn.tx_cnt = conn.tx_cnt.wrapping_add(wrapping_u32(n));
                        conn.last_fwd_cnt_sent = conn.fwd_cnt;
                        if writer.write_all(&h.to_bytes()).is_ok()
                            && writer.write_all(&buf[..n]).is_ok()
                        {
                            used_len = super::used_len(HDR_LEN + n);
                            self.counters.add_to_guest(n);
                        }
                    }
                    None => {
                        // Host side closed: tell the guest both directions are done.
                        conn.host_eof = true;
                        conn.state = ConnState::Closing;
                        h.op = OP_SHUTDOWN;
                        h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                        if writer.write_all(&h.to_bytes()).is_ok() {
                            used_len = super::used_len(HDR_LEN);
                        }
                    }
                }
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if active.queues[RX]
                .add_used(mem.as_ref(), head, used_len)
                .is_err()
            {
                self.counters.add_bad_request();
            }
            used_any = true;
        }
        if used_any {
            if let Some(a) = &self.active {
                a.interrupt.signal_used_queue();
            }
        }
    }

    fn handle_stream_event(&mut self, token: u32, events: EventSet) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            self.flush_conn(key);
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            if events.intersects(
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
            ) {
                conn.readable = true;
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        super::TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        register_queue_events(&ctx)?;
        ctx.events
            .add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
            .map_err(ActivateError::Events)?;
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
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        if let Some(a) = self.active.take() {
            for e in &a.evts {
                a.events.remove(e.as_raw_fd());
            }
            a.events.remove(self.listener.as_raw_fd());
            for hs in self.handshakes.values() {
                a.events.remove(hs.stream.as_raw_fd());
            }
        }
        self.handshakes.clear();
        self.control.clear();
    }

    fn handle_event(&mut self, token: u32, events: EventSet) {
        // A queue's token is its index.
        let queue = usize::try_from(token).ok();
        match token {
            _ if matches!(queue, Some(RX | TX | EVQ)) => {
                if let (Some(a), Some(q)) = (&self.active, queue) {
                    let _ = a.evts[q].read();
                }
                if queue == Some(TX) {
                    self.process_tx();
                }
            }
            TOKEN_LISTENER => self.accept_clients(),
            t if self.handshakes.contains_key(&t) => self.handle_handshake(t),
            t => self.handle_stream_event(t, events),
        }
        self.process_rx();
    }
}

impl Vsock {
    /// The host socket, for removal at exit (done by the event loop thread,
    /// the only one whose seccomp filter allows unlink).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 1 << 30,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 3,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 77,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 1, ConnState::Established);
        c.peer_buf_alloc = 100;
        c.tx_cnt = 60;
        c.peer_fwd_cnt = 20;
        assert_eq!(c.peer_credit(), 60);
        c.tx_cnt = u32::MAX; // wraps
        c.peer_fwd_cnt = u32::MAX - 10;
        assert_eq!(c.peer_credit(), 90);
    }
}
