//! The podvisor daemon's pod sandbox lifecycle over CRI, as crictl drives
//! it: every pod a VM (qemu backend here), records that survive a SIGKILL
//! of the daemon, a dead VM reported NotReady, nothing left behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use podvisor_tests::daemon::{Cri, Daemon};
use podvisor_tests::vm::qemu_ready;
use tonic::Code;

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("note".to_string(), "e2e".to_string())]),
        ..Default::default()
    }
}

async fn run(cri: &mut Cri, name: &str) -> Result<String, tonic::Status> {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(pod_config(name)),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(cri: &mut Cri, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let r = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info = serde_json::from_str(&r.info["info"]).unwrap();
    (r.status.unwrap(), info)
}

async fn list(cri: &mut Cri, filter: cri::PodSandboxFilter) -> Vec<String> {
    cri.list_pod_sandbox(cri::ListPodSandboxRequest {
        filter: Some(filter),
    })
    .await
    .unwrap()
    .into_inner()
    .items
    .into_iter()
    .map(|p| p.id)
    .collect()
}

#[test]
fn pod_sandboxes_are_vms_that_survive_a_daemon_restart() {
    podvisor_tests::netns::isolated(
        "pod_sandboxes_are_vms_that_survive_a_daemon_restart",
        pod_sandboxes_are_vms_that_survive_a_daemon_restart_in_netns(),
    );
}

async fn pod_sandboxes_are_vms_that_survive_a_daemon_restart_in_netns() {
    let test = "pod_sandboxes_are_vms_that_survive_a_daemon_restart";
    if !qemu_ready(test) {
        return;
    }
    let (mut daemon, mut cri) = Daemon::start().await;

    let version = cri
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("podvisor", "v1")
    );
    let conditions = cri
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions;
    assert!(conditions.iter().all(|c| c.status), "{conditions:?}");

    // Bad input first: nothing may be created.
    let err = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata"), "{}", err.message());
    let err = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "feedbeef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(daemon.vm_processes().is_empty());

    let started = Instant::now();
    let web = run(&mut cri, "web").await.expect("RunPodSandbox");
    eprintln!("RunPodSandbox took {:?}", started.elapsed());
    assert_eq!(web.len(), 64);
    let (st, info) = status(&mut cri, &web).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "e2e");
    assert_eq!(info["backend"], "qemu");
    let vm_pid = u32::try_from(info["vmPid"].as_u64().expect("a VM pid")).expect("a pid");
    assert!(podvisor_tests::vm::alive(vm_pid));

    let err = run(&mut cri, "web").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());

    // List filters: id prefix, state, labels.
    let db = run(&mut cri, "db").await.expect("second pod");
    let all = cri::PodSandboxFilter::default();
    assert_eq!(list(&mut cri, all).await.len(), 2);
    let by_prefix = cri::PodSandboxFilter {
        id: web[..12].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut cri, by_prefix).await, std::slice::from_ref(&web));
    let by_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".into(), "db".into())]),
        ..Default::default()
    };
    assert_eq!(list(&mut cri, by_label).await, std::slice::from_ref(&db));

    // SIGKILL the daemon: the pods keep running and are found again.
    daemon.kill();
    assert!(podvisor_tests::vm::alive(vm_pid), "pods outlive the daemon");
    let mut cri = daemon.restart().await;
    let (st, info) = status(&mut cri, &web[..16]).await;
    assert_eq!(
        st.state,
        cri::PodSandboxState::SandboxReady as i32,
        "re-attached after restart"
    );
    assert_eq!(info["vmPid"].as_u64(), Some(vm_pid as u64));

    // A VM that dies is reported NotReady with a reason.
    let (_, db_info) = status(&mut cri, &db).await;
    let db_pid = i32::try_from(db_info["vmPid"].as_u64().unwrap()).expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(db_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, info) = status(&mut cri, &db).await;
        if st.state == cri::PodSandboxState::SandboxNotready as i32 {
            assert!(
                info["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("exited unexpectedly"),
                "{info}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "a killed VM must be noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    assert_eq!(list(&mut cri, ready).await, std::slice::from_ref(&web));

    // Stop (twice: idempotent), then remove; nothing is left.
    for _ in 0..2 {
        cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: web.clone(),
        })
        .await
        .expect("stop");
    }
    assert_eq!(
        status(&mut cri, &web).await.0.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(
        !podvisor_tests::vm::alive(vm_pid),
        "stopping the pod ends its VM"
    );
    for id in [&web, &db] {
        cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("remove");
    }
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: web.clone(),
    })
    .await
    .expect("removing a removed sandbox is not an error");
    assert!(list(&mut cri, cri::PodSandboxFilter::default())
        .await
        .is_empty());
    assert_eq!(
        daemon.vm_processes(),
        Vec::<String>::new(),
        "no qemu or virtiofsd left"
    );
    let sandboxes = daemon.dir.path().join("state/sandboxes");
    assert_eq!(
        std::fs::read_dir(&sandboxes).unwrap().count(),
        0,
        "no sandbox state left"
    );
    let vms = daemon.run_dir.join("vms");
    assert_eq!(
        std::fs::read_dir(&vms).map(|d| d.count()).unwrap_or(0),
        0,
        "no VM directories left"
    );
}

