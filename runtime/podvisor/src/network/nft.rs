//! The daemon's nftables table, `inet podvisor`, driven through the `nft`
//! CLI with scripts on stdin (each script is one kernel transaction: all of
//! it applies or none does).
//!
//! ```text
//! table inet podvisor {
//!   map pods { type ifname : verdict }             # tap -> jump pod_<tap>
//!   chain prerouting { type filter hook prerouting priority raw
//!                      iifname vmap @pods }
//!   chain pod_<tap> { ip saddr != <pod ip> drop     # no spoofing
//!                     ip6 saddr != fe80::/10 drop
//!                     ip daddr { <metadata v4> } drop
//!                     ip6 daddr { <metadata v6> } drop }
//!   chain postrouting { type nat hook postrouting priority srcnat  # masquerade only
//!                       ip saddr { <pod subnets> } ip daddr != { <pod subnets> } masquerade }
//! }
//! ```
//!
//! Prerouting at raw priority sees a pod's packets before any DNAT and
//! whether they are for the host itself or forwarded, so the metadata block
//! holds for a metadata proxy on the host as much as for a routed one.
//! Each pod owns one map element and one chain, keyed by its tap: removing
//! them is exact and leaves other pods' rules alone. Scripts are idempotent:
//! removal first adds what it removes, so it succeeds whether or not the
//! pod's rules exist (nft 1.0.6 has no `destroy`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::cidr::Ipv4Cidr;
use super::config::NetworkConfig;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "podvisor";
const CHAIN_PREFIX: &str = "pod_";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft not found ({0}): install nftables")]
    Missing(String),
    #[error("running {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed: {stderr}\nscript:\n{script}")]
    Failed { stderr: String, script: String },
    #[error("nft printed JSON this runtime cannot read: {0}")]
    Json(String),
}

/// The `nft` program.
#[derive(Clone, Debug)]
pub struct Nft {
    binary: PathBuf,
}

impl Nft {
    pub fn locate() -> Result<Nft, NftError> {
        let fallback = [PathBuf::from("/usr/sbin/nft"), PathBuf::from("/sbin/nft")];
        crate::tools::locate(Path::new(""), "nft", &[], &fallback)
            .map(|binary| Nft { binary })
            .map_err(NftError::Missing)
    }

    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), NftError> {
        let mut child = tokio::process::Command::new(&self.binary)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|source| self.spawn_error(source))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                script: script.to_string(),
            })
        }
    }

    /// Taps that have a pod chain in our table (none when the table does
    /// not exist).
    pub async fn pod_taps(&self) -> Result<Vec<String>, NftError> {
        let tables = self.json(&["list", "tables", FAMILY]).await?;
        let ours = objects(&tables, "table").any(|t| t["name"] == TABLE);
        if !ours {
            return Ok(Vec::new());
        }
        let table = self.json(&["list", "table", FAMILY, TABLE]).await?;
        Ok(objects(&table, "chain")
            .filter_map(|c| c["name"].as_str()?.strip_prefix(CHAIN_PREFIX))
            .map(str::to_string)
            .collect())
    }

    /// Cheap check that nft runs and can talk to the kernel.
    pub fn check(&self) -> Result<(), NftError> {
        let output = std::process::Command::new(&self.binary)
            .args(["list", "tables"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                script: "list tables".into(),
            })
        }
    }

    async fn json(&self, args: &[&str]) -> Result<serde_json::Value, NftError> {
        let output = tokio::process::Command::new(&self.binary)
            .arg("-j")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if !output.status.success() {
            return Err(NftError::Failed {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                script: args.join(" "),
            });
        }
        serde_json::from_slice(&output.stdout).map_err(|e| NftError::Json(e.to_string()))
    }

    fn spawn_error(&self, source: std::io::Error) -> NftError {
        NftError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }
}

/// The `kind` objects of `nft -j` output: `{"nftables": [{"kind": {...}}]}`.
fn objects<'a>(
    output: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    output["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// The table, its dispatch map and chain, and the masquerade chain as the
/// config wants it, for pods in `subnets` (the pod subnets, and those of
/// pods leased before kubelet's pod CIDR replaced the primary). Safe to
/// apply any number of times, with pods running: it rewrites only the two
/// shared chains, never the map or pod chains.
pub fn base_script(config: &NetworkConfig, subnets: &[Ipv4Cidr]) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = format!(
        "add table {t}\n\
         add map {t} pods {{ type ifname : verdict; }}\n\
         add chain {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
         flush chain {t} prerouting\n\
         add rule {t} prerouting iifname vmap @pods\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain {t} postrouting\n"
    );
    if config.masquerade {
        let subnets = set(subnets);
        s.push_str(&format!(
            "add rule {t} postrouting ip saddr {subnets} ip daddr != {subnets} masquerade\n"
        ));
    } else {
        s.push_str(&format!("delete chain {t} postrouting\n"));
    }
    s
}

