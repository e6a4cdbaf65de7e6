//! The CRI calls kubelet makes that the lifecycle tests do not drive, over
//! the daemon's socket: stats (per container, per pod, with filters) that
//! follow real usage, RuntimeConfig, image status/list/remove details,
//! resource updates seen in the guest's cgroup files, log reopening,
//! Version, the calls podvisor does not implement, every Fargate admission
//! rule as a table, and recovery from a SIGKILLed daemon whose pod VM
//! died while it was down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{mounts_under, Cri, Daemon, Images};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

fn pod_config(name: &str, logs: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "calls".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).to_string_lossy().into_owned(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
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
        log_path: format!("{name}.log"),
        labels: HashMap::from([("role".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Pushes two distinct busybox images, starts a daemon and pulls both.
async fn setup(test: &str) -> Option<(LocalRegistry, Daemon, Cri, Images, String, String)> {
    setup_with(test, "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n").await
}

async fn setup_with(
    test: &str,
    config: &str,
) -> Option<(LocalRegistry, Daemon, Cri, Images, String, String)> {
    let registry_ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    );
    if !qemu_ready(test) || !registry_ready {
        return None;
    }
    let registry = LocalRegistry::start();
    registry
        .push("calls/busybox", "1", &busybox_image("", "/"))
        .await;
    // Another working directory: another config, another image id.
    registry
        .push("calls/other", "1", &busybox_image("", "/tmp"))
        .await;
    let image = format!("{}/calls/busybox:1", registry.addr());
    let other = format!("{}/calls/other:1", registry.addr());
    let (daemon, cri) = Daemon::start_with(config).await;
    let mut images = podvisor_tests::daemon::connect_images(&daemon.socket)
        .await
        .unwrap();
    for name in [&image, &other] {
        images
            .pull_image(cri::PullImageRequest {
                image: image_spec(name),
                ..Default::default()
            })
            .await
            .expect("PullImage");
    }
    Some((registry, daemon, cri, images, image, other))
}

async fn run_pod(cri: &mut Cri, config: &cri::PodSandboxConfig) -> String {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

async fn create(
    cri: &mut Cri,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    cri.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn start(cri: &mut Cri, id: &str) {
    cri.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

/// A container that loops until stopped.
const LOOP: &str = "while true; do sleep 1; done";

/// Creates and starts a container running `script`.
async fn run_container(
    cri: &mut Cri,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    name: &str,
    image: &str,
    script: &str,
) -> String {
    let id = create(cri, pod, sandbox, container_config(name, image, script))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    start(cri, &id).await;
    id
}

async fn exec(cri: &mut Cri, id: &str, script: &str) -> String {
    let r = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 120,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
        .into_inner();
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

async fn container_status(cri: &mut Cri, id: &str) -> cri::ContainerStatus {
    cri.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .unwrap()
}

async fn list_container_stats(
    cri: &mut Cri,
    filter: cri::ContainerStatsFilter,
) -> Vec<cri::ContainerStats> {
    cri.list_container_stats(cri::ListContainerStatsRequest {
        filter: Some(filter),
    })
    .await
    .expect("ListContainerStats")
    .into_inner()
    .stats
}

fn ids_of(stats: &[cri::ContainerStats]) -> Vec<String> {
    let mut ids: Vec<String> = stats
        .iter()
        .map(|s| s.attributes.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    ids
}

fn cpu_ns(stats: &cri::ContainerStats) -> u64 {
    stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .expect("cpu usage")
        .value
}

fn working_set(stats: &cri::ContainerStats) -> u64 {
    stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .expect("memory working set")
        .value
}

async fn container_stats(cri: &mut Cri, id: &str) -> cri::ContainerStats {
    cri.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .expect("ContainerStats")
    .into_inner()
    .stats
    .unwrap()
}

async fn pods(cri: &mut Cri) -> Vec<cri::PodSandbox> {
    cri.list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

async fn containers(cri: &mut Cri) -> Vec<cri::Container> {
    cri.list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
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
fn kubelet_calls_and_admission_rules_over_cri() {
    let test = "kubelet_calls_and_admission_rules_over_cri";
    podvisor_tests::netns::isolated(test, calls_and_rules(test));
}

async fn calls_and_rules(test: &str) {
    let Some((_registry, daemon, mut cri, mut images, image, other)) = setup(test).await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();

    // --- Version and RuntimeConfig ---
    let v = cri
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("podvisor", "v1")
    );
    assert!(
        !v.runtime_version.is_empty() && !v.version.is_empty(),
        "{v:?}"
    );
    let rc = cri
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        rc.linux.map(|l| l.cgroup_driver),
        Some(cri::CgroupDriver::Cgroupfs as i32),
        "the guest's cgroups are managed by the agent, not systemd"
    );

    // --- ImageStatus, ListImages with a filter, ImageFsInfo ---
    let status = |image: &str, verbose: bool| cri::ImageStatusRequest {
        image: image_spec(image),
        verbose,
    };
    let plain = images
        .image_status(status(&image, false))
        .await
        .expect("ImageStatus")
        .into_inner();
    let st = plain.image.expect("a pulled image has a status");
    assert!(st.repo_tags.contains(&image), "{st:?}");
    assert!(plain.info.is_empty(), "info only when verbose");
    let verbose = images
        .image_status(status(&image, true))
        .await
        .expect("ImageStatus verbose")
        .into_inner();
    assert_eq!(verbose.image.unwrap().id, st.id);
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["config"]["workingDir"], "/", "{info}");
    assert!(
        info["manifestDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{info}"
    );
    assert!(!info["layers"].as_array().unwrap().is_empty(), "{info}");
    let unknown = images
        .image_status(status("example.invalid/nothing:here", true))
        .await
        .expect("an unknown image is not an error")
        .into_inner();
    assert!(unknown.image.is_none() && unknown.info.is_empty());
    let all = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(all.len(), 2, "{all:?}");
    let filtered = images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: image_spec(&other),
            }),
        })
        .await
        .expect("ListImages with a filter")
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert!(filtered[0].repo_tags.contains(&other) && filtered[0].id != st.id);
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let layers = &fs.image_filesystems[0];
    let mountpoint = &layers.fs_id.as_ref().unwrap().mountpoint;
    assert!(
        daemon.dir.path().starts_with(mountpoint),
        "the filesystem holding the state dir, not {mountpoint}"
    );
    assert!(layers.inodes_used.as_ref().unwrap().value > 0 && layers.timestamp > 0);
    let used_with_both = layers.used_bytes.as_ref().unwrap().value;

    // --- one pod, two containers ---
    let sandbox = pod_config("calls", logs.path());
    let pod = run_pod(&mut cri, &sandbox).await;
    // Says what an exec leaves in /tmp/say, on its own stdout (the log).
    let idle = "trap 'exit 0' TERM; while true; do if [ -e /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 1; done";
    let busy = create(
        &mut cri,
        &pod,
        &sandbox,
        container_config("busy", &image, idle),
    )
    .await
    .expect("create busy");
    let calm = create(
        &mut cri,
        &pod,
        &sandbox,
        container_config("calm", &other, idle),
    )
    .await
    .expect("create calm");
    start(&mut cri, &busy).await;
    start(&mut cri, &calm).await;

    // --- stats: a busy loop shows in the container's and the pod's cpu ---
    let before = container_stats(&mut cri, &busy).await;
    assert_eq!(before.attributes.as_ref().unwrap().id, busy);
    assert!(working_set(&before) > 0, "{before:?}");
    let pod_before = cri
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    exec(
        &mut cri,
        &busy,
        "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
    )
    .await;
    let after = container_stats(&mut cri, &busy).await;
    // 100000 shell iterations take well over 50 ms of cpu, even natively.
    assert!(
        cpu_ns(&after) >= cpu_ns(&before) + 50_000_000,
        "cpu {} -> {} ns after a busy loop",
        cpu_ns(&before),
        cpu_ns(&after)
    );
    let pod_after = cri
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    let pod_cpu = |s: &cri::PodSandboxStats| {
        let linux = s.linux.as_ref().unwrap();
        (
            linux
                .cpu
                .as_ref()
                .unwrap()
                .usage_core_nano_seconds
                .as_ref()
                .unwrap()
                .value,
            linux
                .memory
                .as_ref()
                .unwrap()
                .working_set_bytes
                .as_ref()
                .unwrap()
                .value,
            linux.containers.len(),
        )
    };
    let (cpu_b, _, _) = pod_cpu(&pod_before);
    let (cpu_a, ws_a, n) = pod_cpu(&pod_after);
    assert_eq!(pod_after.attributes.as_ref().unwrap().id, pod);
    assert_eq!(n, 2, "both containers in the pod's stats");
    assert!(cpu_a >= cpu_b + 50_000_000, "pod cpu {cpu_b} -> {cpu_a}");
    assert!(ws_a > 0);
    let listed = cri
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.clone(),
                label_selector: HashMap::from([("app".into(), "calls".into())]),
            }),
        })
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let none = cri
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: HashMap::from([("app".into(), "other".into())]),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty(), "{none:?}");

    // ListContainerStats: by id (prefix, as crictl passes), pod, label.
    let mut both = vec![busy.clone(), calm.clone()];
    both.sort();
    let all = list_container_stats(&mut cri, cri::ContainerStatsFilter::default()).await;
    assert_eq!(ids_of(&all), both);
    assert!(all.iter().all(|s| working_set(s) > 0 && cpu_ns(s) > 0));
    let by_id = list_container_stats(
        &mut cri,
        cri::ContainerStatsFilter {
            id: calm[..12].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_of(&by_id), std::slice::from_ref(&calm));
    let by_pod = list_container_stats(
        &mut cri,
        cri::ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_of(&by_pod), both);
    let by_other_pod = list_container_stats(
        &mut cri,
        cri::ContainerStatsFilter {
            pod_sandbox_id: "f".repeat(64),
            ..Default::default()
        },
    )
    .await;
    assert!(by_other_pod.is_empty());
    let by_label = list_container_stats(
        &mut cri,
        cri::ContainerStatsFilter {
            label_selector: HashMap::from([("role".into(), "busy".into())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_of(&by_label), std::slice::from_ref(&busy));

    // --- UpdateContainerResources: cpu and memory in the guest's cgroup ---
    cri.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: calm.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 30_000,
            memory_limit_in_bytes: 80 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    assert_eq!(
        exec(&mut cri, &calm, "cat /sys/fs/cgroup/cpu.max").await,
        "30000 100000"
    );
    assert_eq!(
        exec(&mut cri, &calm, "cat /sys/fs/cgroup/memory.max").await,
        (80u64 << 20).to_string()
    );
    // The other container of the pod keeps its own limits.
    assert_eq!(
        exec(&mut cri, &busy, "cat /sys/fs/cgroup/cpu.max").await,
        "max 100000"
    );

    // --- ReopenContainerLog: the old file is left, a new one filled ---
    let log = logs.path().join("calls").join("calm.log");
    let wait_for_line = |path: std::path::PathBuf, line: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&path).is_ok_and(|l| l.contains(line)) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} in {}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // ExecSync keeps at most EXEC_SYNC_STREAM_LIMIT bytes of a stream and
    // says what it dropped; the command still runs to its end.
    let limit = podvisor::container::EXEC_SYNC_STREAM_LIMIT;
    let flood = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: calm.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "head -c {} /dev/zero; echo done >&2; exit 4",
                    limit + 100_000
                ),
            ],
            timeout: 120,
        })
        .await
        .expect("ExecSync of a flood")
        .into_inner();
    assert_eq!(flood.stdout.len(), limit);
    assert_eq!(flood.exit_code, 4);
    let stderr = String::from_utf8_lossy(&flood.stderr);
    assert!(stderr.starts_with("done\n"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stdout truncated after {limit} bytes; 100000 bytes dropped"
        )),
        "{stderr}"
    );
    exec(&mut cri, &calm, "echo before > /tmp/say").await;
    wait_for_line(log.clone(), " before").await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    cri.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: calm.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    exec(&mut cri, &calm, "echo after > /tmp/say").await;
    wait_for_line(log.clone(), " after").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains(" before") && !old.contains(" after"), "{old}");
    let err = cri
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // --- calls podvisor does not implement ---
    let err = cri
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: busy.clone(),
            location: "/tmp/checkpoint.tar".into(),
            timeout: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err}");
    assert!(
        err.message().contains("CheckpointContainer"),
        "{}",
        err.message()
    );

    // --- every Fargate admission rule, with a pod running ---
    admission_table(&mut cri, &daemon, &pod, &sandbox, &image).await;

    // --- RemoveImage: refused while a container uses it, then done ---
    let err = images
        .remove_image(cri::RemoveImageRequest {
            image: image_spec(&image),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains(&busy), "{}", err.message());
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    images
        .remove_image(cri::RemoveImageRequest {
            image: image_spec(&image),
        })
        .await
        .expect("RemoveImage once unused");
    let gone = images
        .image_status(status(&image, false))
        .await
        .unwrap()
        .into_inner();
    assert!(gone.image.is_none(), "{gone:?}");
    let left = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(left.len(), 1);
    assert!(left[0].repo_tags.contains(&other));
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let used = fs.image_filesystems[0].used_bytes.as_ref().unwrap().value;
    assert!(
        used < used_with_both,
        "ImageFsInfo: {used_with_both} -> {used} bytes after RemoveImage"
    );
    assert!(daemon.vm_processes().is_empty());
    assert_eq!(taps(), 0);
}

