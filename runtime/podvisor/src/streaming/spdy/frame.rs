//! SPDY/3.1 frames: the 8-byte header, data frames and the control frames
//! the Kubernetes streaming protocols use, written from the SPDY/3.1
//! specification. Header blocks stay compressed here; `headers.rs` packs
//! and unpacks them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u16 = 3;
/// Largest payload a frame may carry (24-bit length).
pub const MAX_LENGTH: usize = 0x00ff_ffff;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("{kind} frame of {len} bytes is malformed")]
    Malformed { kind: &'static str, len: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        /// Compressed name/value block.
        block: Bytes,
    },
    SynReply {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        /// (id, value) pairs; per-entry flags are not needed.
        entries: Vec<(u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type this endpoint ignores (the spec says to).
    Unknown {
        kind: u16,
    },
}

const ID_MASK: u32 = 0x7fff_ffff;

/// Splits one frame off the front of `buf`; `Ok(None)` until it is whole.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(None);
    }
    let head = buf.split_to(8);
    let mut body = buf.split_to(len).freeze();
    let flags = head[4];
    if head[0] & 0x80 == 0 {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & ID_MASK;
        return Ok(Some(Frame::Data {
            stream,
            fin: flags & FLAG_FIN != 0,
            data: body,
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let malformed = |kind| FrameError::Malformed { kind, len };
    let fin = flags & FLAG_FIN != 0;
    let frame = match kind {
        SYN_STREAM => {
            if len < 10 {
                return Err(malformed("SYN_STREAM"));
            }
            let stream = body.get_u32() & ID_MASK;
            let associated = body.get_u32() & ID_MASK;
            let priority = body.get_u8() >> 5;
            let _slot = body.get_u8();
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                block: body,
            }
        }
        SYN_REPLY => {
            if len < 4 {
                return Err(malformed("SYN_REPLY"));
            }
            let stream = body.get_u32() & ID_MASK;
            Frame::SynReply {
                stream,
                fin,
                block: body,
            }
        }
        RST_STREAM => {
            if len != 8 {
                return Err(malformed("RST_STREAM"));
            }
            Frame::RstStream {
                stream: body.get_u32() & ID_MASK,
                status: body.get_u32(),
            }
        }
        SETTINGS => {
            if len < 4 {
                return Err(malformed("SETTINGS"));
            }
            let count = body.get_u32() as usize;
            if body.remaining() != count.saturating_mul(8) {
                return Err(malformed("SETTINGS"));
            }
            let entries = (0..count)
                .map(|_| (body.get_u32() & 0x00ff_ffff, body.get_u32()))
                .collect();
            Frame::Settings { entries }
        }
        PING => {
            if len != 4 {
                return Err(malformed("PING"));
            }
            Frame::Ping { id: body.get_u32() }
        }
        GOAWAY => {
            // SPDY/3 added the status; tolerate its absence.
            if len != 8 && len != 4 {
                return Err(malformed("GOAWAY"));
            }
            let last_stream = body.get_u32() & ID_MASK;
            let status = if body.remaining() >= 4 {
                body.get_u32()
            } else {
                0
            };
            Frame::GoAway {
                last_stream,
                status,
            }
        }
        HEADERS => {
            if len < 4 {
                return Err(malformed("HEADERS"));
            }
            let stream = body.get_u32() & ID_MASK;
            Frame::Headers {
                stream,
                fin,
                block: body,
            }
        }
        WINDOW_UPDATE => {
            if len != 8 {
                return Err(malformed("WINDOW_UPDATE"));
            }
            Frame::WindowUpdate {
                stream: body.get_u32() & ID_MASK,
                delta: body.get_u32() & ID_MASK,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | len24(len));
}

/// The 24-bit length field; the mask keeps an oversized length (a caller's
/// bug) out of the flags byte.
#[allow(clippy::cast_possible_truncation)] // masked to 24 bits first
fn len24(len: usize) -> u32 {
    (len & 0x00ff_ffff) as u32
}

/// Appends the wire form of `frame`. Payloads must fit in 24 bits; the
/// session splits data before it gets here.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Data { stream, fin, data } => {
            out.put_u32(stream & ID_MASK);
            let flags = if *fin { FLAG_FIN } else { 0 };
            out.put_u32((u32::from(flags) << 24) | len24(data.len()));
            out.put_slice(data);
        }
        Frame::SynStream {
            stream,
            associated,
            priority,
            flags,
            block,
        } => {
            control(out, SYN_STREAM, *flags, 10 + block.len());
            out.put_u32(stream & ID_MASK);
            out.put_u32(associated & ID_MASK);
            out.put_u8(priority << 5);
            out.put_u8(0);
            out.put_slice(block);
        }
        Frame::SynReply { stream, fin, block } => {
            control(
                out,
                SYN_REPLY,
                if *fin { FLAG_FIN } else { 0 },
                4 + block.len(),
            );
            out.put_u32(stream & ID_MASK);
            out.put_slice(block);
        }
        Frame::RstStream { stream, status } => {
            control(out, RST_STREAM, 0, 8);
            out.put_u32(stream & ID_MASK);
            out.put_u32(*status);
        }
        Frame::Settings { entries } => {
            control(out, SETTINGS, 0, 4 + 8 * entries.len());
            // Only our own few settings are ever sent.
            out.put_u32(u32::try_from(entries.len()).unwrap_or(u32::MAX));
            for (id, value) in entries {
                out.put_u32(id & 0x00ff_ffff);
                out.put_u32(*value);
            }
        }
        Frame::Ping { id } => {
            control(out, PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_stream,
            status,
        } => {
            control(out, GOAWAY, 0, 8);
            out.put_u32(last_stream & ID_MASK);
            out.put_u32(*status);
        }
        Frame::Headers { stream, fin, block } => {
            control(
                out,
                HEADERS,
                if *fin { FLAG_FIN } else { 0 },
                4 + block.len(),
            );
            out.put_u32(stream & ID_MASK);
            out.put_slice(block);
        }
        Frame::WindowUpdate { stream, delta } => {
            control(out, WINDOW_UPDATE, 0, 8);
            out.put_u32(stream & ID_MASK);
            out.put_u32(delta & ID_MASK);
        }
        Frame::Unknown { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf);
        // Byte by byte: nothing decodes before the frame is whole.
        let wire = buf.split().freeze();
        let mut partial = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            partial.put_u8(*b);
            let got = decode(&mut partial).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(got, None, "decoded early at byte {i}");
            } else {
                assert_eq!(got, Some(frame.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Data {
            stream: 5,
            fin: true,
            data: Bytes::from_static(b"hello"),
        });
        round_trip(Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 7,
            flags: FLAG_FIN,
            block: Bytes::from_static(b"\x78\x9c"),
        });
        round_trip(Frame::SynReply {
            stream: 3,
            fin: false,
            block: Bytes::from_static(b"xyz"),
        });
        round_trip(Frame::RstStream {
            stream: 9,
            status: RST_CANCEL,
        });
        round_trip(Frame::Settings {
            entries: vec![(7, 65536), (4, 100)],
        });
        round_trip(Frame::Ping { id: 2 });
        round_trip(Frame::GoAway {
            last_stream: 11,
            status: 0,
        });
        round_trip(Frame::Headers {
            stream: 1,
            fin: true,
            block: Bytes::new(),
        });
        round_trip(Frame::WindowUpdate {
            stream: 0,
            delta: 1 << 20,
        });
    }

    #[test]
    fn the_data_header_is_bit_exact() {
        let mut buf = BytesMut::new();
        encode(
            &Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"ab"),
            },
            &mut buf,
        );
        assert_eq!(&buf[..], &[0, 0, 0, 1, 1, 0, 0, 2, b'a', b'b']);
        let mut buf = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut buf);
        assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0x80, 2, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::Version(2)));
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::Malformed { .. })
        ));
        // SETTINGS announcing 2^32-1 entries in a 4-byte body.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::Malformed {
                kind: "SETTINGS",
                len: 4
            })
        );
        let mut buf = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 2, 0, 0][..]);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::Malformed {
                kind: "SYN_STREAM",
                len: 2
            })
        );
    }
}
