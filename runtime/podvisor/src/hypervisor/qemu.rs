//! The qemu backend: `qemu-system-x86_64 -M microvm` with only virtio-mmio
//! devices. KVM where the host's KVM can boot the guest kernel, TCG
//! otherwise (slow, but a real VM boundary on any host).

use std::path::{Path, PathBuf};

use podvisor_proto::AGENT_SERIAL_PORT_NAME;
use serde::{Deserialize, Serialize};

use super::accel::{self, KvmSupport};
use super::{validate, Hypervisor, Result, Supervised, Vm, VmConfig, VmError};
use crate::agent_client::AgentDialer;

/// Which accelerator QEMU should use.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when it can boot the guest kernel, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: AccelChoice,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            accel: AccelChoice::Auto,
        }
    }
}

/// The accelerator in use, and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg {
        reason: String,
        /// Passed as `tsc_early_khz=`; see [`accel::host_tsc_khz`].
        tsc_khz: Option<u64>,
    },
}

pub struct Qemu {
    config: QemuConfig,
    accel: Accel,
}

impl Qemu {
    /// Checks the binary and picks the accelerator (logged once).
    pub fn new(config: QemuConfig) -> Result<Self> {
        if !config.binary.is_file() {
            return Err(VmError::ToolMissing {
                what: config.binary.display().to_string(),
                hint: "install Debian's qemu-system-x86 (scripts/install-deps.sh does)".into(),
            });
        }
        let accel = match (config.accel, accel::probe()) {
            (AccelChoice::Tcg, _) => Accel::Tcg {
                reason: "configured".into(),
                tsc_khz: accel::host_tsc_khz(),
            },
            (AccelChoice::Kvm, _) | (AccelChoice::Auto, KvmSupport::Usable) => Accel::Kvm,
            (AccelChoice::Auto, KvmSupport::Unusable(reason)) => Accel::Tcg {
                reason,
                tsc_khz: accel::host_tsc_khz(),
            },
        };
        match &accel {
            Accel::Kvm => tracing::info!("qemu backend: using KVM"),
            Accel::Tcg { reason, tsc_khz } => {
                tracing::info!(%reason, ?tsc_khz, "qemu backend: using TCG (software emulation)")
            }
        }
        Ok(Qemu { config, accel })
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    /// The kernel command line for a pod VM.
    fn kernel_cmdline(&self, config: &VmConfig) -> String {
        let mut args = vec![
            "console=ttyS0".to_string(),
            // Quiet boots are faster: the 8250 is slow, more so under TCG.
            "quiet".into(),
            "loglevel=4".into(),
            "reboot=k".into(),
            "panic=-1".into(),
            "8250.nr_uarts=1".into(),
            "i8042.noaux".into(),
            // microvm has no PCI bus; virtio devices are virtio-mmio.
            "pci=off".into(),
            "rdinit=/init".into(),
            format!("podvisor.agent=serial:{AGENT_SERIAL_PORT_NAME}"),
        ];
        if let Accel::Tcg {
            tsc_khz: Some(khz), ..
        } = &self.accel
        {
            args.push(format!("tsc_early_khz={khz}"));
        }
        args.extend(config.kernel_args.iter().cloned());
        args.join(" ")
    }

    fn command(&self, config: &VmConfig, paths: &VmPaths) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.config.binary);
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg { .. } => ("tcg,thread=multi", "max"),
        };
        // vhost-user needs guest memory the daemon can map: a shared memfd.
        let memory = format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            config.memory_mib
        );
        cmd.arg("-name")
            .arg(format!("podvisor-{},debug-threads=on", config.id))
            .args([
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem",
            ])
            .args(["-accel", accel, "-cpu", cpu])
            .args(["-m", &format!("{}M", config.memory_mib)])
            .args(["-smp", &config.vcpus.to_string()])
            .args(["-object", &memory])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&config.image.kernel)
            .arg("-initrd")
            .arg(&config.image.initramfs)
            .args(["-append", &self.kernel_cmdline(config)])
            .args(["-serial", &format!("file:{}", paths.console.display())])
            .args(["-device", "virtio-serial-device"])
            .args([
                "-chardev",
                &format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    paths.agent.display()
                ),
            ])
            .args([
                "-device",
                &format!("virtserialport,chardev=agent,name={AGENT_SERIAL_PORT_NAME}"),
            ])
            .args(["-device", "virtio-rng-device"])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", paths.qmp.display()),
            ]);
        if let Some(tap) = &config.tap {
            cmd.args([
                "-netdev",
                &format!(
                    "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                    tap.name
                ),
            ])
            .args([
                "-device",
                &format!("virtio-net-device,netdev=net0,mac={}", tap.mac),
            ]);
        }
        if let Some(share) = &config.share {
            cmd.args([
                "-chardev",
                &format!("socket,id=fs0,path={}", share.socket.display()),
            ])
            .args([
                "-device",
                &format!("vhost-user-fs-device,chardev=fs0,tag={}", share.tag),
            ]);
        }
        cmd
    }
}

/// Files of one VM inside its directory.
struct VmPaths {
    agent: PathBuf,
    qmp: PathBuf,
    console: PathBuf,
    log: PathBuf,
}

impl VmPaths {
    fn new(dir: &Path) -> Self {
        VmPaths {
            agent: dir.join("agent.sock"),
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.log"),
            log: dir.join("qemu.log"),
        }
    }
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn start(&self, config: &VmConfig) -> Result<Vm> {
        validate(config)?;
        std::fs::create_dir_all(&config.dir)?;
        let paths = VmPaths::new(&config.dir);
        // unix socket paths are limited to 107 bytes.
        if paths.agent.as_os_str().len() > 100 {
            return Err(VmError::InvalidConfig(format!(
                "VM directory {} is too long for its sockets",
                config.dir.display()
            )));
        }
        let command = self.command(config, &paths);
        tracing::debug!(id = %config.id, ?command, "starting qemu");
        let process = Supervised::spawn(command, "qemu", &paths.log)?;
        tracing::info!(id = %config.id, pid = process.pid(), "qemu started");
        Ok(Vm {
            id: config.id.clone(),
            backend: "qemu",
            process,
            dialer: AgentDialer::Serial(paths.agent),
            console_log: paths.console,
            dir: config.dir.clone(),
        })
    }
}
