//! Fargate's rules enforced by the daemon: profiles select which pods run,
//! what Fargate cannot isolate is refused before anything is made, each pod
//! VM is sized from its requests (memory, vCPUs, a CPU quota for a
//! fractional vCPU), and container processes get Fargate's rlimits.

use std::time::Duration;

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{mounts_under, Cri, Daemon};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

const CONFIG: &str = r#"
[sandbox]
stop_grace_secs = 2
cpu_quota = true

[[policy.profiles]]
name = "apps"
[[policy.profiles.selectors]]
namespace = "team-*"
labels = { tier = "w?b" }

[[policy.profiles]]
name = "jobs"
[[policy.profiles.selectors]]
namespace = "batch"
"#;

fn pod(name: &str, namespace: &str, labels: &[(&str, &str)]) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn resources(millicpus: i64, memory_mib: i64) -> Option<cri::LinuxPodSandboxConfig> {
    Some(cri::LinuxPodSandboxConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: millicpus * 100,
            memory_limit_in_bytes: memory_mib << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
}

async fn run(cri: &mut Cri, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn refused(cri: &mut Cri, daemon: &Daemon, config: cri::PodSandboxConfig, rule: &str) {
    let err = run(cri, config).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains(rule), "{rule}: {}", err.message());
    // Refused before anything was made.
    let pods = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{rule}: {pods:?}");
    assert!(daemon.vm_processes().is_empty(), "{rule}: a VM was started");
}

async fn exec(cri: &mut Cri, id: &str, script: &str) -> String {
    let r = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
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

async fn sandbox_info(cri: &mut Cri, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let r = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.status.unwrap(),
        serde_json::from_str(&r.info["info"]).unwrap(),
    )
}

/// Runs a long-lived busybox container in `pod`, returns its id.
async fn start_container(
    cri: &mut Cri,
    pod_id: &str,
    sandbox: &cri::PodSandboxConfig,
    image: &str,
) -> String {
    let id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

/// MemTotal is the VM's memory less what the kernel keeps for itself (its
/// image, page structures: a few percent).
fn assert_vm_memory(mem_total_mib: u64, vm_mib: u64) {
    assert!(
        mem_total_mib <= vm_mib && mem_total_mib >= vm_mib * 94 / 100 - 16,
        "MemTotal {mem_total_mib} MiB for a {vm_mib} MiB VM"
    );
}

/// The CPU limit of process `pid` as its cgroup files hold it: (quota in
/// us, or None for "max", period in us). cgroup v2 (`cpu.max` under the
/// unified hierarchy) or v1 (the `cpu` controller's hierarchy, as on hosts
/// with the hybrid layout).
fn cpu_limit_of(pid: u64) -> (Option<u64>, u64) {
    let memberships = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
    let v2_has_cpu = std::fs::read_to_string(unified)
        .map(|c| c.split_whitespace().any(|c| c == "cpu"))
        .unwrap_or(false);
    for line in memberships.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() && v2_has_cpu {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/cpu.max")).unwrap();
            let (quota, period) = max.trim().split_once(' ').expect("cpu.max: quota period");
            return (quota.parse().ok(), period.parse().unwrap());
        }
        if controllers.split(',').any(|c| c == "cpu") {
            let dir = cgroup_v1_mount("cpu").join(path);
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            let quota: i64 = read("cpu.cfs_quota_us").parse().unwrap();
            let period = read("cpu.cfs_period_us").parse().unwrap();
            return (u64::try_from(quota).ok(), period);
        }
    }
    panic!("process {pid} is in no cgroup with the cpu controller: {memberships}");
}

/// Where the cgroup v1 hierarchy with `controller` is mounted.
fn cgroup_v1_mount(controller: &str) -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (Some("cgroup"), Some(_), Some(options)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        if options.split(',').any(|o| o == controller) {
            let mount_point = left.split_whitespace().nth(4).expect("mount point");
            return mount_point.into();
        }
    }
    panic!("no cgroup v1 hierarchy with {controller} is mounted");
}

fn mem_total_mib(meminfo: &str) -> u64 {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    kib / 1024
}

#[test]
fn fargate_rules_admit_size_and_limit_pods() {
    podvisor_tests::netns::isolated(
        "fargate_rules_admit_size_and_limit_pods",
        fargate_rules_admit_size_and_limit_pods_in_netns(),
    );
}

