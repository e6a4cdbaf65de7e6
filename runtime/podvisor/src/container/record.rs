//! What the daemon remembers about a container across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::persist::write_atomic;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

/// A host path mounted into the container, as CRI reports it back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Records from before recursive read-only mounts have none.
    #[serde(default)]
    pub recursive_read_only: bool,
    pub propagation: i32,
}

/// How the main process ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub code: i32,
    pub finished_at_ns: i64,
    /// CRI's reason: Completed, Error or OOMKilled.
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the user named it, and what it resolved to.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub mounts: Vec<MountRecord>,
    /// Absolute path of the CRI log file; empty when kubelet asked for none.
    pub log_path: String,
    pub tty: bool,
    pub stdin: bool,
    /// The container's stdin closes when the first attached client closes
    /// its stdin (older records lack it: false).
    #[serde(default)]
    pub stdin_once: bool,
    /// The OCI process the container runs; execs inherit user, env, cwd,
    /// capabilities and rlimits from it.
    pub process: serde_json::Value,
    /// The signal StopContainer sends first (the image's STOPSIGNAL).
    pub stop_signal: i32,
    pub state: ContainerState,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub exit: Option<ExitRecord>,
    /// How far the CRI log has been written, in the agent's output offsets:
    /// a restarted daemon resumes from here.
    pub log_offset: u64,
    /// Where this record is kept.
    pub file: PathBuf,
}

impl ContainerRecord {
    pub fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&self.file, &json)
    }

    pub fn load(file: &Path) -> std::io::Result<ContainerRecord> {
        let data = std::fs::read(file)?;
        serde_json::from_slice(&data).map_err(std::io::Error::other)
    }

    pub fn finished_at_ns(&self) -> i64 {
        self.exit.as_ref().map_or(0, |e| e.finished_at_ns)
    }
}
