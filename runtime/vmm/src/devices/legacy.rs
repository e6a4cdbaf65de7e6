//! Legacy PC devices on port I/O: the 8250 UART (COM1) and the i8042
//! controller, both from vm-superio, adapted to the bus.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::metrics::DeviceCounters;

/// An eventfd as a vm-superio interrupt/reset trigger.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Counts console bytes on their way to the log.
pub struct CountingWriter {
    inner: Box<dyn Write + Send>,
    counters: std::sync::Arc<DeviceCounters>,
}

impl CountingWriter {
    pub fn new(inner: Box<dyn Write + Send>, counters: std::sync::Arc<DeviceCounters>) -> Self {
        CountingWriter { inner, counters }
    }
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.add_from_guest(n);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// COM1: a 16550-compatible UART whose output goes to the console log.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, CountingWriter>,
}

impl SerialConsole {
    pub fn new(irq: EventFd, out: CountingWriter) -> Self {
        SerialConsole {
            uart: Serial::new(EventFdTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            // The bus hands us offsets within our 8 ports.
            data[0] = self.uart.read((offset & 0xff) as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            // A full or broken log must not stop the guest.
            let _ = self.uart.write((offset & 0xff) as u8, data[0]);
        }
    }
}

/// i8042 keyboard controller (hand-written: vm-superio's only handles the
/// reset command). Enough of the controller and an AT keyboard for Linux's
/// i8042/atkbd drivers, the CPU reset command (Linux `reboot=k`), and
/// Ctrl-Alt-Del injection for a guest-cooperative shutdown.
pub struct I8042 {
    reset: EventFd,
    irq: EventFd,
    /// Bytes waiting to be read from the data port.
    out: std::collections::VecDeque<u8>,
    /// Controller configuration byte (bit 0: keyboard interrupt enabled).
    ctr: u8,
    /// A controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its argument byte.
    pending_kbd_arg: bool,
}

const I8042_DATA: u64 = 0;
const I8042_CMD: u64 = 4;
const STATUS_OUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const KBD_ACK: u8 = 0xfa;

/// Ctrl, Alt, Delete pressed then released, in scan code set 2 (no translation).
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

impl I8042 {
    pub fn new(reset: EventFd, irq: EventFd) -> Self {
        I8042 {
            reset,
            irq,
            out: std::collections::VecDeque::new(),
            ctr: CTR_KBD_INT | CTR_SYSTEM,
            pending_cmd: None,
            pending_kbd_arg: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        // Bound the buffer: a guest that never reads cannot grow it.
        for &b in bytes {
            if self.out.len() < 64 {
                self.out.push_back(b);
            }
        }
        self.raise();
    }

    fn raise(&self) {
        if !self.out.is_empty() && self.ctr & CTR_KBD_INT != 0 {
            let _ = self.irq.write(1);
        }
    }

    /// Queues Ctrl-Alt-Del for the guest.
    pub fn ctrl_alt_del(&mut self) {
        self.push(&CTRL_ALT_DEL);
    }

    fn controller_command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.push(&[self.ctr]),
            0x60 | 0xd1 | 0xd2 | 0xd4 => self.pending_cmd = Some(cmd),
            0xaa => self.push(&[0x55]),
            0xab => self.push(&[0x00]),
            0xfe => {
                let _ = self.reset.write(1);
            }
            _ => {}
        }
    }

    fn data_write(&mut self, value: u8) {
        match self.pending_cmd.take() {
            Some(0x60) => {
                self.ctr = value;
                return;
            }
            // Output port: bit 0 clear pulses the CPU reset line.
            Some(0xd1) => {
                if value & 1 == 0 {
                    let _ = self.reset.write(1);
                }
                return;
            }
            Some(0xd2) => {
                self.push(&[value]);
                return;
            }
            // No mouse behind the controller.
            Some(0xd4) => return,
            _ => {}
        }
        if self.pending_kbd_arg {
            self.pending_kbd_arg = false;
            self.push(&[KBD_ACK]);
            return;
        }
        match value {
            0xff => self.push(&[KBD_ACK, 0xaa]),
            0xf2 => self.push(&[KBD_ACK, 0xab, 0x83]),
            0xed | 0xf0 | 0xf3 => {
                self.pending_kbd_arg = true;
                self.push(&[KBD_ACK]);
            }
            _ => self.push(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            I8042_DATA => {
                let v = self.out.pop_front().unwrap_or(0);
                self.raise();
                v
            }
            I8042_CMD => {
                let full = if self.out.is_empty() {
                    0
                } else {
                    STATUS_OUT_FULL
                };
                let cmd = if self.pending_cmd.is_some() {
                    STATUS_CMD
                } else {
                    0
                };
                full | cmd | STATUS_SYSTEM
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            I8042_DATA => self.data_write(data[0]),
            I8042_CMD => self.controller_command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, EventFd) {
        let reset = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        (I8042::new(reset.try_clone().unwrap(), irq), reset)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_and_output_port() {
        let (mut d, reset) = dev();
        d.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        d.write(4, &[0xd1]);
        d.write(0, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn controller_and_keyboard_replies() {
        let (mut d, _) = dev();
        assert_eq!(rd(&mut d, 4) & STATUS_OUT_FULL, 0);
        d.write(4, &[0xaa]);
        assert_eq!(rd(&mut d, 4) & STATUS_OUT_FULL, 1);
        assert_eq!(rd(&mut d, 0), 0x55);
        d.write(4, &[0x60]);
        d.write(0, &[0x45]);
        d.write(4, &[0x20]);
        assert_eq!(rd(&mut d, 0), 0x45);
        d.write(0, &[0xff]);
        assert_eq!((rd(&mut d, 0), rd(&mut d, 0)), (KBD_ACK, 0xaa));
        d.ctrl_alt_del();
        let got: Vec<u8> = (0..11).map(|_| rd(&mut d, 0)).collect();
        assert_eq!(got, CTRL_ALT_DEL.to_vec());
        assert_eq!(rd(&mut d, 4) & STATUS_OUT_FULL, 0);
    }
}
