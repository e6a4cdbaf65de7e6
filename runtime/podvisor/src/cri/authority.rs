//! The CRI socket's connection layer: it rewrites an HTTP/2 `:authority`
//! that is not a valid URI authority to `localhost` before tonic sees it.
//!
//! gRPC clients dialling a unix socket disagree on what to send as
//! `:authority`: grpc-go with a bare socket path (the CRI client of kubelet
//! and crictl up to 1.30) sends the path, gRPC C-core (Python, Ruby, C++)
//! sends it percent-encoded, newer clients send `localhost`. The HTTP/2
//! server under tonic (h2) answers anything that does not parse as an
//! authority with RST_STREAM(PROTOCOL_ERROR) and offers no switch to relax
//! that, so this layer sits between the socket and h2. On a unix socket the
//! authority names nothing (there is one server behind it), so replacing it
//! loses no information.
//!
//! Only the client-to-server direction is touched. Header blocks are HPACK
//! compressed with a per-connection dynamic table, so every block is decoded
//! (keeping the client's table in step) and re-encoded with literals that
//! never enter the server's dynamic table; every other frame is copied
//! through unchanged and without being buffered whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection with prior knowledge starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce: re-encoded
/// blocks are cut to it, so they fit whatever the server announced.
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// A header block larger than this ends the connection (CRI headers are a
/// few hundred bytes; h2 itself refuses header lists over 16 KiB).
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The largest HPACK dynamic table a client may ask the decoder to keep.
const MAX_DYNAMIC_TABLE: usize = 64 * 1024;
/// What a missing or unparseable authority becomes.
pub const REPLACEMENT: &[u8] = b"localhost";
const READ_CHUNK: usize = 16 * 1024;

/// A stream whose reads see the client's bytes with every `:authority`
/// made valid; writes go straight to the inner stream.
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes read from the client, not yet examined.
    input: BytesMut,
    /// Bytes ready for the HTTP/2 server.
    output: BytesMut,
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block whose END_HEADERS has not arrived yet.
    pending: Option<PendingBlock>,
    /// Payload bytes of the current non-header frame still to copy through.
    passthrough_left: usize,
    eof: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the 24 preface bytes.
    Preface,
    /// Parsing frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: copy everything, h2 will refuse it.
    Raw,
}

struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_DYNAMIC_TABLE);
        AuthorityFix {
            inner,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::new(),
            state: State::Preface,
            decoder,
            pending: None,
            passthrough_left: 0,
            eof: false,
        }
    }

    /// Moves what can be moved from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Raw => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return Ok(());
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&preface);
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.passthrough_left > 0 {
                        let n = self.passthrough_left.min(self.input.len());
                        let chunk = self.input.split_to(n);
                        self.output.extend_from_slice(&chunk);
                        self.passthrough_left -= n;
                        if self.passthrough_left > 0 {
                            return Ok(());
                        }
                    }
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let header = FrameHeader::parse(&self.input[..FRAME_HEADER_LEN]);
                    if header.kind != FRAME_HEADERS && header.kind != FRAME_CONTINUATION {
                        if self.pending.is_some() {
                            // RFC 9113 §6.10: nothing may come between a
                            // header block's frames. h2 would end the
                            // connection; so do we.
                            return Err(protocol_error(
                                "a frame interrupted a header block before END_HEADERS",
                            ));
                        }
                        let head = self.input.split_to(FRAME_HEADER_LEN);
                        self.output.extend_from_slice(&head);
                        self.passthrough_left = header.length;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER_LEN + header.length {
                        if header.length > MAX_HEADER_BLOCK {
                            return Err(protocol_error("header frame larger than the limit"));
                        }
                        return Ok(());
                    }
                    self.input.advance(FRAME_HEADER_LEN);
                    let payload = self.input.split_to(header.length);
                    self.header_frame(&header, &payload)?;
                }
            }
        }
    }

    fn header_frame(&mut self, header: &FrameHeader, payload: &[u8]) -> io::Result<()> {
        if header.kind == FRAME_HEADERS {
            if self.pending.is_some() {
                return Err(protocol_error("HEADERS while a header block was open"));
            }
            let (priority, fragment) = split_headers_payload(header.flags, payload)?;
            self.pending = Some(PendingBlock {
                stream_id: header.stream_id,
                end_stream: header.flags & FLAG_END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else {
            match &mut self.pending {
                Some(block) if block.stream_id == header.stream_id => {
                    if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                        return Err(protocol_error("header block larger than the limit"));
                    }
                    block.fragment.extend_from_slice(payload);
                }
                _ => return Err(protocol_error("CONTINUATION without an open header block")),
            }
        }
        if header.flags & FLAG_END_HEADERS != 0 {
            let block = self.pending.take().expect("a block was just stored");
            self.finish_block(block)?;
        }
        Ok(())
    }

    fn finish_block(&mut self, block: PendingBlock) -> io::Result<()> {
        let mut fields = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| protocol_error(&format!("HPACK: {e:?}")))?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "CRI client sent an :authority that is no URI authority; using localhost"
                );
                *value = REPLACEMENT.to_vec();
            }
        }
        let encoded = encode_literals(&fields);
        write_header_frames(
            &mut self.output,
            block.stream_id,
            block.end_stream,
            block.priority,
            &encoded,
        );
        Ok(())
    }
}

