//! SPDY/3 name/value header blocks: `u32 count, (u32 len, name, u32 len,
//! value)*`, compressed with one zlib stream per direction per session,
//! primed with the dictionary the SPDY/3 specification fixes.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// An uncompressed header block is refused beyond this (a zlib bomb guard).
const MAX_BLOCK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("header block: {0}")]
    Zlib(String),
    #[error("header block is malformed")]
    Malformed,
    #[error("header block exceeds {MAX_BLOCK} bytes")]
    TooLarge,
}

/// Header names are lowercase on the wire; a value may hold several
/// NUL-separated values (kept as one string here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

/// The words of the SPDY/3 dictionary, each stored length-prefixed (u32
/// big-endian), then a plain tail of common values.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub fn dictionary() -> Vec<u8> {
    let mut dict = Vec::with_capacity(1500);
    for word in DICTIONARY_WORDS {
        let len = u32::try_from(word.len()).expect("SPDY/3 dictionary words are short");
        dict.extend_from_slice(&len.to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
}

fn zlib_err(e: impl std::fmt::Display) -> HeaderError {
    HeaderError::Zlib(e.to_string())
}

/// Bytes of this block zlib has taken in: at most the block's length.
fn consumed(total_in: u64, start: u64) -> Result<usize, HeaderError> {
    usize::try_from(total_in - start).map_err(zlib_err)
}

/// Our direction's zlib stream.
pub struct Packer {
    z: Compress,
}

impl Packer {
    pub fn new() -> Result<Self, HeaderError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary()).map_err(zlib_err)?;
        Ok(Packer { z })
    }

    pub fn pack(&mut self, headers: &Headers) -> Result<Bytes, HeaderError> {
        let len32 = |n: usize| u32::try_from(n).map_err(|_| HeaderError::TooLarge);
        let mut plain = BytesMut::new();
        plain.put_u32(len32(headers.0.len())?);
        for (name, value) in &headers.0 {
            plain.put_u32(len32(name.len())?);
            plain.put_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(len32(value.len())?);
            plain.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let start = self.z.total_in();
        loop {
            let used = consumed(self.z.total_in(), start)?;
            out.reserve(256);
            self.z
                .compress_vec(&plain[used..], &mut out, FlushCompress::Sync)
                .map_err(zlib_err)?;
            // Done when all input is in and the flush left spare room.
            if consumed(self.z.total_in(), start)? == plain.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out.into())
    }
}

/// The peer's zlib stream.
pub struct Unpacker {
    z: Decompress,
}

impl Unpacker {
    pub fn new() -> Self {
        Unpacker {
            z: Decompress::new(true),
        }
    }

    pub fn unpack(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.z.total_in();
        loop {
            let used = consumed(self.z.total_in(), start)?;
            if out.len() == out.capacity() {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.len().max(256));
            }
            match self
                .z
                .decompress_vec(&block[used..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let used = consumed(self.z.total_in(), start)?;
                    if used == block.len() && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(&dictionary()).map_err(zlib_err)?;
                }
                Err(e) => return Err(zlib_err(e)),
            }
        }
        parse(&out)
    }
}

impl Default for Unpacker {
    fn default() -> Self {
        Self::new()
    }
}

fn parse(mut plain: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if buf.len() < n {
            return Err(HeaderError::Malformed);
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    fn take_u32(buf: &mut &[u8]) -> Result<usize, HeaderError> {
        let b = take(buf, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let count = take_u32(&mut plain)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = take_u32(&mut plain)?;
        let name = String::from_utf8_lossy(take(&mut plain, n)?).to_ascii_lowercase();
        let n = take_u32(&mut plain)?;
        let value = String::from_utf8_lossy(take(&mut plain, n)?).into_owned();
        headers.push((name, value));
    }
    Ok(Headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_has_the_specified_size_and_checksum() {
        let dict = dictionary();
        // SPDY/3's dictionary is 1423 bytes; zlib identifies it by its
        // Adler-32 in every stream header.
        assert_eq!(dict.len(), 1423);
        let adler = {
            let (mut a, mut b) = (1u32, 0u32);
            for byte in &dict {
                a = (a + u32::from(*byte)) % 65521;
                b = (b + a) % 65521;
            }
            (b << 16) | a
        };
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(&dict).unwrap(), adler);
    }

    #[test]
    fn blocks_round_trip_across_one_stream() {
        let mut packer = Packer::new().unwrap();
        let mut unpacker = Unpacker::new();
        for i in 0..5 {
            let h = Headers::default()
                .with("streamType", "stdout")
                .with("requestID", &i.to_string());
            let block = packer.pack(&h).unwrap();
            let got = unpacker.unpack(&block).unwrap();
            assert_eq!(got.get("streamtype"), Some("stdout"));
            assert_eq!(got.get("requestid"), Some(i.to_string().as_str()));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let err = Unpacker::new().unpack(b"not zlib at all").unwrap_err();
        assert!(matches!(err, HeaderError::Zlib(_)), "{err:?}");
        // Two headers announced, the first name 9 bytes long, nothing follows.
        let err = parse(&[0, 0, 0, 2, 0, 0, 0, 9]).unwrap_err();
        assert!(matches!(err, HeaderError::Malformed), "{err:?}");
    }
}
