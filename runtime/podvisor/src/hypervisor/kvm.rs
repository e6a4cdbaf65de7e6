//! The kvm backend: one `podvisor-vmm` process per pod VM (our own KVM
//! micro-VMM). The agent is reached over vsock port 1024 through the VMM's
//! hybrid vsock unix socket.

use std::path::{Path, PathBuf};

use podvisor_proto::AGENT_VSOCK_PORT;
use serde::{Deserialize, Serialize};

use super::accel::{self, KvmSupport};
use super::{validate, Hypervisor, Result, Supervised, Vm, VmConfig, VmError};
use crate::agent_client::AgentDialer;

/// The guest's vsock context id; any value above 2 works, one VM per VMM.
const GUEST_CID: u32 = 3;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KvmConfig {
    /// Empty: `podvisor-vmm` next to the running executable, else in PATH.
    pub binary: PathBuf,
    /// Passed as `--boot-protocol` when set (auto, pvh, linux64).
    pub boot_protocol: Option<String>,
}

impl KvmConfig {
    pub fn resolve_binary(&self) -> Result<PathBuf> {
        // Next to the running executable; test binaries live in
        // target/*/deps, the VMM one level up.
        let exe = std::env::current_exe().ok();
        let beside = exe.as_deref().and_then(Path::parent);
        let preferred: Vec<PathBuf> = beside
            .into_iter()
            .chain(beside.and_then(Path::parent))
            .map(|d| d.join("podvisor-vmm"))
            .collect();
        crate::tools::locate(&self.binary, "podvisor-vmm", &preferred, &[])
            .map_err(|what| missing(&what))
    }
}

fn missing(what: &str) -> VmError {
    VmError::ToolMissing {
        what: what.to_string(),
        hint: "build it with `cargo build --release -p podvisor-vmm` and set hypervisor.kvm.binary"
            .into(),
    }
}

pub struct Kvm {
    binary: PathBuf,
    boot_protocol: Option<String>,
}

impl Kvm {
    /// Refuses a host whose KVM cannot boot the guest kernel, saying why.
    pub fn new(config: KvmConfig) -> Result<Self> {
        if let KvmSupport::Unusable(reason) = accel::probe() {
            return Err(VmError::InvalidConfig(format!(
                "the kvm backend cannot run here: {reason}; use the qemu backend"
            )));
        }
        Ok(Kvm {
            binary: config.resolve_binary()?,
            boot_protocol: config.boot_protocol,
        })
    }

    fn kernel_cmdline(config: &VmConfig) -> String {
        let mut args: Vec<String> = [
            "console=ttyS0",
            "quiet",
            "loglevel=4",
            // The agent ends the VM with a reset; podvisor-vmm exits on the
            // i8042 reset this selects.
            "reboot=k",
            "panic=-1",
            "8250.nr_uarts=1",
            "i8042.noaux",
            "i8042.nomux",
            "i8042.dumbkbd",
            // podvisor-vmm describes the machine with an MP table and the
            // command line: no ACPI tables, no PCI bus.
            "acpi=off",
            "pci=off",
            // No CMOS RTC is emulated: its driver would poll the absent
            // chip thousands of times per boot (about half the boot time,
            // measured nested). kvm-clock gives the guest its wall time.
            "initcall_blacklist=cmos_init",
            "rdinit=/init",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("podvisor.agent=vsock:{AGENT_VSOCK_PORT}"));
        args.extend(config.kernel_args.iter().cloned());
        args.join(" ")
    }

    fn command(&self, config: &VmConfig, paths: &VmPaths) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--kernel")
            .arg(&config.image.kernel)
            .arg("--initrd")
            .arg(&config.image.initramfs)
            .args(["--cmdline", &Self::kernel_cmdline(config)])
            .args(["--vcpus", &config.vcpus.to_string()])
            .args(["--memory", &config.memory_mib.to_string()])
            .arg("--console")
            .arg(&paths.console)
            .args([
                "--vsock",
                &format!("cid={GUEST_CID},socket={}", paths.vsock.display()),
            ])
            .arg("--rng")
            .arg("--api-socket")
            .arg(&paths.api);
        if let Some(protocol) = &self.boot_protocol {
            cmd.args(["--boot-protocol", protocol]);
        }
        if let Some(tap) = &config.tap {
            cmd.args(["--net", &format!("tap={},mac={}", tap.name, tap.mac)]);
        }
        if let Some(share) = &config.share {
            cmd.args([
                "--fs",
                &format!("tag={},socket={}", share.tag, share.socket.display()),
            ]);
        }
        cmd
    }
}

struct VmPaths {
    vsock: PathBuf,
    api: PathBuf,
    console: PathBuf,
    log: PathBuf,
}

impl VmPaths {
    fn new(dir: &Path) -> Self {
        VmPaths {
            vsock: dir.join("vsock.sock"),
            api: dir.join("api.sock"),
            console: dir.join("console.log"),
            log: dir.join("vmm.log"),
        }
    }
}

#[async_trait::async_trait]
impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    async fn start(&self, config: &VmConfig) -> Result<Vm> {
        validate(config)?;
        std::fs::create_dir_all(&config.dir)?;
        let paths = VmPaths::new(&config.dir);
        // Guest-initiated vsock connections use `<socket>_<port>`.
        if paths.vsock.as_os_str().len() > 90 {
            return Err(VmError::InvalidConfig(format!(
                "VM directory {} is too long for its sockets",
                config.dir.display()
            )));
        }
        let command = self.command(config, &paths);
        tracing::debug!(id = %config.id, ?command, "starting podvisor-vmm");
        let process = Supervised::spawn(command, "podvisor-vmm", &paths.log)?;
        tracing::info!(id = %config.id, pid = process.pid(), "podvisor-vmm started");
        Ok(Vm {
            id: config.id.clone(),
            backend: "kvm",
            process,
            dialer: AgentDialer::HybridVsock {
                socket: paths.vsock,
                port: AGENT_VSOCK_PORT,
            },
            console_log: paths.console,
            dir: config.dir.clone(),
        })
    }
}

/// Which backend `backend = "auto"` picks on this host, and why.
pub fn auto_select() -> (&'static str, String) {
    select(accel::probe())
}

fn select(support: KvmSupport) -> (&'static str, String) {
    match support {
        KvmSupport::Usable => ("kvm", "the host's KVM can boot the guest kernel".into()),
        KvmSupport::Unusable(reason) => ("qemu", reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_kvm_only_where_it_boots_the_guest_and_says_why_not() {
        assert_eq!(select(KvmSupport::Usable).0, "kvm");
        assert_eq!(
            select(KvmSupport::Unusable("PVM-only".into())),
            ("qemu", "PVM-only".to_string())
        );
    }

    #[test]
    fn declines_a_host_whose_kvm_cannot_boot_the_guest() {
        // On a PVM-only host (as where this project is built) the backend
        // refuses with the probe's reason.
        if let KvmSupport::Unusable(why) = accel::probe() {
            let err = Kvm::new(KvmConfig::default()).err().expect("refused");
            assert!(err.to_string().contains(&why), "{err}");
        }
    }
}
