//! Host-path mount semantics over CRI, as critest's "Container Mount
//! Readonly" and "Container Mount Propagation" specs check them, in one
//! privileged pod VM of a daemon in policy mode `vm`:
//! - read-only at the top only: a tmpfs the host mounted below the host
//!   path stays writable; recursively read-only: it refuses writes too;
//! - PRIVATE: a mount the host makes below the host path after the
//!   container started does not reach it, even when the host path is a
//!   shared mount; HOST_TO_CONTAINER: it does;
//! - a mount the container makes inside the volume never reaches the host;
//! - recursive read-only without readonly, with HOST_TO_CONTAINER, and
//!   BIDIRECTIONAL are refused, leaving nothing behind;
//! - Status advertises recursive read-only mounts for its handlers;
//! - removing the containers unmounts nothing of the host's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podvisor_tests::daemon::{mounts_under, Cri, Daemon};
use podvisor_tests::registry::{busybox_image, LocalRegistry};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

/// The host paths and what the host mounted on them, unmounted even when
/// an assertion fails.
struct HostPaths {
    dir: tempfile::TempDir,
}

impl HostPaths {
    fn new() -> HostPaths {
        HostPaths {
            dir: tempfile::Builder::new()
                .prefix("pv-mounts-")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for HostPaths {
    fn drop(&mut self) {
        for m in mounts_under(self.dir.path()) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

fn tmpfs(at: &Path) {
    mount(
        Some("none"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

/// A bind of `dir` onto itself with shared propagation, as critest makes
/// its HOST_TO_CONTAINER and BIDIRECTIONAL sources.
fn shared_mount(dir: &Path) {
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
}

fn is_mountpoint(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

fn host_mount(host_path: &Path, container_path: &str) -> cri::Mount {
    cri::Mount {
        host_path: host_path.to_string_lossy().into_owned(),
        container_path: container_path.into(),
        ..Default::default()
    }
}

fn privileged_pod() -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "mounts".into(),
            uid: "uid-mounts".into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: "mounts".into(),
        labels: HashMap::new(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(name: &str, image: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        mounts,
        linux: Some(cri::LinuxContainerConfig {
            // critest's propagation container mounts inside the volume.
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
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

async fn start(cri: &mut Cri, id: &str) {
    cri.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("StartContainer");
}

async fn exec(cri: &mut Cri, id: &str, script: &str) -> (i32, String) {
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

/// Host paths mounted for containers (`mounts/<container>/<n>` of the
/// share): in virtiofsd's mount namespace, and none in the daemon's.
fn share_mounts(daemon: &Daemon) -> usize {
    let in_daemon = mounts_under(daemon.dir.path())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "mounts"))
        .count();
    assert_eq!(in_daemon, 0, "host paths mounted in the daemon's namespace");
    let needle = daemon.run_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("virtiofsd") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("mountinfo")).ok())
        .map(|info| info.lines().filter(|l| l.contains(" /mounts/")).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn host_path_mounts_keep_read_only_and_propagation_semantics() {
    podvisor_tests::netns::isolated(
        "host_path_mounts_keep_read_only_and_propagation_semantics",
        host_path_mounts_keep_read_only_and_propagation_semantics_in_netns(),
    );
}

async fn host_path_mounts_keep_read_only_and_propagation_semantics_in_netns() {
    let test = "host_path_mounts_keep_read_only_and_propagation_semantics";
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
        .push("mounts/busybox", "1", &busybox_image("", "/"))
        .await;
    let image = format!("{}/mounts/busybox:1", registry.addr());
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

    // critest's runtimeSupportsRRO reads this.
    let status = cri
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    for name in ["", "podvisor"] {
        let handler = status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no handler {name:?}: {:?}", status.runtime_handlers));
        let features = handler.features.unwrap();
        assert!(features.recursive_read_only_mounts, "{name:?}");
        assert!(!features.user_namespaces, "{name:?}");
    }

    let host = HostPaths::new();
    // A host path with a tmpfs below it (critest's RRO host path).
    let ro_source = host.path("ro");
    tmpfs(&host.path("ro/tmpfs"));
    tmpfs(&host.path("ro/gone"));
    // Propagation sources, both shared mounts of the host: PRIVATE must
    // cut the host's later mounts off even so.
    let private_source = host.path("private/mnt");
    let slave_source = host.path("slave/mnt");
    for source in [&private_source, &slave_source] {
        std::fs::create_dir_all(source.join("propagationMnt")).unwrap();
        shared_mount(source);
    }
    let flag_dir = host.path("propagationSrcDir");
    std::fs::write(flag_dir.join("flagFile"), b"").unwrap();

    let sandbox = privileged_pod();
    let pod_id = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let mounts_before = share_mounts(&daemon);

    // --- refused combinations: the right code, nothing left behind ---
    let rro = |readonly: bool, propagation: cri::MountPropagation| cri::Mount {
        readonly,
        recursive_read_only: true,
        propagation: propagation as i32,
        ..host_mount(&ro_source, "/mnt")
    };
    let refused = [
        (
            rro(false, cri::MountPropagation::PropagationPrivate),
            Code::InvalidArgument,
            "needs readonly: true",
        ),
        (
            rro(true, cri::MountPropagation::PropagationHostToContainer),
            Code::InvalidArgument,
            "needs propagation PRIVATE",
        ),
        (
            rro(true, cri::MountPropagation::PropagationBidirectional),
            Code::FailedPrecondition,
            "cannot appear on the node",
        ),
        (
            cri::Mount {
                propagation: cri::MountPropagation::PropagationBidirectional as i32,
                ..host_mount(&slave_source, "/shared")
            },
            Code::FailedPrecondition,
            "cannot appear on the node",
        ),
    ];
    for (mount, code, words) in refused {
        let err = create(
            &mut cri,
            &pod_id,
            &sandbox,
            container("refused", &image, vec![mount.clone()]),
        )
        .await
        .expect_err("an invalid mount was accepted");
        assert_eq!(err.code(), code, "{mount:?}: {err}");
        assert!(err.message().contains(words), "{mount:?}: {err}");
    }
    let listed = cri
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(share_mounts(&daemon), mounts_before);

    // --- read-only: at the top only, and recursively ---
    let readonly = create(
        &mut cri,
        &pod_id,
        &sandbox,
        container(
            "readonly",
            &image,
            vec![
                cri::Mount {
                    readonly: true,
                    ..host_mount(&ro_source, "/mnt")
                },
                cri::Mount {
                    readonly: true,
                    recursive_read_only: true,
                    ..host_mount(&ro_source, "/rro")
                },
            ],
        ),
    )
    .await
    .expect("CreateContainer with read-only mounts");
    start(&mut cri, &readonly).await;
    let status = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: readonly.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let reported: Vec<_> = status
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.readonly, m.recursive_read_only))
        .collect();
    assert_eq!(reported, [("/mnt", true, false), ("/rro", true, true)]);

    let (code, out) = exec(&mut cri, &readonly, "touch /mnt/tmpfs/file").await;
    assert_eq!(
        code, 0,
        "a submount of a non-recursive read-only mount: {out}"
    );
    assert!(ro_source.join("tmpfs/file").exists());
    for path in ["/mnt/top", "/rro/top", "/rro/tmpfs/foo"] {
        let (code, out) = exec(&mut cri, &readonly, &format!("touch {path}")).await;
        assert_ne!(code, 0, "{path} took a write");
        assert!(out.contains("Read-only file system"), "{path}: {out}");
    }
    assert!(!ro_source.join("top").exists());
    assert!(!ro_source.join("tmpfs/foo").exists());
    assert_eq!(share_mounts(&daemon), mounts_before + 6);
    // The host takes a mount away and removes its directory while the
    // container runs (critest's clean-up does): not busy on the host.
    umount2(&ro_source.join("gone"), MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(ro_source.join("gone")).expect("removing a directory the container has");

    // --- propagation ---
    let propagation = create(
        &mut cri,
        &pod_id,
        &sandbox,
        container(
            "propagation",
            &image,
            vec![
                cri::Mount {
                    propagation: cri::MountPropagation::PropagationPrivate as i32,
                    ..host_mount(&private_source, "/private")
                },
                cri::Mount {
                    propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                    ..host_mount(&slave_source, "/slave")
                },
            ],
        ),
    )
    .await
    .expect("CreateContainer with PRIVATE and HOST_TO_CONTAINER mounts");
    start(&mut cri, &propagation).await;
    // The host mounts after the container started.
    for source in [&private_source, &slave_source] {
        mount(
            Some(&flag_dir),
            &source.join("propagationMnt"),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
    }
    let (code, out) = exec(&mut cri, &propagation, "ls -A /private/propagationMnt").await;
    assert_eq!((code, out.as_str()), (0, ""), "PRIVATE saw a host mount");
    let (code, out) = exec(&mut cri, &propagation, "ls -A /slave/propagationMnt").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "flagFile\n"),
        "HOST_TO_CONTAINER missed a host mount"
    );
    // The container mounts inside each volume; the host sees nothing.
    for (volume, source) in [("/private", &private_source), ("/slave", &slave_source)] {
        let (code, out) = exec(
            &mut cri,
            &propagation,
            &format!(
                "mkdir -p {volume}/containerMntPoint && mount --bind /etc {volume}/containerMntPoint && ls {volume}/containerMntPoint/hostname"
            ),
        )
        .await;
        assert_eq!(code, 0, "mount in the container: {out}");
        let on_host: Vec<_> = std::fs::read_dir(source.join("containerMntPoint"))
            .unwrap()
            .collect();
        assert!(on_host.is_empty(), "{volume}: the host sees {on_host:?}");
    }

    // --- removal unmounts nothing of the host's ---
    for id in [&readonly, &propagation] {
        cri.stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: 0,
        })
        .await
        .unwrap();
        cri.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert_eq!(share_mounts(&daemon), mounts_before);
    assert!(is_mountpoint(&ro_source.join("tmpfs")));
    assert!(ro_source.join("tmpfs/file").exists());
    for source in [&private_source, &slave_source] {
        assert!(is_mountpoint(&source.join("propagationMnt")));
    }

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
