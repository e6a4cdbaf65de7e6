//! podvisor-bench: runs N pods through the CRI lifecycle against one or more
//! CRI endpoints (podvisor, containerd, CRI-O, ...) and prints p50/p95/mean
//! per call, the host memory each pod costs, and the ratio of every figure
//! against a baseline endpoint measured in the same run.
//!
//! Per endpoint, one after another:
//!   1. Version; the image is pulled through ImageService if absent (timed
//!      apart from the lifecycle);
//!   2. warm-up pods (default 1) go through the whole lifecycle untimed;
//!   3. snapshot: the host's processes, MemAvailable, the daemon's PSS;
//!   4. up: RunPodSandbox, CreateContainer, StartContainer for all N pods
//!      (C at a time); all N are then up together;
//!   5. memory: the PSS of the processes that appeared since the snapshot
//!      and descend from the runtime daemon (or from its parent, where
//!      orphans such as containerd's shims are reparented), divided by the
//!      pods that are up; the drop of MemAvailable per pod; the daemon's own
//!      PSS growth per pod;
//!   6. ExecSync in every pod;
//!   7. down: StopContainer, RemoveContainer, StopPodSandbox,
//!      RemovePodSandbox for every pod (also for pods that failed half-way).
//!
//!     podvisor-bench --endpoint containerd=unix:///run/containerd/containerd.sock \
//!         --endpoint podvisor=unix:///run/podvisor/podvisor.sock --local-registry
//!
//! See docs/bench.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use podvisor_tests::registry::{busybox_image, LocalRegistry, TestImage};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// Label every bench pod carries; `--cleanup` removes the pods that have it.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY_VALUE: &str = "podvisor-bench";
const RUN_LABEL: &str = "podvisor-bench/run";
const NAMESPACE: &str = "podvisor-bench";
const CONTAINER_NAME: &str = "bench";

#[derive(Parser, Debug)]
#[command(
    name = "podvisor-bench",
    about = "Run N pods through the CRI lifecycle against CRI endpoints; print p50/p95 per call, host memory per pod, and ratios against a baseline endpoint"
)]
struct Args {
    /// A CRI endpoint: `unix:///path.sock` or `NAME=unix:///path.sock`.
    /// Repeat it to measure several runtimes one after another.
    #[arg(long = "endpoint", value_name = "[NAME=]unix:///PATH", required = true)]
    endpoints: Vec<String>,

    /// The endpoint (by name) ratios are computed against [default: the first].
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,

    /// Pods to run; all of them are up at the same time when memory is measured.
    #[arg(long, default_value_t = 5)]
    pods: usize,

    /// How many pods go through a phase at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,

    /// The container image (pulled first if the runtime does not have it)
    /// [default with --local-registry: ADDR/busybox:latest].
    #[arg(long, value_name = "REF")]
    image: Option<String>,

    /// Start Debian's docker-registry on ADDR (default 127.0.0.1:<free port>)
    /// for the run and push `busybox:latest` (busybox-static, Cmd sh) and
    /// `pause:latest` (busybox sleep, a sandbox image) to it.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    local_registry: Option<String>,

    /// The container's command (split on whitespace).
    #[arg(long, default_value = "sleep 3600")]
    command: String,

    /// The command ExecSync runs in each container (split on whitespace);
    /// it must exit 0.
    #[arg(long, default_value = "true")]
    exec: String,

    /// RunPodSandbox's runtime_handler, for every endpoint.
    #[arg(long, value_name = "HANDLER")]
    runtime_handler: Option<String>,

    /// StopContainer's timeout in seconds (0: kill at once).
    #[arg(long, default_value_t = 0)]
    stop_timeout: i64,

    /// Pods run through the whole lifecycle, untimed, before the measured
    /// ones (the first pod of a runtime pays one-time costs, such as
    /// containerd pulling its sandbox image).
    #[arg(long, default_value_t = 1)]
    warmup: usize,

    /// Seconds to let the host settle before each memory reading (after the
    /// warm-up, with the pods up, after their removal).
    #[arg(long, default_value_t = 1.0)]
    settle_secs: f64,

    /// Give up on one CRI call after this many seconds.
    #[arg(long, default_value_t = 300)]
    op_timeout_secs: u64,

    /// Only pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox
    /// (for a runtime without containers yet); no image is pulled.
    #[arg(long)]
    sandbox_only: bool,

    /// Where the pods' log directories go [default: a temp dir, removed at
    /// the end].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,

    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,

    /// Remove every pod (and its containers) that podvisor-bench left on the
    /// endpoints, then exit.
    #[arg(long)]
    cleanup: bool,
}

// ---------------------------------------------------------------------------
// Endpoints

#[derive(Clone, Debug)]
struct EndpointSpec {
    name: String,
    uri: String,
    socket: PathBuf,
}

fn parse_endpoint(arg: &str) -> Result<EndpointSpec, String> {
    let (name, uri) = match arg.split_once('=') {
        Some((name, uri)) if !name.is_empty() && !name.contains(['/', ':']) => {
            (Some(name.to_string()), uri)
        }
        _ => (None, arg),
    };
    let path = uri.strip_prefix("unix://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(format!(
            "endpoint {arg:?}: expected unix:///absolute/path.sock (or NAME=unix:///...)"
        ));
    }
    let socket = PathBuf::from(path);
    let name = name.unwrap_or_else(|| {
        socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    });
    Ok(EndpointSpec {
        name,
        uri: format!("unix://{path}"),
        socket,
    })
}

fn parse_endpoints(args: &[String]) -> Result<Vec<EndpointSpec>, String> {
    let mut out: Vec<EndpointSpec> = Vec::new();
    for a in args {
        let mut e = parse_endpoint(a)?;
        let base = e.name.clone();
        let mut n = 2;
        while out.iter().any(|o| o.name == e.name) {
            e.name = format!("{base}-{n}");
            n += 1;
        }
        out.push(e);
    }
    Ok(out)
}

