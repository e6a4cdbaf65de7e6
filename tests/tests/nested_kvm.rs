//! The kvm backend (podvisor-vmm) end to end, inside the nested harness: a
//! TCG virtual machine with emulated AMD SVM and Debian's stock kernel
//! offers an ordinary KVM, on which `kvm-smoke` boots the real guest image
//! with 1 and 2 vCPUs (agent, container from virtio-fs, virtio-net, shutdown).
//! Also the runtime's KVM auto-detection, both ways: unusable on this
//! PVM-only host, usable inside L1.
//!
//! One L1 boot carries every nested check: each boot costs 5-15 s of TCG.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvisor::hypervisor::accel::{self, KvmSupport};
use podvisor::hypervisor::GuestImage;
use podvisor_tests::nested::{self, L1Image, L1Options, Retries, RunOutput, L1};
use podvisor_tests::prerequisite;

const KVM_SMOKE: &str = env!("CARGO_BIN_EXE_kvm-smoke");
const BENCH: &str = env!("CARGO_BIN_EXE_podvisor-bench");

/// The daemon's CRI flow with `backend = "kvm"`, inside L1: podvisor-bench
/// as the CRI client (a local registry on L1's loopback, pull, runp,
/// create, start, exec, stop, remove, stopp, rmp), then the daemon's log
/// must show it used the kvm backend, and no podvisor-vmm may be left.
fn cri_flow_script(podvisor: &Path) -> String {
    format!(
        r#"set -u
d=/tmp/podvisor-cri
mkdir -p $d
printf 'socket = "%s"\nstate_dir = "%s"\nrun_dir = "/run/pvk"\n\n[hypervisor]\nbackend = "kvm"\nboot_timeout_secs = 180\n\n[sandbox]\nstop_grace_secs = 2\n' \
    "$d/cri.sock" "$d/state" > $d/config.toml
{podvisor} --config $d/config.toml > $d/daemon.log 2>&1 &
daemon=$!
i=0
while [ ! -S $d/cri.sock ]; do
    i=$((i+1))
    if [ $i -gt 600 ] || ! kill -0 $daemon 2>/dev/null; then
        echo "podvisor did not start:" >&2; cat $d/daemon.log >&2; exit 90
    fi
    sleep 0.1
done
status=0
{bench} --endpoint podvisor=unix://$d/cri.sock --local-registry 127.0.0.1:5000 \
    --pods 1 --warmup 0 --settle-secs 0 --op-timeout-secs 240 || status=$?
kill -TERM $daemon; wait $daemon
grep -q 'backend="kvm"' $d/daemon.log || {{ echo "the daemon did not use the kvm backend" >&2; status=91; }}
tail -n 40 $d/daemon.log >&2
left=$(ps -eo args | grep -c '[p]odvisor-vmm') || true
[ "$left" = 0 ] || {{ echo "$left podvisor-vmm processes left" >&2; status=92; }}
exit $status
"#,
        podvisor = nested::shell_quote(&podvisor.to_string_lossy()),
        bench = nested::shell_quote(BENCH),
    )
}

/// The probe on this very host agrees with what the host has, whichever it
/// is: a PVM-only KVM (as where this project is built and tested) is
/// declined naming PVM, hardware KVM is usable, no /dev/kvm is declined
/// naming it. (The decision itself, on made-up inputs, is a unit test of
/// `accel`.)
#[test]
fn host_kvm_probe_declines_a_pvm_only_kvm() {
    let test = "host_kvm_probe_declines_a_pvm_only_kvm";
    if !podvisor_tests::running_as_root(test) {
        return;
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let dev_kvm = Path::new("/dev/kvm").exists();
    let probe = accel::probe();
    eprintln!("{test}: probe on this host: {probe:?}");
    if dev_kvm && (module("kvm_intel") || module("kvm_amd")) {
        assert_eq!(probe, KvmSupport::Usable, "hardware KVM is usable");
    } else if dev_kvm && module("kvm_pvm") {
        assert!(
            matches!(&probe, KvmSupport::Unusable(r) if r.contains("PVM")),
            "a PVM-only KVM is declined naming PVM: {probe:?}"
        );
    } else {
        assert!(
            matches!(&probe, KvmSupport::Unusable(r) if r.contains("/dev/kvm") || r.contains("module")),
            "no usable KVM is declined with its reason: {probe:?}"
        );
    }
}

/// What the nested test needs on the host, each reported by name.
fn nested_ready(test: &str) -> Option<PathBuf> {
    if !podvisor_tests::running_as_root(test) {
        return None;
    }
    let host = nested::host_ready();
    if !prerequisite(
        test,
        "the nested harness's tools",
        host.is_ok(),
        host.as_ref().err().map_or("", String::as_str),
    ) {
        return None;
    }
    let image = GuestImage::default();
    if !prerequisite(
        test,
        "the guest image",
        image.kernel.is_file() && image.initramfs.is_file(),
        "scripts/build-guest.sh builds and installs it",
    ) {
        return None;
    }
    // Built with the workspace (podvisor-vmm's own integration tests need
    // it); kvm-smoke finds it beside itself.
    let vmm = Path::new(KVM_SMOKE).with_file_name("podvisor-vmm");
    if !prerequisite(
        test,
        "podvisor-vmm next to kvm-smoke",
        vmm.is_file(),
        "cargo build -p podvisor-vmm (cargo nextest run --workspace builds it)",
    ) {
        return None;
    }
    Some(vmm)
}

fn describe(what: &str, out: &RunOutput) -> String {
    format!(
        "{what}: exit status {} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
        out.status,
        out.duration.as_secs_f64(),
        out.stdout,
        out.stderr
    )
}

/// Whether a failed run means L1 itself died or hung (QEMU's emulation of SVM
/// under TCG is not flawless), as opposed to a failure of what ran in it.
fn l1_died(error: &str) -> bool {
    // The error carries the tail of L1's console.
    [
        "QEMU exited",
        "closed its control port",
        "Kernel panic",
        "soft lockup",
        "BUG:",
        // Every step bounds itself 60 s inside its deadline (kvm-smoke's
        // --timeout covers all its checks), so silence past the deadline is
        // L1 hanging (see "L1 hangs" in the harness's docs).
        "no answer from L1 in time",
    ]
    .iter()
    .any(|sign| error.contains(sign))
}

/// The L1 kernel's last words, if it panicked.
fn l1_panic(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains("BUG:") || l.contains("Kernel panic") || l.contains("Oops"))
        .unwrap_or(lines.len().saturating_sub(3));
    lines[first..]
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(" / ")
}

