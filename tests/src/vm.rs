//! Pod VMs for tests: the installed guest image booted through a backend,
//! optionally with a virtio-fs share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podvisor::agent_client::Agent;
use podvisor::hypervisor::qemu::{Qemu, QemuConfig};
use podvisor::hypervisor::{self, GuestImage, Vm, VmConfig, VmError, DEFAULT_GUEST_DIR};
use podvisor::volume::virtiofsd::{Virtiofsd, VirtiofsdConfig};
use podvisor_proto::{
    CreateContainerRequest, GuestInfo, ProcessExit, ReadOutputRequest, Rootfs, SetupSandboxRequest,
    SharedMount, StartContainerRequest, WaitProcessRequest,
};

/// Generous: under TCG on a busy 2-core machine a boot takes seconds.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
pub const SHARE_TAG: &str = "podshare";

/// A value of the installed guest image's manifest.
pub fn manifest(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(Path::new(DEFAULT_GUEST_DIR).join("manifest")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Whether the qemu backend can run here: qemu, virtiofsd and the guest
/// image (see [`crate::prerequisite`] for how a miss is reported).
pub fn qemu_ready(test: &str) -> bool {
    let image = GuestImage::default();
    crate::running_as_root(test)
        && crate::prerequisite(
            test,
            "qemu-system-x86_64",
            QemuConfig::default().binary.is_file(),
            "apt-get install qemu-system-x86",
        )
        && crate::prerequisite(
            test,
            "virtiofsd",
            VirtiofsdConfig::default().resolve_binary().is_ok(),
            "cargo install --locked virtiofsd",
        )
        && crate::prerequisite(
            test,
            "the guest image",
            image.kernel.is_file() && image.initramfs.is_file(),
            "scripts/build-guest.sh builds and installs it",
        )
}

pub struct TestVm {
    pub vm: Vm,
    pub agent: Agent,
    pub info: GuestInfo,
    pub fs: Option<Virtiofsd>,
}

pub struct BootOptions {
    pub image: GuestImage,
    pub tap: Option<hypervisor::TapDevice>,
    pub share: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            image: GuestImage::default(),
            tap: None,
            share: None,
            vcpus: 2,
            memory_mib: 256,
            timeout: BOOT_TIMEOUT,
        }
    }
}

/// Boots a VM with the qemu backend in `dir`.
pub async fn boot_qemu(id: &str, dir: &Path, opts: BootOptions) -> Result<TestVm, VmError> {
    let qemu = Qemu::new(QemuConfig::default())?;
    let fs = match &opts.share {
        Some(shared) => Some(
            Virtiofsd::start(
                &VirtiofsdConfig::default(),
                shared,
                &dir.join("fs.sock"),
                SHARE_TAG,
            )
            .await?,
        ),
        None => None,
    };
    let config = VmConfig {
        id: id.to_string(),
        vcpus: opts.vcpus,
        memory_mib: opts.memory_mib,
        image: opts.image,
        // PODVISOR_GUEST_LOG=debug turns up the agent's log on the console.
        kernel_args: std::env::var("PODVISOR_GUEST_LOG")
            .map(|level| vec![format!("podvisor.log={level}")])
            .unwrap_or_default(),
        tap: opts.tap,
        share: fs.as_ref().map(|f| f.share.clone()),
        dir: dir.join("vm"),
        boot_timeout: opts.timeout,
        agent_timeouts: podvisor::agent_client::AgentTimeouts::default(),
    };
    match hypervisor::boot(&qemu, &config).await {
        Ok((vm, agent, info)) => Ok(TestVm {
            vm,
            agent,
            info,
            fs,
        }),
        Err(e) => {
            if let Some(fs) = fs {
                fs.stop().await;
            }
            Err(e)
        }
    }
}

/// Where [`TestVm::setup_with_share`] mounts the pod share in the guest.
pub const GUEST_SHARE: &str = "/run/podvisor/share";

impl TestVm {
    /// Sets the pod up (hostname) with its share mounted read-only at
    /// [`GUEST_SHARE`].
    pub async fn setup_with_share(&mut self, hostname: &str) {
        let request = SetupSandboxRequest {
            hostname: hostname.into(),
            mounts: vec![SharedMount {
                fstype: "virtiofs".into(),
                source: SHARE_TAG.into(),
                target: GUEST_SHARE.into(),
                options: vec![],
                readonly: true,
            }],
            ..Default::default()
        };
        self.agent
            .setup_sandbox(request)
            .await
            .expect("set up the pod with its share");
    }

    /// Runs a container from `spec` on the share's `rootfs` directory until
    /// it exits; returns its output (stdout and stderr) and exit.
    pub async fn run_container(
        &mut self,
        id: &str,
        spec: serde_json::Value,
    ) -> (String, ProcessExit) {
        let create = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            rootfs: Some(Rootfs {
                lower_dirs: vec![format!("{GUEST_SHARE}/rootfs")],
                writable_in_place: false,
            }),
            stdin: false,
            tty: false,
            ..Default::default()
        };
        if let Err(e) = self.agent.create_container(create).await {
            panic!(
                "create container {id}: {e}\nguest console:\n{}",
                self.vm.console_tail(6000)
            );
        }
        self.agent
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("start container");
        let read = ReadOutputRequest {
            container_id: id.into(),
            exec_id: String::new(),
            from_offset: 0,
            live: false,
        };
        let mut stream = self
            .agent
            .read_output(read)
            .await
            .expect("read output")
            .into_inner();
        let mut out = String::new();
        let collect = async {
            while let Some(chunk) = stream.message().await.expect("output stream") {
                if chunk.eof {
                    break;
                }
                out.push_str(&String::from_utf8_lossy(&chunk.data));
            }
        };
        tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .expect("output ended within 60 s");
        let wait = WaitProcessRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let exit = self
            .agent
            .wait_process(wait)
            .await
            .expect("wait")
            .into_inner();
        (out, exit)
    }

    /// Shuts the guest down through its agent; returns how the VM process
    /// ended (killed if the guest did not end by itself).
    pub async fn shutdown(self) -> hypervisor::process::Exit {
        self.shutdown_with_share().await.0
    }

    /// Like [`TestVm::shutdown`], also returning how virtiofsd ended: by
    /// itself within 5 s of the VM's end (`Some`), or not (`None`, then it
    /// is stopped).
    pub async fn shutdown_with_share(
        mut self,
    ) -> (hypervisor::process::Exit, Option<hypervisor::process::Exit>) {
        let exit = hypervisor::stop(&self.vm, &mut self.agent, Duration::from_secs(2)).await;
        let mut fs_exit = None;
        if let Some(fs) = &self.fs {
            fs_exit = fs.process.wait_timeout(Duration::from_secs(5)).await;
            fs.stop().await;
        }
        (exit, fs_exit)
    }
}

/// A test that fails half-way must not leave its VM running: runtime code
/// keeps VMs alive across its own exit on purpose, a test does not.
impl Drop for TestVm {
    fn drop(&mut self) {
        let pids =
            std::iter::once(self.vm.process.pid()).chain(self.fs.as_ref().map(|f| f.process.pid()));
        for pid in pids {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// True while a process with this pid runs. A zombie does not count: a VM
/// orphaned by a killed daemon is reaped by PID 1, whenever PID 1 gets to it.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
