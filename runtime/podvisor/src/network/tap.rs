//! Pod taps: persistent tap devices named after the sandbox, which the VMM
//! (qemu or podvisor-vmm) opens by name and the host routes the pod through.
//!
//! Created IFF_TAP | IFF_NO_PI, single queue, no vnet header: a process
//! that later attaches to a persistent tap sets the header and packet-info
//! flags it wants itself (the kernel takes them from each TUNSETIFF), only
//! the multi-queue flag has to match, and neither VMM asks for multi-queue.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use podvisor_netlink::Netlink;
use sha2::{Digest, Sha256};

use super::config::IFNAME_MAX;
use super::NetworkError;

const TUN_DEVICE: &str = "/dev/net/tun";
/// _IOW('T', 202, int) and _IOW('T', 203, int) from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `<prefix><hex>`, 15 bytes: hex digits of SHA-256(sandbox id), so any id
/// (CRI ids are 64 hex digits, longer than an interface name) maps to a
/// valid, stable name.
pub fn tap_name(prefix: &str, sandbox_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(sandbox_id.as_bytes()));
    let keep = IFNAME_MAX.saturating_sub(prefix.len());
    format!("{prefix}{}", &digest[..keep.min(digest.len())])
}

/// Whether `name` has the shape of a tap this daemon names with `prefix`.
pub fn is_ours(prefix: &str, name: &str) -> bool {
    name.len() == IFNAME_MAX
        && name.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The guest NIC's MAC: 02:xx:xx:xx:xx:xx (locally administered, unicast),
/// from another part of the same hash, so it is stable across restarts.
pub fn guest_mac(sandbox_id: &str) -> [u8; 6] {
    let digest = Sha256::digest(sandbox_id.as_bytes());
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    mac[1..].copy_from_slice(&digest[16..21]);
    mac
}

/// Creates the persistent tap `name` unless it exists, sets its MTU and
/// brings it up. Returns its interface index.
pub fn create(netlink: &mut Netlink, name: &str, mtu: u32) -> Result<u32, NetworkError> {
    let existing = netlink.link_by_name(name)?;
    if existing.is_none() {
        make_persistent_tap(name)?;
    }
    let link = netlink
        .link_by_name(name)?
        .ok_or_else(|| NetworkError::Tap {
            name: name.to_string(),
            message: "created, but the kernel does not list it".into(),
        })?;
    netlink.set_link(link.index, name, Some(true), Some(mtu))?;
    Ok(link.index)
}

/// Deletes the tap; one that is already gone is not an error.
pub fn delete(netlink: &mut Netlink, name: &str) -> Result<(), NetworkError> {
    if let Some(link) = netlink.link_by_name(name)? {
        netlink.delete_link(link.index, name)?;
    }
    Ok(())
}

fn make_persistent_tap(name: &str) -> Result<(), NetworkError> {
    let fail = |message: String| NetworkError::Tap {
        name: name.to_string(),
        message,
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|e| fail(format!("open {TUN_DEVICE}: {e}")))?;
    let mut request =
        ifreq(name, IFF_TAP | IFF_NO_PI).ok_or_else(|| fail("name too long".into()))?;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `request`
    // is (40 zeroed-and-filled bytes, as large as the kernel's).
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    if rc < 0 {
        return Err(fail(format!(
            "TUNSETIFF: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(fail(format!(
            "TUNSETPERSIST: {}",
            std::io::Error::last_os_error()
        )));
    }
    // Closing the fd leaves the persistent tap behind for the VMM.
    Ok(())
}

/// struct ifreq: 16 bytes of name (NUL-terminated), then the flags short.
fn ifreq(name: &str, flags: libc::c_short) -> Option<[u8; 40]> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
        return None;
    }
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&flags.to_ne_bytes());
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_fifteen_bytes_and_recognised() {
        let id = "4b1c2f7a9e0d3c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b";
        let name = tap_name("pvtap", id);
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("pvtap"));
        assert_eq!(name, tap_name("pvtap", id));
        assert_ne!(name, tap_name("pvtap", "another-sandbox"));
        assert!(is_ours("pvtap", &name));
        assert!(!is_ours("pvtap", "pvtap0"));
        assert!(!is_ours("pvtap", "eth0"));
        assert!(!is_ours("pvtap", "pvtapXYZ0123456"));
        assert_eq!(tap_name("p", "x").len(), 15);
        // Odd ids still give valid names.
        assert!(tap_name("pvtap", "ünïcode / spaces")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn macs_are_locally_administered_unicast_and_stable() {
        for id in ["a", "b", "sandbox-3", ""] {
            let mac = guest_mac(id);
            assert_eq!(mac[0], 0x02);
            assert_eq!(mac, guest_mac(id));
        }
        assert_ne!(guest_mac("a"), guest_mac("b"));
    }

    #[test]
    fn ifreq_layout() {
        let r = ifreq("pvtap0", IFF_TAP | IFF_NO_PI).unwrap();
        assert_eq!(&r[..7], b"pvtap0\0");
        assert_eq!(i16::from_ne_bytes([r[16], r[17]]), IFF_TAP | IFF_NO_PI);
        assert!(ifreq("a-name-longer-than-15", IFF_TAP).is_none());
    }
}