/// What a request asks for that one admission rule forbids.
enum Ask {
    Pod(fn(&mut cri::PodSandboxConfig)),
    Container(fn(&mut cri::ContainerConfig)),
}

fn pod_security(p: &mut cri::PodSandboxConfig) -> &mut cri::LinuxSandboxSecurityContext {
    p.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn container_security(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn node_namespace(network: bool, pid: bool, ipc: bool) -> Option<cri::NamespaceOption> {
    let mode = |node: bool| {
        if node {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        }
    };
    Some(cri::NamespaceOption {
        network: mode(network),
        pid: mode(pid),
        ipc: mode(ipc),
        ..Default::default()
    })
}

/// Every rule of `Rule::ALL`, each refused with FailedPrecondition naming
/// the rule, with nothing made: no pod, container, VM process or tap.
async fn admission_table(
    cri: &mut Cri,
    daemon: &Daemon,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    image: &str,
) {
    let table: Vec<(&str, &str, Ask)> = vec![
        (
            "privileged sandbox",
            "privileged",
            Ask::Pod(|p| pod_security(p).privileged = true),
        ),
        (
            "hostNetwork",
            "host-network",
            Ask::Pod(|p| pod_security(p).namespace_options = node_namespace(true, false, false)),
        ),
        (
            "hostPID",
            "host-pid",
            Ask::Pod(|p| pod_security(p).namespace_options = node_namespace(false, true, false)),
        ),
        (
            "hostIPC",
            "host-ipc",
            Ask::Pod(|p| pod_security(p).namespace_options = node_namespace(false, false, true)),
        ),
        (
            "hostPort",
            "host-port",
            Ask::Pod(|p| {
                p.port_mappings = vec![cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                }]
            }),
        ),
        (
            "DaemonSet label",
            "daemonset",
            Ask::Pod(|p| {
                p.labels
                    .insert("pod-template-generation".into(), "1".into());
            }),
        ),
        (
            "privileged container",
            "privileged",
            Ask::Container(|c| container_security(c).privileged = true),
        ),
        (
            "container in the node's PID namespace",
            "host-pid",
            Ask::Container(|c| {
                container_security(c).namespace_options = node_namespace(false, true, false)
            }),
        ),
        (
            "host device",
            "host-device",
            Ask::Container(|c| {
                c.devices = vec![cri::Device {
                    container_path: "/dev/kvm".into(),
                    host_path: "/dev/kvm".into(),
                    permissions: "rwm".into(),
                }]
            }),
        ),
        (
            "CDI device",
            "host-device",
            Ask::Container(|c| {
                c.cdi_devices = vec![cri::CdiDevice {
                    name: "nvidia.com/gpu=0".into(),
                }]
            }),
        ),
        (
            "/dev mount",
            "host-device",
            Ask::Container(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/host-dev".into(),
                    host_path: "/tmp/../dev".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "host path outside kubelet's directory of the pod",
            "host-path",
            Ask::Container(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/host-etc".into(),
                    host_path: "/etc".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "added capability",
            "capability",
            Ask::Container(|c| {
                container_security(c).capabilities = Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    ..Default::default()
                })
            }),
        ),
    ];
    // The table covers every rule there is.
    for rule in podvisor::policy::Rule::ALL {
        assert!(
            table.iter().any(|(_, name, _)| *name == rule.name()),
            "no row for rule {}",
            rule.name()
        );
    }
    let (pods_before, containers_before) = (pods(cri).await, containers(cri).await);
    let (vms_before, taps_before) = (daemon.vm_processes().len(), taps());
    for (what, rule, ask) in table {
        let err = match ask {
            Ask::Pod(change) => {
                let mut config = pod_config("refused", &std::env::temp_dir());
                change(&mut config);
                cri.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
            }
            Ask::Container(change) => {
                let mut config = container_config("refused", image, "true");
                change(&mut config);
                create(cri, pod, sandbox, config).await
            }
        }
        .expect_err(what);
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err}");
        assert!(
            err.message().contains(&format!("rule `{rule}`")),
            "{what}: {}",
            err.message()
        );
        let (p, c) = (pods(cri).await, containers(cri).await);
        assert_eq!(p.len(), pods_before.len(), "{what}: a pod was made: {p:?}");
        assert_eq!(
            c.len(),
            containers_before.len(),
            "{what}: a container was made: {c:?}"
        );
        assert_eq!(
            daemon.vm_processes().len(),
            vms_before,
            "{what}: a VM process was started"
        );
        assert_eq!(taps(), taps_before, "{what}: a tap was made");
    }
}

