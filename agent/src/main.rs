//! podvisor-agent: PID 1 of every Podvisor pod VM.
//!
//! It mounts the guest's file systems, reaps orphans, serves the runtime's
//! gRPC API (proto/agent.proto) on vsock, virtio-serial or a unix socket, and
//! runs the pod's containers with libcontainer. Started as an ordinary
//! process it runs in host test mode: same API, no changes to the host
//! beyond the containers it is asked to run.

mod clock;
mod container;
mod error;
mod info;
mod init;
mod log;
mod network;
mod output;
mod portforward;
mod reaper;
mod sandbox;
mod server;
mod stdio;
mod transport;
mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use podvisor_proto::agent_server::AgentServer;
use tracing_subscriber::EnvFilter;

use container::{ContainerManager, ManagerConfig, RlimitCeiling};
use transport::Endpoint;

/// Whether the agent is the init of a pod VM or a process on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Guest,
    Host,
}

#[derive(Parser, Debug)]
#[command(version, about = "Podvisor guest agent: PID 1 of a pod VM")]
struct Cli {
    /// Where to serve the runtime: vsock:PORT, serial:NAME (a virtio-serial
    /// port) or unix:/PATH. Default: the kernel parameter podvisor.agent=,
    /// else vsock:1024.
    #[arg(long)]
    listen: Option<Endpoint>,
    /// Bundles, writable layers and pod files.
    #[arg(long, default_value = "/run/podvisor-agent")]
    state_dir: PathBuf,
    /// Parent cgroup of containers whose spec names none.
    #[arg(long, default_value = "/podvisor")]
    cgroup_parent: String,
}

const DEFAULT_ENDPOINT: &str = "vsock:1024";

fn main() {
    let mode = if std::process::id() == 1 {
        Mode::Guest
    } else {
        Mode::Host
    };
    // The kernel hands PID 1 every boot parameter it does not know; they
    // must not stop the guest from starting.
    let cli = match (mode, Cli::try_parse()) {
        (_, Ok(cli)) => cli,
        (Mode::Guest, Err(e)) => {
            eprintln!("podvisor-agent: ignoring arguments: {}", e.kind());
            Cli::parse_from(["podvisor-agent"])
        }
        (Mode::Host, Err(e)) => e.exit(),
    };
    // Before any thread exists: mounts and namespaces are per process.
    let prepared = match mode {
        Mode::Guest => init::setup_guest(),
        Mode::Host => init::setup_host(),
    };
    let log_filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| init::kernel_param("podvisor.log"))
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(log_filter))
        .with_writer(|| log::RawStderr)
        .with_ansi(false)
        .init();
    if let Err(e) = prepared {
        fail(mode, &format!("setting up the {mode:?} environment: {e}"));
    }

    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(5))
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(mode, &format!("starting the async runtime: {e}")));
    let result = runtime.block_on(serve(cli, mode));
    // Dropping a runtime waits for its blocking threads without limit; a
    // stuck one must not keep the guest from powering off.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match (result, mode) {
        (Ok(()), Mode::Guest) => init::end_vm(),
        (Ok(()), Mode::Host) => {}
        (Err(e), _) => fail(mode, &e),
    }
}

fn fail(mode: Mode, message: &str) -> ! {
    tracing::error!("{message}");
    eprintln!("podvisor-agent: {message}");
    if mode == Mode::Guest {
        init::end_vm();
    }
    std::process::exit(1);
}

async fn serve(cli: Cli, mode: Mode) -> Result<(), String> {
    let endpoint = match cli.listen {
        Some(e) => e,
        None => init::kernel_param("podvisor.agent")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .parse()?,
    };
    let reaper = reaper::Reaper::new();
    tokio::spawn(reaper.clone().run());

    let config = ManagerConfig {
        state_dir: cli.state_dir.clone(),
        cgroups_parent: cli.cgroup_parent,
        rlimit_ceiling: rlimit_ceiling(),
        // Only inside a pod VM are /dev's devices the guest's own.
        devices: (mode == Mode::Guest).then(|| PathBuf::from("/dev")),
    };
    let containers = Arc::new(ContainerManager::new(config, reaper).map_err(|e| e.to_string())?);
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel(1);
    let service = server::AgentService {
        containers: containers.clone(),
        mode,
        state_dir: cli.state_dir.clone(),
        shutdown: shutdown_tx,
    };
    let incoming = transport::listen(&endpoint)
        .await
        .map_err(|e| format!("listening on {endpoint:?}: {e}"))?;
    tracing::info!(?endpoint, ?mode, pid = std::process::id(), "agent ready");

    let stop = async move {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        loop {
            tokio::select! {
                // Host mode serves on after Shutdown: it only stops containers.
                Some(()) = shutdown_rx.recv() => if mode == Mode::Guest { break },
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    };
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        stop.await;
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop);
    // Graceful shutdown waits for clients to hang up; a runtime that keeps
    // its connection open must not hold the guest up: half a second is
    // plenty for the last replies to go out.
    let linger = async {
        let _ = stopping_rx.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| format!("serving: {e}"))?,
        () = linger => tracing::info!("clients still connected; stopping anyway"),
    }

    tracing::info!("stopping containers");
    containers.stop_all(Duration::from_secs(5)).await;
    Ok(())
}

/// Without CAP_SYS_RESOURCE no process can get hard limits above ours.
fn rlimit_ceiling() -> RlimitCeiling {
    let has_sys_resource = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    if has_sys_resource {
        return RlimitCeiling::default();
    }
    let hard = |r| nix::sys::resource::getrlimit(r).ok().map(|(_, hard)| hard);
    let ceiling = RlimitCeiling {
        nofile: hard(nix::sys::resource::Resource::RLIMIT_NOFILE),
        nproc: hard(nix::sys::resource::Resource::RLIMIT_NPROC),
    };
    tracing::warn!(
        ?ceiling,
        "no CAP_SYS_RESOURCE: container hard limits are capped at the agent's own"
    );
    ceiling
}
