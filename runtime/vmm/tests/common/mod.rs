//! Shared helpers for the VMM integration tests: building the test guest,
//! running the VMM with a timeout, reading its console.

#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use podvisor_vmm::test_guest::{self, GuestKind};

pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podvisor-vmm"))
}

// Each test binary uses its own subset of these.
#[allow(unused_imports)]
pub use podvisor_test_skip::{require, require_kvm, require_root};

pub fn guest_elf() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    test_guest::build(GuestKind::Tests, dir).expect("building the test guest")
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct RunningVmm {
    pub child: Child,
    pub console: PathBuf,
    pub stderr: PathBuf,
}

/// Starts the VMM (optionally through a wrapper such as `ip netns exec NS`).
pub fn spawn_vmm(wrapper: &[&str], args: &[String], dir: &Path) -> RunningVmm {
    let console = dir.join("console.log");
    let stderr = dir.join("stderr.log");
    let mut cmd = if wrapper.is_empty() {
        Command::new(vmm_bin())
    } else {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..]).arg(vmm_bin());
        c
    };
    cmd.arg("--console")
        .arg(&console)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let child = cmd.spawn().expect("spawning podvisor-vmm");
    RunningVmm {
        child,
        console,
        stderr,
    }
}

impl RunningVmm {
    /// Waits up to `timeout`; kills the VMM (and reports None) if it is still running.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the console contains `needle`.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console_text().contains(needle) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.console_text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn describe(&self) -> String {
        format!(
            "--- console ---\n{}\n--- stderr ---\n{}",
            self.console_text(),
            self.stderr_text()
        )
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 2166136261;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16777619);
    }
    h
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}
