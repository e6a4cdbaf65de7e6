//! The CRI socket served to gRPC clients podvisor did not write. Kubelet
//! and crictl up to 1.30 (grpc-go dialling a bare socket path) send that
//! path as HTTP/2 `:authority`, and gRPC C-core sends its own form of it;
//! HTTP/2 servers that insist on a URI authority refuse both. Here grpcio
//! (gRPC C-core, from PyPI) drives a pod through the whole lifecycle, once
//! with the authority it picks itself and once with the socket path forced,
//! as grpc-go sends it.

use std::path::{Path, PathBuf};
use std::process::Command;

use podvisor_tests::daemon::Daemon;
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;

/// The CRI api.proto that the k8s-cri crate compiles (and ships).
fn cri_proto() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k8s-cri")
        .expect("k8s-cri in cargo metadata");
    let proto = Path::new(package["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("proto/v1.proto");
    assert!(proto.is_file(), "{} is missing", proto.display());
    proto
}

fn grpcio_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success())
}

fn run_client(socket: &Path, image: &str, name: &str, authority: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/cri_grpcio.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--socket")
        .arg(socket)
        .arg("--proto")
        .arg(cri_proto())
        .args(["--image", image, "--name", name, "--authority", authority])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client ({authority} authority) failed: {stderr}\nanswered so far: {stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn grpcio_drives_a_pod_with_any_authority() {
    podvisor_tests::netns::isolated(
        "grpcio_drives_a_pod_with_any_authority",
        grpcio_drives_a_pod_with_any_authority_in_netns(),
    );
}

async fn grpcio_drives_a_pod_with_any_authority_in_netns() {
    let test = "grpcio_drives_a_pod_with_any_authority";
    let ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    ) && podvisor_tests::prerequisite(
        test,
        "grpcio",
        grpcio_installed(),
        "python3 -m pip install -r tests/interop/requirements.txt",
    );
    if !qemu_ready(test) || !ready {
        return;
    }
    let registry = LocalRegistry::start();
    registry
        .push("interop/busybox", "1.0", &busybox_image("", "/"))
        .await;
    let image = format!("{}/interop/busybox:1.0", registry.addr());
    let (daemon, _cri) = Daemon::start().await;

    for (authority, name) in [
        ("default", "grpcio-default"),
        ("socket-path", "grpcio-path"),
    ] {
        let socket = daemon.socket.clone();
        let image = image.clone();
        let r = tokio::task::spawn_blocking(move || run_client(&socket, &image, name, authority))
            .await
            .unwrap();
        assert_eq!(r["runtime_name"], "podvisor", "{r}");
        assert_eq!(r["runtime_api_version"], "v1", "{r}");
        assert!(
            r["image_ref"].as_str().unwrap().starts_with("sha256:"),
            "{r}"
        );
        assert_eq!(r["state_after_start"], "CONTAINER_RUNNING", "{r}");
        assert_eq!(r["exec"]["stdout"], format!("out-{name}\n"), "{r}");
        assert_eq!(r["exec"]["stderr"], "err\n", "{r}");
        assert_eq!(r["exec"]["exit_code"], 3, "{r}");
        assert_eq!(r["pods_left"], serde_json::json!([]), "{r}");
        assert_eq!(r["unknown_container"], "NOT_FOUND", "{r}");
        assert!(
            daemon.vm_processes().is_empty(),
            "VM processes left after the {authority} run: {:?}",
            daemon.vm_processes()
        );
    }
}
