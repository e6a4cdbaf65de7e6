//! The daemon's configuration: one TOML file, every key optional.
//! `podvisor --print-default-config` prints the defaults below.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent_client::AgentTimeouts;
use crate::hypervisor::kvm::{self, Kvm, KvmConfig};
use crate::hypervisor::qemu::{Qemu, QemuConfig};
use crate::hypervisor::{GuestImage, Hypervisor, VmError};
use crate::image::RegistryConfig;
use crate::network::NetworkConfig;
use crate::policy::PolicyConfig;
use crate::streaming::StreamingConfig;
use crate::volume::efs::EfsConfig;
use crate::volume::virtiofsd::VirtiofsdConfig;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/podvisor/config.toml";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CRI socket kubelet and crictl connect to (mode 0600).
    pub socket: PathBuf,
    /// Sandbox and container records, pod shares, images.
    pub state_dir: PathBuf,
    /// Sockets and console logs of running VMs (short paths: unix socket
    /// paths are limited to 107 bytes).
    pub run_dir: PathBuf,
    pub hypervisor: HypervisorConfig,
    pub virtiofsd: VirtiofsdConfig,
    pub sandbox: SandboxDefaults,
    /// Registry mirrors and plain-HTTP hosts for image pulls.
    pub registry: RegistryConfig,
    /// Fargate profiles and container rlimits (admission rules are fixed).
    pub policy: PolicyConfig,
    pub network: NetworkConfig,
    /// Volumes mounted inside the pod VM (EFS and NFS).
    pub volumes: VolumesConfig,
    /// The Exec/Attach/PortForward streaming server.
    pub streaming: StreamingConfig,
    /// Connect, call and stats deadlines on each pod's agent.
    pub agent: AgentTimeouts,
}

/// `[volumes]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// `[volumes.efs]`: file-system addresses and the mount timeout.
    #[serde(deserialize_with = "crate::volume::efs::config::deserialize_efs")]
    pub efs: EfsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/podvisor/podvisor.sock"),
            state_dir: PathBuf::from("/var/lib/podvisor"),
            run_dir: PathBuf::from("/run/podvisor"),
            hypervisor: HypervisorConfig::default(),
            virtiofsd: VirtiofsdConfig::default(),
            sandbox: SandboxDefaults::default(),
            registry: RegistryConfig::default(),
            policy: PolicyConfig::default(),
            network: NetworkConfig::default(),
            volumes: VolumesConfig::default(),
            streaming: StreamingConfig::default(),
            agent: AgentTimeouts::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// kvm where the host's KVM can boot the guest kernel, else qemu.
    #[default]
    Auto,
    Kvm,
    Qemu,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    pub backend: Backend,
    pub guest: GuestImage,
    /// Seconds from VM start to agent ready before the boot is abandoned.
    pub boot_timeout_secs: u64,
    pub qemu: QemuConfig,
    pub kvm: KvmConfig,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            backend: Backend::Auto,
            guest: GuestImage::default(),
            boot_timeout_secs: 60,
            qemu: QemuConfig::default(),
            kvm: KvmConfig::default(),
        }
    }
}

impl HypervisorConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }

    /// The backend to boot pods with; `auto` logs what it chose and why.
    pub fn backend(&self) -> Result<Arc<dyn Hypervisor>, VmError> {
        let choice = match self.backend {
            Backend::Kvm => "kvm",
            Backend::Qemu => "qemu",
            Backend::Auto => {
                let (choice, reason) = kvm::auto_select();
                tracing::info!(backend = choice, %reason, "backend = auto");
                choice
            }
        };
        Ok(match choice {
            "kvm" => Arc::new(Kvm::new(self.kvm.clone())?),
            _ => Arc::new(Qemu::new(self.qemu.clone())?),
        })
    }
}

/// Pod VM settings that policy does not decide (it sizes the VMs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxDefaults {
    /// Seconds the agent gives containers between SIGTERM and SIGKILL when
    /// a pod is stopped.
    pub stop_grace_secs: u64,
    /// Hold each VM to its Fargate vCPU with a CFS quota on the host (a
    /// 0.25 vCPU pod gets a quarter of a host CPU). Needs the cpu cgroup
    /// controller.
    pub cpu_quota: bool,
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        SandboxDefaults {
            stop_grace_secs: 10,
            cpu_quota: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads the file; a missing file at the default path means defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.agent.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_parse_back_to_the_defaults() {
        let printed = Config::default().to_toml();
        assert_eq!(Config::parse(&printed).unwrap(), Config::default());
        assert!(
            printed.contains("socket = \"/run/podvisor/podvisor.sock\""),
            "{printed}"
        );
    }

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_refused() {
        let c = Config::parse("[hypervisor]\nbackend = \"qemu\"\n").unwrap();
        assert_eq!(c.hypervisor.backend, Backend::Qemu);
        assert_eq!(c.state_dir, Config::default().state_dir);
        let err = Config::parse("[hypervisor]\nbakend = \"qemu\"\n").unwrap_err();
        assert!(err.contains("bakend"), "{err}");
    }

    #[test]
    fn efs_section_parses_and_is_validated() {
        let c = Config::parse(
            "[volumes.efs]\nfile_systems = { \"fs-12345678\" = \"10.0.0.5\" }\nmount_timeout_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.volumes.efs.file_systems["fs-12345678"], "10.0.0.5");
        assert_eq!(c.volumes.efs.mount_timeout_secs, 5);
        assert_eq!(c.volumes.efs.region, "");
        let err = Config::parse("[volumes.efs]\nmount_timeout_secs = 0\n").unwrap_err();
        assert!(err.contains("mount_timeout_secs"), "{err}");
    }
}
