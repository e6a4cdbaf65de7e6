//! What the daemon remembers about a pod across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent_client::AgentDialer;
use crate::network::HostPort;
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
    /// The RuntimeClass handler the pod was run with ("" by default, and
    /// for records written before handlers were recorded).
    #[serde(default)]
    pub runtime_handler: String,
    /// The node ports forwarded to the pod (mode vm). Held from
    /// RunPodSandbox until the pod is stopped, then cleared: a stopped pod
    /// never runs again, and another pod may take them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<HostPort>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_runtime_handlers_read_as_the_default_handler() {
        let mut json = serde_json::json!({
            "id": "p", "metadata": {"name": "n", "uid": "u", "namespace": "ns", "attempt": 0},
            "labels": {}, "annotations": {}, "created_at_ns": 1, "state": "Ready",
            "reason": null, "backend": "qemu", "vcpus": 1, "memory_mib": 512,
            "vm_pid": null, "virtiofsd_pid": null, "dialer": null, "dir": "/x", "run_dir": "/y",
            "log_directory": "", "hostname": "n"
        });
        let old: SandboxRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old.runtime_handler, "");
        json["runtime_handler"] = "podvisor".into();
        let new: SandboxRecord = serde_json::from_value(json).unwrap();
        assert_eq!(new.runtime_handler, "podvisor");
    }
}