/// The pod's chain and map element (after the base script).
pub fn attach_script(
    config: &NetworkConfig,
    subnets: &[Ipv4Cidr],
    tap: &str,
    ip: Ipv4Addr,
) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let chain = format!("{CHAIN_PREFIX}{tap}");
    let mut s = base_script(config, subnets);
    s.push_str(&format!(
        "add chain {t} {chain}\n\
         flush chain {t} {chain}\n\
         add rule {t} {chain} ip saddr != {ip} drop\n\
         add rule {t} {chain} ip6 saddr != fe80::/10 drop\n"
    ));
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
        config.metadata_addresses.iter().partition(|a| a.is_ipv4());
    if !v4.is_empty() {
        s.push_str(&format!("add rule {t} {chain} ip daddr {} drop\n", set(v4)));
    }
    if !v6.is_empty() {
        s.push_str(&format!(
            "add rule {t} {chain} ip6 daddr {} drop\n",
            set(v6)
        ));
    }
    s.push_str(&format!(
        "add element {t} pods {{ \"{tap}\" : jump {chain} }}\n"
    ));
    s
}

/// Removes the pod's map element and chain, whether or not they exist.
pub fn detach_script(config: &NetworkConfig, subnets: &[Ipv4Cidr], tap: &str) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let chain = format!("{CHAIN_PREFIX}{tap}");
    let mut s = base_script(config, subnets);
    s.push_str(&format!(
        "add chain {t} {chain}\n\
         add element {t} pods {{ \"{tap}\" : jump {chain} }}\n\
         delete element {t} pods {{ \"{tap}\" }}\n\
         flush chain {t} {chain}\n\
         delete chain {t} {chain}\n"
    ));
    s
}

fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_blocks_metadata_and_spoofing_for_the_pod_tap() {
        let config = NetworkConfig::default();
        let s = attach_script(
            &config,
            &config.subnets(),
            "pvtap0123456789",
            Ipv4Addr::new(10, 88, 0, 2),
        );
        assert!(s.starts_with("add table inet podvisor\n"), "{s}");
        assert!(
            s.contains("add rule inet podvisor pod_pvtap0123456789 ip saddr != 10.88.0.2 drop\n")
        );
        assert!(s.contains("ip daddr { 169.254.169.254 } drop\n"), "{s}");
        assert!(s.contains("ip6 daddr { fd00:ec2::254 } drop\n"), "{s}");
        assert!(s.ends_with(
            "add element inet podvisor pods { \"pvtap0123456789\" : jump pod_pvtap0123456789 }\n"
        ));
        assert!(!s.contains("masquerade"), "off by default");
        assert!(s.contains("delete chain inet podvisor postrouting\n"));
    }

    #[test]
    fn masquerade_covers_traffic_leaving_the_pod_subnets() {
        let config = NetworkConfig {
            masquerade: true,
            secondary_cidrs: vec!["10.99.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        let s = base_script(&config, &config.subnets());
        assert!(s.contains(
            "ip saddr { 10.88.0.0/16, 10.99.0.0/24 } ip daddr != { 10.88.0.0/16, 10.99.0.0/24 } masquerade"
        ), "{s}");
        assert!(!s.contains("delete chain"));
    }

    #[test]
    fn detach_removes_exactly_the_pod_objects() {
        let config = NetworkConfig::default();
        let s = detach_script(&config, &config.subnets(), "pvtapabc");
        assert!(
            s.ends_with(
                "delete element inet podvisor pods { \"pvtapabc\" }\n\
             flush chain inet podvisor pod_pvtapabc\n\
             delete chain inet podvisor pod_pvtapabc\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn reads_chain_names_from_nft_json() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"table": {"name": "podvisor"}},
                {"chain": {"name": "prerouting"}}, {"chain": {"name": "pod_pvtapabc"}}]}"#,
        )
        .unwrap();
        let names: Vec<_> = objects(&json, "chain")
            .filter_map(|c| c["name"].as_str()?.strip_prefix(CHAIN_PREFIX))
            .collect();
        assert_eq!(names, ["pvtapabc"]);
        assert_eq!(objects(&serde_json::json!({}), "chain").count(), 0);
    }
}
