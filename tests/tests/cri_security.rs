//! The pod's security settings as critest checks them, seen from inside
//! the containers: sysctls, shared or private PID namespaces (and TARGET),
//! the IPC namespace shared by the pod, seccomp RuntimeDefault and
//! Localhost profiles (for the main process and for execs), and the
//! requests refused as invalid. Two pod VMs carry all the checks.

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{mounts_under, Cri, Daemon};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

fn pod(name: &str, linux: cri::LinuxPodSandboxConfig) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(linux),
        ..Default::default()
    }
}

fn pid_mode(mode: cri::NamespaceMode, target: &str) -> Option<cri::NamespaceOption> {
    Some(cri::NamespaceOption {
        pid: mode as i32,
        target_id: target.into(),
        ..Default::default()
    })
}

fn container(
    name: &str,
    image: &str,
    command: &[&str],
    security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(security),
        }),
        ..Default::default()
    }
}

async fn create(
    cri: &mut Cri,
    pod_id: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    cri.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn start(
    cri: &mut Cri,
    pod_id: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = create(cri, pod_id, sandbox, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}

/// Exit code, stdout and stderr of `sh -c script` in the container.
async fn run(cri: &mut Cri, id: &str, script: &str) -> (i32, String, String) {
    let r = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).trim().to_string(),
        String::from_utf8_lossy(&r.stderr).trim().to_string(),
    )
}

async fn out(cri: &mut Cri, id: &str, script: &str) -> String {
    let (code, stdout, stderr) = run(cri, id, script).await;
    assert_eq!(code, 0, "{script}: {stderr}");
    stdout
}

async fn container_count(cri: &mut Cri) -> usize {
    cri.list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len()
}

fn localhost(path: &std::path::Path) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: path.to_string_lossy().into_owned(),
    })
}

#[test]
fn pod_security_settings_apply_inside_the_vm() {
    podvisor_tests::netns::isolated(
        "pod_security_settings_apply_inside_the_vm",
        pod_security_settings_in_netns(),
    );
}

