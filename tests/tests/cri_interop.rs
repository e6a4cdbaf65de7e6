//! The CRI socket served to gRPC clients podvisor did not write. Kubelet
//! and crictl up to 1.30 (grpc-go dialling a bare socket path) send that
//! path as HTTP/2 `:authority`, and gRPC C-core sends its own form of it;
//! HTTP/2 servers that insist on a URI authority refuse both. Here grpcio
//! (gRPC C-core, from PyPI) drives a pod through the whole lifecycle, once
//! with the authority it picks itself and once with the socket path forced;
//! and grpc-go (Debian's), dialling exactly as kubelet 1.29 does, drives
//! another with requests encoded here and sent as raw protobuf.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;
use prost::Message;

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

const GO: &str = "/usr/bin/go";

/// Builds tests/interop/cri_grpcgo.go with Debian's Go and grpc-go (GOPATH
/// mode: Debian installs Go libraries as sources under /usr/share/gocode).
fn build_grpcgo(out_dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/cri_grpcgo.go");
    let bin = out_dir.join("cri_grpcgo");
    let out = Command::new(GO)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out_dir.join("gocache"))
        .env("GOFLAGS", "")
        .output()
        .expect("running go build");
    assert!(
        out.status.success(),
        "go build {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// One unary CRI call through grpc-go: `Err` carries grpc-go's code name
/// and message.
fn grpcgo_call<Resp: Message + Default>(
    bin: &Path,
    socket: &Path,
    method: &str,
    request: &impl Message,
) -> Result<Resp, String> {
    let hex: String = request
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = Command::new(bin)
        .arg(socket)
        .arg(method)
        .arg(hex)
        .output()
        .expect("running cri_grpcgo");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from cri_grpcgo"))
        .collect();
    Ok(Resp::decode(bytes.as_slice()).expect("a CRI response"))
}

#[test]
fn grpc_go_dialling_like_kubelet_1_29_drives_a_pod() {
    podvisor_tests::netns::isolated(
        "grpc_go_dialling_like_kubelet_1_29_drives_a_pod",
        grpc_go_dialling_like_kubelet_1_29_drives_a_pod_in_netns(),
    );
}

async fn grpc_go_dialling_like_kubelet_1_29_drives_a_pod_in_netns() {
    let test = "grpc_go_dialling_like_kubelet_1_29_drives_a_pod";
    let ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    ) && podvisor_tests::prerequisite(
        test,
        "Debian's Go and grpc-go",
        Path::new(GO).is_file()
            && Path::new("/usr/share/gocode/src/google.golang.org/grpc").is_dir(),
        "apt-get install golang-go golang-google-grpc-dev",
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
    let build_dir = tempfile::tempdir().unwrap();
    let socket = daemon.socket.clone();

    let flow = tokio::task::spawn_blocking(move || {
        let bin = build_grpcgo(build_dir.path());
        let runtime = |m: &str| format!("/runtime.v1.RuntimeService/{m}");
        let version: cri::VersionResponse = grpcgo_call(
            &bin,
            &socket,
            &runtime("Version"),
            &cri::VersionRequest::default(),
        )
        .expect("Version");
        assert_eq!(version.runtime_name, "podvisor");

        let spec = cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let pulled: cri::PullImageResponse = grpcgo_call(
            &bin,
            &socket,
            "/runtime.v1.ImageService/PullImage",
            &cri::PullImageRequest {
                image: Some(spec.clone()),
                ..Default::default()
            },
        )
        .expect("PullImage");
        assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");

        let pod_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "grpc-go".into(),
                uid: "uid-grpc-go".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "grpc-go".into(),
            ..Default::default()
        };
        let pod = grpcgo_call::<cri::RunPodSandboxResponse>(
            &bin,
            &socket,
            &runtime("RunPodSandbox"),
            &cri::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: String::new(),
            },
        )
        .expect("RunPodSandbox")
        .pod_sandbox_id;
        let ctr = grpcgo_call::<cri::CreateContainerResponse>(
            &bin,
            &socket,
            &runtime("CreateContainer"),
            &cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "main".into(),
                        attempt: 0,
                    }),
                    image: Some(spec.clone()),
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(pod_config.clone()),
            },
        )
        .expect("CreateContainer")
        .container_id;
        grpcgo_call::<cri::StartContainerResponse>(
            &bin,
            &socket,
            &runtime("StartContainer"),
            &cri::StartContainerRequest {
                container_id: ctr.clone(),
            },
        )
        .expect("StartContainer");
        let exec: cri::ExecSyncResponse = grpcgo_call(
            &bin,
            &socket,
            &runtime("ExecSync"),
            &cri::ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["sh".into(), "-c".into(), "hostname; exit 4".into()],
                timeout: 60,
            },
        )
        .expect("ExecSync");
        assert_eq!(String::from_utf8_lossy(&exec.stdout), "grpc-go\n");
        assert_eq!(exec.exit_code, 4);

        let err = grpcgo_call::<cri::ContainerStatusResponse>(
            &bin,
            &socket,
            &runtime("ContainerStatus"),
            &cri::ContainerStatusRequest {
                container_id: "feedbeef".into(),
                verbose: false,
            },
        )
        .unwrap_err();
        assert!(err.starts_with("NotFound:"), "{err}");

        grpcgo_call::<cri::StopContainerResponse>(
            &bin,
            &socket,
            &runtime("StopContainer"),
            &cri::StopContainerRequest {
                container_id: ctr.clone(),
                timeout: 2,
            },
        )
        .expect("StopContainer");
        grpcgo_call::<cri::RemoveContainerResponse>(
            &bin,
            &socket,
            &runtime("RemoveContainer"),
            &cri::RemoveContainerRequest { container_id: ctr },
        )
        .expect("RemoveContainer");
        grpcgo_call::<cri::StopPodSandboxResponse>(
            &bin,
            &socket,
            &runtime("StopPodSandbox"),
            &cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            },
        )
        .expect("StopPodSandbox");
        grpcgo_call::<cri::RemovePodSandboxResponse>(
            &bin,
            &socket,
            &runtime("RemovePodSandbox"),
            &cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            },
        )
        .expect("RemovePodSandbox");
        let left: cri::ListPodSandboxResponse = grpcgo_call(
            &bin,
            &socket,
            &runtime("ListPodSandbox"),
            &cri::ListPodSandboxRequest::default(),
        )
        .expect("ListPodSandbox");
        assert!(left.items.is_empty(), "{left:?}");
    });
    flow.await.unwrap();
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
}
