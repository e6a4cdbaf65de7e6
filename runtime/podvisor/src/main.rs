//! `podvisor`: the CRI daemon. Every pod it runs is a micro-VM.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use podvisor::config::{Config, DEFAULT_CONFIG_PATH};
use podvisor::container::ContainerManager;
use podvisor::cri::image::Images;
use podvisor::cri::runtime::Runtime;
use podvisor::events::EventBus;
use podvisor::image::ImageService;
use podvisor::network::NetworkManager;
use podvisor::sandbox::SandboxManager;
use tokio::net::UnixListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "CRI runtime that runs every Kubernetes pod in its own micro-VM"
)]
struct Cli {
    /// The TOML configuration file; every key is optional.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Without a subcommand, run the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The Fargate policy pods run under.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// List the admission rules, one line each, and which the configured
    /// `policy.mode` enforces.
    Explain,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Config::default().to_toml());
        return;
    }
    if let Some(Command::Policy {
        command: PolicyCommand::Explain,
    }) = cli.command
    {
        match Config::load(&cli.config) {
            Ok(config) => print!("{}", config.policy.explain()),
            Err(e) => {
                eprintln!("podvisor: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    tracing_subscriber::fmt()
        // Colours only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(cli).await {
        tracing::error!("{e}");
        eprintln!("podvisor: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = Arc::new(Config::load(&cli.config).map_err(|e| e.to_string())?);
    let backend = config.hypervisor.backend().map_err(|e| e.to_string())?;
    tracing::info!(backend = backend.name(), "hypervisor backend ready");
    let network = Arc::new(
        NetworkManager::new(config.network.clone(), &config.state_dir)
            .map_err(|e| format!("pod network: {e}"))?,
    );
    let events = Arc::new(EventBus::default());
    let sandboxes = Arc::new(SandboxManager::new(
        config.clone(),
        backend,
        network.clone(),
        events.clone(),
    ));
    sandboxes
        .recover()
        .await
        .map_err(|e| format!("recovering pod sandboxes: {e}"))?;
    // Taps, rules and leases of pods this daemon no longer knows.
    let known: Vec<String> = sandboxes.list().iter().map(|p| p.id()).collect();
    match network.cleanup_orphans(&known).await {
        Ok(orphans) => tracing::info!(?orphans, "pod network orphans cleaned up"),
        Err(e) => tracing::warn!(%e, "cleaning up pod network orphans"),
    }
    let image_root = config.state_dir.join("images");
    let registry = config.registry.clone();
    let images = tokio::task::spawn_blocking(move || ImageService::open(image_root, registry))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("opening the image store: {e}"))?;
    let containers = ContainerManager::new(
        config.clone(),
        sandboxes.clone(),
        images.clone(),
        events.clone(),
    );
    podvisor::cri::events::install(&events, &sandboxes, &containers);
    containers.recover().await;

    let socket = &config.socket;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving CRI");

    let streaming = podvisor::streaming::StreamingServer::start(
        &config.streaming,
        containers.clone(),
        sandboxes.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let runtime = Runtime {
        config: config.clone(),
        sandboxes,
        containers: containers.clone(),
        streaming,
        events: events.clone(),
    };
    let image_service = Images { images, containers };
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Pods keep running: their VMs live in their own process groups and
        // the next daemon re-attaches to them.
        tracing::info!("shutting down; pods keep running");
        // Open event streams would hold the graceful shutdown forever:
        // end them now, cleanly (kubelet resubscribes to the next daemon).
        events.close();
    };
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime))
        .add_service(ImageServiceServer::new(image_service))
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                |conn| conn.map(podvisor::cri::authority::AuthorityFix::new),
            ),
            stop,
        )
        .await
        .map_err(|e| format!("serving CRI: {e}"))?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}
