//! A network namespace with a tap device, created and removed by the test,
//! and a raw packet socket on that tap (no traffic leaves the namespace).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl NetNs {
    /// Creates namespace `name` holding an up tap device `tap`.
    pub fn with_tap(name: &str, tap: &str) -> Result<NetNs, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ip(&["-n", name, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", name, "link", "set", tap, "up"])?;
        Ok(ns)
    }

    /// Enters the namespace on the calling thread (only that thread moves).
    pub fn enter_current_thread(&self) -> Result<(), String> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("opening netns: {e}"))?;
        // SAFETY: setns on a namespace fd we hold open.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A raw AF_PACKET socket bound to one interface of the current thread's namespace.
pub struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    pub fn bind(ifname: &str) -> Result<PacketSocket, String> {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain socket calls with checked results; the sockaddr is fully initialised.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(format!("no interface {ifname}"));
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET is 17");
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = index as i32;
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("20 bytes"),
            ) != 0
            {
                return Err(format!("bind: {}", std::io::Error::last_os_error()));
            }
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                u32::try_from(std::mem::size_of::<libc::timeval>()).expect("16 bytes"),
            );
            Ok(PacketSocket { fd })
        }
    }

    /// Receives one frame (None on the 1 s timeout).
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    pub fn send(&self, frame: &[u8]) -> Result<(), String> {
        // SAFETY: frame is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n as usize == frame.len() {
            Ok(())
        } else {
            Err(format!("send: {}", std::io::Error::last_os_error()))
        }
    }
}
