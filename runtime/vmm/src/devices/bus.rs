//! Address-range dispatch for port I/O and MMIO exits (hand-written; the
//! rust-vmm `vm-device` crate is not maintained for current vm-memory).
//!
//! The bus is built before the vCPUs start and never changes afterwards, so
//! vCPU threads share it without a lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device reached through the bus. `offset` is relative to the range start.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {start:#x}+{len:#x} overlaps an existing device")]
    Overlap { start: u64, len: u64 },
    #[error("empty bus range at {0:#x}")]
    Empty(u64),
}

struct Range {
    start: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(start));
        }
        let end = start
            .checked_add(len)
            .ok_or(BusError::Overlap { start, len })?;
        if self
            .ranges
            .iter()
            .any(|r| start < r.start + r.len && r.start < end)
        {
            return Err(BusError::Overlap { start, len });
        }
        let pos = self.ranges.partition_point(|r| r.start < start);
        self.ranges.insert(pos, Range { start, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let idx = self.ranges.partition_point(|r| r.start <= addr);
        let range = self.ranges.get(idx.checked_sub(1)?)?;
        let offset = addr - range.start;
        // The whole access must fall inside the range.
        if offset.checked_add(size as u64)? <= range.len {
            Some((range, offset))
        } else {
            None
        }
    }

    /// Returns false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill((offset & 0xff) as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x108, 0x10),
            Err(BusError::Overlap {
                start: 0x108,
                len: 0x10
            })
        ));
        bus.insert(dev.clone(), 0x110, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0x104, &mut b));
        assert_eq!(b, [4; 4]);
        assert!(!bus.read(0x10e, &mut b));
        assert!(!bus.read(0x11e, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x100, &[1, 2]));
        assert_eq!(dev.lock().unwrap().0, vec![1, 2]);
    }
}
