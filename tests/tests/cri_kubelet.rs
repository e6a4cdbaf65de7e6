//! What kubelet asks of a runtime beyond the pod lifecycle, over CRI with
//! one pod VM: RuntimeClass handlers, the pod CIDR from
//! UpdateRuntimeConfig (kept across a restart), container events (Evented
//! PLEG) that end cleanly when the daemon gets SIGTERM, and cAdvisor-named
//! metrics whose network counters follow real traffic.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{Cri, Daemon, Images};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tokio::sync::mpsc;
use tonic::Code;

const CREATED: i32 = cri::ContainerEventType::ContainerCreatedEvent as i32;
const STARTED: i32 = cri::ContainerEventType::ContainerStartedEvent as i32;
const STOPPED: i32 = cri::ContainerEventType::ContainerStoppedEvent as i32;
const DELETED: i32 = cri::ContainerEventType::ContainerDeletedEvent as i32;

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "kubelet".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).to_string_lossy().into_owned(),
        ..Default::default()
    }
}

async fn run_pod(
    cri: &mut Cri,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

fn container_config(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

async fn pod_status(cri: &mut Cri, id: &str) -> cri::PodSandboxStatusResponse {
    cri.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
}

async fn update_pod_cidr(cri: &mut Cri, cidr: &str) -> Result<(), tonic::Status> {
    cri.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    })
    .await
    .map(|_| ())
}

/// How a GetContainerEvents stream went: its events, then how it ended.
enum Item {
    Event(Box<cri::ContainerEventResponse>),
    End,
    Error(tonic::Status),
}

/// Subscribes and forwards the stream to a channel, so the test can wait
/// for events with a deadline.
async fn subscribe(cri: &mut Cri) -> mpsc::UnboundedReceiver<Item> {
    let mut stream = cri
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(e)) => Item::Event(Box::new(e)),
                Ok(None) => Item::End,
                Err(status) => Item::Error(status),
            };
            let last = !matches!(item, Item::Event(_));
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Events already received, and the wait for more.
struct Events {
    rx: mpsc::UnboundedReceiver<Item>,
    seen: Vec<cri::ContainerEventResponse>,
}

impl Events {
    /// Waits until `id` has had the event types `kinds`, in that order
    /// (other ids' events may come between); returns those events.
    async fn wait_for(&mut self, id: &str, kinds: &[i32]) -> Vec<cri::ContainerEventResponse> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let of_id: Vec<_> = self
                .seen
                .iter()
                .filter(|e| e.container_id == id)
                .cloned()
                .collect();
            if of_id.len() >= kinds.len() {
                let got: Vec<i32> = of_id.iter().map(|e| e.container_event_type).collect();
                assert_eq!(got, kinds, "events of {id}");
                return of_id;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Item::Event(e))) => self.seen.push(*e),
                Ok(Some(Item::End)) | Ok(None) => {
                    panic!("event stream ended early: {:?}", self.seen)
                }
                Ok(Some(Item::Error(s))) => panic!("event stream failed: {s}"),
                Err(_) => panic!(
                    "events {kinds:?} of {id} not within 60 s; seen {:?}",
                    self.seen
                ),
            }
        }
    }

    /// How the stream ends (after any events still on their way).
    async fn end(&mut self) -> Result<(), tonic::Status> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Item::Event(e))) => self.seen.push(*e),
                Ok(Some(Item::End)) | Ok(None) => return Ok(()),
                Ok(Some(Item::Error(s))) => return Err(s),
                Err(_) => panic!("the event stream did not end within 60 s"),
            }
        }
    }
}

async fn pod_metrics(cri: &mut Cri, pod: &str) -> cri::PodSandboxMetrics {
    cri.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics
        .into_iter()
        .find(|m| m.pod_sandbox_id == pod)
        .expect("the pod's metrics")
}

fn value(metrics: &[cri::Metric], name: &str) -> u64 {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {metrics:?}"))
        .value
        .expect("a value")
        .value
}

fn taps() -> usize {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("pvtap")
        .count()
}

#[test]
fn kubelet_features_over_cri() {
    let test = "kubelet_features_over_cri";
    podvisor_tests::netns::isolated(test, kubelet_features(test));
}

