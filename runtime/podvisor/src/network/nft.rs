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
//!                     ip daddr 127.0.0.0/8 drop     # never the node's loopback
//!                     ip daddr { <metadata v4> } drop
//!                     ip6 daddr { <metadata v6> } drop }
//!   chain postrouting { type nat hook postrouting priority srcnat  # masquerade only
//!                       ip saddr { <pod subnets> } ip daddr != { <pod subnets> } masquerade }
//!   # only for a pod with host ports (mode vm), see hostport_script:
//!   chain hp_prerouting_<tap> { type nat hook prerouting priority dstnat ... dnat }
//!   chain hp_output_<tap> { type nat hook output priority -100 ... dnat }
//!   chain hp_postrouting_<tap> { type nat hook postrouting priority srcnat ... snat }
//! }
//! ```
//!
//! Prerouting at raw priority sees a pod's packets before any DNAT and
//! whether they are for the host itself or forwarded, so the metadata block
//! holds for a metadata proxy on the host as much as for a routed one.
//! Each pod owns one map element and one chain, keyed by its tap: removing
//! them is exact and leaves other pods' rules alone. A pod's host ports are
//! base chains of its own too: nothing references them, so they go with a
//! plain `delete chain`, and NAT chains only see the first packet of each
//! connection, so a chain per pod costs nothing per packet. Scripts are
//! idempotent:
//! removal first adds what it removes, so it succeeds whether or not the
//! pod's rules exist (nft 1.0.6 has no `destroy`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::cidr::Ipv4Cidr;
use super::config::NetworkConfig;
use super::hostport::HostPort;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "podvisor";
const CHAIN_PREFIX: &str = "pod_";

