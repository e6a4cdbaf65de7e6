//! Pods end to end over CRI, as crictl drives them: an image pulled from a
//! registry, two pod VMs at once, containers started, exec'd into, logged,
//! stopped and removed; a SIGKILLed daemon that picks its pods up again; a
//! VM killed under its pod; nothing left behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{mounts_under, Cri, Daemon, Images};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::{alive, qemu_ready};
use tonic::Code;

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).to_string_lossy().into_owned(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![format!("{name}.svc.cluster.local")],
            options: vec!["ndots:5".into()],
        }),
        ..Default::default()
    }
}

async fn run_pod(cri: &mut Cri, name: &str, log_dir: &Path) -> String {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(pod_config(name, log_dir)),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
    .into_inner()
    .pod_sandbox_id
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
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        // What kubelet sends for a pod without shareProcessNamespace: the
        // script is its container's PID 1 (the stop test relies on that).
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
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

async fn exec(cri: &mut Cri, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    cri.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 30,
    })
    .await
    .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
    .into_inner()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every line of a CRI log: `<RFC3339Nano> <stream> <F|P> <text>`.
fn assert_cri_format(log: &str) {
    for line in log.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "log line {line:?}");
        assert!(
            chrono_like(parts[0]),
            "timestamp {:?} is not RFC 3339 with nanoseconds",
            parts[0]
        );
        assert!(matches!(parts[1], "stdout" | "stderr"), "{line:?}");
        assert!(matches!(parts[2], "F" | "P"), "{line:?}");
    }
}

fn chrono_like(ts: &str) -> bool {
    // 2026-11-26T11:22:28.123456789Z
    ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.'
}

fn ticks(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split_once(" stdout F tick "))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .collect()
}

#[test]
fn pods_run_containers_from_a_registry_image_end_to_end() {
    podvisor_tests::netns::isolated(
        "pods_run_containers_from_a_registry_image_end_to_end",
        pods_run_containers_from_a_registry_image_end_to_end_in_netns(),
    );
}