/// The check h2 applies to `:authority`.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> FrameHeader {
        FrameHeader {
            length: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// A HEADERS payload without its padding, and its priority fields if any.
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&len, tail) = rest
            .split_first()
            .ok_or_else(|| protocol_error("PADDED HEADERS frame without a pad length"))?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if rest.len() < 5 {
            return Err(protocol_error("PRIORITY HEADERS frame too short"));
        }
        let mut p = [0u8; 5];
        p.copy_from_slice(&rest[..5]);
        priority = Some(p);
        rest = &rest[5..];
    }
    if pad > rest.len() {
        return Err(protocol_error("HEADERS padding longer than the frame"));
    }
    Ok((priority, &rest[..rest.len() - pad]))
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, first_byte_flags: u8, prefix_bits: u32, mut value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        // value < max_prefix <= 127: fits the prefix.
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max_prefix as u8);
    value -= max_prefix;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Every field as "literal header field without indexing — new name"
/// (RFC 7541 §6.2.2) with raw strings: nothing enters the server's dynamic
/// table, so the server's decoder state never depends on the client's.
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        encode_integer(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        encode_integer(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn write_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream_id: u32) {
    // length <= MIN_MAX_FRAME_SIZE, so it fits the 24-bit field.
    out.put_uint(length as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// A header block as HEADERS plus as many CONTINUATIONs as it needs.
fn write_header_frames(
    out: &mut BytesMut,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let first_room = MIN_MAX_FRAME_SIZE - if priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(first_room);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let prio_len = if priority.is_some() { 5 } else { 0 };
    write_frame_header(out, first.len() + prio_len, FRAME_HEADERS, flags, stream_id);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let n = rest.len().min(MIN_MAX_FRAME_SIZE);
        let (chunk, tail) = rest.split_at(n);
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, chunk.len(), FRAME_CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from CRI client: {what}"),
    )
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: h2 sees the
                // connection end mid-frame, as it would have without us.
                if !this.input.is_empty() {
                    let rest = this.input.split();
                    this.output.extend_from_slice(&rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.input.extend_from_slice(read.filled());
                    }
                }
            }
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client connection: preface, a SETTINGS frame, then `blocks` as
    /// HEADERS frames, each block encoded by one HPACK encoder (so later
    /// blocks may index what earlier ones inserted), then a DATA frame.
    fn client_bytes(blocks: &[Vec<(&[u8], &[u8])>]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        write_frame_header(&mut out, 0, 0x4, 0, 0);
        for (i, fields) in blocks.iter().enumerate() {
            let block = encoder.encode(fields.iter().map(|(n, v)| (*n, *v)));
            let stream = 1 + 2 * i as u32;
            write_header_frames(&mut out, stream, false, None, &block);
            write_frame_header(&mut out, 5, 0x0, FLAG_END_STREAM, stream);
            out.extend_from_slice(b"hello");
        }
        out.to_vec()
    }

    /// Frames of a server-side view: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE), "the preface is kept");
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let h = FrameHeader::parse(&bytes[..FRAME_HEADER_LEN]);
            let payload = bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.length].to_vec();
            bytes = &bytes[FRAME_HEADER_LEN + h.length..];
            out.push((h.kind, h.flags, h.stream_id, payload));
        }
        out
    }

    async fn through_fix(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    fn authorities(server_view: &[u8]) -> Vec<Vec<u8>> {
        let mut decoder = loona_hpack::Decoder::new();
        frames(server_view)
            .into_iter()
            .filter(|f| f.0 == FRAME_HEADERS)
            .map(|f| {
                decoder
                    .decode(&f.3)
                    .unwrap()
                    .into_iter()
                    .find(|(n, _)| n == b":authority")
                    .map(|(_, v)| v)
                    .unwrap_or_default()
            })
            .collect()
    }

    fn request(authority: &[u8]) -> Vec<(&[u8], &[u8])> {
        vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ]
    }

    #[tokio::test]
    async fn socket_paths_and_empty_authorities_become_localhost_valid_ones_stay() {
        let input = client_bytes(&[
            request(b"/run/podvisor/podvisor.sock"),
            request(b"%2Frun%2Fpodvisor%2Fpodvisor.sock"),
            request(b""),
            request(b"localhost"),
            request(b"example.test:8080"),
            // Indexed from the dynamic table the first block filled.
            request(b"/run/podvisor/podvisor.sock"),
        ]);
        for chunk in [1, 7, 4096] {
            let out = through_fix(input.clone(), chunk).await;
            assert_eq!(
                authorities(&out),
                vec![
                    b"localhost".to_vec(),
                    b"localhost".to_vec(),
                    b"localhost".to_vec(),
                    b"localhost".to_vec(),
                    b"example.test:8080".to_vec(),
                    b"localhost".to_vec(),
                ],
                "read in chunks of {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn other_frames_and_fields_pass_unchanged() {
        let input = client_bytes(&[request(b"/a/b.sock")]);
        let out = through_fix(input, 3).await;
        let f = frames(&out);
        assert_eq!(f[0], (0x4, 0, 0, vec![]), "SETTINGS unchanged");
        assert_eq!(f[1].0, FRAME_HEADERS);
        assert_eq!(f[1].1, FLAG_END_HEADERS);
        assert_eq!(f[2], (0x0, FLAG_END_STREAM, 1, b"hello".to_vec()));
        let fields = loona_hpack::Decoder::new().decode(&f[1].3).unwrap();
        let names: Vec<&[u8]> = fields.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            vec![
                &b":method"[..],
                b":scheme",
                b":path",
                b":authority",
                b"content-type"
            ]
        );
        assert_eq!(fields[2].1, b"/runtime.v1.RuntimeService/Version");
    }

    #[tokio::test]
    async fn padded_prioritized_and_continued_blocks_are_rebuilt() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode(request(b"/x.sock"));
        let (a, b) = block.split_at(block.len() / 2);
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        // HEADERS: padded (3 bytes), with priority, END_STREAM, no END_HEADERS.
        let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM;
        write_frame_header(&mut out, 1 + 5 + a.len() + 3, FRAME_HEADERS, flags, 5);
        out.put_u8(3);
        out.extend_from_slice(&[0, 0, 0, 3, 200]);
        out.extend_from_slice(a);
        out.extend_from_slice(&[0, 0, 0]);
        write_frame_header(&mut out, b.len(), FRAME_CONTINUATION, FLAG_END_HEADERS, 5);
        out.extend_from_slice(b);
        let view = through_fix(out.to_vec(), 5).await;
        let f = frames(&view);
        assert_eq!(f.len(), 1, "one HEADERS frame carries the rebuilt block");
        assert_eq!(f[0].1, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(f[0].2, 5);
        assert_eq!(&f[0].3[..5], &[0, 0, 0, 3, 200]);
        let fields = loona_hpack::Decoder::new().decode(&f[0].3[5..]).unwrap();
        assert!(fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[test]
    fn a_large_block_is_cut_into_continuations() {
        let value = vec![b'a'; 40_000];
        let encoded = encode_literals(&[(b"x-big".to_vec(), value.clone())]);
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        write_header_frames(&mut out, 1, true, None, &encoded);
        let f = frames(&out);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].0, FRAME_HEADERS);
        assert_eq!(f[0].1, FLAG_END_STREAM);
        assert_eq!((f[1].0, f[1].1), (FRAME_CONTINUATION, 0));
        assert_eq!((f[2].0, f[2].1), (FRAME_CONTINUATION, FLAG_END_HEADERS));
        assert!(f.iter().all(|f| f.3.len() <= MIN_MAX_FRAME_SIZE));
        let joined: Vec<u8> = f.iter().flat_map(|f| f.3.clone()).collect();
        let fields = loona_hpack::Decoder::new().decode(&joined).unwrap();
        assert_eq!(fields, vec![(b"x-big".to_vec(), value)]);
    }

    #[tokio::test]
    async fn a_frame_inside_an_open_header_block_ends_the_connection() {
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        write_frame_header(&mut out, 1, FRAME_HEADERS, 0, 1);
        out.put_u8(0x82);
        write_frame_header(&mut out, 0, 0x4, 0, 0);
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &out)
            .await
            .unwrap();
        drop(client);
        let mut fixed = AuthorityFix::new(server);
        let mut sink = Vec::new();
        let err = fixed.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("interrupted a header block"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_connection_without_the_preface_is_copied_as_is() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through_fix(input.clone(), 4).await, input);
    }

    #[test]
    fn integers_use_continuation_bytes_past_the_prefix() {
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 7, 126);
        assert_eq!(out, vec![126]);
        out.clear();
        encode_integer(&mut out, 0, 7, 127);
        assert_eq!(out, vec![127, 0]);
        out.clear();
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        encode_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, vec![31, 154, 10]);
    }
}
