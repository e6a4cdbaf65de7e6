//! Hostile CRI input stays confined (issue #16, item 4), through the CRI
//! socket of a daemon in policy mode `fargate`, with one pod VM:
//! - oversized metadata (a pod name, the pod's and a container's
//!   annotations) is InvalidArgument naming the field and the limit;
//! - `log_path` through a symlink in the log directory, with `..`, or
//!   absolute is InvalidArgument naming the rule, and nothing is written
//!   anywhere; a log directory kubelet did not make is made below the pod's
//!   log directory; ReopenContainerLog refuses a symlink swapped in for the
//!   rotated file;
//! - a host path outside kubelet's directory of the pod (`/etc`, or a
//!   symlink in the pod's directory pointing at `/etc`) is
//!   FailedPrecondition naming rule `host-path` and the allowed root, and
//!   nothing is mounted; a volume in the pod's directory is mounted;
//! - an image layer's device nodes are not in the store, its setuid file
//!   keeps its bit (and is setuid inside the guest), its file capability is
//!   not copied, and the layers' binds in the pod's share are nodev,nosuid.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{mounts_under, Cri, Daemon};
use podvisor_tests::registry::{busybox_image, LayerBuilder, LocalRegistry, TestImage};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

const UID: &str = "uid-hostile";

/// busybox plus a layer holding a setuid file with a file capability, a
/// character device and a block device.
fn hostile_image() -> (TestImage, String) {
    let base = busybox_image("", "/");
    let mut extra = LayerBuilder::new();
    extra
        .dir("hostile", 0o755, 0, 0)
        .pax_xattr(
            "hostile/suid",
            "security.capability",
            &[
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .file("hostile/suid", b"#!/bin/sh\nid\n", 0o4755, 0, 0)
        .char_device("hostile/mem", 1, 1)
        .block_device("hostile/sda", 8, 0);
    let extra = extra.gzip();
    let diff_id = extra.diff_id.clone();
    let mut layers = base.layers.clone();
    layers.push(extra);
    let config = base.config["config"].clone();
    (TestImage::new(layers, "amd64", config), diff_id)
}

fn sandbox(name: &str, log_directory: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: UID.into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: "hostile".into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

fn container(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo logged-line; sleep 3600".into(),
        ],
        ..Default::default()
    }
}

fn host_mount(host_path: &Path) -> cri::Mount {
    cri::Mount {
        host_path: host_path.to_string_lossy().into_owned(),
        container_path: "/data".into(),
        ..Default::default()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
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

/// Mount points and options in `mountinfo` whose mount point `keep`s.
fn mount_options(mountinfo: &str, keep: impl Fn(&Path) -> bool) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let at = PathBuf::from(fields.get(4)?);
            keep(&at).then(|| (at, fields.get(5).unwrap_or(&"").to_string()))
        })
        .collect()
}

/// The host paths mounted for containers in the pod's virtiofsd, which
/// serves the share as its root.
fn served_host_paths(sandbox_dir: &Path) -> Vec<(PathBuf, String)> {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox_dir.join("sandbox.json")).unwrap()).unwrap();
    let pid = record["virtiofsd_pid"].as_u64().expect("virtiofsd_pid");
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mount_options(&info, |at| at.starts_with("/mounts"))
}

