//! guest-bench: what the guest image costs. Prints the kernel's cold build
//! time (recorded by the build), the sizes of vmlinux, bzImage and the
//! initramfs, and boot-to-agent-ready times through the qemu backend for
//! vmlinux (PVH) and bzImage, with the accelerator in use.
//!
//!     cargo run --release -p podvisor-tests --bin guest-bench -- [BOOTS]

use std::path::Path;
use std::time::{Duration, Instant};

use podvisor::hypervisor::qemu::{Accel, Qemu, QemuConfig};
use podvisor::hypervisor::{GuestImage, DEFAULT_GUEST_DIR};
use podvisor_tests::vm::{boot_qemu, manifest, BootOptions};

fn size(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{:>10} bytes ({:.1} MiB)",
            m.len(),
            m.len() as f64 / 1048576.0
        ),
        Err(e) => format!("unavailable: {e}"),
    }
}

// The index is rounded from [0, len - 1] (p is a fraction): it fits usize.
#[allow(clippy::cast_possible_truncation)]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(label: &str, image: GuestImage, boots: usize) {
    let mut times = Vec::new();
    // One warm-up boot fills the page cache with the image.
    for i in 0..=boots {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let vm = match boot_qemu(
            &format!("bench-{i}"),
            dir.path(),
            BootOptions {
                image: image.clone(),
                vcpus: 1,
                memory_mib: 256,
                ..Default::default()
            },
        )
        .await
        {
            Ok(vm) => vm,
            Err(e) => {
                println!("{label}: boot failed: {e}");
                return;
            }
        };
        let elapsed = started.elapsed();
        vm.shutdown().await;
        if i > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    println!(
        "{label:<18} boot to agent ready: median {:>7.1} ms  p90 {:>7.1} ms  min {:>7.1} ms  ({} boots)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let boots: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let dir = Path::new(DEFAULT_GUEST_DIR);
    println!("guest image in {}", dir.display());
    println!(
        "  kernel release   {}",
        manifest("kernel_release").unwrap_or_else(|| "?".into())
    );
    if let Some(hash) = manifest("kernel_hash") {
        let info = std::fs::read_to_string(format!("/var/cache/podvisor/kernel/{hash}/build-info"))
            .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('=').map(str::to_string))
        };
        println!(
            "  kernel build     {} s cold, make -j{} (recorded by guest-image/build-kernel.sh)",
            field("compile_seconds").unwrap_or_else(|| "?".into()),
            field("jobs").unwrap_or_else(|| "?".into())
        );
    }
    for file in ["vmlinux", "bzImage", "initramfs.img"] {
        println!("  {file:<16} {}", size(&dir.join(file)));
    }
    let accel = match Qemu::new(QemuConfig::default()).map(|q| q.accel().clone()) {
        Ok(Accel::Kvm) => "KVM".to_string(),
        Ok(Accel::Tcg { reason, tsc_khz }) => format!("TCG ({reason}; tsc_early_khz={tsc_khz:?})"),
        Err(e) => {
            println!("qemu backend unavailable: {e}");
            return;
        }
    };
    println!("qemu -M microvm, 1 vCPU, 256 MiB, accelerator: {accel}");
    let image = GuestImage::default();
    measure("vmlinux (PVH)", image.clone(), boots).await;
    let bz = GuestImage {
        kernel: dir.join("bzImage"),
        ..image
    };
    measure("bzImage", bz, boots).await;
}