struct Clients {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

async fn connect(endpoint: &EndpointSpec) -> Result<Clients, String> {
    let channel = tokio::time::timeout(
        Duration::from_secs(10),
        podvisor_tests::daemon::channel(&endpoint.socket),
    )
    .await
    .map_err(|_| format!("connecting to {}: timed out", endpoint.uri))?
    .map_err(|e| format!("connecting to {}: {e}", endpoint.uri))?;
    Ok(Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    })
}

// ---------------------------------------------------------------------------
// Operations and their timings

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    RunPodSandbox,
    CreateContainer,
    StartContainer,
    ExecSync,
    StopContainer,
    RemoveContainer,
    StopPodSandbox,
    RemovePodSandbox,
}

const OPS: [Op; 8] = [
    Op::RunPodSandbox,
    Op::CreateContainer,
    Op::StartContainer,
    Op::ExecSync,
    Op::StopContainer,
    Op::RemoveContainer,
    Op::StopPodSandbox,
    Op::RemovePodSandbox,
];

impl Op {
    /// crictl's verb for it.
    fn label(self) -> &'static str {
        match self {
            Op::RunPodSandbox => "runp",
            Op::CreateContainer => "create",
            Op::StartContainer => "start",
            Op::ExecSync => "exec",
            Op::StopContainer => "stop",
            Op::RemoveContainer => "rm",
            Op::StopPodSandbox => "stopp",
            Op::RemovePodSandbox => "rmp",
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Op::RunPodSandbox => "RunPodSandbox",
            Op::CreateContainer => "CreateContainer",
            Op::StartContainer => "StartContainer",
            Op::ExecSync => "ExecSync",
            Op::StopContainer => "StopContainer",
            Op::RemoveContainer => "RemoveContainer",
            Op::StopPodSandbox => "StopPodSandbox",
            Op::RemovePodSandbox => "RemovePodSandbox",
        }
    }

    fn sandbox_only(self) -> bool {
        matches!(
            self,
            Op::RunPodSandbox | Op::StopPodSandbox | Op::RemovePodSandbox
        )
    }
}

/// Runs one CRI call under a deadline; returns its answer and how long it
/// took in milliseconds, or the gRPC status as text.
async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(T, f64), String> {
    let started = Instant::now();
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(format!("timed out after {} s", limit.as_secs())),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(answer)) => Ok((
            answer.into_inner(),
            started.elapsed().as_secs_f64() * 1000.0,
        )),
    }
}

#[derive(Clone, Debug, Default)]
struct Stats {
    n: usize,
    p50: f64,
    p95: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentiles: p95 of 5 samples is the largest.
fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        // p is a fraction, so the rank is at most len: it fits usize.
        #[allow(clippy::cast_possible_truncation)]
        let r = (p * s.len() as f64).ceil() as usize;
        s[r.clamp(1, s.len()) - 1]
    };
    Some(Stats {
        n: s.len(),
        p50: rank(0.50),
        p95: rank(0.95),
        mean: s.iter().sum::<f64>() / s.len() as f64,
        min: s[0],
        max: s[s.len() - 1],
    })
}

fn stats_json(s: &Stats) -> Value {
    json!({"n": s.n, "p50_ms": s.p50, "p95_ms": s.p95, "mean_ms": s.mean, "min_ms": s.min, "max_ms": s.max})
}

// ---------------------------------------------------------------------------
// Pods

/// What every pod of one endpoint shares.
struct Ctx {
    runtime: RuntimeServiceClient<Channel>,
    image: String,
    command: Vec<String>,
    exec: Vec<String>,
    runtime_handler: String,
    stop_timeout: i64,
    op_timeout: Duration,
    sandbox_only: bool,
    log_dir: PathBuf,
    run_id: String,
    dns: Option<cri::DnsConfig>,
}

#[derive(Debug)]
struct Pod {
    name: String,
    uid: String,
    config: cri::PodSandboxConfig,
    sandbox_id: Option<String>,
    container_id: Option<String>,
    /// StartContainer (or RunPodSandbox with --sandbox-only) succeeded.
    up: bool,
    /// The pod's IP as PodSandboxStatus reports it while the pods are up.
    ip: Option<String>,
    times: BTreeMap<Op, f64>,
    errors: Vec<String>,
}

impl Pod {
    fn fail(&mut self, op: Op, e: String) {
        self.errors.push(format!("{}: {}", op.rpc(), e));
    }
}

/// 16 random bytes as a UUID (version 4), like a pod's metadata.uid.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The host's resolv.conf as kubelet passes it for dnsPolicy Default.
fn host_dns() -> Option<cri::DnsConfig> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let mut dns = cri::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(String::from)),
            Some("search") => dns.searches = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    Some(dns)
}

fn namespace_options() -> cri::NamespaceOption {
    // What kubelet sends for a pod without hostNetwork/hostPID/hostIPC and
    // without shareProcessNamespace.
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod as kubelet would describe it: metadata, labels, log directory
/// (created here, as kubelet does), DNS, namespace options.
fn new_pod(ctx: &Ctx, name: String) -> std::io::Result<Pod> {
    let uid = random_uuid();
    let log_directory = ctx.log_dir.join(format!("{NAMESPACE}_{name}_{uid}"));
    std::fs::create_dir_all(log_directory.join(CONTAINER_NAME))?;
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.clone()),
        ("io.kubernetes.pod.namespace".to_string(), NAMESPACE.into()),
        ("io.kubernetes.pod.uid".to_string(), uid.clone()),
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.into()),
        (RUN_LABEL.to_string(), ctx.run_id.clone()),
    ]);
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        dns_config: ctx.dns.clone(),
        labels,
        annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Pod {
        name,
        uid,
        config,
        sandbox_id: None,
        container_id: None,
        up: false,
        ip: None,
        times: BTreeMap::new(),
        errors: Vec::new(),
    })
}