fn tap_count() -> usize {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("pvtap")
        .count()
}

async fn pod_ip(cri: &mut Cri, id: &str) -> String {
    status(cri, id).await.0.network.unwrap().ip
}

#[test]
fn a_full_subnet_refuses_pods_until_one_is_removed() {
    let test = "a_full_subnet_refuses_pods_until_one_is_removed";
    podvisor_tests::netns::isolated(test, full_subnet(test));
}

async fn full_subnet(test: &str) {
    if !qemu_ready(test) {
        return;
    }
    // A /30 holds one pod: network, gateway, pod, broadcast.
    let (mut daemon, mut cri) = Daemon::start_with(
        "[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n[network]\nprimary_cidr = \"10.77.0.0/30\"\n",
    )
    .await;
    let first = run(&mut cri, "first").await.expect("the subnet's one pod");
    assert_eq!(pod_ip(&mut cri, &first).await, "10.77.0.2");
    let err = run(&mut cri, "second").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("10.77.0.0/30"), "{}", err.message());
    // Refused without leftovers: one pod, one tap, one VM.
    assert_eq!(
        list(&mut cri, cri::PodSandboxFilter::default()).await,
        std::slice::from_ref(&first)
    );
    assert_eq!(tap_count(), 1);
    assert_eq!(
        daemon
            .vm_processes()
            .iter()
            .filter(|p| p.contains("qemu"))
            .count(),
        1
    );

    // The lease survives a SIGKILL: still full, same address.
    daemon.kill();
    let mut cri = daemon.restart().await;
    assert_eq!(pod_ip(&mut cri, &first).await, "10.77.0.2");
    let err = run(&mut cri, "second").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    for (call, id) in [("stop", &first), ("remove", &first)] {
        if call == "stop" {
            cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap();
        } else {
            cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(tap_count(), 0);
    let second = run(&mut cri, "second").await.expect("the freed address");
    assert_eq!(pod_ip(&mut cri, &second).await, "10.77.0.2");
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: second.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: second,
    })
    .await
    .unwrap();
    assert_eq!(tap_count(), 0);
    assert!(daemon.vm_processes().is_empty());
}

#[test]
fn a_run_pod_sandbox_the_client_abandons_still_ends_in_a_pod_that_can_be_removed() {
    let test = "a_run_pod_sandbox_the_client_abandons_still_ends_in_a_pod_that_can_be_removed";
    podvisor_tests::netns::isolated(test, abandoned_run(test));
}

/// kubelet gives up on a RunPodSandbox at its request timeout and crictl on
/// ^C; the daemon must not stop half way through a boot (that left a VM no
/// record named): the pod finishes, a List finds it, Remove takes it all.
async fn abandoned_run(test: &str) {
    if !qemu_ready(test) {
        return;
    }
    let (daemon, mut cri) = Daemon::start().await;
    let mut impatient = cri.clone();
    let call = tokio::spawn(async move { run(&mut impatient, "abandoned").await });
    // Abandon the call once its VM process exists: the boot is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.vm_processes().is_empty() {
        assert!(Instant::now() < deadline, "no VM process appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    let pod = loop {
        let ready = cri
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    state: Some(cri::PodSandboxStateValue {
                        state: cri::PodSandboxState::SandboxReady as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        if let Some(p) = ready.first() {
            break p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned pod never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pod.metadata.unwrap().name, "abandoned");
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id,
    })
    .await
    .unwrap();
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert!(list(&mut cri, cri::PodSandboxFilter::default())
        .await
        .is_empty());
}