async fn kubelet_features(test: &str) {
    let registry_ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    );
    if !qemu_ready(test) || !registry_ready {
        return;
    }
    let registry = LocalRegistry::start();
    registry
        .push("kubelet/busybox", "1.0", &busybox_image("", "/"))
        .await;
    let image = format!("{}/kubelet/busybox:1.0", registry.addr());
    // No network.primary_cidr: kubelet's pod CIDR is taken.
    let (mut daemon, mut cri) = Daemon::start().await;
    let logs = tempfile::tempdir().unwrap();

    // --- RuntimeClass handlers ---
    let status = cri
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let handlers: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(handlers, ["", "podvisor"]);
    assert!(status.runtime_handlers.iter().all(|h| h
        .features
        .is_some_and(|f| !f.user_namespaces && f.recursive_read_only_mounts)));
    let config = pod_config("web", logs.path());
    let err = run_pod(&mut cri, &config, "kata").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("\"kata\"") && err.message().contains("\"podvisor\""),
        "{}",
        err.message()
    );
    let pods = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "a refused handler leaves no sandbox");
    assert!(daemon.vm_processes().is_empty(), "nor a VM");
    assert_eq!(taps(), 0, "nor a tap");

    // --- the pod CIDR, kept across a SIGTERM and restart ---
    let err = update_pod_cidr(&mut cri, "10.123.4.1/24")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("host bits"), "{}", err.message());
    update_pod_cidr(&mut cri, "10.123.4.0/24,fd00:123:4::/64")
        .await
        .expect("UpdateRuntimeConfig");

    // An open event stream ends cleanly when the daemon stops.
    let mut idle = Events {
        rx: subscribe(&mut cri).await,
        seen: vec![],
    };
    let exit = daemon.terminate(Duration::from_secs(60)).await;
    assert!(exit.success(), "SIGTERM: the daemon exits 0, got {exit}");
    idle.end().await.expect("the stream ends, not fails");
    let mut cri = daemon.restart().await;

    let mut events = Events {
        rx: subscribe(&mut cri).await,
        seen: vec![],
    };
    let pod = run_pod(&mut cri, &config, "podvisor")
        .await
        .expect("RunPodSandbox with the podvisor handler");
    let st = pod_status(&mut cri, &pod).await;
    let status = st.status.unwrap();
    assert_eq!(status.runtime_handler, "podvisor");
    assert_eq!(
        status.network.unwrap().ip,
        "10.123.4.2",
        "the first pod address of kubelet's CIDR after its gateway"
    );
    let listed = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].runtime_handler, "podvisor");
    let sandbox = events.wait_for(&pod, &[CREATED, STARTED]).await;
    assert_eq!(
        sandbox[1].pod_sandbox_status.as_ref().unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // --- container events, including an exit nobody asked for ---
    let mut images: Images = podvisor_tests::daemon::connect_images(&daemon.socket)
        .await
        .unwrap();
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("PullImage");
    let create = |name: &str, script: &str| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config(name, &image, script)),
        sandbox_config: Some(config.clone()),
    };
    let quitter = cri
        .create_container(create("quitter", "sleep 2; exit 3"))
        .await
        .expect("create quitter")
        .into_inner()
        .container_id;
    let runner = cri
        .create_container(create("runner", "while true; do sleep 1; done"))
        .await
        .expect("create runner")
        .into_inner()
        .container_id;
    for id in [&quitter, &runner] {
        cri.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    }
    let q = events
        .wait_for(&quitter, &[CREATED, STARTED, STOPPED])
        .await;
    let state_of = |e: &cri::ContainerEventResponse, id: &str| {
        e.containers_statuses
            .iter()
            .find(|c| c.id == id)
            .map(|c| (c.state, c.exit_code))
    };
    assert!(q.iter().all(|e| {
        let p = e.pod_sandbox_status.as_ref().unwrap();
        p.id == pod && p.metadata.as_ref().unwrap().uid == "uid-web"
    }));
    assert_eq!(
        state_of(&q[0], &quitter),
        Some((cri::ContainerState::ContainerCreated as i32, 0))
    );
    assert_eq!(
        state_of(&q[2], &quitter),
        Some((cri::ContainerState::ContainerExited as i32, 3)),
        "the exit watcher's event carries the exit"
    );
    assert!(q.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    cri.remove_container(cri::RemoveContainerRequest {
        container_id: quitter.clone(),
    })
    .await
    .expect("RemoveContainer");
    let q = events
        .wait_for(&quitter, &[CREATED, STARTED, STOPPED, DELETED])
        .await;
    assert_eq!(state_of(&q[3], &quitter), None, "gone from the pod");
    assert!(state_of(&q[3], &runner).is_some());
    events.wait_for(&runner, &[CREATED, STARTED]).await;

    // --- metrics ---
    let descriptors = cri
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_usage_bytes",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_network_receive_packets_total",
        "container_network_transmit_packets_total",
        "container_fs_usage_bytes",
        "container_fs_limit_bytes",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    let before = pod_metrics(&mut cri, &pod).await;
    let runner_metrics = &before
        .container_metrics
        .iter()
        .find(|c| c.container_id == runner)
        .expect("the running container's metrics")
        .metrics;
    assert!(value(runner_metrics, "container_memory_usage_bytes") > 0);
    assert!(value(runner_metrics, "container_memory_working_set_bytes") > 0);
    // The pod pings the host side (its gateway): 5 requests out, 5
    // replies in, through the tap.
    let ping = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: runner.clone(),
            cmd: [
                "ping",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "5",
                "-s",
                "1000",
                "10.123.4.1",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 60,
        })
        .await
        .expect("ExecSync ping")
        .into_inner();
    assert_eq!(
        ping.exit_code,
        0,
        "pod to host: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let after = pod_metrics(&mut cri, &pod).await;
    for (name, at_least) in [
        ("container_network_receive_packets_total", 5),
        ("container_network_transmit_packets_total", 5),
        ("container_network_receive_bytes_total", 5 * 1000),
        ("container_network_transmit_bytes_total", 5 * 1000),
    ] {
        let (b, a) = (value(&before.metrics, name), value(&after.metrics, name));
        assert!(
            a >= b + at_least,
            "{name}: {b} -> {a} after 5 pings of 1000 bytes"
        );
    }

    // The writable layer: a 2 MiB file written in the container shows in
    // the layer's usage (CRI stats and the cAdvisor metric alike), and the
    // guest filesystem it is on has a size.
    let write = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: runner.clone(),
            cmd: [
                "sh",
                "-c",
                "dd if=/dev/zero of=/scratch.bin bs=64k count=32 2>&1",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 60,
        })
        .await
        .expect("ExecSync dd")
        .into_inner();
    assert_eq!(
        write.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&write.stdout)
    );
    let runner_fs = |m: &cri::PodSandboxMetrics, name: &str| {
        value(
            &m.container_metrics
                .iter()
                .find(|c| c.container_id == runner)
                .expect("the running container's metrics")
                .metrics,
            name,
        )
    };
    let written = pod_metrics(&mut cri, &pod).await;
    let (fs_before, fs_after) = (
        runner_fs(&before, "container_fs_usage_bytes"),
        runner_fs(&written, "container_fs_usage_bytes"),
    );
    assert!(
        fs_after >= fs_before + 2 * 1024 * 1024,
        "container_fs_usage_bytes {fs_before} -> {fs_after} after writing 2 MiB"
    );
    assert!(runner_fs(&written, "container_fs_limit_bytes") >= fs_after);
    let layer = cri
        .container_stats(cri::ContainerStatsRequest {
            container_id: runner.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .unwrap()
        .writable_layer
        .expect("writable layer usage");
    assert!(
        layer.used_bytes.unwrap().value >= 2 * 1024 * 1024,
        "{layer:?}"
    );
    assert!(layer.inodes_used.unwrap().value >= 1, "{layer:?}");

    // --- pod stop and removal ---
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    let r = events.wait_for(&runner, &[CREATED, STARTED, STOPPED]).await;
    assert_eq!(
        state_of(&r[2], &runner).map(|s| s.0),
        Some(cri::ContainerState::ContainerExited as i32)
    );
    events.wait_for(&pod, &[CREATED, STARTED, STOPPED]).await;
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    events
        .wait_for(&runner, &[CREATED, STARTED, STOPPED, DELETED])
        .await;
    let p = events
        .wait_for(&pod, &[CREATED, STARTED, STOPPED, DELETED])
        .await;
    assert_eq!(
        p[3].pod_sandbox_status.as_ref().unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );

    // SIGTERM with a stream that carried events: it ends, not fails.
    let exit = daemon.terminate(Duration::from_secs(60)).await;
    assert!(exit.success(), "SIGTERM: the daemon exits 0, got {exit}");
    events.end().await.expect("the stream ends, not fails");
    assert!(daemon.vm_processes().is_empty());
    assert_eq!(taps(), 0);
}
