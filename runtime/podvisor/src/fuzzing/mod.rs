//! Entry points for the fuzz targets in `fuzz/daemon` and for the
//! regression tests that replay their findings
//! (`tests/fuzz_regressions.rs`): each takes bytes a client or a registry
//! controls and feeds them to the parser that meets them first. Not part
//! of the daemon's API; nothing here runs in `podvisor`.

// Harness code: fuzzer bytes are cut to register, length and id widths on
// purpose, and the device code under test checks every value it is given.
#![allow(clippy::cast_possible_truncation)]

mod layer;
mod reference;
mod spdy;
mod tar_builder;
mod websocket;

pub use layer::layer_unpack;
pub use reference::image_reference;
pub use spdy::spdy_frames;
pub use websocket::websocket_remotecommand;

/// A fuzz target's entry point: any bytes in, a panic only on a bug.
pub type Entry = fn(&[u8]);

/// Every target by name, as `fuzz/regressions/<name>/` names them.
pub const TARGETS: &[(&str, Entry)] = &[
    ("spdy_frames", spdy_frames),
    ("websocket_remotecommand", websocket_remotecommand),
    ("image_reference", image_reference),
    ("layer_unpack", layer_unpack),
];

/// The fuzzer's bytes read as numbers; zero past the end.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub(crate) fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        let mut a = [0u8; 2];
        a[..b.len()].copy_from_slice(b);
        u16::from_le_bytes(a)
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let b = self.bytes(8);
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }
}
