//! A tap device with virtio-net headers (hand-written: the TUN/TAP ioctls
//! are a few lines and no maintained rust-vmm crate wraps them).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

/// virtio_net_hdr_v1 (with num_buffers), as VERSION_1 requires.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("tap name {0:?} is too long")]
    Name(String),
    #[error("attaching to tap {name}: {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
    #[error("tap fd {fd}: {msg}")]
    Fd { fd: RawFd, msg: String },
    #[error("configuring the tap: {0}")]
    Configure(std::io::Error),
}

pub struct Tap {
    file: File,
    /// False for the socket stand-in, which has no offload ioctl.
    offloads: bool,
}

/// struct ifreq: 16-byte name + 24-byte union (flags is its first short).
fn ifreq(name: &str, flags: i16) -> Result<[u8; 40], TapError> {
    let mut req = [0u8; 40];
    if name.len() >= 16 {
        return Err(TapError::Name(name.into()));
    }
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    Ok(req)
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: the callers pass a pointer to a buffer of the size the request expects.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Attaches to the existing tap `name` (in this process's network namespace).
    pub fn open_named(name: &str) -> Result<Tap, TapError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
        ioctl_ptr(file.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()).map_err(|source| {
            TapError::Attach {
                name: name.into(),
                source,
            }
        })?;
        let tap = Tap {
            file,
            offloads: true,
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Takes over a tap fd opened by the parent (it must have IFF_VNET_HDR).
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        let mut req = [0u8; 40];
        ioctl_ptr(fd, TUNGETIFF, req.as_mut_ptr()).map_err(|e| TapError::Fd {
            fd,
            msg: format!("not a tap device: {e}"),
        })?;
        let flags = i16::from_ne_bytes([req[16], req[17]]);
        if flags & IFF_TAP == 0 || flags & IFF_VNET_HDR == 0 || flags & IFF_NO_PI == 0 {
            return Err(TapError::Fd {
                fd,
                msg: "must be a tap opened with IFF_NO_PI | IFF_VNET_HDR".into(),
            });
        }
        // SAFETY: the fd was handed to us to own; fcntl only changes its flags.
        let file = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            File::from_raw_fd(fd)
        };
        let tap = Tap {
            file,
            offloads: true,
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let mut size = libc::c_int::try_from(VNET_HDR_LEN)
            .map_err(|e| TapError::Configure(std::io::Error::other(e)))?;
        ioctl_ptr(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &mut size).map_err(TapError::Configure)
    }

    /// Tells the tap which offloaded (partial checksum, TSO, UFO) frames the guest accepts.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        if !self.offloads {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0
        {
            return Err(TapError::Configure(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// A tap stand-in for tests and fuzzing: one end of a non-blocking
    /// datagram socket pair, which keeps frame boundaries as a tap does.
    /// The other end is the host side (frames carry the vnet header).
    #[doc(hidden)]
    pub fn socket_pair() -> std::io::Result<(Tap, std::os::unix::net::UnixDatagram)> {
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair()?;
        ours.set_nonblocking(true)?;
        let file = File::from(std::os::fd::OwnedFd::from(ours));
        Ok((
            Tap {
                file,
                offloads: false,
            },
            peer,
        ))
    }

    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    pub fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout() {
        let r = ifreq("tap0", IFF_TAP | IFF_NO_PI).unwrap();
        assert_eq!(&r[..4], b"tap0");
        assert_eq!(i16::from_ne_bytes([r[16], r[17]]), IFF_TAP | IFF_NO_PI);
        let err = ifreq("a-very-long-tap-name", 0).unwrap_err();
        assert!(
            matches!(&err, TapError::Name(n) if n == "a-very-long-tap-name"),
            "{err:?}"
        );
        // 15 bytes and the NUL fill the 16-byte name field exactly.
        assert!(ifreq("fifteen-bytes-x", 0).is_ok());
    }
}
