//! One virtiofsd per pod: shares a host directory (image layers, kubelet's
//! volumes) into the VM over vhost-user. It exits when the VM disconnects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::hypervisor::process::Supervised;
use crate::hypervisor::{FsShare, Result, VmError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct VirtiofsdConfig {
    /// Empty: look in PATH, then ~/.cargo/bin and /usr/libexec.
    pub binary: PathBuf,
    /// virtiofsd's --cache: "auto", "always" or "never". "auto" lets a
    /// configmap update on the host reach the guest within a second.
    pub cache: String,
    /// How long virtiofsd may take to create its socket.
    pub start_timeout_ms: u64,
}

impl Default for VirtiofsdConfig {
    fn default() -> Self {
        VirtiofsdConfig {
            binary: PathBuf::new(),
            cache: "auto".into(),
            start_timeout_ms: 5000,
        }
    }
}

impl VirtiofsdConfig {
    pub fn resolve_binary(&self) -> Result<PathBuf> {
        // `cargo install` puts it in ~/.cargo/bin, often not in PATH.
        let mut fallback: Vec<PathBuf> = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".cargo/bin/virtiofsd"))
            .into_iter()
            .collect();
        fallback.push("/root/.cargo/bin/virtiofsd".into());
        fallback.push("/usr/libexec/virtiofsd".into());
        crate::tools::locate(&self.binary, "virtiofsd", &[], &fallback)
            .map_err(|what| missing(&what))
    }
}

fn missing(what: &str) -> VmError {
    VmError::ToolMissing {
        what: what.to_string(),
        hint: "install it with `cargo install --locked virtiofsd` (scripts/install-deps.sh does)"
            .into(),
    }
}

/// A running virtiofsd and the share it serves.
pub struct Virtiofsd {
    pub share: FsShare,
    pub process: Supervised,
}

impl Virtiofsd {
    /// Starts virtiofsd on `shared_dir` and waits for its socket.
    pub async fn start(
        config: &VirtiofsdConfig,
        shared_dir: &Path,
        socket: &Path,
        tag: &str,
    ) -> Result<Self> {
        if !shared_dir.is_dir() {
            return Err(VmError::InvalidConfig(format!(
                "shared directory {} does not exist",
                shared_dir.display()
            )));
        }
        let binary = config.resolve_binary()?;
        let _ = std::fs::remove_file(socket);
        let log = socket.with_extension("log");
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args(["--cache", &config.cache])
            // Submounts (kubelet's volume mounts) appear as their own
            // file systems in the guest, with their own inode numbers.
            .arg("--announce-submounts")
            // Image layers are overlay lower dirs in the guest: it must see
            // their trusted.overlay.opaque xattrs (and file capabilities).
            .arg("--xattr")
            .args(["--sandbox", "namespace"])
            .args(["--log-level", "warn"]);
        let process = Supervised::spawn(command, "virtiofsd", &log)?;
        let deadline = Instant::now() + Duration::from_millis(config.start_timeout_ms);
        while !socket.exists() {
            if process.exited().is_some() || Instant::now() > deadline {
                process.kill().await;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                tracing::warn!(%log, "virtiofsd did not start");
                return Err(VmError::ShareTimeout(shared_dir.to_path_buf()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Virtiofsd {
            share: FsShare {
                socket: socket.to_path_buf(),
                tag: tag.to_string(),
            },
            process,
        })
    }

    /// Stops it if the VM's disconnect has not already.
    pub async fn stop(&self) {
        if self
            .process
            .wait_timeout(Duration::from_secs(2))
            .await
            .is_none()
        {
            self.process.terminate(Duration::from_secs(2)).await;
        }
        let _ = std::fs::remove_file(&self.share.socket);
    }
}