fn container_config(ctx: &Ctx, pod: &Pod) -> cri::ContainerConfig {
    let labels = HashMap::from([
        (
            "io.kubernetes.container.name".to_string(),
            CONTAINER_NAME.to_string(),
        ),
        ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".to_string(), NAMESPACE.into()),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.into()),
    ]);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: CONTAINER_NAME.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: ctx.image.clone(),
            user_specified_image: ctx.image.clone(),
            ..Default::default()
        }),
        command: ctx.command.clone(),
        labels,
        log_path: format!("{CONTAINER_NAME}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            // A BestEffort pod's container, as kubelet sends it.
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer, StartContainer; stops at the first error.
async fn pod_up(ctx: Arc<Ctx>, mut pod: Pod) -> Pod {
    let mut rt = ctx.runtime.clone();
    let limit = ctx.op_timeout;
    let request = cri::RunPodSandboxRequest {
        config: Some(pod.config.clone()),
        runtime_handler: ctx.runtime_handler.clone(),
    };
    match timed(limit, rt.run_pod_sandbox(request)).await {
        Ok((r, ms)) => {
            pod.sandbox_id = Some(r.pod_sandbox_id);
            pod.times.insert(Op::RunPodSandbox, ms);
        }
        Err(e) => {
            pod.fail(Op::RunPodSandbox, e);
            return pod;
        }
    }
    if ctx.sandbox_only {
        pod.up = true;
        return pod;
    }
    let request = cri::CreateContainerRequest {
        pod_sandbox_id: pod.sandbox_id.clone().unwrap_or_default(),
        config: Some(container_config(&ctx, &pod)),
        sandbox_config: Some(pod.config.clone()),
    };
    match timed(limit, rt.create_container(request)).await {
        Ok((r, ms)) => {
            pod.container_id = Some(r.container_id);
            pod.times.insert(Op::CreateContainer, ms);
        }
        Err(e) => {
            pod.fail(Op::CreateContainer, e);
            return pod;
        }
    }
    let request = cri::StartContainerRequest {
        container_id: pod.container_id.clone().unwrap_or_default(),
    };
    match timed(limit, rt.start_container(request)).await {
        Ok((_, ms)) => {
            pod.times.insert(Op::StartContainer, ms);
            pod.up = true;
        }
        Err(e) => pod.fail(Op::StartContainer, e),
    }
    pod
}

/// PodSandboxStatus, untimed: the pod's IP (a pod without one would make
/// the comparison unfair: no network set up).
async fn pod_ip(ctx: &Ctx, pod: &mut Pod) {
    let Some(id) = pod.sandbox_id.clone() else {
        return;
    };
    let mut rt = ctx.runtime.clone();
    let request = cri::PodSandboxStatusRequest {
        pod_sandbox_id: id,
        verbose: false,
    };
    if let Ok((r, _)) = timed(ctx.op_timeout, rt.pod_sandbox_status(request)).await {
        pod.ip = r
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());
    }
}

async fn pod_exec(ctx: Arc<Ctx>, mut pod: Pod) -> Pod {
    let (true, Some(id)) = (pod.up, pod.container_id.clone()) else {
        return pod;
    };
    let mut rt = ctx.runtime.clone();
    let request = cri::ExecSyncRequest {
        container_id: id,
        cmd: ctx.exec.clone(),
        timeout: ctx.op_timeout.as_secs() as i64,
    };
    match timed(ctx.op_timeout, rt.exec_sync(request)).await {
        Ok((r, ms)) if r.exit_code == 0 => {
            pod.times.insert(Op::ExecSync, ms);
        }
        Ok((r, _)) => pod.fail(
            Op::ExecSync,
            format!(
                "{:?} exited {}: {}",
                ctx.exec,
                r.exit_code,
                String::from_utf8_lossy(&r.stderr).trim()
            ),
        ),
        Err(e) => pod.fail(Op::ExecSync, e),
    }
    pod
}

/// Tears down whatever the pod got to: every step is tried even when an
/// earlier one failed.
async fn pod_down(ctx: Arc<Ctx>, mut pod: Pod) -> Pod {
    let mut rt = ctx.runtime.clone();
    let limit = ctx.op_timeout;
    if let Some(id) = pod.container_id.clone() {
        let request = cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: ctx.stop_timeout,
        };
        match timed(limit, rt.stop_container(request)).await {
            Ok((_, ms)) => {
                pod.times.insert(Op::StopContainer, ms);
            }
            Err(e) => pod.fail(Op::StopContainer, e),
        }
        let request = cri::RemoveContainerRequest { container_id: id };
        match timed(limit, rt.remove_container(request)).await {
            Ok((_, ms)) => {
                pod.times.insert(Op::RemoveContainer, ms);
            }
            Err(e) => pod.fail(Op::RemoveContainer, e),
        }
    }
    if let Some(id) = pod.sandbox_id.clone() {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        match timed(limit, rt.stop_pod_sandbox(request)).await {
            Ok((_, ms)) => {
                pod.times.insert(Op::StopPodSandbox, ms);
            }
            Err(e) => pod.fail(Op::StopPodSandbox, e),
        }
        let request = cri::RemovePodSandboxRequest { pod_sandbox_id: id };
        match timed(limit, rt.remove_pod_sandbox(request)).await {
            Ok((_, ms)) => {
                pod.times.insert(Op::RemovePodSandbox, ms);
            }
            Err(e) => pod.fail(Op::RemovePodSandbox, e),
        }
    }
    pod
}

/// Runs `f` on every item, at most `concurrency` at once; keeps the order.
async fn run_all<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Vec<T>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let fut = f(item);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            (i, out)
        });
    }
    let mut out: Vec<(usize, T)> = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.expect("a pod task panicked"));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}

// ---------------------------------------------------------------------------
// Host memory

#[derive(Clone, Debug)]
struct Proc {
    ppid: i32,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    start: u64,
    comm: String,
}

