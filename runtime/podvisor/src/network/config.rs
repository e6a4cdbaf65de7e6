//! `[network]` of the daemon's config: the pod subnets, the gateway every
//! pod routes through, MTU, DNS defaults, egress masquerade, tap naming and
//! the metadata addresses pods may not reach. See docs/network.md.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::cidr::Ipv4Cidr;

/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// The tap name keeps at least this many hex digits of the sandbox id's
/// hash, so names of different pods collide only by rare accident.
pub const TAP_HASH_MIN: usize = 6;
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9216;

/// The primary CIDR when neither the config nor kubelet names one.
pub fn default_primary_cidr() -> Ipv4Cidr {
    Ipv4Cidr::containing(Ipv4Addr::new(10, 88, 0, 0), 16).expect("a valid prefix")
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Pod addresses come from here first (like a VPC's primary CIDR).
    /// Unset: kubelet's pod CIDR (UpdateRuntimeConfig) once it sends one,
    /// [`DEFAULT_PRIMARY_CIDR`] until then. Set: kubelet's is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_cidr: Option<Ipv4Cidr>,
    /// Used in order once the primary CIDR is full.
    pub secondary_cidrs: Vec<Ipv4Cidr>,
    /// The address every pod routes through; the host answers for it on
    /// each pod's tap. Default: the first host address of the primary CIDR.
    /// Never given to a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// MTU of the taps and of the pods' interfaces.
    pub mtu: u32,
    /// DNS for pods whose sandbox config names no servers.
    pub dns: DnsDefaults,
    /// Source-NAT pod traffic leaving the pod subnets to the host's address.
    pub masquerade: bool,
    /// Taps are named `<tap_prefix><hex of a hash of the sandbox id>`.
    pub tap_prefix: String,
    /// Addresses pods may not reach (instance metadata services).
    pub metadata_addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsDefaults {
    pub servers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            primary_cidr: None,
            secondary_cidrs: Vec::new(),
            gateway: None,
            mtu: 1500,
            dns: DnsDefaults::default(),
            masquerade: false,
            tap_prefix: "pvtap".into(),
            metadata_addresses: vec![
                IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                "fd00:ec2::254".parse().expect("a valid address"),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkConfigError {
    #[error("network: pod subnet {0} is too small or too large: use a /8 to /30")]
    SubnetSize(Ipv4Cidr),
    #[error("network: pod subnets {0} and {1} overlap")]
    Overlap(Ipv4Cidr, Ipv4Cidr),
    #[error("network: gateway {gateway} is not a host address of primary_cidr {primary}")]
    Gateway {
        gateway: Ipv4Addr,
        primary: Ipv4Cidr,
    },
    #[error("network: mtu {0} is outside {min}..={max}", min = MTU_RANGE.start(), max = MTU_RANGE.end())]
    Mtu(u32),
    #[error(
        "network: tap_prefix {0:?} must be 1 to {max} characters, a lower-case letter then lower-case letters or digits",
        max = IFNAME_MAX - TAP_HASH_MIN
    )]
    TapPrefix(String),
    #[error("network: metadata address {0} is unspecified")]
    MetadataAddress(IpAddr),
    #[error("network: dns {what} {value:?} is empty or contains whitespace")]
    Dns { what: &'static str, value: String },
}

impl NetworkConfig {
    /// The configured primary CIDR, or the default.
    pub fn primary_cidr(&self) -> Ipv4Cidr {
        self.primary_cidr.unwrap_or_else(default_primary_cidr)
    }

    /// This config with `primary` as its primary CIDR (kubelet's pod CIDR).
    pub fn with_primary(&self, primary: Ipv4Cidr) -> NetworkConfig {
        NetworkConfig {
            primary_cidr: Some(primary),
            ..self.clone()
        }
    }

    /// Primary first, then the secondaries in order.
    pub fn subnets(&self) -> Vec<Ipv4Cidr> {
        std::iter::once(self.primary_cidr())
            .chain(self.secondary_cidrs.iter().copied())
            .collect()
    }

    /// The configured gateway, or the primary CIDR's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        let primary = self.primary_cidr();
        self.gateway
            .or_else(|| primary.first_host())
            .unwrap_or(primary.network())
    }

    pub fn validate(&self) -> Result<(), NetworkConfigError> {
        let subnets = self.subnets();
        for (i, subnet) in subnets.iter().enumerate() {
            if !(8..=30).contains(&subnet.prefix_len()) {
                return Err(NetworkConfigError::SubnetSize(*subnet));
            }
            if let Some(other) = subnets[..i].iter().find(|o| o.overlaps(subnet)) {
                return Err(NetworkConfigError::Overlap(*other, *subnet));
            }
        }
        let gateway = self.gateway();
        if !self.primary_cidr().is_host(gateway) {
            return Err(NetworkConfigError::Gateway {
                gateway,
                primary: self.primary_cidr(),
            });
        }
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(NetworkConfigError::Mtu(self.mtu));
        }
        let prefix = self.tap_prefix.as_bytes();
        let prefix_ok = (1..=IFNAME_MAX - TAP_HASH_MIN).contains(&prefix.len())
            && prefix[0].is_ascii_lowercase()
            && prefix
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !prefix_ok {
            return Err(NetworkConfigError::TapPrefix(self.tap_prefix.clone()));
        }
        if let Some(a) = self.metadata_addresses.iter().find(|a| a.is_unspecified()) {
            return Err(NetworkConfigError::MetadataAddress(*a));
        }
        let words = [
            ("search", &self.dns.searches),
            ("option", &self.dns.options),
        ];
        for (what, values) in words {
            if let Some(value) = values
                .iter()
                .find(|v| v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(NetworkConfigError::Dns {
                    what,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = NetworkConfig::default();
        config.validate().unwrap();
        assert_eq!(config.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(config.mtu, 1500);
        assert!(!config.masquerade);
        assert_eq!(config.primary_cidr().to_string(), "10.88.0.0/16");
        let printed = toml::to_string(&config).unwrap();
        // Printed, it would count as set and shut out kubelet's pod CIDR.
        assert!(!printed.contains("primary_cidr"), "{printed}");
        assert!(printed.contains("\"fd00:ec2::254\""), "{printed}");
        assert_eq!(parse(&printed).unwrap(), config);
    }

    #[test]
    fn keys_parse_and_unknown_keys_are_refused() {
        let config = parse(
            "primary_cidr = \"10.1.0.0/24\"\nsecondary_cidrs = [\"10.2.0.0/24\"]\n\
             gateway = \"10.1.0.254\"\nmtu = 9001\nmasquerade = true\n\
             [dns]\nservers = [\"10.100.0.10\"]\nsearches = [\"svc.cluster.local\"]\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.gateway(), Ipv4Addr::new(10, 1, 0, 254));
        assert_eq!(config.subnets().len(), 2);
        assert!(parse("primary_cidr = \"10.1.0.0/24\"\nsubnet = 1\n")
            .unwrap_err()
            .contains("subnet"));
        let err = parse("primary_cidr = \"10.1.0.1/24\"\n").unwrap_err();
        assert!(err.contains("host bits"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let base = NetworkConfig::default();
        let check = |c: NetworkConfig| c.validate().unwrap_err().to_string();

        let err = check(NetworkConfig {
            secondary_cidrs: vec!["10.88.128.0/17".parse().unwrap()],
            ..base.clone()
        });
        assert_eq!(
            err,
            "network: pod subnets 10.88.0.0/16 and 10.88.128.0/17 overlap"
        );
        let err = check(NetworkConfig {
            primary_cidr: Some("10.0.0.0/31".parse().unwrap()),
            ..base.clone()
        });
        assert!(err.contains("10.0.0.0/31"), "{err}");
        let err = check(NetworkConfig {
            gateway: Some(Ipv4Addr::new(10, 89, 0, 1)),
            ..base.clone()
        });
        assert!(err.contains("gateway 10.89.0.1"), "{err}");
        let err = check(NetworkConfig {
            gateway: Some(Ipv4Addr::new(10, 88, 255, 255)),
            ..base.clone()
        });
        assert!(err.contains("not a host address"), "{err}");
        assert!(check(NetworkConfig {
            mtu: 100,
            ..base.clone()
        })
        .contains("mtu 100"));
        for prefix in ["", "PV", "pv-tap", "1tap", "averylongprefix"] {
            let err = check(NetworkConfig {
                tap_prefix: prefix.into(),
                ..base.clone()
            });
            assert!(err.contains("tap_prefix"), "{prefix}: {err}");
        }
        let err = check(NetworkConfig {
            dns: DnsDefaults {
                searches: vec!["a b".into()],
                ..Default::default()
            },
            ..base
        });
        assert!(err.contains("dns search"), "{err}");
    }
}
