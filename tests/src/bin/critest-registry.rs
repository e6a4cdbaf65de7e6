//! critest-registry: a local registry serving stand-ins for every image
//! critest (cri-tools v1.29.0 and v1.31.1) pulls, so that critest can run
//! against podvisor on a machine without access to gcr.io and
//! registry.k8s.io.
//!
//! It starts Debian's docker-registry on `--listen` (127.0.0.1:5111 by
//! default), pushes each stand-in under the repository path of the name
//! critest uses (`gcr.io/k8s-staging-cri-tools/test-image-latest` is the
//! repository `k8s-staging-cri-tools/test-image-latest` here), prints the
//! `[registry]` section for podvisor's config and the names it serves, and
//! runs until SIGINT or SIGTERM, which stop the registry.
//!
//! How the stand-ins differ from upstream: see `podvisor_tests::critest_images`.
//! Use: docs/conformance.md, "Running critest".

use clap::Parser;
use podvisor_tests::critest_images::{self, UNREPRODUCIBLE};
use podvisor_tests::registry::LocalRegistry;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(
    name = "critest-registry",
    about = "Serve stand-ins for critest's images on a local registry until killed"
)]
struct Args {
    /// Where the registry listens: a loopback address and a fixed port, so
    /// the runtime's config can name it.
    #[arg(long, default_value = "127.0.0.1:5111")]
    listen: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if !LocalRegistry::available() {
        eprintln!(
            "critest-registry: {} is missing: apt-get install docker-registry",
            podvisor_tests::registry::DOCKER_REGISTRY
        );
        std::process::exit(1);
    }
    if !is_loopback(&args.listen) {
        eprintln!(
            "critest-registry: --listen {} is not a loopback address with a port (127.0.0.1:PORT)",
            args.listen
        );
        std::process::exit(2);
    }
    // Installed before the registry starts: a signal during the pushes
    // still stops it (through Drop) instead of killing us around it.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");

    let registry = LocalRegistry::start_at(&args.listen);
    let published = tokio::select! {
        p = critest_images::publish(&registry) => p,
        _ = term.recv() => return,
        _ = int.recv() => return,
    };

    println!("# critest stand-in images on http://{}:", registry.addr());
    for p in &published {
        println!(
            "#   {}  id {}  digest {}",
            p.reference, p.image_id, p.digest
        );
    }
    for name in UNREPRODUCIBLE {
        println!("#   not served (pinned upstream by digest): {name}");
    }
    println!("# Add to podvisor's config.toml:");
    print!(
        "{}",
        critest_images::mirrors_toml(&format!("http://{}", registry.addr()))
    );
    println!("# Serving until SIGINT or SIGTERM.");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("critest-registry: stopping the registry");
    drop(registry);
}

/// `127.x.y.z:PORT` or `[::1]:PORT`: the registry must only be reachable
/// from this machine (or the namespace it runs in).
fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback() && a.port() != 0)
}
