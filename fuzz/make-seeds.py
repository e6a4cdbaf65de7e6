#!/usr/bin/env python3
"""Writes the starting corpus (fuzz/seeds/<target>/) for every fuzz target.

Each seed follows the input format its entry point reads (see
runtime/vmm/src/fuzzing and runtime/podvisor/src/fuzzing): one well-formed
exchange per device or protocol, so the fuzzer starts past the handshakes.
Run it again after changing an input format.
"""
import io
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

u8 = lambda v: struct.pack("<B", v)
u16 = lambda v: struct.pack("<H", v)
u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)
VERSION_1 = 1 << 32


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def desc(mode, off, length, payload=None):
    """A structured descriptor for Guest::add_chain (offset in 8-byte units)."""
    if payload is not None:
        mode |= 2
    out = u8(mode) + u16(off) + u16(length)
    if payload is not None:
        out += u16(len(payload)) + payload
    return out


def chain(*descs):
    return u8(len(descs) - 1) + b"".join(descs)


# virtio_block: read-only flag, size/16, features, then ops (0 chain, 3 notify).
def blk_req(kind, sector, data_len, write_only, data=None):
    hdr = u32(kind) + u32(0) + u64(sector)
    parts = [desc(0, 0, 16, hdr)]
    if data_len:
        parts.append(desc(1 if write_only else 0, 0x100, data_len, data))
    parts.append(desc(1, 0x400, 1))
    return u8(0) + chain(*parts) + u8(3)


blk = u8(0) + u16(0x100) + u64(VERSION_1 | 1 << 9)
write("virtio_block", "read", blk + blk_req(0, 1, 512, True))
write("virtio_block", "write-flush-id", blk + blk_req(1, 2, 512, False, b"x" * 512)
      + blk_req(4, 0, 0, True) + blk_req(8, 0, 20, True))
write("virtio_block", "read-only-write", u8(1) + u16(0x100) + u64(VERSION_1)
      + blk_req(1, 0, 512, False, b"y" * 512))

# virtio_rng: features, ops (0 chain, 3 notify).
write("virtio_rng", "one-buffer", u64(VERSION_1) + u8(0) + chain(desc(1, 0, 64)) + u8(3))
write("virtio_rng", "two-buffers", u64(VERSION_1) + u8(0)
      + chain(desc(1, 0, 64), desc(1, 0x100, 4096)) + u8(3))

# virtio_net: features, ops (0 rx chain, 1 tx chain, 2/3 notify, 4 host frame, 5 drain).
frame = bytes(12) + b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(28)
write("virtio_net", "rx-tx", u64(VERSION_1 | 1 << 5)
      + u8(0) + chain(desc(1, 0, 2048)) + u8(4) + u16(len(frame)) + frame
      + u8(1) + chain(desc(0, 0x400, len(frame), frame)) + u8(3) + u8(5))

# virtio_vsock: features, ops (2 packet, 3 rx buffer, 5 host connect, 7 accept, 8 host write).
def vsock_pkt(op, payload=b"", src=0, dst_port=None, buf_alloc=1 << 18, fwd=0):
    ctl = 4 if dst_port is not None else 0
    out = u8(ctl) + u8(src)
    if dst_port is not None:
        out += u32(dst_port)
    out += u32(len(payload)) + u8(op) + u32(0) + u32(buf_alloc) + u32(fwd)
    out += u16(len(payload)) + payload
    return u8(2) + out + u16(0x200) + u8(0)


rx = lambda off: u8(3) + u16(off) + u16(4096)
vs = u64(VERSION_1)
write("virtio_vsock", "guest-connects", vs + rx(0x10) + vsock_pkt(1) + u8(7)
      + vsock_pkt(5, b"hello") + u8(8) + u8(0) + u16(5) + b"world"
      + u8(6) + u8(1) + u32(1) + rx(0x400) + rx(0x800) + vsock_pkt(4, fwd=5) + vsock_pkt(3))
line = b"CONNECT 50000\n"
write("virtio_vsock", "host-connects", vs + rx(0x10) + u8(5) + u8(len(line)) + line
      + u8(6) + u8(1) + u32(1) + rx(0x400) + vsock_pkt(2, dst_port=1 << 30)
      + vsock_pkt(5, b"ping", dst_port=1 << 30) + vsock_pkt(7, dst_port=1 << 30) + rx(0x800))

# virtio_mmio: device (0 rng, 1 block), ops (0 read, 2 write, 4 handshake, 5 chain, 6 notify).
reads = b"".join(u8(0) + u16(off) + u8(2) for off in (0, 4, 8, 0xc, 0x10, 0x34, 0x44, 0x60, 0x70, 0xfc, 0x100))
hs = u8(4) + u32(0) + u32(1) + u16(64)
write("virtio_mmio", "rng", u8(0) + reads + hs + u8(5) + chain(desc(1, 0, 32)) + u8(6) + u8(0) + reads)
write("virtio_mmio", "block", u8(1) + reads + hs + u8(2) + u16(0x64) + u8(0) + u64(1) + reads)

