//! Pod address management: one IPv4 address per sandbox id, from the
//! primary subnet first and then the secondaries in order.
//!
//! Never handed out: a subnet's network and broadcast addresses, and the
//! gateway (in whichever subnet it falls). So a /30 primary (4 addresses)
//! holds exactly one pod: network, gateway, pod, broadcast. A /24 with the
//! default gateway holds 253.
//!
//! Every change is written to `ipam.json` (temp file, fsync, rename) before
//! the address is returned, and the file is read back on start: a SIGKILL
//! at any point leaves either the old or the new state, so an address is
//! never handed out twice. `ipam.lock` (flock) keeps a second daemon off the
//! same state.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::cidr::Ipv4Cidr;

pub const STATE_FILE: &str = "ipam.json";
const LOCK_FILE: &str = "ipam.lock";

/// One sandbox's address, the subnet it came from and the gateway it was
/// given (leases written before the pod CIDR could change have none).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free pod address left in {}", list(.subnets))]
    Exhausted { subnets: Vec<Ipv4Cidr> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid IPAM state file ({message}); refusing to guess which addresses are in use")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "{0} is locked by another process: is a second podvisor daemon using this state directory?"
    )]
    Locked(PathBuf),
    #[error("sandbox id is empty")]
    EmptyId,
}

fn list(subnets: &[Ipv4Cidr]) -> String {
    subnets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    leases: BTreeMap<String, Lease>,
}

/// Where new addresses come from; changes when kubelet sends a pod CIDR.
struct Pool {
    subnets: Vec<Ipv4Cidr>,
    gateway: Ipv4Addr,
}

pub struct Ipam {
    path: PathBuf,
    pool: Mutex<Pool>,
    state: Mutex<State>,
    _lock: Flock<File>,
}