#[test]
fn a_pod_vm_that_dies_while_the_daemon_is_down() {
    let test = "a_pod_vm_that_dies_while_the_daemon_is_down";
    podvisor_tests::netns::isolated(test, recovery(test));
}

async fn recovery(test: &str) {
    let Some((_registry, mut daemon, mut cri, _images, image, _)) = setup(test).await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let sandbox = pod_config("recover", logs.path());
    let pod = run_pod(&mut cri, &sandbox).await;
    let waiting = run_container(&mut cri, &pod, &sandbox, "waiting", &image, LOOP).await;
    assert_eq!(exec(&mut cri, &waiting, "echo up").await, "up");

    // The pod's VM dies while the daemon is down.
    let vm_pid = pod_vm_pid(&mut cri, &pod).await;
    assert!(!daemon.vm_processes().is_empty());
    daemon.kill();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the VM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{vm_pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{vm_pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(Instant::now() < deadline, "the VM did not die");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cri = daemon.restart().await;
    let status = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    let st = container_status(&mut cri, &waiting).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert!(st.finished_at > 0, "{st:?}");
    remove_the_only_pod(&mut cri, &daemon, &pod).await;
}

/// Stops and removes the daemon's only pod and checks nothing of it is left:
/// no pod, container, VM process, tap or mount.
async fn remove_the_only_pod(cri: &mut Cri, daemon: &Daemon, pod: &str) {
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("StopPodSandbox");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("RemovePodSandbox");
    assert!(pods(cri).await.is_empty());
    assert!(containers(cri).await.is_empty());
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert_eq!(taps(), 0, "the pod's tap is gone");
    assert!(
        mounts_under(daemon.dir.path()).is_empty(),
        "{:?}",
        mounts_under(daemon.dir.path())
    );
}

/// The daemon is SIGKILLed while its pod VM keeps running: one container
/// exits meanwhile, one keeps running, one waits in Created. After the
/// restart each is where the guest says it is and all three work.
#[test]
fn containers_that_exit_run_or_wait_while_the_daemon_is_down() {
    let test = "containers_that_exit_run_or_wait_while_the_daemon_is_down";
    podvisor_tests::netns::isolated(test, live_vm_recovery(test));
}

async fn live_vm_recovery(test: &str) {
    let Some((_registry, mut daemon, mut cri, _images, image, _)) = setup(test).await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let sandbox = pod_config("live", logs.path());
    let pod = run_pod(&mut cri, &sandbox).await;
    let running = run_container(&mut cri, &pod, &sandbox, "running", &image, LOOP).await;
    let waiting = create(
        &mut cri,
        &pod,
        &sandbox,
        container_config("waiting", &image, LOOP),
    )
    .await
    .expect("create waiting");
    // Started last, just before the kill: it ends while the daemon is down.
    let exiting = run_container(
        &mut cri,
        &pod,
        &sandbox,
        "exiting",
        &image,
        "sleep 4; exit 3",
    )
    .await;
    let vm_processes = daemon.vm_processes();
    assert!(!vm_processes.is_empty());
    daemon.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut cri = daemon.restart().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let exited = loop {
        let st = container_status(&mut cri, &exiting).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(Instant::now() < deadline, "the exit was never seen: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(exited.exit_code, 3, "{exited:?}");
    assert!(exited.finished_at > exited.started_at, "{exited:?}");

    let st = container_status(&mut cri, &running).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert_eq!(exec(&mut cri, &running, "echo up").await, "up");

    let st = container_status(&mut cri, &waiting).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );
    start(&mut cri, &waiting).await;
    assert_eq!(exec(&mut cri, &waiting, "echo up").await, "up");
    assert_eq!(containers(&mut cri).await.len(), 3);
    assert_eq!(daemon.vm_processes(), vm_processes, "the same VM serves on");
    remove_the_only_pod(&mut cri, &daemon, &pod).await;
}

/// How a stand-in for a pod's agent misbehaves.
#[derive(Clone, Copy)]
enum Hostile {
    /// Accepts connections and never answers.
    Silent,
    /// Completes the serial handshake, then sends bytes that are not HTTP/2.
    Garbage,
}

/// Puts a hostile listener where the daemon dials the pod's agent (the VM
/// keeps its own, now unnamed, socket and runs on).
fn replace_agent(daemon: &Daemon, pod: &str, how: Hostile) {
    let path = daemon
        .run_dir
        .join("vms")
        .join(&pod[..16])
        .join("vm/agent.sock");
    std::fs::remove_file(&path).expect("the pod's agent socket");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if let Hostile::Garbage = how {
                use std::io::{Read, Write};
                let mut hello = [0u8; 64];
                let n = stream.read(&mut hello).unwrap_or(0);
                let text = String::from_utf8_lossy(&hello[..n]).into_owned();
                if let Some(nonce) = text.split_whitespace().nth(1) {
                    let _ = write!(stream, "\nPODVISOR-READY {nonce}\n");
                    let _ = stream.write_all(&[0xff; 4096]);
                }
            }
            held.push(stream);
        }
    });
}

