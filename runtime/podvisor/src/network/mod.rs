//! ENI-style pod networking: each pod gets an address from the configured
//! subnets, a tap of its own, a host route and its own firewall rules. No
//! shared bridge: pods reach each other, the host and beyond by plain
//! routing through the host (see docs/network.md).
//!
//! The guest configures its address as a /32 with a link-scope route to
//! the gateway and a default route through it. The host owns the gateway
//! address as a /32 on every pod tap, so it answers the pod's ARP for the
//! gateway on that tap only, and routes each pod's /32 to its tap. (Proxy
//! ARP would also do, but would answer for any address the host can route,
//! on every tap; a /32 per tap answers for exactly one.)
//!
//! Calls run on the caller's thread (netlink sockets, `nft` children), so
//! they act in the network namespace of the calling thread.

pub mod cidr;
pub mod config;
pub mod hostport;
pub mod ipam;
pub mod nft;
pub mod pod_cidr;
pub mod stats;
pub mod tap;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use podvisor_netlink::{format_mac, Netlink, NetlinkError, Route};
use serde::{Deserialize, Serialize};

pub use cidr::Ipv4Cidr;
pub use config::{DnsDefaults, NetworkConfig, NetworkConfigError};
pub use hostport::HostPort;
pub use ipam::{IpamError, Lease};
use nft::{Nft, NftError};
pub use pod_cidr::PodCidrError;

/// What the guest calls the pod interface in SetupSandbox requests; the
/// agent finds the NIC by MAC and routes naming this device go to it.
pub const GUEST_INTERFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Config(#[from] NetworkConfigError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    PodCidr(#[from] PodCidrError),
    #[error("tap {name}: {message}")]
    Tap { name: String, message: String },
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {sandbox} would get tap {tap}, which sandbox {other} already has")]
    TapCollision {
        sandbox: String,
        other: String,
        tap: String,
    },
}

impl NetworkError {
    /// No pod address is left: the CRI answer is ResourceExhausted.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, NetworkError::Ipam(IpamError::Exhausted { .. }))
    }

    /// The caller's input was wrong (kubelet's pod CIDR), not the host.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            NetworkError::Config(_)
                | NetworkError::PodCidr(PodCidrError::Syntax { .. } | PodCidrError::NoIpv4(_))
        )
    }
}

/// What [`NetworkManager::set_pod_cidr`] did with kubelet's pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCidrChange {
    /// kubelet sent none.
    Empty,
    /// `network.primary_cidr` is set in the config file and wins.
    Ignored { configured: Ipv4Cidr },
    /// Already the primary subnet.
    Unchanged(Ipv4Cidr),
    /// New pods get addresses from it.
    Applied(Ipv4Cidr),
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// One pod's network, as attached on the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodNetwork {
    pub sandbox_id: String,
    /// The pod's address (configured as a /32 in the guest).
    pub ip: Ipv4Addr,
    /// The subnet the address was allocated from.
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub tap: String,
    /// The guest NIC's MAC.
    pub mac: String,
}

impl PodNetwork {
    /// The tap for [`crate::hypervisor::VmConfig::tap`].
    pub fn tap_device(&self) -> crate::hypervisor::TapDevice {
        crate::hypervisor::TapDevice {
            name: self.tap.clone(),
            mac: self.mac.clone(),
        }
    }

    /// The `interfaces` and `routes` of the pod's SetupSandbox request: the
    /// NIC (by MAC) with the pod address as a /32, the gateway on-link, and
    /// the default route through it.
    pub fn agent_setup(&self) -> (Vec<podvisor_proto::Interface>, Vec<podvisor_proto::Route>) {
        let interface = podvisor_proto::Interface {
            mac: self.mac.clone(),
            name: GUEST_INTERFACE.into(),
            addresses: vec![format!("{}/32", self.ip)],
            mtu: self.mtu,
        };
        let routes = vec![
            podvisor_proto::Route {
                destination: format!("{}/32", self.gateway),
                gateway: String::new(),
                device: GUEST_INTERFACE.into(),
                link_scope: true,
            },
            podvisor_proto::Route {
                destination: "default".into(),
                gateway: self.gateway.to_string(),
                device: GUEST_INTERFACE.into(),
                link_scope: false,
            },
        ];
        (vec![interface], routes)
    }