fn processes() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... starttime (field 22); comm may hold
        // spaces and parentheses, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(ppid), Some(start)) = (
            rest.get(1).and_then(|s| s.parse().ok()),
            rest.get(19).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        // comm is cut at 15 bytes (containerd-shim-runc-v2); argv[0]'s
        // file name is not.
        let comm = std::fs::read(entry.path().join("cmdline"))
            .ok()
            .and_then(|c| {
                let argv0 = c.split(|b| *b == 0).next()?;
                let name = Path::new(std::str::from_utf8(argv0).ok()?).file_name()?;
                Some(name.to_string_lossy().into_owned())
            })
            .filter(|n| !n.is_empty())
            .unwrap_or(comm);
        out.insert(pid, Proc { ppid, start, comm });
    }
    out
}

/// Proportional set size of a process in KiB (shared pages divided among
/// the processes that map them), from /proc/PID/smaps_rollup.
fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The processes that hold the listening socket `socket` open: the
/// runtime daemon.
fn socket_owners(socket: &Path) -> Vec<i32> {
    let canonical = std::fs::canonicalize(socket).ok();
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let inodes: HashSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let path = Path::new(f.get(7)?);
            (path == socket || Some(path) == canonical.as_deref()).then(|| f[6].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut owners = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|l| {
                    let l = l.to_string_lossy();
                    l.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .is_some_and(|i| inodes.contains(i))
                })
                .unwrap_or(false)
        });
        if holds {
            owners.push(pid);
        }
    }
    owners.sort_unstable();
    owners
}

/// The host's state before the pods: what was running, and how much memory
/// was available.
///
/// A process that appears later is the pods' when, walking up from it, the
/// first process that was already running is
/// - the daemon (podvisor's qemu and virtiofsd, a runtime's children), or
/// - where the daemon's orphans go, its parent (a subreaper, like the tini
///   bench-cri.sh starts containerd under) or PID 1, and the top-most new
///   process names the daemon's socket directory on its command line
///   (containerd's shims: `-address /run/containerd/containerd.sock`).
///
/// Other processes that start meanwhile (a build on the same host) do not
/// count.
struct Snapshot {
    procs: HashMap<i32, u64>,
    mem_available_kib: Option<u64>,
    daemon: Vec<i32>,
    adopters: HashSet<i32>,
    socket_dir: String,
    daemon_pss_kib: Option<u64>,
}

fn snapshot(socket: &Path) -> Snapshot {
    snapshot_with(socket_owners(socket), socket)
}

fn snapshot_with(daemon: Vec<i32>, socket: &Path) -> Snapshot {
    let procs = processes();
    let mut adopters = HashSet::from([1]);
    for pid in &daemon {
        if let Some(p) = procs.get(pid) {
            adopters.insert(p.ppid);
        }
    }
    adopters.retain(|pid| !daemon.contains(pid));
    let socket_dir = match socket.parent() {
        Some(d) if d != Path::new("/") => d.to_string_lossy().into_owned(),
        _ => socket.to_string_lossy().into_owned(),
    };
    let daemon_pss_kib =
        (!daemon.is_empty()).then(|| daemon.iter().filter_map(|p| pss_kib(*p)).sum::<u64>());
    Snapshot {
        procs: procs.iter().map(|(pid, p)| (*pid, p.start)).collect(),
        mem_available_kib: mem_available_kib(),
        daemon,
        adopters,
        socket_dir,
        daemon_pss_kib,
    }
}

fn command_line_mentions(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        })
        .unwrap_or(false)
}

#[derive(Debug, Default)]
struct Memory {
    pods_up: usize,
    /// Sum of the PSS of the pods' host processes.
    pss_total_kib: u64,
    /// By command name: (processes, PSS KiB).
    processes: BTreeMap<String, (usize, u64)>,
    mem_available_during_kib: Option<u64>,
    /// MemAvailable with the pods up, below the mean of before the pods and
    /// after their removal (which cancels a drift of the rest of the host
    /// that is linear in time).
    mem_available_drop_kib: Option<i64>,
    daemon_pss_growth_kib: Option<i64>,
    daemon_found: bool,
}

impl Memory {
    fn per_pod(&self, kib: f64) -> f64 {
        kib / self.pods_up.max(1) as f64
    }

    fn pss_per_pod_mib(&self) -> f64 {
        self.per_pod(self.pss_total_kib as f64) / 1024.0
    }

    fn available_per_pod_mib(&self) -> Option<f64> {
        self.mem_available_drop_kib
            .map(|k| self.per_pod(k as f64) / 1024.0)
    }

    fn daemon_per_pod_mib(&self) -> Option<f64> {
        self.daemon_pss_growth_kib
            .map(|k| self.per_pod(k as f64) / 1024.0)
    }

