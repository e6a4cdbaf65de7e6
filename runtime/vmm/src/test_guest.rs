//! Builds the freestanding test guests (sources in `testguest/`) with the
//! system C compiler. Used by the integration tests and the benchmark;
//! compiled ELF files are cached by a hash of their sources and flags.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const LINKER_SCRIPT: &str = include_str!("../testguest/linker.ld");
const START_S: &str = include_str!("../testguest/start.S");
const GUEST_C: &str = include_str!("../testguest/guest.c");
const BENCH_S: &str = include_str!("../testguest/bench.S");

const CFLAGS: &[&str] = &[
    "-m64",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-no-pie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-O2",
    "-Wall",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
];

/// Which guest to build.
#[derive(Clone, Copy, Debug)]
pub enum GuestKind {
    /// The test guest: zero page, virtio, SMP and fault checks chosen by `tests=` on its cmdline.
    Tests,
    /// Writes one byte to COM1 and spins (startup benchmark).
    Bench,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error("writing guest sources: {0}")]
    Io(#[from] std::io::Error),
    #[error("the C compiler (cc) failed: {0}")]
    Compiler(String),
}

/// Builds (or reuses) the guest ELF under `cache_dir`.
pub fn build(kind: GuestKind, cache_dir: &Path) -> Result<PathBuf, GuestBuildError> {
    let sources: Vec<(&str, &str)> = match kind {
        GuestKind::Tests => vec![("start.S", START_S), ("guest.c", GUEST_C)],
        GuestKind::Bench => vec![("bench.S", BENCH_S)],
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    LINKER_SCRIPT.hash(&mut hasher);
    CFLAGS.hash(&mut hasher);
    sources.hash(&mut hasher);
    let name = format!("{kind:?}-{:016x}", hasher.finish()).to_lowercase();
    let out = cache_dir.join(format!("{name}.elf"));
    if out.exists() {
        return Ok(out);
    }
    // Unique per process and call: parallel test threads may build at once.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = cache_dir.join(format!("{name}.{}-{n}.src", std::process::id()));
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("linker.ld"), LINKER_SCRIPT)?;
    let mut cmd = Command::new("cc");
    cmd.args(CFLAGS)
        .arg("-Wl,-T,linker.ld")
        .arg("-o")
        .arg("guest.elf");
    for (file, text) in &sources {
        std::fs::write(work.join(file), text)?;
        cmd.arg(file);
    }
    let output = cmd
        .current_dir(&work)
        .output()
        .map_err(|e| GuestBuildError::Compiler(format!("cannot run cc: {e}")))?;
    if !output.status.success() {
        return Err(GuestBuildError::Compiler(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    // Rename is atomic, so parallel tests never see a half-written file.
    std::fs::rename(work.join("guest.elf"), &out)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}