async fn pods_run_containers_from_a_registry_image_end_to_end_in_netns() {
    let test = "pods_run_containers_from_a_registry_image_end_to_end";
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
        .push("e2e/busybox", "1.0", &busybox_image("", "/"))
        .await;
    let image = format!("{}/e2e/busybox:1.0", registry.addr());

    let volume = tempfile::tempdir().unwrap();
    // Mode fargate allows host paths only in the allowed roots: this one.
    let (mut daemon, mut cri) = Daemon::start_with(&format!(
        "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n\
         [policy]\nhost_path_roots = [\"{}\"]\n",
        volume.path().display()
    ))
    .await;
    let mut images: Images = podvisor_tests::daemon::connect_images(&daemon.socket)
        .await
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("greeting"), "hello from the host\n").unwrap();
    let config_file = volume.path().join("settings.conf");
    std::fs::write(&config_file, "mode=one\n").unwrap();

    // --- images ---
    let image_ref = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("PullImage")
        .into_inner()
        .image_ref;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let listed = images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed
        .iter()
        .any(|i| i.id == image_ref && i.repo_tags.contains(&image)));
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("image status");
    assert_eq!(st.id, image_ref);
    assert!(st.size > 0);
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

    // --- two pods at once ---
    let (mut c1, mut c2) = (cri.clone(), cri.clone());
    let (pod_a, pod_b) = tokio::join!(
        run_pod(&mut c1, "web", logs.path()),
        run_pod(&mut c2, "batch", logs.path())
    );
    let sandbox_a = pod_config("web", logs.path());
    let sandbox_b = pod_config("batch", logs.path());

    // --- a long-running container with host-path volumes ---
    let mut app = container_config(
        "app",
        &image,
        "echo hello-stdout; echo hello-stderr >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
    );
    app.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: volume.path().to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/etc/app/settings.conf".into(),
            host_path: config_file.to_string_lossy().into_owned(),
            readonly: false,
            ..Default::default()
        },
    ];
    app.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hi".into(),
    }];
    let app_id = create(&mut cri, &pod_a, &sandbox_a, app.clone())
        .await
        .expect("CreateContainer app");
    assert_eq!(
        container_status(&mut cri, &app_id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    // Bad input: the right codes, nothing created.
    let dup = create(&mut cri, &pod_a, &sandbox_a, app.clone()).await;
    assert_eq!(dup.unwrap_err().code(), Code::AlreadyExists);
    let missing = create(&mut cri, "no-such-pod", &sandbox_a, app.clone()).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let mut unpulled = container_config("x", "127.0.0.1:1/none:1", "true");
    unpulled.log_path = String::new();
    let err = create(&mut cri, &pod_a, &sandbox_a, unpulled)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let mut no_meta = app.clone();
    no_meta.metadata = None;
    let err = create(&mut cri, &pod_a, &sandbox_a, no_meta)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    cri.start_container(cri::StartContainerRequest {
        container_id: app_id[..12].to_string(), // a prefix, as crictl allows
    })
    .await
    .expect("StartContainer");
    let st = container_status(&mut cri, &app_id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert!(st.started_at >= st.created_at && st.created_at > 0);
    // The ref is the repo digest the pull resolved (repo@sha256:...).
    assert!(st.image_ref.contains("@sha256:"), "{}", st.image_ref);

    // ExecSync: the guest's kernel, separate streams, exit codes, timeout.
    let uname = exec(&mut cri, &app_id, &["uname", "-r"]).await;
    let release = String::from_utf8_lossy(&uname.stdout).trim().to_string();
    assert!(release.ends_with("-podvisor"), "uname -r = {release:?}");
    assert_ne!(
        release,
        host_release(),
        "the container runs on the host kernel"
    );
    let streams = exec(
        &mut cri,
        &app_id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!(streams.stdout, b"out\n");
    assert_eq!(streams.stderr, b"err\n");
    assert_eq!(streams.exit_code, 3);
    let env = exec(&mut cri, &app_id, &["sh", "-c", "echo $GREETING $HOSTNAME"]).await;
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), "hi web");
    let started = Instant::now();
    let slow = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: app_id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(slow.code(), Code::DeadlineExceeded, "{slow}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the timeout was cut short"
    );
    // The timed-out command was killed, not left to finish.
    let procs = exec(
        &mut cri,
        &app_id,
        &[
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
        ],
    )
    .await;
    let procs = String::from_utf8_lossy(&procs.stdout);
    assert!(
        !procs.contains("sleep 30"),
        "the timed-out command still runs:\n{procs}"
    );

    // Host paths: read-only enforced in the guest, a host change visible.
    let data = exec(&mut cri, &app_id, &["cat", "/data/greeting"]).await;
    assert_eq!(data.stdout, b"hello from the host\n");
    let write = exec(&mut cri, &app_id, &["touch", "/data/new"]).await;
    assert_ne!(write.exit_code, 0, "a read-only volume took a write");
    assert!(!volume.path().join("new").exists());
    std::fs::write(&config_file, "mode=two\n").unwrap();
    wait_for(
        "a host file change reaches the container",
        Duration::from_secs(10),
        || {
            let mut cri = cri.clone();
            let id = app_id.clone();
            async move {
                exec(&mut cri, &id, &["cat", "/etc/app/settings.conf"])
                    .await
                    .stdout
                    == b"mode=two\n"
            }
        },
    )
    .await;

    // The CRI log file.
    let app_log: PathBuf = logs.path().join("web/app/0.log");
    wait_for("the app's log has ticks", Duration::from_secs(30), || {
        let log = log_text(&app_log);
        async move { ticks(&log).len() >= 2 }
    })
    .await;
    let log = log_text(&app_log);
    assert_cri_format(&log);
    assert!(log.contains(" stdout F hello-stdout\n"), "{log}");
    assert!(log.contains(" stderr F hello-stderr\n"), "{log}");

    // --- the pod network: each pod its own address, routed, no metadata ---
    let ip_a = pod_ip(&mut cri, &pod_a).await;
    let ip_b = pod_ip(&mut cri, &pod_b).await;
    assert_ne!(ip_a, ip_b);
    let resolv = exec(&mut cri, &app_id, &["cat", "/etc/resolv.conf"]).await;
    let resolv = String::from_utf8_lossy(&resolv.stdout).into_owned();
    for want in [
        "nameserver 10.96.0.10",
        "search web.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            resolv.contains(want),
            "{want:?} missing from /etc/resolv.conf:\n{resolv}"
        );
    }
    let addr = exec(&mut cri, &app_id, &["ip", "-4", "addr", "show"]).await;
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {ip_a}/32")),
        "{}",
        String::from_utf8_lossy(&addr.stdout)
    );
    let server = create(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container_config(
            "server",
            &image,
            "mkdir -p /www && echo hello-from-batch > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    )
    .await
    .expect("CreateContainer server");
    cri.start_container(cri::StartContainerRequest {
        container_id: server.clone(),
    })
    .await
    .unwrap();
    // Pod to pod, pod to host (the gateway address is the host's side).
    let ping = exec(&mut cri, &app_id, &["ping", "-c", "1", "-W", "5", &ip_b]).await;
    assert_eq!(
        ping.exit_code,
        0,
        "ping {ip_b}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = exec(
        &mut cri,
        &app_id,
        &["ping", "-c", "1", "-W", "5", "10.88.0.1"],
    )
    .await;
    assert_eq!(ping.exit_code, 0, "ping the host side");
    // TCP to the other pod, from a pod and from the host.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip_b} 8080");
    let mut page = String::new();
    for _ in 0..50 {
        page = String::from_utf8_lossy(&exec(&mut cri, &app_id, &["sh", "-c", &get]).await.stdout)
            .into_owned();
        if page.contains("hello-from-batch") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        page.contains("hello-from-batch"),
        "pod A got {page:?} from pod B"
    );
    let from_host = http_get(&format!("{ip_b}:8080")).await;
    assert!(
        from_host.contains("hello-from-batch"),
        "the host got {from_host:?}"
    );
    // The instance metadata address answers on the host, never to a pod.
    let metadata = metadata_listener();
    let blocked = exec(
        &mut cri,
        &app_id,
        &[
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80",
        ],
    )
    .await;
    assert_ne!(
        blocked.exit_code,
        0,
        "a pod reached 169.254.169.254: {:?}",
        String::from_utf8_lossy(&blocked.stdout)
    );
    assert!(
        http_get("169.254.169.254:80").await.contains("metadata"),
        "the host's own metadata listener"
    );
    drop(metadata);

    // --- a container that ends by itself, in the second pod ---
    let job_id = create(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container_config("job", &image, "echo done; exit 7"),
    )
    .await
    .expect("CreateContainer job");
    cri.start_container(cri::StartContainerRequest {
        container_id: job_id.clone(),
    })
    .await
    .unwrap();
    wait_for("job exits", Duration::from_secs(30), || {
        let mut cri = cri.clone();
        let id = job_id.clone();
        async move {
            container_status(&mut cri, &id).await.state
                == cri::ContainerState::ContainerExited as i32
        }
    })
    .await;
    let st = container_status(&mut cri, &job_id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"));
    assert!(st.finished_at >= st.started_at);
    assert!(log_text(&logs.path().join("batch/job/0.log")).contains(" stdout F done\n"));
    let listed = cri
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    // Running: app and server; job has exited.
    assert_eq!(
        listed.iter().map(|c| &c.id).collect::<Vec<_>>(),
        [&app_id, &server]
    );
    let in_use = images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use}");

    // Stats come from the guest's cgroups.
    let stats = cri
        .container_stats(cri::ContainerStatsRequest {
            container_id: app_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);

    let pod_stats = cri
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    let web_stats = pod_stats
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == pod_a)
        .expect("stats of the web pod");
    let linux = web_stats.linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 1);
    assert!(
        linux
            .memory
            .as_ref()
            .unwrap()
            .working_set_bytes
            .as_ref()
            .unwrap()
            .value
            > 0
    );

    // UpdateContainerResources reaches the container's cgroup in the guest.
    cri.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: app_id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    let limit = exec(&mut cri, &app_id, &["cat", "/sys/fs/cgroup/memory.max"]).await;
    assert_eq!(
        String::from_utf8_lossy(&limit.stdout).trim(),
        (96u64 << 20).to_string(),
        "{}",
        String::from_utf8_lossy(&limit.stderr)
    );

    // ReopenContainerLog: kubelet moved the file away; a new one starts.
    let rotated = app_log.with_extension("log.1");
    std::fs::rename(&app_log, &rotated).unwrap();
    cri.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: app_id.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    wait_for("ticks in the reopened log", Duration::from_secs(30), || {
        let log = log_text(&app_log);
        async move { !ticks(&log).is_empty() }
    })
    .await;
    let rotated_ticks = ticks(&log_text(&rotated));
    let new_ticks = ticks(&log_text(&app_log));
    assert!(
        new_ticks[0] > *rotated_ticks.last().unwrap(),
        "the new file continues the old"
    );

    // --- SIGKILL the daemon; the next one picks the pods up ---
    daemon.kill();
    let before = ticks(&log_text(&app_log)).last().copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cri = daemon.restart().await;
    let st = container_status(&mut cri, &app_id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let again = exec(&mut cri, &app_id, &["echo", "still here"]).await;
    assert_eq!(again.stdout, b"still here\n");
    wait_for(
        "the log continues after the restart",
        Duration::from_secs(30),
        || {
            let log = log_text(&app_log);
            async move { ticks(&log).last().copied().unwrap_or(0) > before + 2 }
        },
    )
    .await;
    // Output written while no daemon ran is not lost.
    let mut seen = ticks(&log_text(&rotated));
    seen.extend(ticks(&log_text(&app_log)));
    let last = *seen.last().unwrap();
    for n in 0..=last {
        assert!(seen.contains(&n), "tick {n} is missing from the log");
    }

    // --- a VM killed under its pod ---
    let info = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_b.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let vm_pid = i32::try_from(info["vmPid"].as_u64().expect("vm pid")).expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "the pod with a dead VM is NotReady",
        Duration::from_secs(20),
        || {
            let mut cri = cri.clone();
            let id = pod_b.clone();
            async move {
                cri.pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .state
                    == cri::PodSandboxState::SandboxNotready as i32
            }
        },
    )
    .await;
    let err = create(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container_config("late", &image, "true"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // --- stop and remove ---
    let started = Instant::now();
    cri.stop_container(cri::StopContainerRequest {
        container_id: app_id.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    let st = container_status(&mut cri, &app_id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    // sh as the container's PID 1 ignores SIGTERM: the grace runs out and
    // SIGKILL ends it.
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A stop right after the start, before the command has installed its
    // TERM handler (critest's "stopping container" does this to `top`): the
    // kernel drops a signal to a namespace init without a handler, so the
    // agent holds it until the handler exists. The trap's exit code shows
    // SIGTERM arrived; a drop would end in SIGKILL (137) after the grace.
    let late_trap = create(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container_config(
            "late-trap",
            &image,
            "sleep 0.5; trap 'exit 9' TERM; while :; do sleep 0.2; done",
        ),
    )
    .await
    .expect("CreateContainer late-trap");
    cri.start_container(cri::StartContainerRequest {
        container_id: late_trap.clone(),
    })
    .await
    .expect("StartContainer late-trap");
    cri.stop_container(cri::StopContainerRequest {
        container_id: late_trap.clone(),
        timeout: 30,
    })
    .await
    .expect("StopContainer late-trap");
    let st = container_status(&mut cri, &late_trap).await;
    assert_eq!(
        (st.state, st.exit_code),
        (cri::ContainerState::ContainerExited as i32, 9),
        "the TERM trap ran: {st:?}"
    );
    // Stopping it again, or stopping what does not exist, succeeds.
    for id in [late_trap.as_str(), "feedbeef"] {
        cri.stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer {id} again: {e}"));
    }
    for id in [&app_id, &job_id, &server, &late_trap] {
        cri.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
    }
    let err = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: app_id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for pod in [&pod_a, &pod_b] {
        cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .expect("StopPodSandbox");
        cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
    }
    images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage once no container uses it");

    // Nothing left: processes, mounts, state.
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert!(
        mounts_under(daemon.dir.path()).is_empty(),
        "{:?}",
        mounts_under(daemon.dir.path())
    );
    let sandboxes = daemon.dir.path().join("state/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(!alive(vm_pid as u32));
    // Nothing of the pods' network is left.
    let links = command_output("ip", &["-o", "link"]);
    assert!(!links.contains("pvtap"), "{links}");
    let routes = command_output("ip", &["route"]);
    assert!(
        !routes.contains(&ip_a) && !routes.contains(&ip_b),
        "{routes}"
    );
    let ruleset = command_output("nft", &["list", "ruleset"]);
    assert!(!ruleset.contains("chain pod_"), "{ruleset}");
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), "mode=two\n");
    assert!(
        volume.path().join("greeting").exists(),
        "the host volume survived"
    );
}

async fn pod_ip(cri: &mut Cri, id: &str) -> String {
    let ip = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    assert!(ip.starts_with("10.88."), "pod {id} has address {ip:?}");
    ip
}

/// An HTTP/1.0 GET from the test's side of the network namespace.
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

/// 169.254.169.254:80 on the host side of the test's namespace, answering
/// "metadata" to whoever gets through.
fn metadata_listener() -> std::thread::JoinHandle<()> {
    let status = std::process::Command::new("ip")
        .args(["addr", "add", "169.254.169.254/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(status.success());
    let listener = std::net::TcpListener::bind("169.254.169.254:80").unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut conn in listener.incoming().flatten().take(1) {
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nmetadata\n");
        }
    })
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}