    fn host_route(&self, tap_index: Option<u32>) -> Route {
        Route {
            destination: IpAddr::V4(self.ip),
            prefix_len: 32,
            gateway: None,
            device: tap_index,
            link_scope: true,
        }
    }
}

/// What [`NetworkManager::cleanup_orphans`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Sandbox ids whose lease (and tap and rules) were removed.
    pub leases: Vec<String>,
    pub taps: Vec<String>,
    pub chains: Vec<String>,
}

pub struct NetworkManager {
    /// As the config file says.
    configured: NetworkConfig,
    /// What pods get now: the file's config, with kubelet's pod CIDR as the
    /// primary when the file sets none.
    config: RwLock<NetworkConfig>,
    /// `<state_dir>/network`: leases and kubelet's pod CIDR.
    dir: PathBuf,
    ipam: ipam::Ipam,
    /// Attach, detach and cleanup one at a time: each is a few netlink calls
    /// and one nft transaction, and serialising them keeps undo simple.
    busy: tokio::sync::Mutex<()>,
}

impl NetworkManager {
    /// Validates the config and loads the address leases from
    /// `<state_dir>/network/`. Touches nothing of the host: that happens on
    /// attach, detach and cleanup, so the daemon starts (and reports
    /// NetworkReady false) on a host without nft.
    pub fn new(configured: NetworkConfig, state_dir: &Path) -> Result<NetworkManager> {
        configured.validate()?;
        let dir = state_dir.join("network");
        // kubelet's pod CIDR from before a restart: kubelet sends it again
        // only when it restarts too.
        let mut active = configured.clone();
        if let Some(saved) = pod_cidr::load(&dir)? {
            match effective(&configured, saved) {
                Ok(Some(config)) => {
                    tracing::info!(pod_cidr = %saved, "pod CIDR from kubelet (saved) is the primary subnet");
                    active = config;
                }
                Ok(None) => {
                    tracing::info!(pod_cidr = %saved, configured = %configured.primary_cidr(), "saved pod CIDR from kubelet ignored: network.primary_cidr is set")
                }
                Err(e) => {
                    tracing::warn!(pod_cidr = %saved, %e, "saved pod CIDR from kubelet no longer fits the config; ignored")
                }
            }
        }
        let ipam = ipam::Ipam::open(&dir, active.subnets(), active.gateway())?;
        Ok(NetworkManager {
            config: RwLock::new(active),
            configured,
            dir,
            ipam,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The network config pods get now (kubelet's pod CIDR applied).
    pub fn config(&self) -> NetworkConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn activate(&self, active: NetworkConfig) {
        self.ipam.set_pool(active.subnets(), active.gateway());
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = active;
    }

    /// kubelet's `pod_cidr` (UpdateRuntimeConfig): unless the config file
    /// sets `primary_cidr`, its IPv4 CIDR becomes the primary subnet of new
    /// pods (and is saved for restarts). Pods keep the addresses they have.
    pub async fn set_pod_cidr(&self, value: &str) -> Result<PodCidrChange> {
        let Some(cidr) = pod_cidr::parse(value)? else {
            return Ok(PodCidrChange::Empty);
        };
        let Some(active) = effective(&self.configured, cidr)? else {
            return Ok(PodCidrChange::Ignored {
                configured: self.configured.primary_cidr(),
            });
        };
        let _busy = self.busy.lock().await;
        if self.config() == active {
            return Ok(PodCidrChange::Unchanged(cidr));
        }
        pod_cidr::store(&self.dir, cidr)?;
        self.activate(active);
        tracing::info!(pod_cidr = %cidr, "pod CIDR from kubelet is the primary subnet for new pods");
        Ok(PodCidrChange::Applied(cidr))
    }

    /// Subnets the masquerade rule covers: the pod subnets, and those of
    /// pods leased from an earlier primary.
    fn pod_subnets(&self) -> Vec<Ipv4Cidr> {
        let mut subnets = self.config().subnets();
        for lease in self.ipam.leases().into_values() {
            if !subnets.contains(&lease.subnet) {
                subnets.push(lease.subnet);
            }
        }
        subnets
    }

    /// Gives the sandbox its address, tap, host route and firewall rules.
    /// Repeating it for an attached sandbox returns the same network. On
    /// failure everything this call set up is removed again.
    pub async fn attach(&self, sandbox_id: &str) -> Result<PodNetwork> {
        self.attach_with_host_ports(sandbox_id, &[]).await
    }

    /// [`Self::attach`], forwarding the node's `host_ports` to the pod
    /// (whoever calls makes sure no other pod holds them).
    pub async fn attach_with_host_ports(
        &self,
        sandbox_id: &str,
        host_ports: &[HostPort],
    ) -> Result<PodNetwork> {
        let _busy = self.busy.lock().await;
        let lease = self.ipam.allocate(sandbox_id)?;
        let pod = self.pod_network(sandbox_id, lease);
        match self.plumb(&pod, host_ports).await {
            Ok(()) => {
                tracing::info!(sandbox = %sandbox_id, ip = %pod.ip, tap = %pod.tap, "pod network attached");
                Ok(pod)
            }
            Err(err) => {
                if let Err(undo) = self.unplumb(&pod).await {
                    tracing::warn!(sandbox = %sandbox_id, error = %undo, "undoing a failed attach");
                }
                if let Err(undo) = self.ipam.release(sandbox_id) {
                    tracing::warn!(sandbox = %sandbox_id, error = %undo, "releasing the address of a failed attach");
                }
                Err(err)
            }
        }
    }

    /// Removes the sandbox's rules, route and tap, then frees its address.
    /// Idempotent. The address is freed only once the host side is gone, so
    /// a failed detach can be retried and never leaves an address that is
    /// still routed to an old tap.
    pub async fn detach(&self, sandbox_id: &str) -> Result<()> {
        let _busy = self.busy.lock().await;
        self.detach_locked(sandbox_id).await
    }

    async fn detach_locked(&self, sandbox_id: &str) -> Result<()> {
        match self.ipam.lease(sandbox_id) {
            Some(lease) => {
                let pod = self.pod_network(sandbox_id, lease);
                self.unplumb(&pod).await?;
                self.ipam.release(sandbox_id)?;
                tracing::info!(sandbox = %sandbox_id, ip = %pod.ip, "pod network detached");
            }
            None => {
                // No address: remove what a crash mid-attach may have left.
                let tap = tap::tap_name(&self.configured.tap_prefix, sandbox_id);
                self.remove_tap_and_rules(&tap).await?;
            }
        }
        Ok(())
    }

    /// The sandbox's network if it has an address (after a restart too).
    pub fn lease(&self, sandbox_id: &str) -> Option<PodNetwork> {
        self.ipam
            .lease(sandbox_id)
            .map(|lease| self.pod_network(sandbox_id, lease))
    }

    /// What the pod sent and received through its tap, while it has one.
    pub fn traffic(&self, sandbox_id: &str) -> Option<stats::PodTraffic> {
        let pod = self.lease(sandbox_id)?;
        stats::pod_traffic(&pod.tap)
            .map_err(|e| tracing::debug!(sandbox = %sandbox_id, %e, "pod traffic counters"))
            .ok()
    }

    /// DNS for a pod: the pod's own when it names servers, else the
    /// configured defaults.
    pub fn dns(&self, pod: Option<&podvisor_proto::DnsConfig>) -> podvisor_proto::DnsConfig {
        match pod {
            Some(dns) if !dns.servers.is_empty() => dns.clone(),
            _ => podvisor_proto::DnsConfig {
                servers: self
                    .configured
                    .dns
                    .servers
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                searches: self.configured.dns.searches.clone(),
                options: self.configured.dns.options.clone(),
            },
        }
    }

    /// Removes what belongs to no known sandbox: leases (with their taps
    /// and rules), taps with our prefix, and pod chains. Also rewrites the
    /// shared nftables objects, so a changed `masquerade` takes effect.
    pub async fn cleanup_orphans(&self, known_sandbox_ids: &[String]) -> Result<Orphans> {
        let _busy = self.busy.lock().await;
        let mut orphans = Orphans::default();
        for id in self.ipam.leases().into_keys() {
            if !known_sandbox_ids.contains(&id) {
                self.detach_locked(&id).await?;
                orphans.leases.push(id);
            }
        }
        let prefix = &self.configured.tap_prefix;
        let known_taps: Vec<String> = known_sandbox_ids
            .iter()
            .map(|id| tap::tap_name(prefix, id))
            .collect();
        let mut netlink = Netlink::open()?;
        for link in netlink.links()? {
            if tap::is_ours(prefix, &link.name) && !known_taps.contains(&link.name) {
                tap::delete(&mut netlink, &link.name)?;
                orphans.taps.push(link.name);
            }
        }
        let nft = Nft::locate()?;
        for tap in nft.pod_taps().await? {
            if !known_taps.contains(&tap) {
                let script = nft::detach_script(&self.configured, &self.pod_subnets(), &tap);
                nft.apply(&script).await?;
                orphans.chains.push(tap);
            }
        }
        nft.apply(&nft::base_script(&self.configured, &self.pod_subnets()))
            .await?;
        if orphans != Orphans::default() {
            tracing::info!(?orphans, "removed orphaned pod networking");
        }
        Ok(orphans)
    }

    fn pod_network(&self, sandbox_id: &str, lease: Lease) -> PodNetwork {
        PodNetwork {
            sandbox_id: sandbox_id.to_string(),
            ip: lease.ip,
            subnet: lease.subnet,
            // Leases from before gateways were recorded got the file's.
            gateway: lease.gateway.unwrap_or_else(|| self.configured.gateway()),
            mtu: self.configured.mtu,
            tap: tap::tap_name(&self.configured.tap_prefix, sandbox_id),
            mac: format_mac(&tap::guest_mac(sandbox_id)),
        }
    }

    async fn plumb(&self, pod: &PodNetwork, host_ports: &[HostPort]) -> Result<()> {
        if let Some((other, _)) = self.ipam.leases().into_iter().find(|(id, _)| {
            id != &pod.sandbox_id && tap::tap_name(&self.configured.tap_prefix, id) == pod.tap
        }) {
            return Err(NetworkError::TapCollision {
                sandbox: pod.sandbox_id.clone(),
                other,
                tap: pod.tap.clone(),
            });
        }
        let nft = Nft::locate()?;
        write_sysctl("net/ipv4/ip_forward", "1")?;
        let mut netlink = Netlink::open()?;
        let index = tap::create(&mut netlink, &pod.tap, pod.mtu)?;
        write_sysctl(&format!("net/ipv4/conf/{}/forwarding", pod.tap), "1")?;
        netlink.add_address(index, &pod.tap, IpAddr::V4(pod.gateway), 32)?;
        netlink.replace_route(&pod.host_route(Some(index)))?;
        if !host_ports.is_empty() {
            // The node's connections to 127.0.0.1:<host port> are DNATed to
            // the pod with their loopback source; without this the kernel
            // refuses to route them out of the tap, and the pod's replies
            // (un-NATed back to 127.0.0.1) in. The pod chain's drop of
            // 127.0.0.0/8 keeps the pod itself off the node's loopback.
            write_sysctl(&format!("net/ipv4/conf/{}/route_localnet", pod.tap), "1")?;
        }
        let mut script =
            nft::attach_script(&self.configured, &self.pod_subnets(), &pod.tap, pod.ip);
        script.push_str(&nft::hostport_script(
            &pod.tap,
            pod.ip,
            pod.gateway,
            host_ports,
        ));
        nft.apply(&script).await?;
        Ok(())
    }

    async fn unplumb(&self, pod: &PodNetwork) -> Result<()> {
        // Deleting the tap takes its address and route with it; the route
        // is deleted first in case the tap is already gone but the route
        // was re-pointed elsewhere by hand.
        let mut netlink = Netlink::open()?;
        if let Some(link) = netlink.link_by_name(&pod.tap)? {
            netlink.delete_route(&pod.host_route(Some(link.index)))?;
        }
        self.remove_tap_and_rules(&pod.tap).await
    }

    async fn remove_tap_and_rules(&self, tap_name: &str) -> Result<()> {
        let mut netlink = Netlink::open()?;
        tap::delete(&mut netlink, tap_name)?;
        let nft = Nft::locate()?;
        let script = nft::detach_script(&self.configured, &self.pod_subnets(), tap_name);
        nft.apply(&script).await?;
        Ok(())
    }

    /// For the CRI NetworkReady condition: `Err` says what is missing.
    pub fn ready(&self) -> std::result::Result<(), String> {
        if !Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing (load the tun module)".into());
        }
        let nft = Nft::locate().map_err(|e| e.to_string())?;
        nft.check().map_err(|e| e.to_string())?;
        Netlink::open().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// `configured` with kubelet's `pod_cidr` as primary, validated; None when
/// the config file sets its own primary CIDR.
fn effective(configured: &NetworkConfig, pod_cidr: Ipv4Cidr) -> Result<Option<NetworkConfig>> {
    if configured.primary_cidr.is_some() {
        return Ok(None);
    }
    let active = configured.with_primary(pod_cidr);
    active.validate()?;
    Ok(Some(active))
}

/// Writes a sysctl of the calling thread's network namespace
/// (`/proc/sys/net` follows the thread, not the process).
fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| NetworkError::Sysctl {
        key: key.replace('/', "."),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path, primary: &str) -> NetworkManager {
        let config = NetworkConfig {
            primary_cidr: Some(primary.parse().unwrap()),
            ..Default::default()
        };
        NetworkManager::new(config, dir).unwrap()
    }

    #[test]
    fn agent_setup_is_a_slash_32_behind_an_on_link_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), "10.7.0.0/24");
        let lease = m.ipam.allocate("sb-1").unwrap();
        let pod = m.pod_network("sb-1", lease);
        assert_eq!(m.lease("sb-1"), Some(pod.clone()));
        assert_eq!(pod.ip, Ipv4Addr::new(10, 7, 0, 2));
        assert_eq!(pod.gateway, Ipv4Addr::new(10, 7, 0, 1));
        assert_eq!(pod.subnet.to_string(), "10.7.0.0/24");
        assert!(pod.mac.starts_with("02:"));
        assert_eq!(pod.tap_device().name, pod.tap);

        let (interfaces, routes) = pod.agent_setup();
        assert_eq!(interfaces.len(), 1);
        assert_eq!(interfaces[0].mac, pod.mac);
        assert_eq!(interfaces[0].addresses, ["10.7.0.2/32"]);
        assert_eq!(interfaces[0].mtu, 1500);
        assert_eq!(routes[0].destination, "10.7.0.1/32");
        assert!(routes[0].link_scope && routes[0].gateway.is_empty());
        assert_eq!(routes[1].destination, "default");
        assert_eq!(routes[1].gateway, "10.7.0.1");
        assert!(routes.iter().all(|r| r.device == interfaces[0].name));
    }

    #[test]
    fn a_full_subnet_is_resource_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), "10.7.0.0/30");
        m.ipam.allocate("a").unwrap();
        let err = NetworkError::from(m.ipam.allocate("b").unwrap_err());
        assert!(err.is_exhausted(), "{err}");
        assert!(err.to_string().contains("10.7.0.0/30"), "{err}");
    }

    #[tokio::test]
    async fn kubelets_pod_cidr_serves_new_pods_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = NetworkManager::new(NetworkConfig::default(), dir.path()).unwrap();
        let old = m.ipam.allocate("old").unwrap();
        assert_eq!(old.ip, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(m.set_pod_cidr("").await.unwrap(), PodCidrChange::Empty);

        let cidr: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        let change = m.set_pod_cidr("10.244.1.0/24,fd00:10:244:1::/64").await;
        assert_eq!(change.unwrap(), PodCidrChange::Applied(cidr));
        let new = m.pod_network("new", m.ipam.allocate("new").unwrap());
        assert_eq!(new.ip, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(new.gateway, Ipv4Addr::new(10, 244, 1, 1));
        let kept = m.lease("old").unwrap();
        assert_eq!(
            (kept.ip, kept.gateway),
            (old.ip, Ipv4Addr::new(10, 88, 0, 1))
        );
        assert_eq!(m.pod_subnets(), [cidr, "10.88.0.0/16".parse().unwrap()]);
        assert_eq!(
            m.set_pod_cidr("10.244.1.0/24").await.unwrap(),
            PodCidrChange::Unchanged(cidr)
        );

        drop(m);
        let m = NetworkManager::new(NetworkConfig::default(), dir.path()).unwrap();
        assert_eq!(m.config().primary_cidr(), cidr, "kept across a restart");
        assert_eq!(
            m.ipam.allocate("third").unwrap().ip,
            Ipv4Addr::new(10, 244, 1, 3)
        );
    }

    #[tokio::test]
    async fn a_configured_primary_cidr_wins_over_kubelets() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), "10.7.0.0/24");
        let change = m.set_pod_cidr("10.244.1.0/24").await.unwrap();
        assert_eq!(
            change,
            PodCidrChange::Ignored {
                configured: "10.7.0.0/24".parse().unwrap()
            }
        );
        assert_eq!(m.ipam.allocate("a").unwrap().ip, Ipv4Addr::new(10, 7, 0, 2));
        assert!(!dir
            .path()
            .join("network")
            .join(pod_cidr::STATE_FILE)
            .exists());
    }

    #[tokio::test]
    async fn an_unusable_pod_cidr_is_invalid_input_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = NetworkConfig {
            secondary_cidrs: vec!["10.99.0.0/24".parse().unwrap()],
            gateway: None,
            ..Default::default()
        };
        let m = NetworkManager::new(config, dir.path()).unwrap();
        for bad in [
            "10.244.1.1/24",
            "fd00::/64",
            "10.244.1.0/31",
            "10.99.0.0/16",
            "nonsense",
        ] {
            let err = m.set_pod_cidr(bad).await.unwrap_err();
            assert!(err.is_invalid_input(), "{bad}: {err}");
        }
        assert_eq!(m.config().primary_cidr().to_string(), "10.88.0.0/16");
        assert_eq!(
            m.ipam.allocate("a").unwrap().ip,
            Ipv4Addr::new(10, 88, 0, 2)
        );
    }

    #[tokio::test]
    async fn a_configured_gateway_must_lie_in_kubelets_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let config = NetworkConfig {
            gateway: Some(Ipv4Addr::new(10, 88, 0, 254)),
            ..Default::default()
        };
        let m = NetworkManager::new(config, dir.path()).unwrap();
        let err = m.set_pod_cidr("10.244.1.0/24").await.unwrap_err();
        assert!(err.to_string().contains("gateway 10.88.0.254"), "{err}");
    }

    #[test]
    fn an_invalid_config_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = NetworkConfig {
            mtu: 10,
            ..Default::default()
        };
        let err = NetworkManager::new(config, dir.path()).err().unwrap();
        assert!(matches!(err, NetworkError::Config(_)), "{err}");
    }

    #[test]
    fn pod_dns_wins_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = NetworkConfig {
            dns: DnsDefaults {
                servers: vec!["10.100.0.10".parse().unwrap()],
                searches: vec!["cluster.local".into()],
                options: vec![],
            },
            ..Default::default()
        };
        let m = NetworkManager::new(config, dir.path()).unwrap();
        assert_eq!(m.dns(None).servers, ["10.100.0.10"]);
        let own = podvisor_proto::DnsConfig {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        assert_eq!(m.dns(Some(&own)), own);
        assert_eq!(m.dns(Some(&Default::default())).searches, ["cluster.local"]);
    }
}
