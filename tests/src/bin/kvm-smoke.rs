//! kvm-smoke: on a host whose KVM can boot the guest kernel (inside the
//! nested harness's L1, or on hardware KVM), boots the installed guest image
//! with the runtime's kvm backend (podvisor-vmm) and checks it end to end:
//! agent ready over hybrid vsock, GetGuestInfo, a container from a virtio-fs
//! share, virtio-net traffic to a tap, and shutdown through the agent with
//! the VMM exiting 0. Every step is printed with its time; any failure ends
//! the program with a non-zero status and says what went wrong.
//!
//! ```text
//! kvm-smoke [--vcpus N] [--memory MIB] [--timeout SECS] [--vmm PATH]
//!           [--guest-dir DIR] [--no-net] [--probe-only]
//! ```
//! `--probe-only` prints the runtime's KVM probe and exits 0 when the kvm
//! backend can run here, 3 when not. Needs root (tap, virtiofsd).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use podvisor::agent_client::Agent;
use podvisor::hypervisor::accel::{self, KvmSupport};
use podvisor::hypervisor::kvm::{Kvm, KvmConfig};
use podvisor::hypervisor::{self, FsShare, GuestImage, Hypervisor, TapDevice, Vm, VmConfig};
use podvisor::volume::virtiofsd::{Virtiofsd, VirtiofsdConfig};
use podvisor_proto::*;
use serde_json::json;

const SHARE_TAG: &str = "podshare";
const SHARE_MOUNT: &str = "/run/podvisor/share";
const TAP_ADDR: &str = "10.0.0.1";
const GUEST_ADDR: &str = "10.0.0.2";
const GUEST_MAC: &str = "52:54:00:00:00:02";

