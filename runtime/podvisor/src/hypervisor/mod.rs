//! Booting and supervising pod VMs. One trait, two backends: `qemu`
//! (`qemu-system-x86_64 -M microvm`, KVM or TCG) and `kvm` (our own
//! podvisor-vmm). The runtime above sees only [`Hypervisor`] and [`Vm`].

pub mod accel;
pub mod cgroup;
pub mod kvm;
pub mod process;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvisor_proto::{GetGuestInfoRequest, GuestInfo};
use serde::{Deserialize, Serialize};

use crate::agent_client::{self, Agent, AgentDialer, AgentTimeouts};

pub use process::{Exit, Supervised};

/// Where the guest image lives unless the config says otherwise; the guest
/// image build installs there.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/podvisor/guest";

/// The guest kernel and initramfs a VM boots.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GuestImage {
    /// `vmlinux` (ELF with the PVH note) or `bzImage`.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl Default for GuestImage {
    fn default() -> Self {
        GuestImage {
            kernel: Path::new(DEFAULT_GUEST_DIR).join("vmlinux"),
            initramfs: Path::new(DEFAULT_GUEST_DIR).join("initramfs.img"),
        }
    }
}

/// The pod's network interface on the host side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapDevice {
    pub name: String,
    /// The guest side's MAC, `52:54:00:xx:xx:xx`.
    pub mac: String,
}

/// A virtio-fs share served by a vhost-user daemon (virtiofsd).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsShare {
    pub socket: PathBuf,
    pub tag: String,
}

/// Everything needed to boot one pod VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The sandbox id; names the VM in logs and process titles.
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub image: GuestImage,
    /// Extra kernel command-line parameters.
    pub kernel_args: Vec<String>,
    pub tap: Option<TapDevice>,
    pub share: Option<FsShare>,
    /// The VM's own directory: sockets, console log, records.
    pub dir: PathBuf,
    /// How long the guest may take from process start to agent ready.
    pub boot_timeout: Duration,
    /// How long the runtime waits on the agent once it runs.
    pub agent_timeouts: AgentTimeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest kernel {0}: file not found (build it with guest-image/build.sh)")]
    KernelMissing(PathBuf),
    #[error("guest initramfs {0}: file not found (build it with guest-image/build.sh)")]
    InitramfsMissing(PathBuf),
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    #[error("{what} not found: {hint}")]
    ToolMissing { what: String, hint: String },
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("VM {id} exited during boot ({exit}); console tail:\n{console}")]
    DiedDuringBoot {
        id: String,
        exit: String,
        console: String,
    },
    #[error("VM {id}: the agent did not answer within {timeout:?}; console tail:\n{console}")]
    AgentTimeout {
        id: String,
        timeout: Duration,
        console: String,
    },
    #[error("virtiofsd for {0} did not create its socket in time")]
    ShareTimeout(PathBuf),
}

pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// A way to boot VMs.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// "qemu" or "kvm".
    fn name(&self) -> &'static str;

    /// Starts the VM process. The guest is booting when this returns; see
    /// [`boot`] for the wait until it can be used.
    async fn start(&self, config: &VmConfig) -> Result<Vm>;
}

