//! podvisor-agent in host test mode, as root, over a unix socket, running
//! busybox containers: every promise of the agent API is exercised here.

use std::path::Path;
use std::time::Duration;

use podvisor_proto::*;
use podvisor_tests::agent::{process, spec, HostAgent};
use podvisor_tests::running_as_root;
use serde_json::json;
use tonic::Code;

const AGENT: &str = env!("CARGO_BIN_EXE_podvisor-agent");

async fn agent(test: &str) -> Option<HostAgent> {
    if !running_as_root(test) {
        return None;
    }
    Some(HostAgent::start(Path::new(AGENT)).await)
}

/// The hard limit a container can get here: 65535 unless the agent, lacking
/// CAP_SYS_RESOURCE, sits under a lower hard limit it cannot raise.
fn expected_hard(resource: nix::sys::resource::Resource) -> u64 {
    let has_sys_resource = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| {
            u64::from_str_radix(hex.trim(), 16).unwrap() & (1 << 24/* CAP_SYS_RESOURCE */) != 0
        })
        .unwrap();
    let (_, own_hard) = nix::sys::resource::getrlimit(resource).unwrap();
    if has_sys_resource || own_hard >= 65535 {
        65535
    } else {
        eprintln!("note: no CAP_SYS_RESOURCE and hard {resource:?} is {own_hard}: expecting the agent to cap 65535 there");
        own_hard
    }
}

const ULIMITS: &str = "ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu";

fn expected_ulimits() -> String {
    use nix::sys::resource::Resource::*;
    format!(
        "1024\n{}\n1024\n{}\n",
        expected_hard(RLIMIT_NOFILE),
        expected_hard(RLIMIT_NPROC)
    )
}

#[tokio::test]
async fn container_and_exec_get_fargate_rlimits() {
    let Some(mut a) = agent("container_and_exec_get_fargate_rlimits").await else {
        return;
    };
    a.run("limits", &["sh", "-c", &format!("{ULIMITS}; sleep 60")])
        .await;
    let exec = ExecProcessRequest {
        container_id: "limits".into(),
        exec_id: "ulimits".into(),
        oci_process_json: process(&["sh", "-c", ULIMITS]),
        stdin: false,
        tty: false,
    };
    a.client.exec_process(exec).await.expect("exec");
    let exec_out = a.text("limits", "ulimits", OutputStream::Stdout).await;
    assert_eq!(exec_out, expected_ulimits(), "exec'd process limits");
    assert_eq!(a.wait("limits", "ulimits").await.exit_code, 0);

    a.client
        .signal_process(SignalProcessRequest {
            container_id: "limits".into(),
            exec_id: String::new(),
            signal: libc::SIGKILL,
            all: false,
        })
        .await
        .unwrap();
    let main_out = a.text("limits", "", OutputStream::Stdout).await;
    assert_eq!(main_out, expected_ulimits(), "container process limits");
    a.delete("limits").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn spec_rlimits_override_the_defaults() {
    let Some(mut a) = agent("spec_rlimits_override_the_defaults").await else {
        return;
    };
    let mut s = spec(&["sh", "-c", "ulimit -n; ulimit -Hn"]);
    s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768}]);
    a.create("custom", s, false, false).await.unwrap();
    a.client
        .start_container(StartContainerRequest {
            container_id: "custom".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        a.text("custom", "", OutputStream::Stdout).await,
        "512\n768\n"
    );
    a.delete("custom").await;
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported_exactly() {
    let Some(mut a) = agent("exit_codes_and_signals_are_reported_exactly").await else {
        return;
    };
    for (id, script, code, signal) in [("ok", "exit 0", 0, 0), ("three", "exit 3", 3, 0)] {
        a.run(id, &["sh", "-c", script]).await;
        let exit = a.wait(id, "").await;
        assert_eq!(
            (exit.exit_code, exit.signal, exit.oom_killed),
            (code, signal, false),
            "{id}"
        );
        assert!(exit.finished_at.is_some());
        let info = a
            .client
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.state(), ContainerState::Exited);
        assert_eq!(info.exit.unwrap().exit_code, code);
    }
    // A SIGKILL through the API (a container's PID 1 cannot be killed from
    // inside its own pid namespace, so this is the way it happens).
    a.run("sleeper", &["sleep", "600"]).await;
    a.client
        .signal_process(SignalProcessRequest {
            container_id: "sleeper".into(),
            exec_id: String::new(),
            signal: libc::SIGKILL,
            all: false,
        })
        .await
        .unwrap();
    let exit = a.wait("sleeper", "").await;
    assert_eq!((exit.exit_code, exit.signal), (137, libc::SIGKILL));
    for id in ["ok", "three", "sleeper"] {
        a.delete(id).await;
    }
    a.assert_nothing_left("after deletes");
}