/// Pods whose agents stop answering (or answer garbage) are stopped and
/// removed through CRI, while the node's other pod keeps its stats.
#[test]
fn pods_whose_agent_hangs_or_babbles_are_stopped_and_removed() {
    let test = "pods_whose_agent_hangs_or_babbles_are_stopped_and_removed";
    podvisor_tests::netns::isolated(test, hostile_agents(test));
}

async fn hostile_agents(test: &str) {
    let config = "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n\
                  [agent]\nconnect_timeout_secs = 3\ncall_timeout_secs = 5\nstats_timeout_secs = 2\n";
    let Some((_registry, mut daemon, mut cri, _images, image, _)) = setup_with(test, config).await
    else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mut pods = Vec::new();
    for name in ["healthy", "silent", "garbage"] {
        let sandbox = pod_config(name, logs.path());
        let pod = run_pod(&mut cri, &sandbox).await;
        let c = run_container(&mut cri, &pod, &sandbox, name, &image, LOOP).await;
        pods.push((pod, c));
    }
    let [(healthy, healthy_c), (silent, silent_c), (garbage, _)] = &pods[..] else {
        unreachable!()
    };
    replace_agent(&daemon, silent, Hostile::Silent);
    replace_agent(&daemon, garbage, Hostile::Garbage);
    // A restart drops the connections the daemon had: every call dials
    // the stand-ins from now on.
    daemon.kill();
    let mut cri = daemon.restart().await;

    // Generous deadlines that prove the calls return; how fast they return
    // is not what this test is about.
    let bounded = Duration::from_secs(120);
    let stats = tokio::time::timeout(
        bounded,
        list_container_stats(&mut cri, cri::ContainerStatsFilter::default()),
    )
    .await
    .expect("ListContainerStats returns while two agents do not answer");
    let healthy_stats = stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == *healthy_c))
        .expect("the healthy pod's container is listed");
    assert!(cpu_ns(healthy_stats) > 0, "{healthy_stats:?}");
    if let Some(s) = stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == *silent_c))
    {
        assert!(s.cpu.is_none(), "no usage from a silent agent: {s:?}");
    }
    let pod_stats = tokio::time::timeout(
        bounded,
        cri.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None }),
    )
    .await
    .expect("ListPodSandboxStats returns")
    .expect("ListPodSandboxStats")
    .into_inner()
    .stats;
    assert_eq!(pod_stats.len(), 3);

    for pod in [silent, garbage] {
        let vm_pid = pod_vm_pid(&mut cri, pod).await;
        tokio::time::timeout(
            bounded,
            cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await
        .expect("StopPodSandbox returns")
        .expect("StopPodSandbox");
        assert!(
            !std::path::Path::new(&format!("/proc/{vm_pid}")).exists()
                || std::fs::read(format!("/proc/{vm_pid}/cmdline")).is_ok_and(|c| c.is_empty()),
            "the VM of a pod whose agent does not answer is ended"
        );
        tokio::time::timeout(
            bounded,
            cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await
        .expect("RemovePodSandbox returns")
        .expect("RemovePodSandbox");
    }
    let left: Vec<String> = pods_of(&mut cri).await;
    assert_eq!(left, vec![healthy.clone()]);
    assert_eq!(exec(&mut cri, healthy_c, "echo up").await, "up");
    assert_eq!(taps(), 1, "only the healthy pod's tap is left");
}

async fn pod_vm_pid(cri: &mut Cri, pod: &str) -> i32 {
    let info = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    i32::try_from(info["vmPid"].as_i64().expect("vmPid")).expect("a pid")
}

async fn pods_of(cri: &mut Cri) -> Vec<String> {
    pods(cri).await.into_iter().map(|p| p.id).collect()
}
