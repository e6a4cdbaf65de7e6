//! Host ports (mode `vm`): a CRI `PortMapping` with a non-zero host port
//! makes the node forward its port to the pod's address and container port,
//! as the CNI portmap plugin does for Kata pods. The nftables rules are in
//! [`super::nft::hostport_script`]; here are the mappings themselves, their
//! validation and which ones collide.
//!
//! A pod holds its host ports from RunPodSandbox until it is stopped, and
//! two pods never hold overlapping ones: the same protocol and port, on the
//! same node address or with either on every address (the scheduler's
//! notion of a hostPort conflict).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The nft payload keyword (`tcp dport ...`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// One forwarded port: `host_ip:host_port/protocol` on the node to
/// `<pod ip>:container_port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    /// The node address the port is reached on; `None`: every address of
    /// the node, loopback included.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("port mapping {index}: {field} {value} is out of range (1-65535)")]
    OutOfRange {
        index: usize,
        field: &'static str,
        value: i32,
    },
    #[error("port mapping {index}: host_ip {value:?} is not an IP address")]
    BadHostIp { index: usize, value: String },
    #[error("port mapping {index}: host_ip {value} is IPv6, but pods have IPv4 addresses only (leave host_ip empty for every node address)")]
    Ipv6HostIp { index: usize, value: String },
    #[error("port mappings {first} and {second} both ask for host port {port}")]
    Duplicate {
        first: usize,
        second: usize,
        port: HostPort,
    },
}

impl HostPort {
    /// Validates one CRI port mapping (the `index`th, for messages) whose
    /// host port is non-zero. An empty or unspecified (`0.0.0.0`, `::`)
    /// `host_ip` means every node address.
    pub fn new(
        index: usize,
        protocol: Protocol,
        host_ip: &str,
        host_port: i32,
        container_port: i32,
    ) -> Result<HostPort, HostPortError> {
        let port = |field, value: i32| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(HostPortError::OutOfRange {
                    index,
                    field,
                    value,
                })
        };
        let host_ip = match host_ip.trim() {
            "" => None,
            text => match text.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(IpAddr::V4(ip)) => Some(ip),
                Ok(IpAddr::V6(_)) => {
                    return Err(HostPortError::Ipv6HostIp {
                        index,
                        value: text.to_string(),
                    })
                }
                Err(_) => {
                    return Err(HostPortError::BadHostIp {
                        index,
                        value: text.to_string(),
                    })
                }
            },
        };
        Ok(HostPort {
            protocol,
            host_ip,
            host_port: port("host_port", host_port)?,
            container_port: port("container_port", container_port)?,
        })
    }

    /// Whether both cannot be forwarded at once: same protocol and port, and
    /// the same node address or either on every address.
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}/{}", self.host_port, self.protocol)
    }
}

/// Refuses a pod whose own mappings overlap (kubelet never sends such).
pub fn check_distinct(ports: &[HostPort]) -> Result<(), HostPortError> {
    for (second, port) in ports.iter().enumerate() {
        if let Some(first) = ports[..second].iter().position(|p| p.overlaps(port)) {
            return Err(HostPortError::Duplicate {
                first,
                second,
                port: port.clone(),
            });
        }
    }
    Ok(())
}

/// The first of `wanted` that a holder already has, with that holder.
pub fn conflict<'a, H>(
    wanted: &[HostPort],
    held: impl IntoIterator<Item = (H, &'a [HostPort])>,
) -> Option<(HostPort, H)> {
    held.into_iter().find_map(|(holder, theirs)| {
        wanted
            .iter()
            .find(|w| theirs.iter().any(|t| t.overlaps(w)))
            .map(|w| (w.clone(), holder))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host_ip: &str, port: i32) -> HostPort {
        HostPort::new(0, Protocol::Tcp, host_ip, port, 80).unwrap()
    }

    #[test]
    fn mappings_are_validated() {
        let p = HostPort::new(0, Protocol::Udp, "", 12000, 53).unwrap();
        assert_eq!(
            p,
            HostPort {
                protocol: Protocol::Udp,
                host_ip: None,
                host_port: 12000,
                container_port: 53,
            }
        );
        assert_eq!(p.to_string(), "12000/UDP");
        assert_eq!(tcp("0.0.0.0", 1).host_ip, None);
        assert_eq!(tcp("::", 1).host_ip, None);
        let bound = tcp(" 192.0.2.7 ", 8080);
        assert_eq!(bound.host_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(bound.to_string(), "192.0.2.7:8080/TCP");

        let err = HostPort::new(2, Protocol::Tcp, "", 70000, 80).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port mapping 2: host_port 70000 is out of range (1-65535)"
        );
        assert!(matches!(
            HostPort::new(0, Protocol::Tcp, "", -1, 80),
            Err(HostPortError::OutOfRange { .. })
        ));
        assert!(matches!(
            HostPort::new(0, Protocol::Tcp, "", 8080, 0),
            Err(HostPortError::OutOfRange {
                field: "container_port",
                ..
            })
        ));
        assert!(matches!(
            HostPort::new(0, Protocol::Tcp, "node-a", 8080, 80),
            Err(HostPortError::BadHostIp { .. })
        ));
        assert!(matches!(
            HostPort::new(0, Protocol::Tcp, "fd00::1", 8080, 80),
            Err(HostPortError::Ipv6HostIp { .. })
        ));
    }

    #[test]
    fn overlap_is_protocol_port_and_address() {
        let any = tcp("", 8080);
        let a = tcp("192.0.2.1", 8080);
        let b = tcp("192.0.2.2", 8080);
        assert!(any.overlaps(&a) && a.overlaps(&any));
        assert!(a.overlaps(&a.clone()));
        assert!(!a.overlaps(&b), "different node addresses");
        assert!(!any.overlaps(&tcp("", 8081)));
        let udp = HostPort::new(0, Protocol::Udp, "", 8080, 80).unwrap();
        assert!(!any.overlaps(&udp), "TCP and UDP are separate ports");
    }

    #[test]
    fn a_pod_may_not_ask_twice_for_one_port() {
        assert_eq!(check_distinct(&[tcp("", 1), tcp("", 2)]), Ok(()));
        let err = check_distinct(&[tcp("", 1), tcp("", 2), tcp("192.0.2.1", 2)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port mappings 1 and 2 both ask for host port 192.0.2.1:2/TCP"
        );
    }

    #[test]
    fn conflict_names_the_port_and_its_holder() {
        let held_a = [tcp("", 8080)];
        let held_b = [tcp("192.0.2.1", 9090)];
        let held = [("a", &held_a[..]), ("b", &held_b[..])];
        assert_eq!(
            conflict(&[tcp("", 1), tcp("192.0.2.9", 8080)], held),
            Some((tcp("192.0.2.9", 8080), "a"))
        );
        assert_eq!(conflict(&[tcp("", 9090)], held), Some((tcp("", 9090), "b")));
        assert_eq!(conflict(&[tcp("192.0.2.2", 9090)], held), None);
        assert_eq!(conflict(&[], held), None);
    }
}
