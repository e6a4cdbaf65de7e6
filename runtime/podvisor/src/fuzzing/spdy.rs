//! SPDY/3.1 as a streaming client sends it: frames, and the zlib header
//! blocks inside SYN_STREAM, SYN_REPLY and HEADERS.

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, FlushCompress};

use super::Input;
use crate::streaming::spdy::frame::{self, Frame};
use crate::streaming::spdy::headers::{dictionary, Unpacker};

/// The first byte picks the form: odd, the rest is the wire as is; even, it
/// is a list of plain header blocks that we compress on one zlib stream
/// (as a client would) and send as SYN_STREAM frames, so that the header
/// parser sees more than zlib's error paths.
pub fn spdy_frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut wire = if mode & 1 == 1 {
        BytesMut::from(rest)
    } else {
        compressed_syn_streams(rest)
    };
    let mut unpacker = Unpacker::new();
    while let Ok(Some(f)) = frame::decode(&mut wire) {
        check_round_trip(&f);
        let block = match &f {
            Frame::SynStream { block, .. }
            | Frame::SynReply { block, .. }
            | Frame::Headers { block, .. } => block,
            _ => continue,
        };
        // The session ends at the first bad block, so do we.
        if unpacker.unpack(block).is_err() {
            return;
        }
    }
}

/// What we decode, we must encode to the same bytes' meaning.
fn check_round_trip(f: &Frame) {
    if matches!(f, Frame::Unknown { .. }) {
        return;
    }
    let mut out = BytesMut::new();
    frame::encode(f, &mut out);
    let again = frame::decode(&mut out);
    assert_eq!(again, Ok(Some(f.clone())), "frame does not round-trip");
    assert!(out.is_empty(), "encoding left {} bytes over", out.len());
}

fn compressed_syn_streams(data: &[u8]) -> BytesMut {
    let mut input = Input::new(data);
    let mut z = Compress::new(Compression::default(), true);
    if z.set_dictionary(&dictionary()).is_err() {
        return BytesMut::new();
    }
    let mut wire = BytesMut::new();
    let mut stream = 1u32;
    while !input.is_empty() {
        let len = usize::from(input.u16());
        let plain = input.bytes(len);
        let mut block = Vec::with_capacity(plain.len() + 64);
        let start = z.total_in();
        loop {
            let used = (z.total_in() - start) as usize;
            block.reserve(256);
            if z.compress_vec(&plain[used..], &mut block, FlushCompress::Sync)
                .is_err()
            {
                return wire;
            }
            if (z.total_in() - start) as usize == plain.len() && block.len() < block.capacity() {
                break;
            }
        }
        let len = 10 + block.len();
        if len > frame::MAX_LENGTH {
            break;
        }
        wire.put_u16(0x8000 | frame::VERSION);
        wire.put_u16(1);
        wire.put_u32(len as u32);
        wire.put_u32(stream);
        wire.put_u32(0);
        wire.put_u16(0);
        wire.put_slice(&block);
        stream += 2;
    }
    wire
}