fn has_flags(options: &str, flags: &[&str]) -> bool {
    flags.iter().all(|f| options.split(',').any(|o| o == *f))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn hostile_cri_input_is_confined() {
    podvisor_tests::netns::isolated(
        "hostile_cri_input_is_confined",
        hostile_cri_input_is_confined_in_netns(),
    );
}

async fn hostile_cri_input_is_confined_in_netns() {
    let test = "hostile_cri_input_is_confined";
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
    let (image_def, hostile_diff_id) = hostile_image();
    registry.push("e2e/hostile", "1", &image_def).await;
    let image = format!("{}/e2e/hostile:1", registry.addr());

    // kubelet's directory of the pod lives under the test's own directory:
    // the daemon is told so, `{pod_uid}` and all.
    let dir = tempfile::Builder::new()
        .prefix("pv-hostile-")
        .tempdir()
        .unwrap();
    let kubelet_root = dir.path().join("kubelet/pods/{pod_uid}");
    let pod_dir = dir.path().join("kubelet/pods").join(UID);
    let volume = pod_dir.join("volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("greeting"), "hello from the pod dir\n").unwrap();
    std::os::unix::fs::symlink("/etc", pod_dir.join("evil")).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, logs.join("evil")).unwrap();

    let (daemon, mut cri) = Daemon::start_with(&format!(
        "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n\
         [policy]\nhost_path_roots = [\"{}\"]\n",
        kubelet_root.display()
    ))
    .await;
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

    // --- oversized pod metadata: refused, nothing made ---
    let long_name = sandbox(&"n".repeat(254), &logs);
    let mut big_annotations = sandbox("big", &logs);
    big_annotations.annotations = HashMap::from([("a".to_string(), "v".repeat(400 * 1024))]);
    for (config, field, limit) in [
        (long_name, "config.metadata.name", "253"),
        (big_annotations, "config.annotations", "327680"),
    ] {
        let err = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(field), "{}", err.message());
        assert!(
            err.message().contains(&format!("the limit is {limit}")),
            "{}",
            err.message()
        );
    }
    let pods = cri
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(daemon.vm_processes().is_empty(), "a VM was started");

    // --- the one pod VM ---
    let pod_config = sandbox("hostile", &logs);
    let pod_id = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let share = daemon
        .dir
        .path()
        .join("state/sandboxes")
        .join(&pod_id)
        .join("share");
    assert!(share.is_dir(), "{}", share.display());
    for private in [
        share.parent().unwrap(),
        share.parent().unwrap().parent().unwrap(),
    ] {
        let mode = std::fs::metadata(private).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", private.display());
    }

    // --- refused CreateContainer calls: each leaves nothing ---
    assert!(
        !Path::new("/etc/x.log").exists(),
        "/etc/x.log exists already"
    );
    let with_log = |path: &str| {
        let mut c = container("logged", &image);
        c.log_path = path.into();
        c
    };
    let with_mount = |host: &Path| {
        let mut c = container("mounted", &image);
        c.mounts = vec![host_mount(host)];
        c
    };
    let mut big_container = container("big", &image);
    big_container.annotations = HashMap::from([("k".to_string(), "v".repeat(400 * 1024))]);
    let allowed_root = pod_dir.to_string_lossy().into_owned();
    let cases: Vec<(cri::ContainerConfig, Code, Vec<&str>)> = vec![
        (
            with_log("evil/x.log"),
            Code::InvalidArgument,
            vec!["\"evil\"", "is a symlink", "never reached through symlinks"],
        ),
        (
            with_log("../x.log"),
            Code::InvalidArgument,
            vec!["contains '..'", "inside the pod's log_directory"],
        ),
        (
            with_log("/etc/x.log"),
            Code::InvalidArgument,
            vec!["is absolute", "relative to the pod's log_directory"],
        ),
        (
            with_mount(Path::new("/etc")),
            Code::FailedPrecondition,
            vec!["rule `host-path`", "\"/etc\"", &allowed_root, "Fargate"],
        ),
        (
            with_mount(&pod_dir.join("evil")),
            Code::FailedPrecondition,
            vec![
                "rule `host-path`",
                "resolved on the host to \"/etc\"",
                &allowed_root,
            ],
        ),
        (
            big_container,
            Code::InvalidArgument,
            vec!["config.annotations", "the limit is 327680"],
        ),
    ];
    for (config, code, needles) in cases {
        let err = cri
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        for needle in needles {
            assert!(
                err.message().contains(needle),
                "{needle:?} not in {}",
                err.message()
            );
        }
        let containers = cri
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(containers.is_empty(), "{containers:?}");
        assert!(names(&outside).is_empty(), "written through the symlink");
        assert_eq!(
            names(&logs),
            ["evil"],
            "something was made in the log directory"
        );
        assert!(
            !dir.path().join("x.log").exists(),
            "written above the log directory"
        );
        assert!(!Path::new("/etc/x.log").exists(), "written to /etc");
        let served = served_host_paths(share.parent().unwrap());
        assert!(served.is_empty(), "a host path was mounted: {served:?}");
    }

    // --- an ordinary container: log below the log directory, a volume in
    // the pod's directory, the hostile layer ---
    let mut app = container("app", &image);
    app.log_path = "app/0.log".into();
    app.mounts = vec![host_mount(&volume)];
    let app_id = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(app),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: app_id.clone(),
    })
    .await
    .expect("StartContainer");
    assert_eq!(
        exec(&mut cri, &app_id, "cat /data/greeting").await,
        "hello from the pod dir"
    );
    // Inside the guest the setuid bit holds and no device node came along.
    assert_eq!(
        exec(
            &mut cri,
            &app_id,
            "test -u /hostile/suid && echo setuid; ls /hostile"
        )
        .await,
        "setuid\nsuid"
    );
    let log = logs.join("app/0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stdout F logged-line")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never got the line"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The store: no device node, the setuid bit kept, no file capability,
    // root's alone.
    let store = daemon.dir.path().join("state/images");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let layer = store
        .join("layers/sha256")
        .join(hostile_diff_id.strip_prefix("sha256:").unwrap());
    assert_eq!(names(&layer.join("hostile")), ["suid"]);
    let suid = std::fs::metadata(layer.join("hostile/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!(suid.uid(), 0);
    assert_eq!(
        xattr(&layer.join("hostile/suid"), "security.capability"),
        None
    );
    // Every layer bound into the share: read-only, nodev, nosuid; the
    // volume in virtiofsd's namespace: nodev, nosuid.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let layer_mounts = mount_options(&mountinfo, |at| at.starts_with(share.join("layers")));
    assert_eq!(layer_mounts.len(), 2, "{layer_mounts:?}");
    for (at, options) in &layer_mounts {
        assert!(
            has_flags(options, &["ro", "nodev", "nosuid"]),
            "{}: {options}",
            at.display()
        );
    }
    let served = served_host_paths(share.parent().unwrap());
    assert_eq!(served.len(), 1, "{served:?}");
    assert!(has_flags(&served[0].1, &["nodev", "nosuid"]), "{served:?}");

    // --- ReopenContainerLog after kubelet's rotation, with a symlink put
    // where the file was: refused, nothing written through it ---
    std::fs::rename(&log, logs.join("app/0.log.1")).unwrap();
    std::os::unix::fs::symlink(outside.join("y.log"), &log).unwrap();
    let err = cri
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: app_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("symlink"), "{}", err.message());
    assert!(names(&outside).is_empty(), "written through the symlink");
    std::fs::remove_file(&log).unwrap();
    cri.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: app_id.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file());

    // --- cleanup leaves nothing ---
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(daemon.vm_processes().is_empty());
    assert!(mounts_under(daemon.dir.path()).is_empty());
    assert!(names(&outside).is_empty());
}