/// The host-port chains of a pod: name prefix and chain spec. Output has no
/// named `dstnat` priority in nft 1.0.6; -100 is its value.
const HOSTPORT_CHAINS: [(&str, &str); 3] = [
    (
        "hp_prerouting_",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "hp_output_",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "hp_postrouting_",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
];

/// The tap a per-pod chain belongs to.
fn tap_of_chain(name: &str) -> Option<&str> {
    std::iter::once(CHAIN_PREFIX)
        .chain(HOSTPORT_CHAINS.iter().map(|(prefix, _)| *prefix))
        .find_map(|prefix| name.strip_prefix(prefix))
}

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
        Ok(chain_taps(&table))
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

/// The taps of the per-pod chains in `nft -j list table` output, each once.
fn chain_taps(table: &serde_json::Value) -> Vec<String> {
    let mut taps: Vec<String> = Vec::new();
    for tap in objects(table, "chain").filter_map(|c| tap_of_chain(c["name"].as_str()?)) {
        if !taps.iter().any(|t| t == tap) {
            taps.push(tap.to_string());
        }
    }
    taps
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
         add rule {t} {chain} ip6 saddr != fe80::/10 drop\n\
         add rule {t} {chain} ip daddr 127.0.0.0/8 drop\n"
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

/// The pod's host-port chains (after [`attach_script`]; nothing when it
/// has no host ports). Each mapping is DNATed to `<pod ip>:<container port>`
/// in two places:
///
/// - prerouting: connections arriving from elsewhere (other hosts, pods);
/// - output: connections the node's own processes open, which never pass
///   prerouting (critest and kubelet's probes use `127.0.0.1:<host port>`).
///
/// `fib daddr type local` is "any address of the node", loopback included,
/// as the portmap plugin does when host_ip is empty. Two cases then reach
/// the pod with a source it cannot answer, and postrouting rewrites them to
/// the gateway address (the host's side of the tap):
///
/// - `127.0.0.0/8`: the node connected to its loopback address, and the
///   pod would answer to its own loopback. (Routing such a packet out of the
///   tap at all needs `route_localnet` on the tap; see `NetworkManager`.)
/// - the pod's own address (hairpin: the pod connected to its own host
///   port): the pod would answer itself directly, and the reply would
///   never match the NATed connection.
///
/// `ct status dnat` limits the rewrite to the connections these rules
/// redirected.
pub fn hostport_script(tap: &str, ip: Ipv4Addr, gateway: Ipv4Addr, ports: &[HostPort]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let t = format!("{FAMILY} {TABLE}");
    let [pre, out, post] = HOSTPORT_CHAINS.map(|(prefix, spec)| (format!("{prefix}{tap}"), spec));
    let mut s = String::new();
    for (chain, spec) in [&pre, &out, &post] {
        s.push_str(&format!(
            "add chain {t} {chain} {{ {spec} }}\nflush chain {t} {chain}\n"
        ));
    }
    for port in ports {
        let daddr = match port.host_ip {
            Some(host_ip) => format!("ip daddr {host_ip}"),
            None => "meta nfproto ipv4 fib daddr type local".to_string(),
        };
        let rule = format!(
            "{daddr} {} dport {} dnat ip to {ip}:{}",
            port.protocol.nft(),
            port.host_port,
            port.container_port
        );
        for (chain, _) in [&pre, &out] {
            s.push_str(&format!("add rule {t} {chain} {rule}\n"));
        }
    }
    s.push_str(&format!(
        "add rule {t} {} ip daddr {ip} ct status dnat ip saddr {{ 127.0.0.0/8, {ip} }} snat ip to {gateway}\n",
        post.0
    ));
    s
}

/// Removes the pod's map element and chains, whether or not they exist.
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
    for (prefix, spec) in HOSTPORT_CHAINS {
        s.push_str(&format!(
            "add chain {t} {prefix}{tap} {{ {spec} }}\n\
             flush chain {t} {prefix}{tap}\n\
             delete chain {t} {prefix}{tap}\n"
        ));
    }
    s
}

fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::hostport::Protocol;

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
    fn attach_keeps_the_pod_off_the_node_loopback() {
        let config = NetworkConfig::default();
        let s = attach_script(
            &config,
            &config.subnets(),
            "pvtapabc",
            Ipv4Addr::new(10, 88, 0, 2),
        );
        assert!(
            s.contains("add rule inet podvisor pod_pvtapabc ip daddr 127.0.0.0/8 drop\n"),
            "{s}"
        );
    }

    fn port(protocol: Protocol, host_ip: &str, host: i32, container: i32) -> HostPort {
        HostPort::new(0, protocol, host_ip, host, container).unwrap()
    }

    #[test]
    fn no_host_ports_no_chains() {
        let s = hostport_script(
            "pvtapabc",
            Ipv4Addr::new(10, 88, 0, 2),
            Ipv4Addr::new(10, 88, 0, 1),
            &[],
        );
        assert_eq!(s, "");
    }

    #[test]
    fn host_ports_dnat_from_elsewhere_and_from_the_node() {
        let ports = [
            port(Protocol::Tcp, "", 12000, 80),
            port(Protocol::Udp, "192.0.2.7", 5353, 53),
            port(Protocol::Sctp, "", 9000, 9001),
        ];
        let s = hostport_script(
            "pvtapabc",
            Ipv4Addr::new(10, 88, 0, 2),
            Ipv4Addr::new(10, 88, 0, 1),
            &ports,
        );
        let t = "inet podvisor";
        let expected = format!(
            "add chain {t} hp_prerouting_pvtapabc {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             flush chain {t} hp_prerouting_pvtapabc\n\
             add chain {t} hp_output_pvtapabc {{ type nat hook output priority -100; policy accept; }}\n\
             flush chain {t} hp_output_pvtapabc\n\
             add chain {t} hp_postrouting_pvtapabc {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             flush chain {t} hp_postrouting_pvtapabc\n\
             add rule {t} hp_prerouting_pvtapabc meta nfproto ipv4 fib daddr type local tcp dport 12000 dnat ip to 10.88.0.2:80\n\
             add rule {t} hp_output_pvtapabc meta nfproto ipv4 fib daddr type local tcp dport 12000 dnat ip to 10.88.0.2:80\n\
             add rule {t} hp_prerouting_pvtapabc ip daddr 192.0.2.7 udp dport 5353 dnat ip to 10.88.0.2:53\n\
             add rule {t} hp_output_pvtapabc ip daddr 192.0.2.7 udp dport 5353 dnat ip to 10.88.0.2:53\n\
             add rule {t} hp_prerouting_pvtapabc meta nfproto ipv4 fib daddr type local sctp dport 9000 dnat ip to 10.88.0.2:9001\n\
             add rule {t} hp_output_pvtapabc meta nfproto ipv4 fib daddr type local sctp dport 9000 dnat ip to 10.88.0.2:9001\n\
             add rule {t} hp_postrouting_pvtapabc ip daddr 10.88.0.2 ct status dnat ip saddr {{ 127.0.0.0/8, 10.88.0.2 }} snat ip to 10.88.0.1\n"
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn detach_removes_exactly_the_pod_objects() {
        let config = NetworkConfig::default();
        let s = detach_script(&config, &config.subnets(), "pvtapabc");
        assert!(
            s.ends_with(
                "delete element inet podvisor pods { \"pvtapabc\" }\n\
             flush chain inet podvisor pod_pvtapabc\n\
             delete chain inet podvisor pod_pvtapabc\n\
             add chain inet podvisor hp_prerouting_pvtapabc { type nat hook prerouting priority dstnat; policy accept; }\n\
             flush chain inet podvisor hp_prerouting_pvtapabc\n\
             delete chain inet podvisor hp_prerouting_pvtapabc\n\
             add chain inet podvisor hp_output_pvtapabc { type nat hook output priority -100; policy accept; }\n\
             flush chain inet podvisor hp_output_pvtapabc\n\
             delete chain inet podvisor hp_output_pvtapabc\n\
             add chain inet podvisor hp_postrouting_pvtapabc { type nat hook postrouting priority srcnat; policy accept; }\n\
             flush chain inet podvisor hp_postrouting_pvtapabc\n\
             delete chain inet podvisor hp_postrouting_pvtapabc\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn reads_chain_names_from_nft_json() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"table": {"name": "podvisor"}},
                {"chain": {"name": "prerouting"}}, {"chain": {"name": "pod_pvtapabc"}},
                {"chain": {"name": "hp_prerouting_pvtapabc"}}, {"chain": {"name": "hp_output_pvtapabc"}},
                {"chain": {"name": "hp_postrouting_pvtapdef"}}, {"chain": {"name": "postrouting"}}]}"#,
        )
        .unwrap();
        // A stray host-port chain names its tap too, so cleanup finds it.
        assert_eq!(chain_taps(&json), ["pvtapabc", "pvtapdef"]);
        assert_eq!(objects(&serde_json::json!({}), "chain").count(), 0);
    }
}
