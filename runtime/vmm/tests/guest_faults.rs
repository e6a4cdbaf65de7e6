//! Guests that misbehave or need more than one vCPU, the control API, and
//! clear errors for bad input. Each test boots at most one guest.

mod common;

use std::time::Duration;

use common::*;
use podvisor_vmm::control::send_request;

fn counter(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn two_vcpus_run_and_graceful_shutdown() {
    if !require_kvm("two_vcpus_run_and_graceful_shutdown") {
        return;
    }
    let dir = scratch("smp");
    let api = dir.join("api.sock");
    let guest = guest_elf();
    let mut vmm = spawn_vmm(
        &[],
        &s(&[
            "--kernel",
            guest.to_str().unwrap(),
            "--vcpus",
            "2",
            "--api-socket",
            api.to_str().unwrap(),
            "--cmdline",
            "tests=smp,spin",
        ]),
        &dir,
    );
    assert!(
        vmm.wait_console("SPIN", Duration::from_secs(60)),
        "{}",
        vmm.describe()
    );
    let console = vmm.console_text();
    assert!(
        console.contains("SMP bsp_apic_id=0 logical_cpus=2"),
        "{console}"
    );
    assert!(console.contains("SMP ap_apic_id=1"), "{console}");
    assert!(console.contains("PASS smp"), "{console}");
    let status = send_request(&api, "status").unwrap();
    assert!(
        status.contains("\"state\":\"running\",\"vcpus\":2"),
        "{status}"
    );
    // Graceful shutdown: the guest gets Ctrl-Alt-Del and resets itself.
    let reply = send_request(&api, "shutdown 30").unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let exit = vmm.wait(Duration::from_secs(20));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", vmm.describe());
    assert!(
        vmm.console_text().contains("CAD received"),
        "{}",
        vmm.describe()
    );
    assert!(!api.exists(), "control socket removed on exit");
}

#[test]
fn misbehaving_guest_is_contained() {
    if !require_kvm("misbehaving_guest_is_contained") {
        return;
    }
    let dir = scratch("chaos");
    let api = dir.join("api.sock");
    let guest = guest_elf();
    let mut vmm = spawn_vmm(
        &[],
        &s(&[
            "--kernel",
            guest.to_str().unwrap(),
            "--rng",
            "--api-socket",
            api.to_str().unwrap(),
            "--cmdline",
            "tests=chaos,spin",
        ]),
        &dir,
    );
    assert!(
        vmm.wait_console("SPIN", Duration::from_secs(60)),
        "{}",
        vmm.describe()
    );
    let console = vmm.console_text();
    // Unmapped MMIO: writes dropped, reads return all ones, the guest goes on.
    assert!(
        console.contains("CHAOS unmapped read=0xffffffff"),
        "{console}"
    );
    // A buffer outside RAM completes with nothing written; a descriptor loop is cut off.
    assert!(
        console.contains("CHAOS bad-address used=1 len=0"),
        "{console}"
    );
    assert!(console.contains("CHAOS loop used=1"), "{console}");
    // After all that (and an out-of-range head) the device still serves requests.
    assert!(console.contains("CHAOS after used=1"), "{console}");
    assert!(console.contains("PASS chaos"), "{console}");

    let counters = send_request(&api, "counters").unwrap();
    assert!(counter(&counters, "unhandled_mmio") >= 2, "{counters}");
    assert!(counter(&counters, "io_out") > 0, "{counters}");
    assert!(counter(&counters, "mmio_write") > 0, "{counters}");
    let rng = &counters[counters.find("\"rng\"").expect("rng counters")..];
    assert!(counter(rng, "bad_requests") >= 2, "{counters}");
    assert!(counter(rng, "bytes_to_guest") >= 32, "{counters}");

    // The guest now spins forever: pause, resume and kill must still work.
    assert!(send_request(&api, "pause")
        .unwrap()
        .contains("\"state\":\"paused\""));
    assert!(send_request(&api, "status")
        .unwrap()
        .contains("\"state\":\"paused\""));
    assert!(send_request(&api, "resume")
        .unwrap()
        .contains("\"state\":\"running\""));
    assert!(send_request(&api, "reboot")
        .unwrap()
        .contains("\"ok\":false"));
    assert!(send_request(&api, "kill").unwrap().contains("\"ok\":true"));
    let exit = vmm.wait(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(8), "{}", vmm.describe());
}

#[test]
fn triple_fault_ends_the_vm_with_an_error() {
    if !require_kvm("triple_fault_ends_the_vm_with_an_error") {
        return;
    }
    let dir = scratch("triple");
    let guest = guest_elf();
    let mut vmm = spawn_vmm(
        &[],
        &s(&[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "tests=triplefault",
        ]),
        &dir,
    );
    let exit = vmm.wait(Duration::from_secs(30));
    assert_eq!(exit.and_then(|s| s.code()), Some(7), "{}", vmm.describe());
    assert!(vmm.console_text().contains("TRIPLE now"));
    // Hardware KVM reports a shutdown exit; PVM reports an emulation failure.
    assert!(
        vmm.stderr_text().contains("guest crashed"),
        "{}",
        vmm.describe()
    );
}

fn run_expecting(args: &[&str], code: i32, message: &str) {
    let out = std::process::Command::new(vmm_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: want {message:?} in {stderr}"
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = scratch("errors");
    let junk = dir.join("junk");
    std::fs::write(
        &junk,
        b"this is not a kernel image at all, not even close........",
    )
    .unwrap();
    run_expecting(&["--vcpus", "2"], 2, "--kernel");
    run_expecting(&["--kernel", "/k", "--memory", "lots"], 2, "--memory");
    run_expecting(&["--kernel", "/k", "--frobnicate"], 2, "unknown argument");
    if !require_kvm("bad_input_gives_clear_errors (KVM part)") {
        return;
    }
    let missing = dir.join("missing");
    run_expecting(
        &["--kernel", missing.to_str().unwrap()],
        4,
        "cannot open kernel file",
    );
    run_expecting(
        &["--kernel", junk.to_str().unwrap()],
        4,
        "neither an ELF vmlinux nor a bzImage",
    );
    let guest = guest_elf();
    let g = guest.to_str().unwrap();
    run_expecting(&["--kernel", g, "--memory", "100000000"], 5, "too large");
    run_expecting(
        &["--kernel", g, "--boot-protocol", "pvh"],
        4,
        "no PVH entry note",
    );
    run_expecting(
        &["--kernel", g, "--block", "path=/nonexistent/disk"],
        6,
        "/nonexistent/disk",
    );
}

fn proc_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_default()
}

#[test]
fn runs_confined_as_an_unprivileged_user() {
    if !require_kvm("runs_confined_as_an_unprivileged_user") {
        return;
    }
    if !require_root("runs_confined_as_an_unprivileged_user") {
        return;
    }
    let dir = scratch("confined");
    let api = dir.join("api.sock");
    let guest = guest_elf();
    let mut vmm = spawn_vmm(
        &[],
        &s(&[
            "--kernel",
            guest.to_str().unwrap(),
            "--rng",
            "--api-socket",
            api.to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--cmdline",
            "tests=rng,spin ignore_kbd=1",
        ]),
        &dir,
    );
    assert!(
        vmm.wait_console("SPIN", Duration::from_secs(60)),
        "{}",
        vmm.describe()
    );
    assert!(
        vmm.console_text().contains("PASS rng"),
        "{}",
        vmm.describe()
    );
    let pid = vmm.child.id();
    let status = format!("/proc/{pid}/status");
    assert_eq!(proc_field(&status, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_field(&status, "Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(proc_field(&status, "Groups:"), "");
    // Every thread (event loop and vCPU) runs under its own filter.
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let path = task.join("status");
        let path = path.to_str().unwrap();
        assert_eq!(proc_field(path, "Seccomp:"), "2", "{name} {path}");
        assert_eq!(proc_field(path, "NoNewPrivs:"), "1", "{name} {path}");
        names.push(name.trim().to_string());
    }
    // vCPU 0 runs on the main thread, the event loop on "vmm"; KVM may add its
    // own worker (kvm-nx-lpage-recovery) to the process.
    assert!(names.contains(&"podvisor-vmm".to_string()), "{names:?}");
    assert!(names.contains(&"vmm".to_string()), "{names:?}");
    // Still fully controllable after the drop. This guest ignores Ctrl-Alt-Del,
    // so a graceful shutdown ends when its grace period runs out.
    assert!(send_request(&api, "counters").unwrap().contains("\"rng\""));
    let t = std::time::Instant::now();
    assert!(send_request(&api, "shutdown 0.3")
        .unwrap()
        .contains("\"ok\":true"));
    let exit = vmm.wait(Duration::from_secs(10));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", vmm.describe());
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!vmm.console_text().contains("CAD received"));
}