/// Waits until the agent of a booting VM answers, the VM dies, or the
/// timeout passes; the errors carry the tail of the guest console.
pub async fn wait_ready(vm: &Vm, config: &VmConfig) -> Result<(Agent, GuestInfo), VmError> {
    let (timeout, timeouts) = (config.boot_timeout, config.agent_timeouts);
    let deadline = Instant::now() + timeout;
    let died = |exit: Exit| VmError::DiedDuringBoot {
        id: vm.id.clone(),
        exit: exit.to_string(),
        console: vm.console_tail(2048),
    };
    loop {
        if let Some(exit) = vm.process.exited() {
            return Err(died(exit));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(VmError::AgentTimeout {
                id: vm.id.clone(),
                timeout,
                console: vm.console_tail(2048),
            });
        }
        // The first dial may take the whole boot: what the runtime sends
        // stays buffered until the guest opens its end.
        let attempt = async {
            let mut agent = agent_client::connect_within(&vm.dialer, timeouts, remaining);
            let info = agent.get_guest_info(GetGuestInfoRequest {}).await.ok()?;
            Some((agent, info.into_inner()))
        };
        tokio::select! {
            ready = tokio::time::timeout(remaining, attempt) => {
                if let Ok(Some(ready)) = ready {
                    return Ok(ready);
                }
            }
            exit = vm.process.wait() => return Err(died(exit)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Boots a VM and waits for its agent. On any failure the VM process is
/// killed before the error is returned, so a failed boot leaves nothing.
pub async fn boot(
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
) -> Result<(Vm, Agent, GuestInfo)> {
    let vm = hypervisor.start(config).await?;
    match wait_ready(&vm, config).await {
        Ok((agent, info)) => {
            tracing::info!(id = %vm.id, kernel = %info.kernel_release, "VM ready");
            Ok((vm, agent, info))
        }
        Err(err) => {
            vm.process.kill().await;
            Err(err)
        }
    }
}

/// Stops a VM the orderly way: the agent stops the containers (SIGTERM,
/// then SIGKILL after `grace`) and ends the guest; a VM still running
/// `grace` + 10 s later, or whose agent does not answer, is killed.
pub async fn stop(vm: &Vm, agent: &mut Agent, grace: Duration) -> Exit {
    if vm.process.exited().is_none() {
        let request = podvisor_proto::ShutdownRequest {
            grace_period_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
        };
        let answered =
            tokio::time::timeout(grace + Duration::from_secs(5), agent.shutdown(request)).await;
        if !matches!(answered, Ok(Ok(_))) {
            tracing::warn!(id = %vm.id, "the agent did not answer Shutdown; killing the VM");
            return vm.process.terminate(Duration::from_secs(2)).await;
        }
    }
    match vm.process.wait_timeout(Duration::from_secs(10)).await {
        Some(exit) => exit,
        None => {
            tracing::warn!(id = %vm.id, "the guest did not end after Shutdown; killing the VM");
            vm.process.terminate(Duration::from_secs(2)).await
        }
    }
}

/// Stops a pod VM: the agent stops the containers (SIGTERM, then SIGKILL
/// after `grace`) and unmounts their volumes before it answers; the guest
/// keeps nothing worth a clean shutdown after that, so the VM process is
/// ended from the host rather than waiting for the guest kernel's reboot
/// (seconds under emulation, all of it inside StopPodSandbox).
pub async fn stop_pod(vm: &Vm, agent: &mut Agent, grace: Duration) -> Exit {
    if vm.process.exited().is_none() {
        let request = podvisor_proto::ShutdownRequest {
            grace_period_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
        };
        let answered =
            tokio::time::timeout(grace + Duration::from_secs(5), agent.shutdown(request)).await;
        if !matches!(answered, Ok(Ok(_))) {
            tracing::warn!(id = %vm.id, "the agent did not answer Shutdown; killing the VM");
        }
    }
    vm.process.terminate(Duration::from_secs(2)).await
}

/// A running (or exited) pod VM.
pub struct Vm {
    pub id: String,
    pub backend: &'static str,
    pub process: Supervised,
    pub dialer: AgentDialer,
    pub console_log: PathBuf,
    pub dir: PathBuf,
}

impl Vm {
    /// The last `max` bytes of the guest console, for error messages.
    pub fn console_tail(&self, max: usize) -> String {
        console_tail(&self.console_log, max)
    }
}

pub(crate) fn console_tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Checks what every backend needs before spawning anything.
pub(crate) fn validate(config: &VmConfig) -> Result<()> {
    if !config.image.kernel.is_file() {
        return Err(VmError::KernelMissing(config.image.kernel.clone()));
    }
    if !config.image.initramfs.is_file() {
        return Err(VmError::InitramfsMissing(config.image.initramfs.clone()));
    }
    if !(1..=16).contains(&config.vcpus) {
        return Err(VmError::InvalidConfig(format!(
            "{} vCPUs: a pod VM has 1 to 16",
            config.vcpus
        )));
    }
    if config.memory_mib < 64 {
        return Err(VmError::InvalidConfig(format!(
            "{} MiB of memory: a pod VM needs at least 64 MiB",
            config.memory_mib
        )));
    }
    Ok(())
}
