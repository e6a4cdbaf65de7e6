//! virtio-fs through the vhost-user frontend: virtiofsd shares a directory,
//! the test guest speaks FUSE over the virtqueue and reads a file from it.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Which virtiofsd and its command-line dialect.
enum Virtiofsd {
    /// The Rust virtiofsd (1.x): --socket-path P --shared-dir D.
    Rust(PathBuf),
    /// QEMU's C virtiofsd (qemu-system-common): --socket-path=P -o source=D.
    Qemu(PathBuf),
}

/// virtiofsd from PATH or the usual install locations (Rust preferred).
fn find_virtiofsd() -> Option<Virtiofsd> {
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("virtiofsd"))
        .chain([
            "/usr/libexec/virtiofsd".into(),
            "/usr/lib/virtiofsd".into(),
            "/usr/lib/qemu/virtiofsd".into(),
        ])
        .collect::<Vec<_>>();
    let mut qemu = None;
    for p in candidates {
        let Ok(out) = Command::new(&p).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.starts_with("virtiofsd 1") {
            return Some(Virtiofsd::Rust(p));
        }
        if text.starts_with("virtiofsd version") && qemu.is_none() {
            qemu = Some(Virtiofsd::Qemu(p));
        }
    }
    qemu
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn virtio_fs_reads_a_shared_file() {
    if !require_kvm("virtio_fs_reads_a_shared_file") {
        return;
    }
    if !require_root("virtio_fs_reads_a_shared_file") {
        return;
    }
    let virtiofsd = find_virtiofsd();
    if !require(
        "virtio_fs_reads_a_shared_file",
        "virtiofsd",
        virtiofsd.is_some(),
        "cargo install --locked virtiofsd",
    ) {
        return;
    }
    let virtiofsd = virtiofsd.expect("checked above");
    let dir = scratch("fs");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(
        shared.join("hello.txt"),
        b"hello from the host over virtio-fs\n",
    )
    .unwrap();
    let socket = dir.join("virtiofsd.sock");
    let mut cmd = match &virtiofsd {
        Virtiofsd::Rust(p) => {
            let mut c = Command::new(p);
            c.arg("--socket-path")
                .arg(&socket)
                .arg("--shared-dir")
                .arg(&shared)
                .args(["--sandbox", "none", "--cache", "never"]);
            c
        }
        Virtiofsd::Qemu(p) => {
            let mut c = Command::new(p);
            c.arg(format!("--socket-path={}", socket.display()))
                .arg("-o")
                .arg(format!("source={}", shared.display()))
                .args(["-o", "cache=none", "-o", "sandbox=chroot"]);
            c
        }
    };
    let daemon = Daemon(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("virtiofsd.log")).unwrap())
            .spawn()
            .expect("starting virtiofsd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(socket.exists(), "virtiofsd did not create its socket");

    let guest = guest_elf();
    let mut vmm = spawn_vmm(
        &[],
        &s(&[
            "--kernel",
            guest.to_str().unwrap(),
            "--fs",
            &format!("tag=podshare,socket={}", socket.display()),
            "--cmdline",
            "tests=fs fs_file=hello.txt",
        ]),
        &dir,
    );
    let exit = vmm.wait(Duration::from_secs(60));
    let console = vmm.console_text();
    drop(daemon);
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", vmm.describe());
    assert!(console.contains("FS tag=podshare"), "{console}");
    assert!(console.contains("FS init major=7"), "{console}");
    assert!(
        console.contains("FS file size=35 read=35 data=hello from the host over virtio-fs"),
        "{console}"
    );
    assert!(console.contains("PASS fs"), "{console}");
}
