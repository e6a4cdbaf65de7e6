//! `[volumes.efs]`: how file-system ids become server addresses, and how
//! long a mount may take.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::EfsError;

pub const DEFAULT_DNS_NAME_TEMPLATE: &str = "{fs_id}.efs.{region}.amazonaws.com";
pub const DEFAULT_MOUNT_TIMEOUT_SECS: u64 = 30;
/// NFS's port; only used to ask the resolver, which wants one.
const NFS_PORT: u16 = 2049;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EfsConfig {
    /// File-system id to its mount target: an IPv4 address or a DNS name.
    /// Ids not listed go through `dns_name_template`.
    pub file_systems: BTreeMap<String, String>,
    /// `{fs_id}` and `{region}` are replaced.
    pub dns_name_template: String,
    /// The region for `{region}`; empty: `AWS_REGION`, then
    /// `AWS_DEFAULT_REGION` of the daemon's environment.
    pub region: String,
    /// Bound on resolving and mounting a container's NFS volumes.
    pub mount_timeout_secs: u64,
}

impl Default for EfsConfig {
    fn default() -> Self {
        EfsConfig {
            file_systems: BTreeMap::new(),
            dns_name_template: DEFAULT_DNS_NAME_TEMPLATE.into(),
            region: String::new(),
            mount_timeout_secs: DEFAULT_MOUNT_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EfsConfigError {
    #[error("volumes.efs.mount_timeout_secs must be 1 to 600, not {0}")]
    Timeout(u64),
    #[error("volumes.efs.dns_name_template {0:?} must contain {{fs_id}}")]
    Template(String),
    #[error("volumes.efs.file_systems: {0:?} is not a file system id (fs-…)")]
    FsId(String),
    #[error("volumes.efs.file_systems.{id}: {value:?} is neither an IPv4 address nor a DNS name")]
    Address { id: String, value: String },
}

impl EfsConfig {
    pub fn validate(&self) -> Result<(), EfsConfigError> {
        if !(1..=600).contains(&self.mount_timeout_secs) {
            return Err(EfsConfigError::Timeout(self.mount_timeout_secs));
        }
        if !self.dns_name_template.contains("{fs_id}") {
            return Err(EfsConfigError::Template(self.dns_name_template.clone()));
        }
        for (id, value) in &self.file_systems {
            if super::handle::parse(id).map_or(true, |h| h.fs_id != *id) {
                return Err(EfsConfigError::FsId(id.clone()));
            }
            if !is_ipv4(value) && !is_dns_name(value) {
                return Err(EfsConfigError::Address {
                    id: id.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn mount_timeout(&self) -> Duration {
        Duration::from_secs(self.mount_timeout_secs)
    }

    /// The mount target of `fs_id`: its address or name, before resolution.
    pub fn server_for(&self, fs_id: &str) -> Result<String, EfsError> {
        if let Some(server) = self.file_systems.get(fs_id) {
            return Ok(server.clone());
        }
        let region = if !self.region.is_empty() {
            self.region.clone()
        } else {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
                .unwrap_or_default()
        };
        if region.is_empty() && self.dns_name_template.contains("{region}") {
            return Err(EfsError::NoRegion {
                fs_id: fs_id.to_string(),
            });
        }
        Ok(self
            .dns_name_template
            .replace("{fs_id}", fs_id)
            .replace("{region}", &region))
    }
}

fn is_ipv4(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The IPv4 address the guest connects to: the host resolves names (the
/// guest has no resolver for VPC names), within `timeout`.
pub async fn resolve(server: &str, timeout: Duration) -> Result<Ipv4Addr, EfsError> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(_) => Err(EfsError::Resolve {
                server: server.into(),
                message: "IPv6 servers are not supported: pods have IPv4 only".into(),
            }),
        };
    }
    if !is_dns_name(server) {
        return Err(EfsError::Resolve {
            server: server.into(),
            message: "not an IPv4 address or DNS name".into(),
        });
    }
    let lookup = tokio::net::lookup_host((server, NFS_PORT));
    let addrs = match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => {
            return Err(EfsError::Resolve {
                server: server.into(),
                message: e.to_string(),
            })
        }
        Err(_) => {
            return Err(EfsError::Resolve {
                server: server.into(),
                message: format!("no answer within {timeout:?}"),
            })
        }
    };
    addrs
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| EfsError::Resolve {
            server: server.into(),
            message: "it has no IPv4 address".into(),
        })
}

/// Deserializes `[volumes.efs]` and validates it, so a bad value stops the
/// daemon at start.
pub(crate) fn deserialize_efs<'de, D: Deserializer<'de>>(d: D) -> Result<EfsConfig, D::Error> {
    let config = EfsConfig::deserialize(d)?;
    config.validate().map_err(serde::de::Error::custom)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = EfsConfig::default();
        c.validate().unwrap();
        assert_eq!(c.mount_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn the_table_wins_over_the_template() {
        let c = EfsConfig {
            file_systems: [("fs-12345678".to_string(), "10.0.0.5".to_string())].into(),
            region: "eu-west-1".into(),
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(c.server_for("fs-12345678").unwrap(), "10.0.0.5");
        assert_eq!(
            c.server_for("fs-abcdef01").unwrap(),
            "fs-abcdef01.efs.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn a_template_with_region_needs_one() {
        let c = EfsConfig::default();
        let from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .any(|k| std::env::var_os(k).is_some());
        if !from_env {
            let err = c.server_for("fs-1").unwrap_err().to_string();
            assert!(err.contains("region"), "{err}");
        }
        let c = EfsConfig {
            dns_name_template: "{fs_id}.nfs.internal".into(),
            ..Default::default()
        };
        assert_eq!(c.server_for("fs-1").unwrap(), "fs-1.nfs.internal");
    }

    #[test]
    fn bad_values_are_named() {
        let check = |c: EfsConfig| c.validate().unwrap_err().to_string();
        let with = |k: &str, v: &str| EfsConfig {
            file_systems: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        assert!(check(with("vol-1", "10.0.0.5")).contains("vol-1"));
        assert!(check(with("fs-1:/x", "10.0.0.5")).contains("fs-1:/x"));
        assert!(check(with("fs-1", "not an address")).contains("fs-1"));
        assert!(check(EfsConfig {
            mount_timeout_secs: 0,
            ..Default::default()
        })
        .contains("mount_timeout_secs"));
        assert!(check(EfsConfig {
            dns_name_template: "efs.example".into(),
            ..Default::default()
        })
        .contains("{fs_id}"));
    }

    #[tokio::test]
    async fn addresses_and_names_resolve_to_ipv4() {
        let t = Duration::from_secs(5);
        assert_eq!(
            resolve("10.1.2.3", t).await.unwrap(),
            Ipv4Addr::new(10, 1, 2, 3)
        );
        assert_eq!(resolve("localhost", t).await.unwrap(), Ipv4Addr::LOCALHOST);
        assert!(resolve("::1", t)
            .await
            .unwrap_err()
            .to_string()
            .contains("IPv6"));
        let err = resolve("a b", t).await.unwrap_err();
        assert!(matches!(err, EfsError::Resolve { .. }), "{err}");
        let err = resolve("no-such-host.invalid", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }
}