#[test]
fn kvm_backend_boots_the_guest_under_nested_kvm() {
    let test = "kvm_backend_boots_the_guest_under_nested_kvm";
    if nested_ready(test).is_none() {
        return;
    }
    let started = Instant::now();
    let image = L1Image::prepare().unwrap_or_else(|e| panic!("building the L1 image: {e}"));
    let mut timings = vec![format!(
        "L1 image ready {:.1} s",
        started.elapsed().as_secs_f64()
    )];
    let boot = |timings: &mut Vec<String>| {
        let l1 = L1::boot(&image, &L1Options::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            l1.facts.kvm,
            "L1 has no /dev/kvm after loading kvm_amd; console:\n{}",
            l1.console_tail(3000)
        );
        assert!(
            l1.facts.svm_cpus >= 1,
            "L1's CPUs do not offer SVM (QEMU's -cpu max without svm?)"
        );
        timings.push(format!("L1 boot {:.1} s", l1.boot_time.as_secs_f64()));
        l1
    };
    let mut l1 = Some(boot(&mut timings));
    let mut failures = Vec::new();
    let mut l1_crashes = Vec::new();
    let mut retries = Retries::new(test);
    let steps: [(&str, &[&str], u64); 3] = [
        // The runtime's auto-detection inside L1: an ordinary KVM.
        ("kvm-smoke --probe-only", &["--probe-only"], 120),
        (
            "kvm-smoke --vcpus 1",
            &["--vcpus", "1", "--timeout", "120"],
            180,
        ),
        (
            "kvm-smoke --vcpus 2",
            &["--vcpus", "2", "--timeout", "120"],
            180,
        ),
    ];
    for (what, args, timeout) in steps {
        let mut argv = vec![KVM_SMOKE];
        argv.extend_from_slice(args);
        // A retry in a fresh L1 only when L1 itself dies under the step, at
        // most one in the whole run, each counted (PODVISOR_RETRY_LOG).
        let out = loop {
            let vm = l1.get_or_insert_with(|| boot(&mut timings));
            match vm.run(&argv, &[], Duration::from_secs(timeout)) {
                Ok(out) => break Ok(out),
                Err(e) => {
                    let died = l1_died(&e);
                    let vm = l1.take().expect("L1");
                    if died {
                        l1_crashes.push(format!(
                            "L1 died during {what}: {}",
                            l1_panic(&vm.console_tail(6000))
                        ));
                    }
                    drop(vm);
                    if died && retries.allow(what, l1_crashes.last().expect("pushed above")) {
                        continue;
                    }
                    break Err(e);
                }
            }
        };
        match out {
            Ok(out) => {
                timings.push(format!("{what} {:.1} s", out.duration.as_secs_f64()));
                let expected = if what.ends_with("--probe-only") {
                    "KVM probe: usable"
                } else {
                    "kvm-smoke: PASS"
                };
                if !out.success() || !out.stdout.contains(expected) {
                    let mut report = describe(what, &out);
                    // L1's kernel log: KVM's own complaints, if any.
                    if let Some(vm) = l1.as_mut() {
                        if let Ok(dmesg) = vm.run(&["dmesg"], &[], Duration::from_secs(30)) {
                            let lines: Vec<&str> = dmesg.stdout.lines().collect();
                            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                            report.push_str(&format!("--- L1 dmesg tail\n{tail}\n"));
                        }
                    }
                    failures.push(report);
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    // The daemon itself, kvm backend, CRI end to end.
    let podvisor = Path::new(KVM_SMOKE).with_file_name("podvisor");
    // A fresh L1 if an earlier step lost it.
    {
        let vm = l1.get_or_insert_with(|| boot(&mut timings));
        match vm.run_script(&cri_flow_script(&podvisor), Duration::from_secs(600)) {
            Ok(out) => {
                timings.push(format!(
                    "CRI flow (kvm backend) {:.1} s",
                    out.duration.as_secs_f64()
                ));
                if !out.success() || !out.stderr.contains("[podvisor] pods removed") {
                    failures.push(describe("CRI flow with backend = kvm", &out));
                }
            }
            Err(e) => failures.push(format!("CRI flow with backend = kvm: {e}")),
        }
    }
    if let Some(vm) = l1.take() {
        match vm.shutdown() {
            Ok(took) => timings.push(format!("L1 power-off {:.1} s", took.as_secs_f64())),
            Err(e) => failures.push(e),
        }
    }
    timings.push(format!("total {:.1} s", started.elapsed().as_secs_f64()));
    eprintln!("{test}: {}", timings.join(", "));
    if !l1_crashes.is_empty() {
        eprintln!(
            "{test}: L1 (QEMU TCG with emulated SVM) crashed {} time(s):\n{}",
            l1_crashes.len(),
            l1_crashes.join("\n")
        );
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
