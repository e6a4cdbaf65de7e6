//! A container's cgroup: usage figures, OOM kills, and resource updates.
//!
//! libcontainer creates the cgroup and applies the spec's limits. Figures are
//! read here from the few files kubelet's numbers come from, because
//! libcgroups' all-in-one `stats()` fails when an optional file (swap, PSI)
//! is missing, as on a minimal guest kernel.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Which hierarchy this system uses for containers (libcgroups' choice:
/// hybrid systems count as v1).
pub fn detect_version() -> CgroupVersion {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

#[derive(Clone, Debug)]
pub struct Cgroup {
    /// The spec's cgroupsPath, relative to each hierarchy's root.
    path: PathBuf,
    version: CgroupVersion,
}

impl Cgroup {
    pub fn new(path: &Path) -> Self {
        Cgroup {
            path: path.strip_prefix("/").unwrap_or(path).to_path_buf(),
            version: detect_version(),
        }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match self.version {
            CgroupVersion::V2 => Path::new(CGROUP_ROOT).join(&self.path),
            CgroupVersion::V1 => Path::new(CGROUP_ROOT).join(controller).join(&self.path),
        }
    }

    pub fn usage(&self) -> Result<Usage> {
        let (cpu_ns, memory_bytes, stat, pids) = match self.version {
            CgroupVersion::V2 => {
                let cpu = read_keyed(&self.dir("").join("cpu.stat"))?;
                (
                    cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
                    read_u64(&self.dir("").join("memory.current"))?,
                    read_keyed(&self.dir("").join("memory.stat"))?,
                    read_u64(&self.dir("").join("pids.current")).unwrap_or(0),
                )
            }
            CgroupVersion::V1 => (
                read_u64(&self.dir("cpuacct").join("cpuacct.usage"))?,
                read_u64(&self.dir("memory").join("memory.usage_in_bytes"))?,
                read_keyed(&self.dir("memory").join("memory.stat"))?,
                read_u64(&self.dir("pids").join("pids.current")).unwrap_or(0),
            ),
        };
        let (inactive_file, rss) = match self.version {
            CgroupVersion::V2 => (stat.get("inactive_file"), stat.get("anon")),
            CgroupVersion::V1 => (stat.get("total_inactive_file"), stat.get("total_rss")),
        };
        Ok(Usage {
            cpu_ns,
            memory_bytes,
            working_set_bytes: memory_bytes.saturating_sub(inactive_file.copied().unwrap_or(0)),
            rss_bytes: rss.copied().unwrap_or(0),
            pids,
            oom_kills: self.oom_kills(),
        })
    }

    /// How many processes the OOM killer killed in this cgroup (0 when the
    /// cgroup is gone or the kernel does not count).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V2 => self.dir("").join("memory.events"),
            CgroupVersion::V1 => self.dir("memory").join("memory.oom_control"),
        };
        read_keyed(&file)
            .ok()
            .and_then(|m| m.get("oom_kill").copied())
            .unwrap_or(0)
    }

    /// Applies new limits to a running container.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: Path::new("/").join(&self.path),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| AgentError::Cgroup(e.to_string()))?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| AgentError::Cgroup(e.to_string()))
    }
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path)
        .map_err(|e| AgentError::io(format!("read {}", path.display()), e))?;
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse()
        .map_err(|_| AgentError::Cgroup(format!("{}: unexpected content {text:?}", path.display())))
}

fn read_keyed(path: &Path) -> Result<HashMap<String, u64>> {
    let text = fs::read_to_string(path)
        .map_err(|e| AgentError::io(format!("read {}", path.display()), e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}
