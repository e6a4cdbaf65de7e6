//! IPv4 subnets in CIDR notation ("10.88.0.0/16"), as the config and the
//! IPAM state write them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network: an address with its host bits clear, and a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in CIDR notation (address/prefix, e.g. 10.88.0.0/16)")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be 0 to 32")]
    Prefix { text: String },
    #[error("{text:?} has host bits set; the network is {network}")]
    HostBits { text: String, network: Ipv4Cidr },
}

impl Ipv4Cidr {
    /// The network containing `address`, its host bits cleared.
    pub fn containing(address: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Cidr> {
        (prefix_len <= 32).then(|| Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix_len)),
            prefix_len,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix_len) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The addresses a host may have: all but the network and broadcast
    /// addresses. Empty for /31 and /32, which this runtime does not use
    /// for pods.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network);
        let last = u32::from(self.broadcast());
        let range = if self.prefix_len <= 30 {
            first + 1..last
        } else {
            first..first
        };
        range.map(Ipv4Addr::from)
    }

    /// The first host address (the conventional gateway, like a VPC's .1).
    pub fn first_host(&self) -> Option<Ipv4Addr> {
        self.hosts().next()
    }

    /// Whether `address` is a host address of this network.
    pub fn is_host(&self, address: Ipv4Addr) -> bool {
        self.contains(address)
            && self.prefix_len <= 30
            && address != self.network
            && address != self.broadcast()
    }
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(text.to_string());
        let (address, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let address: Ipv4Addr = address.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| CidrError::Prefix {
                text: text.to_string(),
            })?;
        let network = Ipv4Cidr::containing(address, prefix_len).ok_or_else(syntax)?;
        if network.network != address {
            return Err(CidrError::HostBits {
                text: text.to_string(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        let net = cidr("10.88.0.0/16");
        assert_eq!(net.to_string(), "10.88.0.0/16");
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert_eq!(net.first_host(), Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert!(net.contains(Ipv4Addr::new(10, 88, 200, 3)));
        assert!(!net.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(cidr("0.0.0.0/0").broadcast(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn refuses_malformed_text_and_host_bits() {
        for bad in [
            "10.88.0.0",
            "10.88.0.0/",
            "10.88.0/16",
            "10.88.0.0/+8",
            "x/8",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.88.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        let err = "10.88.0.1/16".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.88.0.1/16\" has host bits set; the network is 10.88.0.0/16"
        );
    }

    #[test]
    fn a_slash_30_has_two_host_addresses() {
        let hosts: Vec<_> = cidr("192.168.7.0/30").hosts().collect();
        assert_eq!(
            hosts,
            [Ipv4Addr::new(192, 168, 7, 1), Ipv4Addr::new(192, 168, 7, 2)]
        );
        assert!(!cidr("192.168.7.0/30").is_host(Ipv4Addr::new(192, 168, 7, 3)));
        assert_eq!(cidr("192.168.7.0/31").hosts().count(), 0);
    }

    #[test]
    fn overlap() {
        assert!(cidr("10.0.0.0/8").overlaps(&cidr("10.88.0.0/16")));
        assert!(cidr("10.88.0.0/16").overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.88.0.0/16").overlaps(&cidr("10.89.0.0/16")));
    }
}
