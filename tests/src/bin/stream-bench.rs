//! stream-bench: exec round-trip latency (`true` over SPDY, from the CRI
//! Exec call to the exit status) and port-forward throughput (one
//! connection to a server on the pod's loopback), against one pod VM of a
//! podvisor daemon it starts. Needs root, qemu and docker-registry.
//!
//! cargo run --release -p podvisor-tests --bin stream-bench [-- --execs N --megabytes M]

use std::time::{Duration, Instant};

use clap::Parser;
use podvisor_tests::streaming::forward_once;
use podvisor_tests::streaming::{exit_code, port_forward, SpdyCommand, StreamPod};

#[derive(Parser)]
struct Args {
    /// Exec round trips to time.
    #[arg(long, default_value_t = 30)]
    execs: usize,
    /// MiB to pull through port-forward.
    #[arg(long, default_value_t = 32)]
    megabytes: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let mut pod = StreamPod::start("").await;
    let backend = "qemu";
    let accel = if std::path::Path::new("/dev/kvm").exists()
        && std::fs::read_to_string("/proc/modules")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("kvm_intel ") || l.starts_with("kvm_amd "))
    {
        "kvm"
    } else {
        "tcg"
    };

    let mut times = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        let url = pod.exec_url(&["true"], false, false).await;
        let (_, _, status) = SpdyCommand::start(&url, false, true, true, false)
            .await
            .finish()
            .await;
        assert_eq!(exit_code(&status), None);
        times.push(t.elapsed());
    }
    times.sort();

    // A file of the requested size, served by the pod's httpd.
    let mb = args.megabytes;
    let url = pod
        .exec_url(
            &[
                "sh",
                "-c",
                &format!("head -c {}M /dev/zero > /tmp/www/big", mb),
            ],
            false,
            false,
        )
        .await;
    SpdyCommand::start(&url, false, true, true, false)
        .await
        .finish()
        .await;
    let conn = port_forward(&pod.port_forward_url().await).await;
    let t = Instant::now();
    let (body, error) = forward_once(
        &conn,
        podvisor_tests::streaming::HTTP_PORT,
        0,
        b"GET /big HTTP/1.0\r\n\r\n",
    )
    .await;
    let took = t.elapsed();
    assert!(error.is_empty(), "{error}");
    assert!(body.len() >= mb << 20, "short body: {} bytes", body.len());
    let mbps = body.len() as f64 / (1 << 20) as f64 / took.as_secs_f64();

    println!("backend: {backend} ({accel})");
    println!(
        "exec round trip (`true`, Exec call to exit status, {} runs): p50 {:.1} ms, p95 {:.1} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3
    );
    println!("port-forward throughput (one connection, {mb} MiB): {mbps:.1} MiB/s");
    pod.remove().await;
}
