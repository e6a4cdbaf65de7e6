//! Host ports in policy mode `vm`, over CRI: a pod's `PortMapping` with a
//! host port answers on the node's loopback and on its other addresses
//! (critest's check), a second pod asking for the same port is refused and
//! leaves nothing, the claim survives a daemon restart, and stopping and
//! removing the pod frees the port and removes every rule.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{Cri, Daemon};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

const HOST_PORT: i32 = 12000;
/// A node address that is not loopback: on a tap standing in for the
/// node's uplink NIC.
const NODE_ADDRESS: &str = "192.0.2.10";

fn pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        port_mappings: vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: HOST_PORT,
            host_ip: String::new(),
        }],
        ..Default::default()
    }
}

async fn run(cri: &mut Cri, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pod_ids(cri: &mut Cri) -> Vec<String> {
    cri.list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

fn command(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the namespace shows of pod networking, for leak checks.
fn network_state() -> String {
    format!(
        "{}\n{}",
        command("ip", &["-o", "link"]),
        command("nft", &["list", "ruleset"])
    )
}

/// An HTTP/1.0 GET from the test's own side of the namespace; "" when
/// nothing answers.
async fn http_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect(addr);
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return String::new();
    };
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The page at `addr`, waiting (generously: TCG) for the server to start.
async fn page(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body = http_get(addr).await;
        if body.contains("hostport-ok") || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn vm_mode_forwards_host_ports_to_the_pod() {
    podvisor_tests::netns::isolated(
        "vm_mode_forwards_host_ports_to_the_pod",
        vm_mode_forwards_host_ports_to_the_pod_in_netns(),
    );
}

async fn vm_mode_forwards_host_ports_to_the_pod_in_netns() {
    let test = "vm_mode_forwards_host_ports_to_the_pod";
    let registry_ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    );
    if !qemu_ready(test) || !registry_ready {
        return;
    }
    command("ip", &["tuntap", "add", "dev", "uplink0", "mode", "tap"]);
    command("ip", &["link", "set", "uplink0", "up"]);
    command(
        "ip",
        &[
            "addr",
            "add",
            &format!("{NODE_ADDRESS}/24"),
            "dev",
            "uplink0",
        ],
    );
    let registry = LocalRegistry::start();
    registry
        .push("hostport/busybox", "1", &busybox_image("", "/"))
        .await;
    let image = format!("{}/hostport/busybox:1", registry.addr());
    let (mut daemon, mut cri) = Daemon::start_with(
        "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n[policy]\nmode = \"vm\"\n",
    )
    .await;
    podvisor_tests::daemon::connect_images(&daemon.socket)
        .await
        .unwrap()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");

    // --- a pod forwarding host port 12000 to its httpd on port 80 ---
    let web = pod("web");
    let web_id = run(&mut cri, &web)
        .await
        .expect("a host port runs in mode vm");
    let server = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: web_id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "httpd".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "mkdir -p /www && echo hostport-ok > /www/index.html && exec httpd -f -p 80 -h /www"
                        .into(),
                ],
                ..Default::default()
            }),
            sandbox_config: Some(web.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: server,
    })
    .await
    .expect("StartContainer");
    let local = format!("127.0.0.1:{HOST_PORT}");
    let node = format!("{NODE_ADDRESS}:{HOST_PORT}");
    let body = page(&local).await;
    assert!(body.contains("hostport-ok"), "{local} answered {body:?}");
    let body = page(&node).await;
    assert!(body.contains("hostport-ok"), "{node} answered {body:?}");
    let status = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: web_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["hostPorts"], serde_json::json!(["12000/TCP"]));

    // --- the same port for a second pod: refused, nothing made ---
    let vms = daemon.vm_processes();
    let state = network_state();
    let mut rival = pod("rival");
    rival.port_mappings[0].container_port = 8080;
    let refused = |err: tonic::Status| {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        for want in ["12000/TCP", "\"default/web\"", &web_id] {
            assert!(err.message().contains(want), "{want}: {}", err.message());
        }
    };
    refused(run(&mut cri, &rival).await.unwrap_err());
    assert_eq!(pod_ids(&mut cri).await, std::slice::from_ref(&web_id));
    assert_eq!(daemon.vm_processes(), vms, "a VM was started");
    assert_eq!(network_state(), state, "the refused pod left networking");

    // --- the claim is in the pod's record: it holds across a restart ---
    daemon.kill();
    let mut cri = daemon.restart().await;
    refused(run(&mut cri, &rival).await.unwrap_err());
    assert!(http_get(&local).await.contains("hostport-ok"));

    // --- stopped: the port is free, nothing of the pod is left ---
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: web_id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    let ruleset = command("nft", &["list", "ruleset"]);
    for gone in ["hp_", "dnat", "snat", "pod_"] {
        assert!(!ruleset.contains(gone), "{gone} left:\n{ruleset}");
    }
    assert_eq!(http_get(&local).await, "", "{local} still answers");
    assert_eq!(http_get(&node).await, "", "{node} still answers");
    let rival_id = run(&mut cri, &rival)
        .await
        .expect("the port is free once its holder stopped");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: web_id.clone(),
    })
    .await
    .expect("RemovePodSandbox web");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: rival_id,
    })
    .await
    .expect("RemovePodSandbox rival");
    let state = network_state();
    for gone in ["pvtap", "hp_", "dnat", "snat", "pod_"] {
        assert!(!state.contains(gone), "{gone} left:\n{state}");
    }
    assert!(daemon.vm_processes().is_empty());
}
