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

// The index is rounded from [0, len - 1] (p is a fraction): it fits usize.
#[allow(clippy::cast_possible_truncation)]
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
    // Peer: ExecSync of the same command (no streaming server, no upgrade).
    let mut sync_times = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        let r = pod
            .cri
            .exec_sync(k8s_cri::v1::ExecSyncRequest {
                container_id: pod.container.clone(),
                cmd: vec!["true".into()],
                timeout: 30,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(r.exit_code, 0);
        sync_times.push(t.elapsed());
    }
    sync_times.sort();

    // A file of the requested size, served by the pod's httpd.
    let mb = args.megabytes;
    let url = pod
        .exec_url(
            &[
                "sh",
                "-c",
                &format!("dd if=/dev/zero of=/tmp/www/big bs=1048576 count={mb} 2>/dev/null"),
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
    assert!(
        body.len() >= mb << 20,
        "short body: {:?}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let mbps = body.len() as f64 / (1 << 20) as f64 / took.as_secs_f64();
    // Peer: the same file as exec stdout (agent output stream, same VM channel).
    let url = pod.exec_url(&["cat", "/tmp/www/big"], false, false).await;
    let t = Instant::now();
    let (out, _, _) = SpdyCommand::start(&url, false, true, true, false)
        .await
        .finish()
        .await;
    let cat_mbps = out.len() as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();

    println!("backend: {backend} ({accel})");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
    let (s50, s95) = (percentile(&sync_times, 0.5), percentile(&sync_times, 0.95));
    println!(
        "exec round trip (`true`, Exec call to exit status over SPDY, {} runs): p50 {:.1} ms, p95 {:.1} ms",
        times.len(),
        ms(p50),
        ms(p95)
    );
    println!(
        "  peer ExecSync `true`: p50 {:.1} ms, p95 {:.1} ms; streamed/ExecSync p50 {:.2}x",
        ms(s50),
        ms(s95),
        p50.as_secs_f64() / s50.as_secs_f64()
    );
    println!("port-forward throughput (one connection, {mb} MiB): {mbps:.1} MiB/s");
    println!(
        "  peer exec `cat` of the same file over SPDY: {cat_mbps:.1} MiB/s; port-forward/exec {:.2}x",
        mbps / cat_mbps
    );
    pod.remove().await;
}