async fn pod_security_settings_in_netns() {
    let test = "pod_security_settings_apply_inside_the_vm";
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
        .push("security/busybox", "1", &busybox_image("", "/"))
        .await;
    let image = format!("{}/security/busybox:1", registry.addr());
    let (daemon, mut cri) = Daemon::start().await;
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

    // --- refused before a VM boots ---
    for bad in ["net/ipv4/ip_forward", "kernel..msgmax"] {
        let mut linux = cri::LinuxPodSandboxConfig::default();
        linux.sysctls.insert(bad.into(), "1".into());
        let err = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod("badsysctl", linux)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(bad), "{}", err.message());
    }
    assert!(daemon.vm_processes().is_empty());

    // --- pod A: shared PID namespace, sysctls ---
    let mut linux = cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: pid_mode(cri::NamespaceMode::Pod, ""),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (k, v) in [
        ("kernel.shm_rmid_forced", "1"),
        ("kernel.msgmax", "12345"),
        ("fs.mqueue.msg_max", "100"),
        ("net.ipv4.ip_local_port_range", "20000 30000"),
    ] {
        linux.sysctls.insert(k.into(), v.into());
    }
    let sandbox_a = pod("shared", linux);
    let pod_a = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_a.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox shared")
        .into_inner()
        .pod_sandbox_id;
    let plain = cri::LinuxContainerSecurityContext::default;
    let a1 = start(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container("a1", &image, &["sleep", "4101"], plain()),
    )
    .await;
    let a2 = start(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container("a2", &image, &["sleep", "4102"], plain()),
    )
    .await;

    // Sysctls, IPC ones included: the container's IPC namespace is the pod's.
    assert_eq!(
        out(&mut cri, &a1, "cat /proc/sys/kernel/shm_rmid_forced").await,
        "1"
    );
    assert_eq!(
        out(&mut cri, &a1, "cat /proc/sys/kernel/msgmax").await,
        "12345"
    );
    assert_eq!(
        out(&mut cri, &a2, "cat /proc/sys/fs/mqueue/msg_max").await,
        "100"
    );
    assert_eq!(
        out(&mut cri, &a1, "sysctl -n net.ipv4.ip_local_port_range").await,
        "20000\t30000"
    );
    // One PID namespace: each sees the other's process, and PID 1 is
    // neither container's.
    let ps = out(&mut cri, &a1, "ps").await;
    assert!(
        ps.contains("sleep 4101") && ps.contains("sleep 4102"),
        "{ps}"
    );
    let init = out(&mut cri, &a2, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(!init.contains("sleep"), "PID 1 is {init:?}");

    // Seccomp. Unconfined: no filter, a user namespace can be made.
    assert_eq!(
        out(&mut cri, &a1, "grep Seccomp: /proc/self/status").await,
        "Seccomp:\t0"
    );
    let (code, _, err) = run(&mut cri, &a1, "unshare -U true").await;
    assert_eq!(code, 0, "unconfined unshare -U: {err}");
    // RuntimeDefault: filtered, execs included; the same call is refused.
    let strict = cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile::default()),
        ..Default::default()
    };
    let a3 = start(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container("a3", &image, &["sleep", "4103"], strict),
    )
    .await;
    assert_eq!(
        out(&mut cri, &a3, "grep Seccomp: /proc/self/status").await,
        "Seccomp:\t2"
    );
    let (code, _, err) = run(&mut cri, &a3, "unshare -U true").await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Common calls still work under it.
    assert_eq!(
        out(
            &mut cri,
            &a3,
            "echo hi > /tmp/x && chmod 600 /tmp/x && cat /tmp/x"
        )
        .await,
        "hi"
    );

    // Masked paths: the file reads as /dev/null, and exec'ing it fails.
    let masked = start(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container(
            "masked",
            &image,
            &["sleep", "4104"],
            cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/etc/group".into()],
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(out(&mut cri, &masked, "wc -c < /etc/group").await, "0");
    let dev = out(&mut cri, &masked, "stat -c '%t,%T' /etc/group").await;
    assert_eq!(dev, "1,3", "/dev/null's device numbers");
    let unmasked = out(&mut cri, &a3, "wc -c < /etc/group").await;
    assert_ne!(
        unmasked, "0",
        "another container's /etc/group is not masked"
    );

    // Localhost: the profile file from the host, for the main process
    // (its chmod fails) and for execs.
    let profiles = tempfile::tempdir().unwrap();
    let block_chmod = profiles.path().join("block-chmod.json");
    std::fs::write(
        &block_chmod,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat","fchmodat2"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let blocked = cri::LinuxContainerSecurityContext {
        seccomp: localhost(&block_chmod),
        ..Default::default()
    };
    let a4 = start(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container(
            "a4",
            &image,
            &["sh", "-c", "chmod 700 /tmp 2>/tmp/err; sleep 4104"],
            blocked,
        ),
    )
    .await;
    let (code, _, err) = run(&mut cri, &a4, "chmod 400 /").await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    let mut init_err = String::new();
    for _ in 0..50 {
        init_err = out(&mut cri, &a4, "cat /tmp/err").await;
        if !init_err.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(init_err.contains("Operation not permitted"), "{init_err:?}");
    // A chmod of the unconfined container still works.
    out(&mut cri, &a1, "chmod 700 /tmp").await;

    // Refused, and nothing is left of the attempt.
    let before = container_count(&mut cri).await;
    let missing = profiles.path().join("missing.json");
    let err = create(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container(
            "nofile",
            &image,
            &["true"],
            cri::LinuxContainerSecurityContext {
                seccomp: localhost(&missing),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("missing.json"), "{}", err.message());
    let err = create(
        &mut cri,
        &pod_a,
        &sandbox_a,
        container(
            "grouponly",
            &image,
            &["true"],
            cri::LinuxContainerSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 1002 }),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("run_as_group"), "{}", err.message());
    assert_eq!(container_count(&mut cri).await, before);

    // --- pod B: a PID namespace per container, and TARGET ---
    let sandbox_b = pod(
        "private",
        cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: pid_mode(cri::NamespaceMode::Container, ""),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let pod_b = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_b.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox private")
        .into_inner()
        .pod_sandbox_id;
    let b1 = start(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container("b1", &image, &["sleep", "4201"], plain()),
    )
    .await;
    let b2 = start(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container("b2", &image, &["sleep", "4202"], plain()),
    )
    .await;
    let ps = out(&mut cri, &b1, "ps").await;
    assert!(
        ps.contains("sleep 4201") && !ps.contains("sleep 4202"),
        "{ps}"
    );
    let init = out(&mut cri, &b2, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert_eq!(init, "sleep 4202");
    // An ephemeral-style container joins b1's namespace.
    let debug = cri::LinuxContainerSecurityContext {
        namespace_options: pid_mode(cri::NamespaceMode::Target, &b1),
        ..Default::default()
    };
    let b3 = start(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container("b3", &image, &["sleep", "4203"], debug),
    )
    .await;
    let ps = out(&mut cri, &b3, "ps").await;
    assert!(
        ps.contains("sleep 4201") && ps.contains("sleep 4203") && !ps.contains("sleep 4202"),
        "{ps}"
    );
    // A target from another pod is refused.
    let err = create(
        &mut cri,
        &pod_b,
        &sandbox_b,
        container(
            "b4",
            &image,
            &["true"],
            cri::LinuxContainerSecurityContext {
                namespace_options: pid_mode(cri::NamespaceMode::Target, &a1),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    for id in [&pod_a, &pod_b] {
        cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
        cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(daemon.vm_processes().is_empty());
    assert!(mounts_under(daemon.dir.path()).is_empty());
}
