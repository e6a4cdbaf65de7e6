//! Benchmark for podvisor-vmm on this host's /dev/kvm.
//!
//!   cargo build --release -p podvisor-vmm --bins && ./target/release/vmm-bench
//!
//! Prints: process start to the guest's first COM1 write (median and p90 of
//! 20 runs after warm-up), next to a process that only prints, measured the
//! same way in the same run; VMM RSS for a 128 MiB guest spinning after its
//! first write; vsock round-trip latency and throughput between the host
//! and an echoing test guest.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podvisor_vmm::test_guest::{self, GuestKind};

const WARMUP: usize = 3;
const RUNS: usize = 20;

fn vmm_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PODVISOR_VMM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.with_file_name("podvisor-vmm");
    if !p.exists() {
        eprintln!(
            "vmm-bench: {} not found; build it first: cargo build --release -p podvisor-vmm --bins",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

/// Spawns `cmd` and returns the time until its stdout yields the first byte.
fn time_to_first_byte(cmd: &mut Command) -> (Duration, Child) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    let n = out.read(&mut b).unwrap_or(0);
    let elapsed = start.elapsed();
    if n == 0 {
        eprintln!("vmm-bench: no output from {cmd:?}");
        std::process::exit(1);
    }
    (elapsed, child)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // `as` saturates; with p in 0..=1 the index is within the slice.
    #[allow(clippy::cast_possible_truncation)]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn measure<F: FnMut() -> (Duration, Child)>(mut run: F) -> (Duration, Duration) {
    for _ in 0..WARMUP {
        let (_, c) = run();
        stop(c);
    }
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (t, c) = run();
            stop(c);
            t
        })
        .collect();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.9))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn vmm_command(vmm: &Path, kernel: &Path, extra: &[String]) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(kernel)
        .args(["--memory", "128", "--console", "-"])
        .args(extra);
    c
}

fn vsock_bench(vmm: &Path, guest: &Path, dir: &Path) {
    let socket = dir.join("bench-vsock.sock");
    let mut cmd = vmm_command(
        vmm,
        guest,
        &[
            "--vsock".into(),
            format!("cid=3,socket={}", socket.display()),
            "--cmdline".into(),
            "tests=vsockecho".into(),
        ],
    );
    let (_, child) = time_to_first_byte(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("vsock connect: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"CONNECT 1234\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "vsock handshake: {line:?}");

    // Round trips of one byte.
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    for i in 0..(WARMUP + 200) {
        let t = Instant::now();
        // Any byte will do; the low byte of the counter varies it.
        stream.write_all(&i.to_le_bytes()[..1]).unwrap();
        reader.read_exact(&mut b).unwrap();
        if i >= WARMUP {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();

    // Throughput: stream bytes through the echoing guest and back.
    // The guest copies byte by byte (and is interpreted on PVM hosts): keep this small.
    let total: usize = 256 << 10;
    let mut writer = stream.try_clone().unwrap();
    let t = Instant::now();
    let send = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 32 << 10];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            writer.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while got < total {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "vsock closed early");
        got += n;
    }
    let elapsed = t.elapsed();
    send.join().unwrap();
    stop(child);
    println!(
        "vsock round trip (1 byte, host->guest->host): median {:.3} ms, p90 {:.3} ms ({} samples)",
        ms(percentile(&rtts, 0.5)),
        ms(percentile(&rtts, 0.9)),
        rtts.len()
    );
    println!(
        "vsock throughput (echo, {} KiB each way): {:.2} MiB/s",
        total >> 10,
        (total as f64 / (1 << 20) as f64) / elapsed.as_secs_f64()
    );
}

fn main() {
    let vmm = vmm_binary();
    let dir = std::env::temp_dir().join("podvisor-vmm-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let bench_guest = test_guest::build(GuestKind::Bench, &dir).expect("building the bench guest");
    let test_guest = test_guest::build(GuestKind::Tests, &dir).expect("building the test guest");
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("vmm-bench: /dev/kvm is not usable here");
        std::process::exit(2);
    }
    println!(
        "podvisor-vmm benchmark ({} runs after {} warm-up runs)",
        RUNS, WARMUP
    );

    let (echo_med, echo_p90) = measure(|| {
        let mut c = Command::new("/bin/echo");
        c.arg("!");
        time_to_first_byte(&mut c)
    });
    let (vmm_med, vmm_p90) =
        measure(|| time_to_first_byte(&mut vmm_command(&vmm, &bench_guest, &[])));
    println!(
        "process start -> first output, print-only process (/bin/echo): median {:.2} ms, p90 {:.2} ms",
        ms(echo_med),
        ms(echo_p90)
    );
    println!(
        "process start -> guest's first COM1 write, podvisor-vmm (1 vCPU, 128 MiB): median {:.2} ms, p90 {:.2} ms ({:.1}x the print-only process)",
        ms(vmm_med),
        ms(vmm_p90),
        vmm_med.as_secs_f64() / echo_med.as_secs_f64()
    );

    let (_, child) = time_to_first_byte(&mut vmm_command(&vmm, &bench_guest, &[]));
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    println!(
        "VMM RSS, 128 MiB guest spinning after its first write: {:.2} MB (anon {:.2} MB, file {:.2} MB)",
        status_kib(pid, "VmRSS:") as f64 / 1000.0 * 1.024,
        status_kib(pid, "RssAnon:") as f64 / 1000.0 * 1.024,
        status_kib(pid, "RssFile:") as f64 / 1000.0 * 1.024,
    );
    stop(child);

    vsock_bench(&vmm, &test_guest, &dir);
}
