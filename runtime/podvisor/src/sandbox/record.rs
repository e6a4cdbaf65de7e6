//! What the daemon remembers about a pod across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hypervisor::AgentDialer;
use crate::persist::write_atomic;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub metadata: PodMetadata,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created_at_ns: i64,
    pub state: SandboxState,
    /// Why the sandbox is NotReady, when it did not stop on request.
    pub reason: Option<String>,
    pub backend: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// CPU time the VM may use per 100 ms, in µs (None: no quota).
    #[serde(default)]
    pub cpu_quota_us: Option<u64>,
    pub vm_pid: Option<u32>,
    pub virtiofsd_pid: Option<u32>,
    pub dialer: Option<AgentDialer>,
    /// Records, share directory (persistent state).
    pub dir: PathBuf,
    /// Sockets, console log (runtime state, short paths).
    pub run_dir: PathBuf,
    pub log_directory: String,
    pub hostname: String,
}

pub const RECORD_FILE: &str = "sandbox.json";

impl SandboxRecord {
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    pub fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(RECORD_FILE), &json)
    }

    pub fn load(dir: &Path) -> std::io::Result<SandboxRecord> {
        let data = std::fs::read(dir.join(RECORD_FILE))?;
        serde_json::from_slice(&data).map_err(std::io::Error::other)
    }
}