# spdy_frames: mode 1 raw frames; mode 0 plain header blocks.
def ctrl(kind, flags, body):
    return struct.pack(">HHI", 0x8003, kind, flags << 24 | len(body)) + body


def data(stream, fin, body):
    return struct.pack(">II", stream, (1 if fin else 0) << 24 | len(body)) + body


raw = (ctrl(4, 0, struct.pack(">III", 1, 7, 65536)) + ctrl(6, 0, struct.pack(">I", 1))
       + data(1, False, b"abc") + ctrl(9, 0, struct.pack(">II", 1, 3))
       + ctrl(3, 0, struct.pack(">II", 1, 5)) + data(3, True, b"")
       + ctrl(7, 0, struct.pack(">II", 3, 0)) + ctrl(0x99, 0, b"??"))
write("spdy_frames", "raw-frames", u8(1) + raw)


def plain_headers(pairs):
    out = struct.pack(">I", len(pairs))
    for k, v in pairs:
        out += struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v
    return u16(len(out)) + out


write("spdy_frames", "header-blocks", u8(0)
      + plain_headers([(b"streamtype", b"error"), (b"requestid", b"0")])
      + plain_headers([(b"streamtype", b"stdin"), (b"port", b"80")])
      + plain_headers([]))

# websocket_remotecommand: protocol and streams, then client frames (masked).
def ws(opcode, payload, fin=True):
    mask = b"\x11\x22\x33\x44"
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


resize = b'{"Width":80,"Height":24}'
write("websocket_remotecommand", "v5", u8(0xf0) + ws(2, b"\x00hello") + ws(2, b"\x04" + resize)
      + ws(2, b"\xff\x00") + ws(8, b"\x03\xe8"))
write("websocket_remotecommand", "v4-base64", u8(0xf2) + ws(1, b"0aGVsbG8=") + ws(1, b"4" + b"eyJXaWR0aCI6MSwiSGVpZ2h0IjoyfQ==")
      + ws(9, b"p") + ws(2, b"\x00frag", fin=False) + ws(0, b"ment") + ws(8, b""))

# image_reference: plain strings.
hex64 = "0123456789abcdef" * 4
for i, ref in enumerate([
    "busybox", "docker.io/library/busybox:latest", "index.docker.io/busybox",
    "127.0.0.1:5000/a/b:tag", "[::1]:5000/x@sha256:" + hex64, "Foo/bar",
    "localhost/app:v1.2-rc_3", "a.b/c__d/e--f@sha512:" + hex64 * 2, "quay.io/x/y:t@sha256:" + hex64,
]):
    write("image_reference", f"ref{i}", ref.encode())


# layer_unpack: mode 1 a tar as is (hostile entries); mode 0 structured.
def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, content in entries:
            t.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def ti(name, kind=tarfile.REGTYPE, link="", size=0, mode=0o644):
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.size, i.mode = kind, link, size, mode
    return i


write("layer_unpack", "tar-ok", u8(1) + tar_bytes([
    (ti("a/", tarfile.DIRTYPE, mode=0o755), None), (ti("a/f", size=3, mode=0o4755), b"abc"),
    (ti("a/h", tarfile.LNKTYPE, "a/f"), None), (ti("a/s", tarfile.SYMTYPE, "../f"), None),
    (ti("a/.wh.gone"), None), (ti("a/.wh..wh..opq"), None),
]))
write("layer_unpack", "tar-hostile", u8(1) + tar_bytes([
    (ti("link", tarfile.SYMTYPE, "../outside"), None), (ti("link/x", size=1), b"x"),
    (ti("../outside/y", size=1), b"y"), (ti("/tmp/pvfz-abs", size=1), b"z"),
    (ti("h", tarfile.LNKTYPE, "../outside/x"), None), (ti("dev", tarfile.CHRTYPE), None),
]))
# A header that claims 8 GiB and is followed by a few bytes.
write("layer_unpack", "tar-huge", u8(1) + ti("big", size=1 << 33).tobuf(tarfile.GNU_FORMAT) + b"data")


def entry(kind, name, link, data=b"", mode=0o644, size_ctl=0):
    return (u8(kind) + u8(name) + u8(link) + u16(mode) + u16(0) + u16(0) + u64(1600000000)
            + u8(0) + u8(1) + u8(3) + u16(len(data)) + data + u8(size_ctl))


# KINDS: 0 file, 1 dir, 2 symlink, 3 hardlink, 4 char, 5 block, 6 fifo;
# NAMES: 0 a, 1 a/b, 5 link, 6 link/x, 7 ../outside/x, 9 {abs}/z; TARGETS: 2 ../outside, 3 {abs}.
write("layer_unpack", "built", u8(0) + entry(1, 0, 0, mode=0o755) + entry(0, 1, 0, b"hi")
      + entry(2, 5, 2) + entry(0, 6, 0, b"x") + entry(0, 7, 0, b"y") + entry(0, 9, 0, b"z")
      + entry(3, 3, 3) + entry(4, 3, 0) + entry(6, 2, 0))
print("seeds written to", SEEDS)