#[tokio::test]
async fn memory_limited_container_is_oom_killed() {
    let Some(mut a) = agent("memory_limited_container_is_oom_killed").await else {
        return;
    };
    let mut s = spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]);
    s["linux"] = json!({"resources": {"memory": {"limit": 32 * 1024 * 1024}}});
    a.create("hog", s, false, false).await.unwrap();
    a.client
        .start_container(StartContainerRequest {
            container_id: "hog".into(),
        })
        .await
        .unwrap();
    let exit = a.wait("hog", "").await;
    assert!(exit.oom_killed, "expected OOMKilled, got {exit:?}");
    assert_eq!(exit.signal, libc::SIGKILL);
    let stats = a
        .client
        .container_stats(ContainerStatsRequest {
            container_id: "hog".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.oom_kills >= 1);
    a.delete("hog").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn exec_sees_only_the_containers_pid_namespace() {
    let Some(mut a) = agent("exec_sees_only_the_containers_pid_namespace").await else {
        return;
    };
    a.run("ns", &["sleep", "600"]).await;
    let exec = ExecProcessRequest {
        container_id: "ns".into(),
        exec_id: "ps".into(),
        oci_process_json: process(&["ps", "-o", "pid,comm"]),
        stdin: false,
        tty: false,
    };
    a.client.exec_process(exec).await.unwrap();
    let out = a.text("ns", "ps", OutputStream::Stdout).await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "only the container's processes: {out}");
    assert_eq!(rows[0], ["1", "sleep"], "{out}");
    assert_eq!(rows[1][1], "ps", "{out}");
    assert_eq!(a.wait("ns", "ps").await.exit_code, 0);
    let hostname = ExecProcessRequest {
        container_id: "ns".into(),
        exec_id: "hostname".into(),
        oci_process_json: process(&["hostname"]),
        stdin: false,
        tty: false,
    };
    a.client.exec_process(hostname).await.unwrap();
    assert_eq!(
        a.text("ns", "hostname", OutputStream::Stdout).await,
        "test-pod\n"
    );
    a.delete("ns").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn busy_container_has_nonzero_stats() {
    let Some(mut a) = agent("busy_container_has_nonzero_stats").await else {
        return;
    };
    a.run("busy", &["sh", "-c", "while :; do :; done"]).await;
    // However loaded the machine, the loop's CPU time shows in the stats
    // (the deadline only proves it does at all).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = a
            .client
            .container_stats(ContainerStatsRequest {
                container_id: "busy".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if stats.cpu_usage_ns > 50_000_000 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stats.cpu_usage_ns > 50_000_000, "{stats:?}");
    assert!(stats.memory_working_set_bytes > 0, "{stats:?}");
    assert!(stats.pids >= 1, "{stats:?}");
    a.delete("busy").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn stdout_and_stderr_arrive_separately_and_in_order() {
    let Some(mut a) = agent("stdout_and_stderr_arrive_separately_and_in_order").await else {
        return;
    };
    // Each line waits for a line on stdin, which the test sends only once it
    // has read the previous one: the order is causal, not a race of sleeps.
    let script = "echo out1; read x; echo err1 >&2; read x; echo out2; read x; echo err2 >&2";
    a.create("io", spec(&["sh", "-c", script]), true, false)
        .await
        .unwrap();
    a.client
        .start_container(StartContainerRequest {
            container_id: "io".into(),
        })
        .await
        .unwrap();
    let mut stream = a
        .client
        .read_output(ReadOutputRequest {
            container_id: "io".into(),
            exec_id: String::new(),
            from_offset: 0,
            live: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    for i in 0..4 {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("the next line arrives")
            .unwrap()
            .expect("a chunk before the end");
        chunks.push((
            chunk.stream(),
            String::from_utf8_lossy(&chunk.data).into_owned(),
        ));
        if i < 3 {
            a.client
                .write_stdin(WriteStdinRequest {
                    container_id: "io".into(),
                    exec_id: String::new(),
                    data: b"go\n".to_vec(),
                })
                .await
                .unwrap();
        }
    }
    a.wait("io", "").await;
    let got: Vec<(OutputStream, &str)> = chunks.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(
        got,
        [
            (OutputStream::Stdout, "out1\n"),
            (OutputStream::Stderr, "err1\n"),
            (OutputStream::Stdout, "out2\n"),
            (OutputStream::Stderr, "err2\n")
        ]
    );
    // Reading again from an offset resumes there.
    let mut stream = a
        .client
        .read_output(ReadOutputRequest {
            container_id: "io".into(),
            exec_id: String::new(),
            from_offset: 5,
            live: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.offset, first.data.as_slice()), (5, &b"err1\n"[..]));
    a.delete("io").await;
}

#[tokio::test]
async fn stdin_reaches_the_container_and_close_delivers_eof() {
    let Some(mut a) = agent("stdin_reaches_the_container_and_close_delivers_eof").await else {
        return;
    };
    a.create("cat", spec(&["cat"]), true, false).await.unwrap();
    a.client
        .start_container(StartContainerRequest {
            container_id: "cat".into(),
        })
        .await
        .unwrap();
    a.client
        .write_stdin(WriteStdinRequest {
            container_id: "cat".into(),
            exec_id: String::new(),
            data: b"hello\n".to_vec(),
        })
        .await
        .unwrap();
    a.client
        .close_stdin(CloseStdinRequest {
            container_id: "cat".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(a.wait("cat", "").await.exit_code, 0, "cat ends at EOF");
    assert_eq!(a.text("cat", "", OutputStream::Stdout).await, "hello\n");
    a.delete("cat").await;
}

#[tokio::test]
async fn tty_exec_gets_a_terminal_that_resizes() {
    let Some(mut a) = agent("tty_exec_gets_a_terminal_that_resizes").await else {
        return;
    };
    a.run("tty", &["sleep", "600"]).await;
    let exec = ExecProcessRequest {
        container_id: "tty".into(),
        exec_id: "size".into(),
        oci_process_json: process(&["sh", "-c", "read line; stty size; tty"]),
        stdin: true,
        tty: true,
    };
    a.client.exec_process(exec).await.unwrap();
    a.client
        .resize_tty(ResizeTtyRequest {
            container_id: "tty".into(),
            exec_id: "size".into(),
            rows: 40,
            columns: 132,
        })
        .await
        .unwrap();
    a.client
        .write_stdin(WriteStdinRequest {
            container_id: "tty".into(),
            exec_id: "size".into(),
            data: b"go\n".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(a.wait("tty", "size").await.exit_code, 0);
    let out = a.text("tty", "size", OutputStream::Stdout).await;
    assert!(
        out.contains("40 132"),
        "terminal size reached the process: {out:?}"
    );
    assert!(out.contains("/dev/pts/"), "stdin is a pty: {out:?}");
    a.delete("tty").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn resources_update_reaches_the_cgroup() {
    let Some(mut a) = agent("resources_update_reaches_the_cgroup").await else {
        return;
    };
    a.run("upd", &["sleep", "600"]).await;
    let resources = json!({"memory": {"limit": 64 * 1024 * 1024}, "pids": {"limit": 50}});
    a.client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "upd".into(),
            oci_resources_json: serde_json::to_vec(&resources).unwrap(),
        })
        .await
        .unwrap();
    let rel = format!("{}/upd", a.cgroup_parent.trim_start_matches('/'));
    let (memory, pids) = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        (
            format!("/sys/fs/cgroup/{rel}/memory.max"),
            format!("/sys/fs/cgroup/{rel}/pids.max"),
        )
    } else {
        (
            format!("/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/pids/{rel}/pids.max"),
        )
    };
    assert_eq!(std::fs::read_to_string(memory).unwrap().trim(), "67108864");
    assert_eq!(std::fs::read_to_string(pids).unwrap().trim(), "50");
    a.delete("upd").await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_leaves_nothing() {
    let Some(mut a) = agent("bad_input_is_refused_with_a_clear_error_and_leaves_nothing").await
    else {
        return;
    };

    let missing = CreateContainerRequest {
        container_id: "norootfs".into(),
        oci_spec_json: serde_json::to_vec(&spec(&["true"])).unwrap(),
        rootfs: Some(Rootfs {
            lower_dirs: vec!["/nonexistent/layer".into()],
            writable_in_place: false,
        }),
        stdin: false,
        tty: false,
        ..Default::default()
    };
    let err = a.client.create_container(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("/nonexistent/layer"),
        "{}",
        err.message()
    );
    a.assert_nothing_left("missing rootfs");

    let mut bad_cwd = spec(&["true"]);
    bad_cwd["process"]["cwd"] = json!("/does/not/exist");
    let err = a.create("badcwd", bad_cwd, false, false).await.unwrap_err();
    assert!(
        err.message().contains("/does/not/exist"),
        "cwd error names the directory: {}",
        err.message()
    );
    a.assert_nothing_left("bad cwd");

    let err = a
        .create("nobin", spec(&["no-such-binary"]), false, false)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("no-such-binary"),
        "error names the executable: {}",
        err.message()
    );
    a.assert_nothing_left("missing executable");

    let malformed = CreateContainerRequest {
        container_id: "malformed".into(),
        oci_spec_json: b"{\"ociVersion\": 3".to_vec(),
        rootfs: Some(a.rootfs_request()),
        stdin: false,
        tty: false,
        ..Default::default()
    };
    let err = a.client.create_container(malformed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("malformed OCI spec"),
        "{}",
        err.message()
    );
    a.assert_nothing_left("malformed spec");

    let err = a
        .create("../escape", spec(&["true"]), false, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = a
        .client
        .start_container(StartContainerRequest {
            container_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("ghost"), "{}", err.message());
    let err = a
        .client
        .wait_process(WaitProcessRequest {
            container_id: "ghost".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A duplicate id, and an exec into an unknown process id.
    a.run("dup", &["sleep", "600"]).await;
    let err = a
        .create("dup", spec(&["true"]), false, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = a
        .client
        .write_stdin(WriteStdinRequest {
            container_id: "dup".into(),
            exec_id: "nope".into(),
            data: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let exec_bad = ExecProcessRequest {
        container_id: "dup".into(),
        exec_id: "bad".into(),
        oci_process_json: process(&["no-such-tool"]),
        stdin: false,
        tty: false,
    };
    let err = a.client.exec_process(exec_bad).await.unwrap_err();
    assert!(err.message().contains("no-such-tool"), "{}", err.message());
    let err = a
        .client
        .delete_container(DeleteContainerRequest {
            container_id: "dup".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a running container is not deleted without force"
    );
    a.delete("dup").await;
    a.assert_nothing_left("after all bad input");
}

#[tokio::test]
async fn runtime_can_disconnect_and_reconnect() {
    let Some(mut a) = agent("runtime_can_disconnect_and_reconnect").await else {
        return;
    };
    a.run(
        "long",
        &["sh", "-c", "echo before; sleep 1; echo after; sleep 600"],
    )
    .await;
    // Drop the connection, as a restarting runtime would.
    a.client = podvisor_tests::agent::connect_unix(&a.socket);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stream = a
        .client
        .read_output(ReadOutputRequest {
            container_id: "long".into(),
            exec_id: String::new(),
            from_offset: 0,
            live: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while !text.contains("after") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    assert_eq!(
        text, "before\nafter\n",
        "output written while nobody read is kept"
    );
    let info = a
        .client
        .get_guest_info(GetGuestInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.mode, "host");
    assert_eq!(info.agent_pid, a.pid());
    assert!(info.memory_total_bytes > 0 && info.online_cpus > 0 && !info.kernel_release.is_empty());
    let listed = a
        .client
        .list_containers(ListContainersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.containers.len(), 1);
    assert_eq!(listed.containers[0].state(), ContainerState::Running);
    a.client
        .shutdown(ShutdownRequest {
            grace_period_ms: 2000,
        })
        .await
        .unwrap();
    assert!(a
        .client
        .list_containers(ListContainersRequest {})
        .await
        .unwrap()
        .into_inner()
        .containers
        .is_empty());
    a.assert_nothing_left("after shutdown");
}

#[tokio::test]
async fn sandbox_files_are_mounted_into_containers() {
    let Some(mut a) = agent("sandbox_files_are_mounted_into_containers").await else {
        return;
    };
    a.client
        .setup_sandbox(SetupSandboxRequest {
            hostname: "pod-a".into(),
            dns: Some(DnsConfig {
                servers: vec!["10.100.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            hosts: vec![HostEntry {
                ip: "10.0.0.9".into(),
                names: vec!["db".into()],
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    a.run("files", &["sh", "-c", "cat /etc/resolv.conf /etc/hosts"])
        .await;
    let out = a.text("files", "", OutputStream::Stdout).await;
    assert!(
        out.contains("nameserver 10.100.0.10\nsearch ns.svc.cluster.local\noptions ndots:5\n"),
        "{out}"
    );
    assert!(
        out.contains("10.0.0.9\tdb\n") && out.contains("127.0.1.1\tpod-a\n"),
        "{out}"
    );
    let err = a
        .client
        .setup_sandbox(SetupSandboxRequest {
            hostname: "bad host".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    a.delete("files").await;
}

/// PortForward: bytes both ways with a half-close in each direction, and a
/// closed port refused. In host mode the loopback is the host's.
#[tokio::test]
async fn port_forward_copies_both_ways_and_refuses_closed_ports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut a) = agent("port_forward_copies_both_ways_and_refuses_closed_ports").await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The server reads to EOF (our half-close), then answers and closes.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got.iter().rev().copied().collect::<Vec<u8>>())
            .await
            .unwrap();
    });
    let frames = vec![
        PortForwardFrame {
            port: port.into(),
            data: b"abc".to_vec(),
            eof: false,
        },
        PortForwardFrame {
            data: b"def".to_vec(),
            eof: true,
            ..Default::default()
        },
    ];
    let mut replies = a
        .client
        .port_forward(tokio_stream::iter(frames))
        .await
        .expect("PortForward")
        .into_inner();
    let mut data = Vec::new();
    let mut eof = false;
    while let Some(f) = replies.message().await.unwrap() {
        data.extend_from_slice(&f.data);
        eof |= f.eof;
    }
    assert_eq!(data, b"fedcba");
    assert!(eof, "the server's close arrives as eof");
    server.await.unwrap();

    // Nothing listens on a port we just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let frames = vec![PortForwardFrame {
        port: closed.into(),
        ..Default::default()
    }];
    let err = a
        .client
        .port_forward(tokio_stream::iter(frames))
        .await
        .expect_err("a closed port");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let none = a
        .client
        .port_forward(tokio_stream::iter(vec![PortForwardFrame::default()]))
        .await
        .expect_err("port 0");
    assert_eq!(none.code(), Code::InvalidArgument);
}

/// Runs `args` as an exec of `id` and returns its stdout and exit code.
async fn exec_text(
    a: &mut HostAgent,
    id: &str,
    exec_id: &str,
    process_json: Vec<u8>,
) -> (String, i32) {
    a.client
        .exec_process(ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            oci_process_json: process_json,
            stdin: false,
            tty: false,
        })
        .await
        .unwrap();
    let out = a.text(id, exec_id, OutputStream::Stdout).await;
    (out, a.wait(id, exec_id).await.exit_code)
}

async fn create_in(a: &mut HostAgent, id: &str, args: &[&str], pid: PidNamespace, target: &str) {
    a.client
        .create_container(CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(&spec(args)).unwrap(),
            rootfs: Some(a.rootfs_request()),
            pid_namespace: pid as i32,
            pid_namespace_target: target.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    a.client
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// PIDs of processes named `pod-pid-ns` (the holder) on this host.
fn holders() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "pod-pid-ns")
        })
        .filter(|e| {
            // A killed holder may linger as a zombie until reaped.
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| !s.contains(") Z"))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn pod_pid_namespace_is_shared_and_ends_with_its_last_container() {
    let Some(mut a) = agent("pod_pid_namespace_is_shared_and_ends_with_its_last_container").await
    else {
        return;
    };
    let before = holders();
    create_in(&mut a, "p1", &["sleep", "601"], PidNamespace::Pod, "").await;
    create_in(&mut a, "p2", &["sleep", "602"], PidNamespace::Pod, "").await;
    create_in(
        &mut a,
        "own",
        &["sleep", "603"],
        PidNamespace::Container,
        "",
    )
    .await;
    create_in(
        &mut a,
        "peek",
        &["sleep", "604"],
        PidNamespace::Target,
        "own",
    )
    .await;
    let ours: Vec<_> = holders()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(ours.len(), 1, "one holder for the pod: {ours:?}");

    let (ps, code) = exec_text(&mut a, "p1", "ps", process(&["ps", "-o", "pid,args"])).await;
    assert_eq!(code, 0);
    assert!(ps.contains("sleep 601") && ps.contains("sleep 602"), "{ps}");
    assert!(!ps.contains("sleep 603"), "{ps}");
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default();
    assert!(
        !pid1.contains("sleep"),
        "PID 1 is the holder, not a container: {ps}"
    );
    let (ps, _) = exec_text(&mut a, "peek", "ps", process(&["ps", "-o", "pid,args"])).await;
    assert!(
        ps.contains("sleep 603") && ps.contains("sleep 604") && !ps.contains("sleep 601"),
        "{ps}"
    );
    let err = a
        .client
        .create_container(CreateContainerRequest {
            container_id: "lost".into(),
            oci_spec_json: serde_json::to_vec(&spec(&["true"])).unwrap(),
            rootfs: Some(a.rootfs_request()),
            pid_namespace: PidNamespace::Target as i32,
            pid_namespace_target: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    a.delete("p1").await;
    let alive: Vec<_> = holders()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(alive, ours, "p2 still uses the namespace");
    a.delete("p2").await;
    let mut gone = false;
    for _ in 0..100 {
        if holders().into_iter().all(|p| before.contains(&p)) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the holder outlived the pod's last POD container");
    a.delete("peek").await;
    a.delete("own").await;
    a.assert_nothing_left("after delete");
}

#[tokio::test]
async fn execs_get_the_containers_seccomp_filter() {
    let Some(mut a) = agent("execs_get_the_containers_seccomp_filter").await else {
        return;
    };
    let mut filtered = spec(&["sh", "-c", "chmod 700 /tmp 2>/tmp/err; sleep 600"]);
    filtered["process"]["noNewPrivileges"] = json!(false);
    filtered["linux"] = json!({"seccomp": {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]
    }});
    a.create("sc", filtered, false, false)
        .await
        .expect("create");
    a.client
        .start_container(StartContainerRequest {
            container_id: "sc".into(),
        })
        .await
        .unwrap();
    // An exec that may gain privileges, as kubelet's default: it still gets
    // the filter, and none of the capabilities lent to load it.
    let open = |args: &[&str]| {
        serde_json::to_vec(&json!({
            "args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}, "noNewPrivileges": false,
            "env": ["PATH=/bin"],
        }))
        .unwrap()
    };
    let (status, code) = exec_text(
        &mut a,
        "sc",
        "status",
        open(&[
            "grep",
            "-E",
            "^(Seccomp|CapEff|NoNewPrivs):",
            "/proc/self/status",
        ]),
    )
    .await;
    assert_eq!(code, 0);
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .unwrap();
    let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
    assert_eq!(
        eff & (1 << 21),
        0,
        "CAP_SYS_ADMIN left in the exec: {status}"
    );
    let (_, code) = exec_text(&mut a, "sc", "chmod", open(&["chmod", "400", "/tmp"])).await;
    assert_ne!(code, 0, "chmod is blocked in execs");
    let (err, _) = exec_text(&mut a, "sc", "err", process(&["cat", "/tmp/err"])).await;
    assert!(
        err.contains("Operation not permitted"),
        "the main process is filtered: {err:?}"
    );
    a.delete("sc").await;
    a.assert_nothing_left("after delete");
}