struct Args {
    vcpus: u32,
    memory_mib: u32,
    timeout: Duration,
    vmm: Option<PathBuf>,
    guest_dir: PathBuf,
    net: bool,
    probe_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        vcpus: 1,
        memory_mib: 256,
        timeout: Duration::from_secs(180),
        vmm: None,
        guest_dir: PathBuf::from(hypervisor::DEFAULT_GUEST_DIR),
        net: true,
        probe_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--vcpus" => {
                args.vcpus = value("--vcpus")?
                    .parse()
                    .map_err(|e| format!("--vcpus: {e}"))?
            }
            "--memory" => {
                args.memory_mib = value("--memory")?
                    .parse()
                    .map_err(|e| format!("--memory: {e}"))?
            }
            "--timeout" => {
                args.timeout = Duration::from_secs(
                    value("--timeout")?
                        .parse()
                        .map_err(|e| format!("--timeout: {e}"))?,
                )
            }
            "--vmm" => args.vmm = Some(value("--vmm")?.into()),
            "--guest-dir" => args.guest_dir = value("--guest-dir")?.into(),
            "--no-net" => args.net = false,
            "--probe-only" => args.probe_only = true,
            "-h" | "--help" => {
                return Err(
                    "usage: kvm-smoke [--vcpus N] [--memory MIB] [--timeout SECS] \
                     [--vmm PATH] [--guest-dir DIR] [--no-net] [--probe-only]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

/// Prints steps with the time since start and since the previous step.
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "kvm-smoke: [{:7.2} s] ok   {what} ({:.2} s)",
            (now - self.start).as_secs_f64(),
            (now - self.last).as_secs_f64()
        );
        self.last = now;
    }

    fn info(&self, what: &str) {
        println!(
            "kvm-smoke: [{:7.2} s]      {what}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvm-smoke: {e}");
            return ExitCode::from(2);
        }
    };
    let probe = accel::probe();
    match &probe {
        KvmSupport::Usable => println!("kvm-smoke: KVM probe: usable"),
        KvmSupport::Unusable(reason) => println!("kvm-smoke: KVM probe: unusable: {reason}"),
    }
    if args.probe_only {
        return ExitCode::from(if probe == KvmSupport::Usable { 0 } else { 3 });
    }
    if let KvmSupport::Unusable(reason) = probe {
        eprintln!("kvm-smoke: FAIL: this host's KVM cannot boot the guest kernel: {reason}");
        return ExitCode::from(3);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("kvm-smoke: FAIL: needs root (tap device, virtiofsd)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvm-smoke: FAIL: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let vcpus = args.vcpus;
    match runtime.block_on(smoke(args)) {
        Ok(()) => {
            println!("kvm-smoke: PASS (vcpus={vcpus})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvm-smoke: FAIL (vcpus={vcpus}): {e}");
            ExitCode::from(1)
        }
    }
}

/// A tap device in this host's network namespace, deleted on drop.
struct Tap {
    name: String,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Tap {
    fn create(name: &str) -> Result<Tap> {
        let _ = ip(&["link", "del", name]);
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = Tap {
            name: name.to_string(),
        };
        ip(&["addr", "add", &format!("{TAP_ADDR}/24"), "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }

    fn counter(&self, which: &str) -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{which}", self.name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

async fn smoke(args: Args) -> Result<()> {
    let mut steps = Steps::new();
    let image = GuestImage {
        kernel: args.guest_dir.join("vmlinux"),
        initramfs: args.guest_dir.join("initramfs.img"),
    };
    let manifest = std::fs::read_to_string(args.guest_dir.join("manifest"))
        .map_err(|e| format!("{}/manifest: {e}", args.guest_dir.display()))?;
    let expected_release = manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel_release="))
        .ok_or("the guest manifest names no kernel_release")?
        .to_string();
    let kvm = Kvm::new(KvmConfig {
        binary: args.vmm.clone().unwrap_or_default(),
        ..Default::default()
    })
    .map_err(|e| format!("kvm backend: {e}"))?;
    steps.info(&format!(
        "guest {} ({expected_release}), {} vCPU(s), {} MiB",
        image.kernel.display(),
        args.vcpus,
        args.memory_mib
    ));

    let dir = tempfile::Builder::new()
        .prefix("kvm-smoke-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let share = dir.path().join("share");
    podvisor_tests::rootfs::busybox_rootfs(&share.join("rootfs"));
    let fs = Virtiofsd::start(
        &VirtiofsdConfig::default(),
        &share,
        &dir.path().join("fs.sock"),
        SHARE_TAG,
    )
    .await
    .map_err(|e| format!("virtiofsd: {e}"))?;
    steps.done("busybox rootfs shared by virtiofsd");

    let tap = if args.net {
        let tap = Tap::create(&format!("pvsmoke{}", std::process::id() % 100_000))?;
        steps.done(&format!("tap {} with {TAP_ADDR}/24", tap.name));
        Some(tap)
    } else {
        None
    };

    let mut pod: Option<(Vm, Agent)> = None;
    // `--timeout` bounds every check, boot included, so a caller that waits
    // a little longer (the nested test) can tell a slow or stuck guest (this
    // FAIL) from a host that stopped running us (no answer at all).
    let total = args.timeout;
    let result = tokio::time::timeout(
        total,
        checks(
            &args,
            &kvm,
            image,
            &expected_release,
            fs.share.clone(),
            tap.as_ref(),
            dir.path(),
            &mut pod,
            &mut steps,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the checks did not finish within --timeout {total:?}; the last `ok` line is the last step done"
        ))
    });

    // Whatever happened, nothing stays behind.
    let mut leftovers = Vec::new();
    if let Some((vm, _)) = &pod {
        if vm.process.exited().is_none() {
            leftovers.push(format!("podvisor-vmm (pid {})", vm.process.pid()));
            vm.process.kill().await;
        }
    }
    let fs_pid = fs.process.pid();
    let fs_ended = fs.process.wait_timeout(Duration::from_secs(5)).await;
    fs.stop().await;
    drop(tap);
    if result.is_ok() {
        if fs_ended.is_none() {
            leftovers.push(format!(
                "virtiofsd (pid {fs_pid}) still ran 5 s after the VM ended"
            ));
        }
        if !leftovers.is_empty() {
            return Err(format!("left behind: {}", leftovers.join(", ")));
        }
        steps.done("virtiofsd ended with the VM; tap removed");
    }
    result
}

async fn read_all(stream: &mut tonic::Streaming<OutputChunk>) -> Result<String> {
    let mut text = String::new();
    while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
        if chunk.eof {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    Ok(text)
}

/// Runs a container from the shared busybox rootfs to its end; returns its
/// exit code and output.
async fn run_container(
    agent: &mut Agent,
    vm: &Vm,
    id: &str,
    script: &str,
    capabilities: Option<&[&str]>,
) -> Result<(i32, String)> {
    let mut process = json!({
        "args": ["sh", "-c", script],
        "cwd": "/",
        "env": ["PATH=/bin:/sbin"],
        "user": {"uid": 0, "gid": 0}
    });
    if let Some(caps) = capabilities {
        process["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps
        });
    }
    // The network is the VM's: no network namespace.
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    });
    let console = || vm.console_tail(3000);
    agent
        .create_container(CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            rootfs: Some(Rootfs {
                lower_dirs: vec![format!("{SHARE_MOUNT}/rootfs")],
                writable_in_place: false,
            }),
            stdin: false,
            tty: false,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create container {id}: {e}\nguest console:\n{}", console()))?;
    agent
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map_err(|e| format!("start container {id}: {e}"))?;
    let mut stream = agent
        .read_output(ReadOutputRequest {
            container_id: id.into(),
            exec_id: String::new(),
            from_offset: 0,
            live: false,
        })
        .await
        .map_err(|e| format!("read output of {id}: {e}"))?
        .into_inner();
    let output = tokio::time::timeout(Duration::from_secs(60), read_all(&mut stream))
        .await
        .map_err(|_| format!("container {id} did not finish within 60 s"))??;
    let exit = agent
        .wait_process(WaitProcessRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await
        .map_err(|e| format!("wait for {id}: {e}"))?
        .into_inner();
    let _ = agent
        .delete_container(DeleteContainerRequest {
            container_id: id.into(),
            ..Default::default()
        })
        .await;
    Ok((exit.exit_code, output))
}

/// One line of the VMM's control API.
async fn vmm_api(socket: &Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok::<_, std::io::Error>(reply.trim().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => format!("(no answer: {e})"),
        Err(_) => "(no answer within 5 s)".into(),
    }
}

/// What the VMM says about itself and what its threads are doing, plus
/// the end of the guest console: for a VM that does not do what it should.
async fn diagnose(vm: &Vm) -> String {
    let api = vm.dir.join("api.sock");
    let mut text = format!(
        "VMM status: {}\nVMM counters: {}\nVMM threads (name state wchan syscall):\n",
        vmm_api(&api, "status").await,
        vmm_api(&api, "counters").await
    );
    let task_dir = format!("/proc/{}/task", vm.process.pid());
    for task in std::fs::read_dir(&task_dir).into_iter().flatten().flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(task.path().join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let stat = read("stat");
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let syscall = read("syscall");
        let _ = writeln!(
            text,
            "  {} {} {} {} {}",
            task.file_name().to_string_lossy(),
            read("comm"),
            state,
            read("wchan"),
            syscall.split_whitespace().next().unwrap_or("")
        );
    }
    let log = std::fs::read(vm.dir.join("vmm.log")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log.len().saturating_sub(2000)..]).into_owned();
    let _ = write!(
        text,
        "VMM log tail:\n{log}\nguest console tail:\n{}",
        vm.console_tail(3000)
    );
    text
}

#[allow(clippy::too_many_arguments)]
async fn checks(
    args: &Args,
    kvm: &Kvm,
    image: GuestImage,
    expected_release: &str,
    share: FsShare,
    tap: Option<&Tap>,
    dir: &Path,
    pod: &mut Option<(Vm, Agent)>,
    steps: &mut Steps,
) -> Result<()> {
    let config = VmConfig {
        id: format!("kvm-smoke-{}", args.vcpus),
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        image,
        kernel_args: std::env::var("PODVISOR_GUEST_LOG")
            .map(|level| vec![format!("podvisor.log={level}")])
            .unwrap_or_default(),
        tap: tap.map(|t| TapDevice {
            name: t.name.clone(),
            mac: GUEST_MAC.into(),
        }),
        share: Some(share),
        dir: dir.join("vm"),
        boot_timeout: args.timeout,
        agent_timeouts: podvisor::agent_client::AgentTimeouts::default(),
    };
    let vm = kvm
        .start(&config)
        .await
        .map_err(|e| format!("starting podvisor-vmm: {e}"))?;
    let (agent, info) = match podvisor::hypervisor::wait_ready(&vm, &config).await {
        Ok(ready) => ready,
        Err(e) => {
            let diagnosis = diagnose(&vm).await;
            vm.process.kill().await;
            return Err(format!("boot: {e}\n{diagnosis}"));
        }
    };
    steps.done(&format!(
        "booted to agent ready over hybrid vsock (podvisor-vmm pid {}, guest uptime {} ms)",
        vm.process.pid(),
        info.uptime_ms
    ));
    let (vm, agent) = pod.insert((vm, agent));

    let mut wrong = Vec::new();
    if info.kernel_release != expected_release {
        wrong.push(format!(
            "kernel release {:?}, expected {expected_release:?}",
            info.kernel_release
        ));
    }
    if info.agent_pid != 1 {
        wrong.push(format!("agent pid {}, expected 1", info.agent_pid));
    }
    if info.online_cpus != args.vcpus {
        wrong.push(format!(
            "{} online CPUs, expected {}",
            info.online_cpus, args.vcpus
        ));
    }
    if info.mode != "guest" {
        wrong.push(format!("agent mode {:?}, expected \"guest\"", info.mode));
    }
    if !wrong.is_empty() {
        return Err(format!("GetGuestInfo: {}", wrong.join("; ")));
    }
    steps.done(&format!(
        "GetGuestInfo: kernel {}, agent pid 1, {} online CPU(s), {} MiB total, cgroup v{}",
        info.kernel_release,
        info.online_cpus,
        info.memory_total_bytes >> 20,
        info.cgroup_version
    ));

    agent
        .setup_sandbox(SetupSandboxRequest {
            hostname: "kvm-smoke".into(),
            mounts: vec![SharedMount {
                fstype: "virtiofs".into(),
                source: SHARE_TAG.into(),
                target: SHARE_MOUNT.into(),
                options: vec![],
                readonly: true,
            }],
            ..Default::default()
        })
        .await
        .map_err(|e| {
            format!(
                "SetupSandbox (virtio-fs mount): {e}\nguest console:\n{}",
                vm.console_tail(3000)
            )
        })?;
    steps.done("SetupSandbox mounted the virtio-fs share");

    let (code, out) = run_container(
        agent,
        vm,
        "release",
        "uname -r; cat /proc/1/comm; hostname",
        None,
    )
    .await?;
    let lines: Vec<&str> = out.lines().collect();
    if code != 0 || lines.first() != Some(&expected_release) {
        return Err(format!(
            "container: exit {code}, output {out:?}; expected the guest kernel release {expected_release:?}"
        ));
    }
    steps.done(&format!(
        "container from virtio-fs printed the guest kernel release ({})",
        lines.join(" | ")
    ));

    if let Some(tap) = tap {
        let (rx0, tx0) = (tap.counter("rx_packets"), tap.counter("tx_packets"));
        let caps = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW",
            "CAP_NET_ADMIN",
            "CAP_SYS_CHROOT",
            "CAP_MKNOD",
            "CAP_AUDIT_WRITE",
            "CAP_SETFCAP",
        ];
        let script = format!(
            "ip link set eth0 up && ip addr add {GUEST_ADDR}/24 dev eth0 && ping -c 3 -W 2 {TAP_ADDR}"
        );
        let (code, out) = run_container(agent, vm, "net", &script, Some(&caps)).await?;
        let (rx, tx) = (
            tap.counter("rx_packets") - rx0,
            tap.counter("tx_packets") - tx0,
        );
        if code != 0 {
            return Err(format!(
                "virtio-net: the guest's ping of {TAP_ADDR} failed (exit {code}); output:\n{out}\n\
                 tap {}: {rx} packets received from the guest, {tx} sent to it",
                tap.name
            ));
        }
        let summary = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("")
            .trim()
            .to_string();
        steps.done(&format!(
            "virtio-net: guest pinged the tap ({summary}; tap rx {rx} / tx {tx} packets)"
        ));
        // And the other way: from this host to the guest's address.
        let ping = Command::new(podvisor_tests::rootfs::BUSYBOX)
            .args(["ping", "-c", "2", "-W", "2", GUEST_ADDR])
            .output()
            .map_err(|e| format!("busybox ping: {e}"))?;
        if !ping.status.success() {
            return Err(format!(
                "virtio-net: this host could not ping the guest at {GUEST_ADDR}: {}",
                String::from_utf8_lossy(&ping.stdout)
            ));
        }
        steps.done(&format!(
            "virtio-net: this host pinged the guest at {GUEST_ADDR}"
        ));
    }

    // Shutdown through the agent: the VMM must end by itself, with 0.
    let shutdown_started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(15),
        agent.shutdown(ShutdownRequest {
            grace_period_ms: 2000,
        }),
    )
    .await
    .map_err(|_| "the agent did not answer Shutdown within 15 s".to_string())?
    .map_err(|e| format!("Shutdown: {e}"))?;
    let wait = Duration::from_secs(30);
    match vm.process.wait_timeout(wait).await {
        Some(exit) if exit.code == Some(0) => {
            steps.done(&format!(
                "Shutdown: podvisor-vmm exited 0 {:.2} s after the request",
                shutdown_started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Some(exit) => Err(format!(
            "after Shutdown podvisor-vmm ended with {exit}, expected exit status 0\nVMM log:\n{}\nguest console:\n{}",
            std::fs::read_to_string(vm.dir.join("vmm.log")).unwrap_or_default(),
            vm.console_tail(3000)
        )),
        None => {
            let diagnosis = diagnose(vm).await;
            vm.process.kill().await;
            Err(format!(
                "podvisor-vmm did not exit within {wait:?} of the agent's Shutdown \
                 (the agent answered; the VMM kept running and was killed).\n{diagnosis}"
            ))
        }
    }
}