impl Ipam {
    /// Opens (or starts) the state in `dir`. `subnets` are searched in
    /// order; `gateway` is never allocated.
    pub fn open(dir: &Path, subnets: Vec<Ipv4Cidr>, gateway: Ipv4Addr) -> Result<Ipam, IpamError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| IpamError::Locked(lock_path.clone()))?;

        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<State>(&bytes).map_err(|e| IpamError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        for (id, lease) in &state.leases {
            if !subnets.iter().any(|s| s.contains(lease.ip)) {
                // Kept until released: the pod may still be running.
                tracing::warn!(sandbox = %id, ip = %lease.ip, "leased address is outside the configured pod subnets");
            }
        }
        Ok(Ipam {
            path,
            pool: Mutex::new(Pool { subnets, gateway }),
            state: Mutex::new(state),
            _lock: lock,
        })
    }

    /// The sandbox's address: its existing lease, or the lowest free
    /// address, recorded on disk before it is returned.
    pub fn allocate(&self, sandbox_id: &str) -> Result<Lease, IpamError> {
        if sandbox_id.is_empty() {
            return Err(IpamError::EmptyId);
        }
        let mut state = self.lock();
        if let Some(lease) = state.leases.get(sandbox_id) {
            return Ok(*lease);
        }
        let used: HashSet<Ipv4Addr> = state.leases.values().map(|l| l.ip).collect();
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let lease = pool
            .subnets
            .iter()
            .find_map(|subnet| {
                subnet
                    .hosts()
                    .find(|ip| *ip != pool.gateway && !used.contains(ip))
                    .map(|ip| Lease {
                        ip,
                        subnet: *subnet,
                        gateway: Some(pool.gateway),
                    })
            })
            .ok_or_else(|| IpamError::Exhausted {
                subnets: pool.subnets.clone(),
            })?;
        drop(pool);
        state.leases.insert(sandbox_id.to_string(), lease);
        if let Err(e) = self.persist(&state) {
            state.leases.remove(sandbox_id);
            return Err(e);
        }
        Ok(lease)
    }

    /// Frees the sandbox's address; returns the lease it had, if any.
    pub fn release(&self, sandbox_id: &str) -> Result<Option<Lease>, IpamError> {
        let mut state = self.lock();
        let Some(lease) = state.leases.remove(sandbox_id) else {
            return Ok(None);
        };
        if let Err(e) = self.persist(&state) {
            state.leases.insert(sandbox_id.to_string(), lease);
            return Err(e);
        }
        Ok(Some(lease))
    }

    /// New addresses come from `subnets` from now on; existing leases stay
    /// as they are until released.
    pub fn set_pool(&self, subnets: Vec<Ipv4Cidr>, gateway: Ipv4Addr) {
        *self.pool.lock().unwrap_or_else(|p| p.into_inner()) = Pool { subnets, gateway };
    }

    pub fn lease(&self, sandbox_id: &str) -> Option<Lease> {
        self.lock().leases.get(sandbox_id).copied()
    }

    pub fn leases(&self) -> BTreeMap<String, Lease> {
        self.lock().leases.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed
        // (each change is one insert or remove), so a poisoned lock is safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, state: &State) -> Result<(), IpamError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| IpamError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::persist::write_atomic(&self.path, &bytes).map_err(|source| IpamError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn open(dir: &Path, subnets: &[&str]) -> Ipam {
        let subnets: Vec<Ipv4Cidr> = subnets.iter().map(|s| cidr(s)).collect();
        let gateway = subnets[0].first_host().unwrap();
        Ipam::open(dir, subnets, gateway).unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = open(dir.path(), &["10.1.0.0/29"]);
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 1, 0, 2), "after the gateway .1");
        assert_eq!(a.subnet, cidr("10.1.0.0/29"));
        assert_eq!(ipam.allocate("a").unwrap(), a, "same id, same address");
        let ips: Vec<_> = ["b", "c", "d", "e"]
            .iter()
            .map(|id| ipam.allocate(id).unwrap().ip.octets()[3])
            .collect();
        assert_eq!(ips, [3, 4, 5, 6]);
        assert!(matches!(
            ipam.allocate("f"),
            Err(IpamError::Exhausted { .. })
        ));
        assert!(matches!(ipam.allocate(""), Err(IpamError::EmptyId)));
    }

    #[test]
    fn a_slash_30_holds_one_pod_and_recovers_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = open(dir.path(), &["192.168.50.0/30"]);
        // network .0, gateway .1, the pod .2, broadcast .3
        let first = ipam.allocate("pod-1").unwrap();
        assert_eq!(first.ip, Ipv4Addr::new(192, 168, 50, 2));
        let err = ipam.allocate("pod-2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free pod address left in 192.168.50.0/30"
        );
        assert_eq!(ipam.release("pod-1").unwrap(), Some(first));
        assert_eq!(
            ipam.release("pod-1").unwrap(),
            None,
            "release is idempotent"
        );
        assert_eq!(ipam.allocate("pod-2").unwrap().ip, first.ip);
    }

    #[test]
    fn secondary_subnets_are_used_when_the_primary_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = open(dir.path(), &["10.1.0.0/30", "10.2.0.0/30", "10.3.0.0/30"]);
        let got: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| ipam.allocate(id).unwrap())
            .collect();
        assert_eq!(got[0].ip, Ipv4Addr::new(10, 1, 0, 2));
        // The gateway lies in the primary only: a secondary /30 has 2 pods.
        assert_eq!(got[1].ip, Ipv4Addr::new(10, 2, 0, 1));
        assert_eq!(got[1].subnet, cidr("10.2.0.0/30"));
        assert_eq!(got[2].ip, Ipv4Addr::new(10, 2, 0, 2));
        ipam.allocate("d").unwrap();
        ipam.allocate("e").unwrap();
        let err = ipam.allocate("f").unwrap_err().to_string();
        assert_eq!(
            err,
            "no free pod address left in 10.1.0.0/30, 10.2.0.0/30, 10.3.0.0/30"
        );
        // A freed primary address is preferred again.
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("g").unwrap().ip, Ipv4Addr::new(10, 1, 0, 2));
    }

    #[test]
    fn a_gateway_inside_a_secondary_subnet_is_skipped_there_too() {
        let dir = tempfile::tempdir().unwrap();
        let subnets = vec![cidr("10.1.0.0/30"), cidr("10.2.0.0/30")];
        let ipam = Ipam::open(dir.path(), subnets, Ipv4Addr::new(10, 2, 0, 1)).unwrap();
        let ips: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| ipam.allocate(id).unwrap().ip)
            .collect();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(10, 1, 0, 1),
                Ipv4Addr::new(10, 1, 0, 2),
                Ipv4Addr::new(10, 2, 0, 2)
            ]
        );
    }

    #[test]
    fn leases_survive_a_restart_and_are_not_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let ipam = open(dir.path(), &["10.1.0.0/24"]);
            let a = ipam.allocate("a").unwrap();
            let b = ipam.allocate("b").unwrap();
            ipam.release("a").unwrap();
            ipam.allocate("a2").unwrap();
            (a, b)
            // dropped without any shutdown step, as after a SIGKILL
        };
        let ipam = open(dir.path(), &["10.1.0.0/24"]);
        assert_eq!(ipam.lease("b"), Some(b));
        assert_eq!(ipam.lease("a2").unwrap().ip, a.ip, "a2 took a's address");
        assert_eq!(ipam.lease("a"), None);
        let c = ipam.allocate("c").unwrap();
        assert!(c.ip != a.ip && c.ip != b.ip, "{c:?}");
        assert!(!dir.path().join("ipam.tmp").exists());
    }

    #[test]
    fn a_new_pool_serves_new_leases_and_keeps_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = open(dir.path(), &["10.88.0.0/24"]);
        let old = ipam.allocate("old").unwrap();
        assert_eq!(old.gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        ipam.set_pool(vec![cidr("10.244.1.0/24")], Ipv4Addr::new(10, 244, 1, 1));
        let new = ipam.allocate("new").unwrap();
        assert_eq!(new.ip, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(new.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(ipam.allocate("old").unwrap(), old, "kept, same address");
        assert_eq!(ipam.lease("old"), Some(old));
    }

    #[test]
    fn leases_without_a_gateway_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            br#"{"leases": {"a": {"ip": "10.1.0.2", "subnet": "10.1.0.0/24"}}}"#,
        )
        .unwrap();
        let ipam = open(dir.path(), &["10.1.0.0/24"]);
        assert_eq!(ipam.lease("a").unwrap().gateway, None);
        assert_eq!(ipam.allocate("b").unwrap().ip, Ipv4Addr::new(10, 1, 0, 3));
    }

    #[test]
    fn a_second_open_of_the_same_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), &["10.1.0.0/24"]);
        let err = Ipam::open(
            dir.path(),
            vec![cidr("10.1.0.0/24")],
            Ipv4Addr::new(10, 1, 0, 1),
        )
        .err()
        .unwrap();
        assert!(matches!(err, IpamError::Locked(_)), "{err}");
    }

    #[test]
    fn a_corrupt_state_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"leases\": {\"a\": 1").unwrap();
        let err = Ipam::open(
            dir.path(),
            vec![cidr("10.1.0.0/24")],
            Ipv4Addr::new(10, 1, 0, 1),
        )
        .err()
        .unwrap();
        assert!(matches!(err, IpamError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn concurrent_allocations_get_distinct_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(open(dir.path(), &["10.1.0.0/24"]));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| ipam.allocate(&format!("{t}-{i}")).unwrap().ip)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 80);
        drop(ipam);
        let reloaded = open(dir.path(), &["10.1.0.0/24"]);
        assert_eq!(
            reloaded.leases().len(),
            80,
            "every allocation was persisted"
        );
    }
}
