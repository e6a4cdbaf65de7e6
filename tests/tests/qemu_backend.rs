//! The guest image booted through the qemu backend: the agent answers as PID
//! 1 of our own kernel, a container runs from a virtio-fs share inside the
//! guest, shutdown leaves nothing, and broken boots fail fast and clean.

use std::time::{Duration, Instant};

use podvisor::hypervisor::{GuestImage, VmError};
use podvisor_tests::cpio::Cpio;
use podvisor_tests::vm::{alive, boot_qemu, manifest, qemu_ready, BootOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_runs_our_kernel_and_a_container_from_virtiofs() {
    let test = "guest_runs_our_kernel_and_a_container_from_virtiofs";
    if !qemu_ready(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    podvisor_tests::rootfs::busybox_rootfs(&share.join("rootfs"));
    let mut pod = boot_qemu(
        "qemu-e2e",
        dir.path(),
        BootOptions {
            share: Some(share.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("boot");

    let expected_release = manifest("kernel_release").expect("manifest names the kernel release");
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        pod.info.kernel_release, expected_release,
        "the guest runs the kernel we built"
    );
    assert_ne!(pod.info.kernel_release, host_release);
    assert_eq!(pod.info.agent_pid, 1, "the agent is the guest's init");
    assert_eq!(pod.info.mode, "guest");
    assert_eq!(pod.info.cgroup_version, 2);
    assert_eq!(pod.info.online_cpus, 2);

    pod.setup_with_share("qemu-pod").await;
    // No pid namespace, so /proc/1 is the guest's init: proof the container
    // runs inside the VM. The limits are exact here: the agent is PID 1
    // with every capability.
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["sh", "-c", "uname -r; cat /proc/1/comm /proc/sys/kernel/random/boot_id; ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu"],
            "cwd": "/",
            "env": ["PATH=/bin:/sbin"],
            "user": {"uid": 0, "gid": 0}
        },
        "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    });
    let (out, exit) = pod.run_container("probe", spec).await;
    assert_eq!(exit.exit_code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(lines[0], expected_release);
    // The agent is the initramfs's /init: PID 1 of another kernel instance.
    assert_eq!(lines[1], "init");
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(
        lines[2],
        host_boot_id.trim(),
        "the container saw the host's kernel"
    );
    assert_eq!(
        lines[3..],
        ["1024", "65535", "1024", "65535"],
        "Fargate limits, exact in the VM"
    );

    let qemu_pid = pod.vm.process.pid();
    let fs_pid = pod.fs.as_ref().unwrap().process.pid();
    let vm_dir = pod.vm.dir.clone();
    let (exit, fs_exit) = pod.shutdown_with_share().await;
    assert_eq!(exit.code, Some(0), "the guest ended cleanly");
    assert!(
        fs_exit.is_some(),
        "virtiofsd exits by itself when the VM disconnects"
    );
    assert!(!alive(qemu_pid), "qemu is gone");
    assert!(!alive(fs_pid), "virtiofsd is gone");
    // The runtime removes the VM directory; here, check what is left in it
    // is only files: no socket a process still serves.
    assert_nothing_served_in(&vm_dir);
    std::fs::remove_dir_all(&vm_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_boots_in_a_row_reach_the_agent() {
    let test = "twenty_boots_in_a_row_reach_the_agent";
    if !qemu_ready(test) {
        return;
    }
    // Boot times are guest-bench's business; this checks every boot works.
    for i in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let pod = boot_qemu(
            &format!("boot-{i}"),
            dir.path(),
            BootOptions {
                vcpus: 1,
                memory_mib: 128,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("boot {i} failed: {e}"));
        let pid = pod.vm.process.pid();
        let exit = pod.shutdown().await;
        assert_eq!(exit.code, Some(0), "boot {i}: the guest ended by itself");
        assert!(!alive(pid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_boots_fail_clearly_and_leave_nothing() {
    let test = "broken_boots_fail_clearly_and_leave_nothing";
    if !qemu_ready(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = GuestImage::default();

    // A missing kernel is refused before anything starts.
    let missing = GuestImage {
        kernel: dir.path().join("no-vmlinux"),
        ..good.clone()
    };
    let err = boot_qemu(
        "missing",
        &dir.path().join("missing"),
        BootOptions {
            image: missing,
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("missing kernel");
    assert!(matches!(err, VmError::KernelMissing(_)), "{err}");
    assert!(err.to_string().contains("no-vmlinux"));

    // A corrupt initramfs: the kernel finds no init and the VM dies.
    let corrupt = dir.path().join("corrupt.img");
    std::fs::write(&corrupt, vec![0x5a; 64 * 1024]).unwrap();
    let started = Instant::now();
    let err = boot_qemu(
        "corrupt",
        &dir.path().join("corrupt"),
        BootOptions {
            image: GuestImage {
                initramfs: corrupt,
                ..good.clone()
            },
            vcpus: 1,
            memory_mib: 128,
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("corrupt initramfs");
    assert!(matches!(err, VmError::DiedDuringBoot { .. }), "{err}");
    eprintln!(
        "corrupt initramfs failed after {:?}: {err}",
        started.elapsed()
    );
    assert_no_qemu_left_for(&dir.path().join("corrupt"));

    // An init that never answers: the boot times out and the VM is killed.
    let busybox = std::fs::read(podvisor_tests::rootfs::BUSYBOX).unwrap();
    let mut cpio = Cpio::new();
    cpio.dir("bin")
        .file("bin/busybox", 0o755, &busybox)
        .symlink("init", "bin/busybox");
    let silent = dir.path().join("silent.img");
    std::fs::write(&silent, cpio.finish()).unwrap();
    let started = Instant::now();
    let err = boot_qemu(
        "silent",
        &dir.path().join("silent"),
        BootOptions {
            image: GuestImage {
                initramfs: silent,
                ..good
            },
            vcpus: 1,
            memory_mib: 128,
            timeout: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("agent that never answers");
    assert!(matches!(err, VmError::AgentTimeout { .. }), "{err}");
    // The boot timeout was honoured, not cut short.
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "gave up early: {:?}",
        started.elapsed()
    );
    assert_no_qemu_left_for(&dir.path().join("silent"));
}

/// Every entry of `dir` (recursively) is a file, a directory or a socket
/// nobody accepts on any more.
fn assert_nothing_served_in(dir: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            assert_nothing_served_in(&path);
        } else if kind.is_socket() {
            let served = std::os::unix::net::UnixStream::connect(&path);
            assert!(served.is_err(), "{} is still served", path.display());
        } else {
            assert!(
                kind.is_file(),
                "{} is neither file nor socket",
                path.display()
            );
        }
    }
}

/// No qemu process has this VM's directory on its command line.
fn assert_no_qemu_left_for(dir: &std::path::Path) {
    let needle = dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(
                !cmdline.contains(&needle),
                "left behind: {}",
                cmdline.replace('\0', " ")
            );
        }
    }
}