    fn processes_text(&self) -> String {
        if self.processes.is_empty() {
            return "none found".into();
        }
        self.processes
            .iter()
            .map(|(comm, (n, kib))| format!("{comm} x{n} {:.1} MiB", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn measure_memory(before: &Snapshot, pods_up: usize) -> Memory {
    let now = processes();
    let is_new = |pid: &i32, p: &Proc| before.procs.get(pid) != Some(&p.start);
    // Per top-most new process: does it belong to the runtime?
    let mut decided: HashMap<i32, bool> = HashMap::new();
    let mut memory = Memory {
        pods_up,
        daemon_found: !before.daemon.is_empty(),
        ..Default::default()
    };
    for (pid, p) in &now {
        if !is_new(pid, p) {
            continue;
        }
        // Up to the nearest ancestor that was already running (`cur`);
        // `top` is the new process right below it.
        let mut top = *pid;
        let mut cur = p.ppid;
        let mut hops = 0;
        while let Some(parent) = now.get(&cur) {
            if !is_new(&cur, parent) || hops > 1000 {
                break;
            }
            top = cur;
            cur = parent.ppid;
            hops += 1;
        }
        let counted = if before.daemon.contains(&cur) {
            true
        } else if before.adopters.contains(&cur) {
            *decided
                .entry(top)
                .or_insert_with(|| command_line_mentions(top, &before.socket_dir))
        } else {
            false
        };
        if !counted {
            continue;
        }
        let Some(kib) = pss_kib(*pid) else { continue };
        memory.pss_total_kib += kib;
        let e = memory.processes.entry(p.comm.clone()).or_default();
        e.0 += 1;
        e.1 += kib;
    }
    memory.mem_available_during_kib = mem_available_kib();
    memory.daemon_pss_growth_kib = before.daemon_pss_kib.map(|b| {
        let now: u64 = before.daemon.iter().filter_map(|p| pss_kib(*p)).sum();
        now as i64 - b as i64
    });
    memory
}

// ---------------------------------------------------------------------------
// One endpoint

#[derive(Debug, Default)]
struct EndpointResult {
    runtime: String,
    image_pull_ms: Option<f64>,
    image_present: bool,
    pods_requested: usize,
    pods: Vec<Pod>,
    memory: Option<Memory>,
    /// Why the endpoint could not be measured at all.
    fatal: Option<String>,
    interrupted: bool,
}

impl EndpointResult {
    fn samples(&self, op: Op) -> Vec<f64> {
        self.pods
            .iter()
            .filter_map(|p| p.times.get(&op).copied())
            .collect()
    }

    /// Per pod, the sum of all its calls (pods with every call timed).
    fn lifecycle(&self, ops: &[Op]) -> Vec<f64> {
        self.pods
            .iter()
            .filter(|p| ops.iter().all(|op| p.times.contains_key(op)))
            .map(|p| ops.iter().map(|op| p.times[op]).sum())
            .collect()
    }

    fn pod_ips(&self) -> Vec<String> {
        self.pods.iter().filter_map(|p| p.ip.clone()).collect()
    }

    fn errors(&self) -> Vec<String> {
        self.pods
            .iter()
            .flat_map(|p| p.errors.iter().map(move |e| format!("{}: {e}", p.name)))
            .collect()
    }
}

struct Settings {
    image: Option<String>,
    command: Vec<String>,
    exec: Vec<String>,
    runtime_handler: String,
    stop_timeout: i64,
    op_timeout: Duration,
    sandbox_only: bool,
    pods: usize,
    concurrency: usize,
    warmup: usize,
    settle: Duration,
    log_dir: PathBuf,
    run_id: String,
}

fn ops_for(settings: &Settings) -> Vec<Op> {
    OPS.iter()
        .copied()
        .filter(|op| !settings.sandbox_only || op.sandbox_only())
        .collect()
}

fn unimplemented_hint(error: &str) -> &'static str {
    if error.contains("Unimplemented") {
        " (a runtime without containers or images yet: --sandbox-only measures its pods)"
    } else {
        ""
    }
}

async fn bench_endpoint(endpoint: &EndpointSpec, settings: &Settings) -> EndpointResult {
    let mut result = EndpointResult {
        pods_requested: settings.pods,
        ..Default::default()
    };
    let clients = match connect(endpoint).await {
        Ok(c) => c,
        Err(e) => {
            result.fatal = Some(e);
            return result;
        }
    };
    let limit = settings.op_timeout;
    let mut rt = clients.runtime.clone();
    match timed(limit, rt.version(cri::VersionRequest::default())).await {
        Ok((v, _)) => {
            result.runtime = format!(
                "{} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            )
        }
        Err(e) => {
            result.fatal = Some(format!("Version: {e}"));
            return result;
        }
    }
    eprintln!("[{}] {} at {}", endpoint.name, result.runtime, endpoint.uri);

    let image = settings.image.clone().unwrap_or_default();
    if !settings.sandbox_only {
        let mut images = clients.images.clone();
        let spec = cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let status = timed(
            limit,
            images.image_status(cri::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            }),
        )
        .await;
        match status {
            Ok((s, _)) if s.image.is_some() => result.image_present = true,
            Ok(_) => {
                let pull = cri::PullImageRequest {
                    image: Some(spec),
                    ..Default::default()
                };
                match timed(limit, images.pull_image(pull)).await {
                    Ok((_, ms)) => {
                        eprintln!("[{}] pulled {image} in {ms:.0} ms", endpoint.name);
                        result.image_pull_ms = Some(ms);
                    }
                    Err(e) => {
                        let hint = unimplemented_hint(&e);
                        result.fatal = Some(format!("PullImage {image}: {e}{hint}"));
                        return result;
                    }
                }
            }
            Err(e) => {
                let hint = unimplemented_hint(&e);
                result.fatal = Some(format!("ImageStatus {image}: {e}{hint}"));
                return result;
            }
        }
    }

    let ctx = Arc::new(Ctx {
        runtime: clients.runtime.clone(),
        image,
        command: settings.command.clone(),
        exec: settings.exec.clone(),
        runtime_handler: settings.runtime_handler.clone(),
        stop_timeout: settings.stop_timeout,
        op_timeout: settings.op_timeout,
        sandbox_only: settings.sandbox_only,
        log_dir: settings.log_dir.join(&endpoint.name),
        run_id: settings.run_id.clone(),
        dns: host_dns(),
    });
    let make = |name: String| match new_pod(&ctx, name) {
        Ok(p) => p,
        Err(e) => panic!(
            "creating the pod log directory under {}: {e}",
            ctx.log_dir.display()
        ),
    };

    // Warm-up pods: the whole lifecycle, one at a time, untimed.
    for i in 0..settings.warmup {
        if stopped() {
            break;
        }
        let pod = make(format!("bench-{}-warmup-{i}", settings.run_id));
        let pod = pod_up(ctx.clone(), pod).await;
        let pod = pod_exec(ctx.clone(), pod).await;
        let pod = pod_down(ctx.clone(), pod).await;
        if !pod.errors.is_empty() {
            let errors = pod.errors.join("; ");
            result.fatal = Some(format!(
                "warm-up pod failed: {errors}{}",
                unimplemented_hint(&errors)
            ));
            return result;
        }
        eprintln!("[{}] warm-up pod {} done", endpoint.name, i + 1);
    }
    if !settings.settle.is_zero() {
        tokio::time::sleep(settings.settle).await;
    }

    let before = snapshot(&endpoint.socket);
    if before.daemon.is_empty() {
        eprintln!(
            "[{}] no process holds {} open here: pod processes cannot be attributed (other pid namespace?)",
            endpoint.name,
            endpoint.socket.display()
        );
    }
    let pods: Vec<Pod> = (0..settings.pods)
        .map(|i| make(format!("bench-{}-{i}", settings.run_id)))
        .collect();
    let up_ctx = ctx.clone();
    let pods = run_all(pods, settings.concurrency, move |pod| {
        let ctx = up_ctx.clone();
        async move {
            if stopped() {
                return pod;
            }
            pod_up(ctx, pod).await
        }
    })
    .await;
    let pods_up = pods.iter().filter(|p| p.up).count();
    eprintln!("[{}] {pods_up} of {} pods up", endpoint.name, settings.pods);
    if pods_up > 0 && !stopped() {
        if !settings.settle.is_zero() {
            tokio::time::sleep(settings.settle).await;
        }
        result.memory = Some(measure_memory(&before, pods_up));
    }
    let mut pods = pods;
    for pod in pods.iter_mut().filter(|p| p.up) {
        pod_ip(&ctx, pod).await;
    }
    let pods = if stopped() || settings.sandbox_only {
        pods
    } else {
        let c = ctx.clone();
        run_all(pods, settings.concurrency, move |pod| {
            pod_exec(c.clone(), pod)
        })
        .await
    };
    let c = ctx.clone();
    let pods = run_all(pods, settings.concurrency, move |pod| {
        pod_down(c.clone(), pod)
    })
    .await;
    eprintln!("[{}] pods removed", endpoint.name);
    if let Some(m) = &mut result.memory {
        if !settings.settle.is_zero() {
            tokio::time::sleep(settings.settle).await;
        }
        let after = mem_available_kib();
        if let (Some(b), Some(d), Some(a)) =
            (before.mem_available_kib, m.mem_available_during_kib, after)
        {
            m.mem_available_drop_kib = Some((b as i64 + a as i64) / 2 - d as i64);
        }
    }
    result.pods = pods;
    result.interrupted = stopped();
    result
}

/// Set by SIGINT/SIGTERM: no new pods start, the ones up are torn down.
static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------
// --cleanup

async fn cleanup(endpoint: &EndpointSpec, limit: Duration) -> Result<usize, String> {
    let clients = connect(endpoint).await?;
    let mut rt = clients.runtime;
    let selector = HashMap::from([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())]);
    let (containers, _) = timed(
        limit,
        rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        }),
    )
    .await
    .map_err(|e| format!("ListContainers: {e}"))?;
    for c in containers.containers {
        let _ = timed(
            limit,
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 0,
            }),
        )
        .await;
        if let Err(e) = timed(
            limit,
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: c.id.clone(),
            }),
        )
        .await
        {
            eprintln!("[{}] RemoveContainer {}: {e}", endpoint.name, c.id);
        }
    }
    let (sandboxes, _) = timed(
        limit,
        rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: selector,
                ..Default::default()
            }),
        }),
    )
    .await
    .map_err(|e| format!("ListPodSandbox: {e}"))?;
    let n = sandboxes.items.len();
    for s in sandboxes.items {
        let _ = timed(
            limit,
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            }),
        )
        .await;
        if let Err(e) = timed(
            limit,
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            }),
        )
        .await
        {
            eprintln!("[{}] RemovePodSandbox {}: {e}", endpoint.name, s.id);
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Reports

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn fmt_opt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The rows of the per-operation tables: each op, then the lifecycle sum.
fn rows(result: &EndpointResult, ops: &[Op]) -> Vec<(String, Option<Stats>)> {
    let mut rows: Vec<(String, Option<Stats>)> = ops
        .iter()
        .map(|op| (op.label().to_string(), stats(&result.samples(*op))))
        .collect();
    rows.push(("lifecycle".into(), stats(&result.lifecycle(ops))));
    rows
}

/// One per-pod memory figure of an endpoint's results.
type MemFigure = fn(&Memory) -> Option<f64>;

fn print_text(
    endpoints: &[EndpointSpec],
    results: &[EndpointResult],
    baseline: usize,
    settings: &Settings,
) {
    let ops = ops_for(settings);
    println!();
    println!(
        "podvisor-bench: {} pods per endpoint, concurrency {}, {} warm-up pod(s){}",
        settings.pods,
        settings.concurrency,
        settings.warmup,
        if settings.sandbox_only {
            ", sandboxes only"
        } else {
            ""
        }
    );
    if let (Some(image), false) = (&settings.image, settings.sandbox_only) {
        println!(
            "image {image}, command {:?}, exec {:?}",
            settings.command.join(" "),
            settings.exec.join(" ")
        );
    }
    for (e, r) in endpoints.iter().zip(results) {
        println!();
        println!("== {} ({}) {}", e.name, e.uri, r.runtime);
        if let Some(f) = &r.fatal {
            println!("   not measured: {f}");
            continue;
        }
        if !settings.sandbox_only {
            match (r.image_present, r.image_pull_ms) {
                (true, _) => println!("   image already present, not pulled"),
                (_, Some(ms)) => println!("   image pull: {ms:.0} ms (not part of the lifecycle)"),
                _ => {}
            }
        }
        println!(
            "   {:<10} {:>9} {:>9} {:>9} {:>9} {:>4}",
            "op", "p50 ms", "p95 ms", "mean ms", "max ms", "n"
        );
        for (label, s) in rows(r, &ops) {
            match s {
                Some(s) => println!(
                    "   {:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>4}",
                    label, s.p50, s.p95, s.mean, s.max, s.n
                ),
                None => println!("   {label:<10} {:>9}", "-"),
            }
        }
        match &r.memory {
            Some(m) => {
                println!(
                    "   memory with {} pods up, per pod: host PSS of pod processes {:.1} MiB; MemAvailable drop {} MiB; daemon PSS growth {} MiB",
                    m.pods_up,
                    m.pss_per_pod_mib(),
                    fmt_opt_mib(m.available_per_pod_mib()),
                    fmt_opt_mib(m.daemon_per_pod_mib()),
                );
                println!("   pod processes (all pods): {}", m.processes_text());
                if !m.daemon_found {
                    println!("   (the daemon's process was not found: PSS is not attributed)");
                }
            }
            None => println!("   memory: not measured (no pod came up)"),
        }
        let ips = r.pod_ips();
        let up = r.pods.iter().filter(|p| p.up).count();
        if up > 0 {
            println!(
                "   pod IPs ({} of {up} pods up have one): {}",
                ips.len(),
                if ips.is_empty() {
                    "-".into()
                } else {
                    ips.join(" ")
                }
            );
        }
        let errors = r.errors();
        if !errors.is_empty() {
            println!("   {} error(s):", errors.len());
            for e in errors.iter().take(10) {
                println!("     {e}");
            }
        }
        if r.interrupted {
            println!("   interrupted: results are partial");
        }
    }

    let measured: Vec<usize> = (0..results.len())
        .filter(|i| *i != baseline && results[*i].fatal.is_none())
        .collect();
    if results[baseline].fatal.is_some() || measured.is_empty() {
        return;
    }
    let base = &results[baseline];
    println!();
    println!(
        "== ratios against {} (endpoint / {}; above 1 is slower or bigger)",
        endpoints[baseline].name, endpoints[baseline].name
    );
    print!("   {:<10}", "op");
    for i in &measured {
        print!(" {:>22}", format!("{} p50 / p95", endpoints[*i].name));
    }
    println!();
    let base_rows = rows(base, &ops);
    let other_rows: Vec<_> = measured.iter().map(|i| rows(&results[*i], &ops)).collect();
    for (k, (label, b)) in base_rows.iter().enumerate() {
        print!("   {label:<10}");
        for o in &other_rows {
            let cell = match (b, &o[k].1) {
                (Some(b), Some(s)) => format!(
                    "{} / {}",
                    fmt_ratio(ratio(s.p50, b.p50)),
                    fmt_ratio(ratio(s.p95, b.p95))
                ),
                _ => "-".into(),
            };
            print!(" {cell:>22}");
        }
        println!();
    }
    let mem_rows: [(&str, MemFigure); 2] = [
        ("pss/pod", |m| Some(m.pss_per_pod_mib())),
        ("avail/pod", |m| m.available_per_pod_mib()),
    ];
    for (label, f) in mem_rows {
        print!("   {label:<10}");
        for i in &measured {
            let cell = match (&base.memory, &results[*i].memory) {
                (Some(b), Some(m)) => match (f(m), f(b)) {
                    (Some(a), Some(b)) => fmt_ratio(ratio(a, b)),
                    _ => "-".into(),
                },
                _ => "-".into(),
            };
            print!(" {cell:>22}");
        }
        println!();
    }
}

fn result_json(e: &EndpointSpec, r: &EndpointResult, ops: &[Op]) -> Value {
    let ops_json: serde_json::Map<String, Value> = rows(r, ops)
        .into_iter()
        .map(|(label, s)| (label, s.as_ref().map_or(Value::Null, stats_json)))
        .collect();
    let memory = r.memory.as_ref().map(|m| {
        json!({
            "pods_up": m.pods_up,
            "pss_total_kib": m.pss_total_kib,
            "pss_per_pod_mib": m.pss_per_pod_mib(),
            "mem_available_drop_per_pod_mib": m.available_per_pod_mib(),
            "daemon_pss_growth_per_pod_mib": m.daemon_per_pod_mib(),
            "daemon_found": m.daemon_found,
            "processes": m.processes.iter().map(|(comm, (n, kib))| json!({"comm": comm, "count": n, "pss_kib": kib})).collect::<Vec<_>>(),
        })
    });
    json!({
        "name": e.name,
        "endpoint": e.uri,
        "runtime": r.runtime,
        "fatal": r.fatal,
        "image_present": r.image_present,
        "image_pull_ms": r.image_pull_ms,
        "pods_requested": r.pods_requested,
        "ops": ops_json,
        "memory": memory,
        "pod_ips": r.pod_ips(),
        "errors": r.errors(),
        "interrupted": r.interrupted,
    })
}

fn print_json(
    endpoints: &[EndpointSpec],
    results: &[EndpointResult],
    baseline: usize,
    settings: &Settings,
) {
    let ops = ops_for(settings);
    let base_rows = rows(&results[baseline], &ops);
    let ratios: serde_json::Map<String, Value> = endpoints
        .iter()
        .zip(results)
        .enumerate()
        .filter(|(i, (_, r))| *i != baseline && r.fatal.is_none())
        .map(|(_, (e, r))| {
            let mut m = serde_json::Map::new();
            for ((label, b), (_, s)) in base_rows.iter().zip(rows(r, &ops)) {
                if let (Some(b), Some(s)) = (b, s) {
                    m.insert(
                        label.clone(),
                        json!({"p50": ratio(s.p50, b.p50), "p95": ratio(s.p95, b.p95), "mean": ratio(s.mean, b.mean)}),
                    );
                }
            }
            if let (Some(b), Some(a)) = (&results[baseline].memory, &r.memory) {
                m.insert("pss_per_pod".into(), json!(ratio(a.pss_per_pod_mib(), b.pss_per_pod_mib())));
                if let (Some(x), Some(y)) = (a.available_per_pod_mib(), b.available_per_pod_mib()) {
                    m.insert("mem_available_drop_per_pod".into(), json!(ratio(x, y)));
                }
            }
            (e.name.clone(), Value::Object(m))
        })
        .collect();
    let out = json!({
        "pods": settings.pods,
        "concurrency": settings.concurrency,
        "warmup": settings.warmup,
        "sandbox_only": settings.sandbox_only,
        "image": settings.image,
        "command": settings.command,
        "exec": settings.exec,
        "baseline": endpoints[baseline].name,
        "endpoints": endpoints.iter().zip(results).map(|(e, r)| result_json(e, r, &ops)).collect::<Vec<_>>(),
        "ratios": ratios,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}

// ---------------------------------------------------------------------------

/// The sandbox image pushed with --local-registry: busybox's sleep, which
/// does what the pause container does for a pod that does not share its
/// PID namespace (hold the namespaces open).
fn pause_image(busybox: &TestImage) -> TestImage {
    TestImage::new(
        busybox.layers.clone(),
        "amd64",
        json!({
            "Entrypoint": ["/bin/sleep", "2147483647"],
            "Labels": {"org.podvisor.bench": "pause"},
        }),
    )
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn random_run_id() -> String {
    random_uuid()[..6].to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let endpoints = match parse_endpoints(&args.endpoints) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("podvisor-bench: {e}");
            std::process::exit(2);
        }
    };
    let limit = Duration::from_secs(args.op_timeout_secs);
    if args.cleanup {
        let mut failed = false;
        for e in &endpoints {
            match cleanup(e, limit).await {
                Ok(n) => eprintln!("[{}] removed {n} bench pod(s)", e.name),
                Err(err) => {
                    eprintln!("[{}] cleanup: {err}", e.name);
                    failed = true;
                }
            }
        }
        std::process::exit(i32::from(failed));
    }
    let baseline = match &args.baseline {
        None => 0,
        Some(name) => match endpoints.iter().position(|e| &e.name == name) {
            Some(i) => i,
            None => {
                eprintln!("podvisor-bench: --baseline {name}: no endpoint has that name");
                std::process::exit(2);
            }
        },
    };
    if args.pods == 0 {
        eprintln!("podvisor-bench: --pods must be at least 1");
        std::process::exit(2);
    }

    // The registry lives until the end of main.
    let registry = args.local_registry.as_deref().map(|addr| {
        let registry = LocalRegistry::start_at(addr);
        eprintln!("local registry at {}", registry.addr());
        registry
    });
    if let Some(registry) = &registry {
        let busybox = busybox_image("", "/");
        registry.push("busybox", "latest", &busybox).await;
        registry
            .push("pause", "latest", &pause_image(&busybox))
            .await;
        eprintln!(
            "pushed {0}/busybox:latest and {0}/pause:latest",
            registry.addr()
        );
    }
    let image = args.image.clone().or_else(|| {
        registry
            .as_ref()
            .map(|r| format!("{}/busybox:latest", r.addr()))
    });
    if image.is_none() && !args.sandbox_only {
        eprintln!("podvisor-bench: give --image REF, or --local-registry");
        std::process::exit(2);
    }

    let (log_dir, log_tmp) = match &args.log_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("podvisor-bench-logs-")
                .tempdir()
                .expect("creating a temp dir for pod logs");
            (t.path().to_path_buf(), Some(t))
        }
    };
    let settings = Settings {
        image,
        command: words(&args.command),
        exec: words(&args.exec),
        runtime_handler: args.runtime_handler.clone().unwrap_or_default(),
        stop_timeout: args.stop_timeout,
        op_timeout: limit,
        sandbox_only: args.sandbox_only,
        pods: args.pods,
        concurrency: args.concurrency.max(1),
        warmup: args.warmup,
        settle: Duration::from_secs_f64(args.settle_secs.max(0.0)),
        log_dir,
        run_id: random_run_id(),
    };

    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("podvisor-bench: interrupted; removing the pods that are up");
        STOP.store(true, Ordering::SeqCst);
    });

    let mut results = Vec::new();
    for e in &endpoints {
        if stopped() {
            results.push(EndpointResult {
                fatal: Some("interrupted before this endpoint".into()),
                ..Default::default()
            });
            continue;
        }
        results.push(bench_endpoint(e, &settings).await);
    }
    if args.json {
        print_json(&endpoints, &results, baseline, &settings);
    } else {
        print_text(&endpoints, &results, baseline, &settings);
    }
    let failed = results
        .iter()
        .any(|r| r.fatal.is_some() || !r.errors().is_empty() || r.interrupted);
    // exit() runs no destructors: stop the registry, remove the log dir.
    drop(registry);
    drop(log_tmp);
    std::process::exit(i32::from(failed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_names() {
        let e = parse_endpoint("unix:///run/containerd/containerd.sock").unwrap();
        assert_eq!(e.name, "containerd");
        assert_eq!(e.socket, Path::new("/run/containerd/containerd.sock"));
        let e = parse_endpoint("pv=unix:///run/podvisor/podvisor.sock").unwrap();
        assert_eq!(e.name, "pv");
        assert_eq!(e.uri, "unix:///run/podvisor/podvisor.sock");
        let e = parse_endpoint("/tmp/x=y/cri.sock").unwrap();
        assert_eq!(e.socket, Path::new("/tmp/x=y/cri.sock"));
        let err = parse_endpoint("tcp://127.0.0.1:1").unwrap_err();
        assert!(err.contains("expected unix:///absolute/path.sock"), "{err}");
        let all =
            parse_endpoints(&["unix:///a/cri.sock".into(), "unix:///b/cri.sock".into()]).unwrap();
        assert_eq!(all[1].name, "cri-2");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = stats(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (s.p50, s.p95, s.min, s.max, s.mean),
            (3.0, 5.0, 1.0, 5.0, 3.0)
        );
        let s = stats(&(1..=100).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((s.p50, s.p95), (50.0, 95.0));
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn new_processes_count_for_the_daemon_that_started_them() {
        let me = std::process::id() as i32;
        let socket = Path::new("/nonexistent/cri.sock");
        // This test process as the daemon, and a daemon that is not running.
        let ours = snapshot_with(vec![me], socket);
        let theirs = snapshot_with(vec![i32::MAX], socket);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let ours = measure_memory(&ours, 1);
        let theirs = measure_memory(&theirs, 1);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(ours.processes.get("sleep").map(|e| e.0), Some(1));
        assert!(ours.pss_total_kib > 0);
        assert!(!theirs.processes.contains_key("sleep"), "{theirs:?}");
    }

    #[test]
    fn own_process_is_listed_with_pss() {
        let me = std::process::id() as i32;
        let procs = processes();
        assert!(procs.contains_key(&me));
        assert!(pss_kib(me).unwrap() > 0);
        assert!(mem_available_kib().unwrap() > 0);
    }
}