async fn fargate_rules_admit_size_and_limit_pods_in_netns() {
    let test = "fargate_rules_admit_size_and_limit_pods";
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
        .push("policy/busybox", "1", &busybox_image("", "/"))
        .await;
    let image = format!("{}/policy/busybox:1", registry.addr());
    let (daemon, mut cri) = Daemon::start_with(CONFIG).await;
    let mut images = podvisor_tests::daemon::connect_images(&daemon.socket)
        .await
        .unwrap();
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");

    // --- profiles ---
    let err = run(&mut cri, pod("stray", "default", &[("tier", "web")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    for part in ["stray", "default", "apps", "jobs"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
    // The namespace matches "team-*" but the label does not match "w?b".
    let err = run(&mut cri, pod("api", "team-a", &[("tier", "api")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // --- admission: refused, nothing made ---
    let web = |name: &str| pod(name, "team-a", &[("tier", "web")]);
    let mut privileged = web("privileged");
    privileged.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    refused(&mut cri, &daemon, privileged, "privileged").await;
    let mut host_network = web("hostnet");
    host_network.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    refused(&mut cri, &daemon, host_network, "host-network").await;
    let mut host_port = web("hostport");
    host_port.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 8080,
        host_ip: String::new(),
    }];
    refused(&mut cri, &daemon, host_port, "host-port").await;
    let daemonset = pod(
        "ds",
        "team-a",
        &[("tier", "web"), ("pod-template-generation", "1")],
    );
    refused(&mut cri, &daemon, daemonset, "daemonset").await;
    let mut too_big = web("huge");
    too_big.linux = resources(16_000, 121 * 1024);
    let err = run(&mut cri, too_big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    // --- a sized pod: 1.5 vCPU and 3 GB round up to 2 vCPU / 4 GB ---
    let mut sized = web("sized");
    sized.linux = resources(1500, 3 * 1024);
    let sized_id = run(&mut cri, sized.clone()).await.expect("run sized pod");
    // --- and one with no requests: the smallest, 0.25 vCPU / 0.5 GB ---
    let small = pod("small", "batch", &[]);
    let small_id = run(&mut cri, small.clone()).await.expect("run small pod");

    let (st, info) = sandbox_info(&mut cri, &sized_id).await;
    assert_eq!(st.annotations["CapacityProvisioned"], "2vCPU 4GB");
    assert_eq!(st.annotations["podvisor.io/fargate-profile"], "apps");
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["memoryMiB"], 4 * 1024 + 256);
    assert!(info["cpuQuotaUs"].is_null(), "whole vCPUs need no quota");
    let (st, info) = sandbox_info(&mut cri, &small_id).await;
    assert_eq!(st.annotations["CapacityProvisioned"], "0.25vCPU 0.5GB");
    assert_eq!(st.annotations["podvisor.io/fargate-profile"], "jobs");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["memoryMiB"], 512 + 256);
    assert_eq!(info["cpuQuotaUs"], 25_000);
    // The quota is on the VM process's cgroup: read from the kernel, not
    // from what the daemon reports.
    let vm_pid = info["vmPid"].as_u64().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{vm_pid}/cgroup")).unwrap();
    assert!(
        cgroup
            .lines()
            .any(|l| l.contains(&format!("podvisor/{small_id}"))),
        "VM process cgroups: {cgroup}"
    );
    let (quota, period) = cpu_limit_of(vm_pid);
    assert_eq!(
        quota.map(|q| q * 1000 / period),
        Some(250),
        "the VM process's cgroup holds it to 0.25 CPU: quota {quota:?} per {period} us"
    );

    // Inside the guests: memory, vCPUs, and the containers' rlimits.
    let sized_c = start_container(&mut cri, &sized_id, &sized, &image).await;
    let meminfo = exec(&mut cri, &sized_c, "cat /proc/meminfo").await;
    let total = mem_total_mib(&meminfo);
    assert_vm_memory(total, 4 * 1024 + 256);
    let cpus = exec(&mut cri, &sized_c, "grep -c ^processor /proc/cpuinfo").await;
    assert_eq!(cpus, "2");
    let limits = exec(
        &mut cri,
        &sized_c,
        "echo $(ulimit -n) $(ulimit -Hn) $(ulimit -u) $(ulimit -Hu)",
    )
    .await;
    assert_eq!(limits, "1024 65535 1024 65535");
    // The container's own init has them too, not only execs. (Without
    // namespace options the pod's containers share its PID namespace, whose
    // PID 1 is the agent's holder: find the container's `sleep`.)
    let init = exec(
        &mut cri,
        &sized_c,
        "grep -E '^Max (open files|processes)' /proc/$(pidof sleep)/limits",
    )
    .await;
    for line in init.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[fields.len() - 3..fields.len() - 1],
            ["1024", "65535"],
            "{line}"
        );
    }
    assert_eq!(init.lines().count(), 2, "{init}");

    let small_c = start_container(&mut cri, &small_id, &small, &image).await;
    let total = mem_total_mib(&exec(&mut cri, &small_c, "cat /proc/meminfo").await);
    assert_vm_memory(total, 768);
    assert_eq!(
        exec(&mut cri, &small_c, "grep -c ^processor /proc/cpuinfo").await,
        "1"
    );

    // Containers: a privileged one and one adding a capability Fargate
    // does not allow are refused; the pod keeps running.
    for (name, security) in [
        (
            "priv",
            cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ),
        (
            "netadmin",
            cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ] {
        let err = cri
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sized_id.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    linux: Some(cri::LinuxContainerConfig {
                        resources: None,
                        security_context: Some(security),
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sized.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err}");
    }
    let containers = cri
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 2);

    for id in [&sized_id, &small_id] {
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(daemon.vm_processes().is_empty());
    assert!(mounts_under(daemon.dir.path()).is_empty());
    for root in ["/sys/fs/cgroup/cpu/podvisor", "/sys/fs/cgroup/podvisor"] {
        assert!(
            !std::path::Path::new(root).join(&small_id).exists(),
            "the VM's cgroup outlived its pod"
        );
    }
}

/// Exit code, stdout and stderr of `sh -c script` in a container.
async fn exec_status(cri: &mut Cri, id: &str, script: &str) -> (i32, String) {
    let r = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
        .into_inner();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    (r.exit_code, out)
}

async fn create_with_security(
    cri: &mut Cri,
    pod_id: &str,
    sandbox: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    security: cri::LinuxContainerSecurityContext,
) -> Result<String, tonic::Status> {
    let id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(security),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

#[test]
fn vm_mode_honours_privileged_containers_inside_the_vm() {
    podvisor_tests::netns::isolated(
        "vm_mode_honours_privileged_containers_inside_the_vm",
        vm_mode_honours_privileged_containers_inside_the_vm_in_netns(),
    );
}

async fn vm_mode_honours_privileged_containers_inside_the_vm_in_netns() {
    let test = "vm_mode_honours_privileged_containers_inside_the_vm";
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
        .push("policy/busybox", "1", &busybox_image("", "/"))
        .await;
    let image = format!("{}/policy/busybox:1", registry.addr());
    let (daemon, mut cri) = Daemon::start_with(
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

    // What would reach the node stays refused in mode vm.
    let mut host_pid = pod("hostpid", "default", &[]);
    host_pid.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    refused(&mut cri, &daemon, host_pid, "host-pid").await;

    let mut sandbox = pod("privileged", "default", &[("pod-template-generation", "1")]);
    sandbox.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod_id = run(&mut cri, sandbox.clone())
        .await
        .expect("a privileged DaemonSet pod runs in mode vm");
    let privileged = create_with_security(
        &mut cri,
        &pod_id,
        &sandbox,
        &image,
        "privileged",
        cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    )
    .await
    .expect("a privileged container runs in mode vm");
    let plain = create_with_security(
        &mut cri,
        &pod_id,
        &sandbox,
        &image,
        "plain",
        cri::LinuxContainerSecurityContext::default(),
    )
    .await
    .unwrap();
    let net_admin = create_with_security(
        &mut cri,
        &pod_id,
        &sandbox,
        &image,
        "net-admin",
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .expect("an added NET_ADMIN runs in mode vm");

    // Privileged inside the guest: network management, mounts, writable
    // /sys, every capability, the guest's devices.
    let (code, out) = exec_status(
        &mut cri,
        &privileged,
        "brctl addbr br-test && ip link show br-test",
    )
    .await;
    assert_eq!(code, 0, "brctl in a privileged container: {out}");
    let (code, out) = exec_status(
        &mut cri,
        &privileged,
        "mkdir -p /tmp/m && mount -t tmpfs scratch /tmp/m && grep ' /tmp/m ' /proc/mounts",
    )
    .await;
    assert_eq!(code, 0, "mount in a privileged container: {out}");
    let (code, out) = exec_status(&mut cri, &privileged, "grep CapEff /proc/self/status").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("000001ffffffffff"), "every capability: {out}");
    let (code, out) = exec_status(&mut cri, &privileged, "grep ' /sys ' /proc/mounts").await;
    assert!(code == 0 && out.contains(" rw,"), "/sys writable: {out}");
    let (code, out) = exec_status(&mut cri, &privileged, "ls /dev").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hwrng"), "the guest's devices: {out}");
    assert!(
        !out.contains("vport"),
        "the agent's channel is not handed out: {out}"
    );
    // Its bridge lives in the pod's VM, not on the node.
    let node_links = std::process::Command::new("ip")
        .args(["link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&node_links.stdout).contains("br-test"));

    // The same pod's unprivileged container keeps the defaults.
    let (code, out) = exec_status(&mut cri, &plain, "brctl addbr br-plain").await;
    assert_ne!(code, 0, "brctl without privileges must fail: {out}");
    let (code, out) = exec_status(
        &mut cri,
        &plain,
        "mkdir -p /tmp/m && mount -t tmpfs scratch /tmp/m",
    )
    .await;
    assert_ne!(code, 0, "mount without privileges must fail: {out}");
    let (_, out) = exec_status(&mut cri, &plain, "grep CapEff /proc/self/status").await;
    assert!(
        out.contains("00000000a80425fb"),
        "containerd's default set: {out}"
    );

    // An added capability holds: NET_ADMIN can add a link, nothing more.
    let (code, out) = exec_status(
        &mut cri,
        &net_admin,
        "ip link add dummy-test type dummy && ip link show dummy-test",
    )
    .await;
    assert_eq!(code, 0, "NET_ADMIN adds a link: {out}");
    let (code, out) = exec_status(
        &mut cri,
        &net_admin,
        "mkdir -p /tmp/m && mount -t tmpfs scratch /tmp/m",
    )
    .await;
    assert_ne!(code, 0, "NET_ADMIN is not SYS_ADMIN: {out}");

    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .unwrap();
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert!(mounts_under(daemon.dir.path()).is_empty());
}
