//! Exec, Attach and PortForward over CRI streaming URLs, as kubectl and
//! crictl use them, against one pod VM: SPDY/3.1 and WebSocket
//! remote-command (stdin, stdout, stderr, TTY and resize, exit codes and
//! signal deaths in every protocol version),
//! several attached clients, port-forward of ten concurrent connections to
//! a server on the pod's loopback, and refused tokens.

use std::time::Duration;

use podvisor_tests::kubeproxy::{self, FakeApiServer, Target};
use podvisor_tests::registry::LocalRegistry;
use podvisor_tests::streaming::{
    exit_code, forward_once, noise, port_forward, read_until, status_of, text_exit_code,
    SpdyCommand, StreamPod, WsCommand, HTTP_PORT, PAGE, SPDY_PROTOCOLS,
};
use podvisor_tests::vm::qemu_ready;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Long enough for a loaded machine to use a fresh URL, short enough to
/// wait out.
const TOKEN_TTL_SECS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_and_port_forward_reach_the_pod_vm() {
    let test = "exec_attach_and_port_forward_reach_the_pod_vm";
    let registry_ready = podvisor_tests::prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    );
    if !qemu_ready(test) || !registry_ready {
        return;
    }
    let mut pod =
        StreamPod::start(&format!("[streaming]\ntoken_ttl_secs = {TOKEN_TTL_SECS}\n")).await;
    let started = std::time::Instant::now();

    // --- exec over SPDY: 1 MiB through cat, byte for byte; EOF ends it ---
    let url = pod.exec_url(&["cat"], true, false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let cmd = SpdyCommand::start(&url, true, true, true, false).await;
    assert_eq!(cmd.protocol, "v4.channel.k8s.io");
    let data = noise(1 << 20);
    cmd.write(&data).await;
    cmd.close_stdin().await;
    let (out, err, status) = cmd.finish().await;
    assert_eq!(out.len(), data.len(), "stdout length");
    assert!(out == data, "stdout differs from stdin");
    assert!(err.is_empty(), "{:?}", String::from_utf8_lossy(&err));
    assert_eq!(exit_code(&status), None);

    // --- a used or forged token is refused ---
    assert_eq!(status_of(&url).await, 404, "a token works once");
    let forged = format!(
        "{}/exec/{}",
        url.rsplit_once("/exec/").unwrap().0,
        "A".repeat(43)
    );
    assert_eq!(status_of(&forged).await, 404);

    // --- exit codes and separate streams ---
    let url = pod
        .exec_url(
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            false,
        )
        .await;
    let (out, err, status) = SpdyCommand::start(&url, false, true, true, false)
        .await
        .finish()
        .await;
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(exit_code(&status), Some(7));

    // --- WebSocket v5: exit 7 on the error channel ---
    let url = pod
        .exec_url(
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            false,
        )
        .await;
    let ws = WsCommand::start(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    let got = ws.finish().await;
    assert_eq!(got.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]));
    assert_eq!(got.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]));
    assert_eq!(exit_code(&got[&3]), Some(7));

    // --- every protocol version: exit 7 and a SIGKILL death (137) ---
    every_protocol_reports_exit_codes(&mut pod).await;

    // --- WebSocket v5: stdin through cat, closed by channel 255 ---
    let url = pod.exec_url(&["cat"], true, false).await;
    let mut ws = WsCommand::start(&url, "v5.channel.k8s.io").await;
    let piece = noise(200 * 1024);
    ws.send(0, &piece).await;
    ws.close_stdin().await;
    let got = ws.finish().await;
    assert!(got.get(&1) == Some(&piece), "WebSocket stdout differs");
    assert_eq!(exit_code(&got[&3]), None);

    // --- attach: two clients see what one of them types, no replay ---
    let watcher = SpdyCommand::start(&pod.attach_url(false).await, false, true, true, false).await;
    let typist = SpdyCommand::start(&pod.attach_url(true).await, true, true, true, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    typist.write(b"attached-line\n").await;
    let mut watcher = watcher;
    let mut typist = typist;
    let (mut seen_w, mut seen_t) = (Vec::new(), Vec::new());
    read_until(
        watcher.stdout.as_mut().unwrap(),
        &mut seen_w,
        "attached-line\n",
    )
    .await;
    read_until(
        typist.stdout.as_mut().unwrap(),
        &mut seen_t,
        "attached-line\n",
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&seen_w).contains("ready"),
        "attach replayed old output"
    );
    // Closing stdin ends the typist's session (the container keeps stdin).
    typist.close_stdin().await;
    let (_, _, status) = tokio::time::timeout(Duration::from_secs(30), typist.finish())
        .await
        .expect("attach session ends at stdin EOF");
    assert_eq!(exit_code(&status), None);
    drop(watcher);
    // The CRI log still has everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&pod.log)
        .unwrap_or_default()
        .contains("stdout F attached-line")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log lost the line"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // --- port-forward: ten connections at once to the pod's loopback ---
    let conn = port_forward(&pod.port_forward_url().await).await;
    let request = b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n";
    let results =
        futures_util::future::join_all((0..10).map(|i| forward_once(&conn, HTTP_PORT, i, request)))
            .await;
    for (i, (body, error)) in results.iter().enumerate() {
        let text = String::from_utf8_lossy(body);
        assert!(text.starts_with("HTTP/1."), "connection {i}: {text:?}");
        assert!(text.contains(PAGE), "connection {i}: {text:?}");
        assert!(error.is_empty(), "connection {i}: {error}");
    }
    // A closed port: an error on the error stream, no data.
    let (body, error) = forward_once(&conn, 9, 100, b"x").await;
    assert!(body.is_empty());
    assert!(error.contains("port 9"), "{error:?}");

    // --- an expired token is refused ---
    let url = pod.exec_url(&["true"], false, false).await;
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL_SECS + 1)).await;
    assert_eq!(status_of(&url).await, 404, "an expired token");

    // --- exec -t: a terminal, and resizes reach it ---
    let url = pod
        .exec_url(
            &["sh", "-c", "tty; read a; stty size; read b; stty size"],
            true,
            true,
        )
        .await;
    let mut cmd = SpdyCommand::start(&url, true, true, false, true).await;
    let mut seen = Vec::new();
    let stdout = cmd.stdout.as_mut().unwrap();
    read_until(stdout, &mut seen, "/dev/pts/").await;
    cmd.resize(100, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cmd.write(b"a\n").await;
    let stdout = cmd.stdout.as_mut().unwrap();
    read_until(stdout, &mut seen, "30 100").await;
    cmd.resize(120, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cmd.write(b"b\n").await;
    let (rest, _, status) = cmd.finish().await;
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("40 120"), "{text:?}");
    assert_eq!(exit_code(&status), None);

    // --- exec -it: the exit code of a command on a terminal ---
    let url = pod
        .exec_url(&["sh", "-c", "read code; exit $code"], true, true)
        .await;
    let cmd = SpdyCommand::start(&url, true, true, false, true).await;
    cmd.write(b"7\n").await;
    let (_, _, status) = cmd.finish().await;
    assert_eq!(exit_code(&status), Some(7), "exec -it");

    // --- a real kubectl (client-go's SPDY) through a stand-in API server ---
    let kubectl = kubeproxy::kubectl();
    if podvisor_tests::prerequisite(
        test,
        "kubectl 1.20",
        kubectl.is_file(),
        "scripts/fetch-kubectl.sh",
    ) {
        kubectl_checks(&pod, &kubectl).await;
    }

    eprintln!("streaming checks took {:?}", started.elapsed());
    pod.remove().await;
}

/// A command's exit code reaches the client the way each remote-command
/// version carries it: a JSON `Status` with the `ExitCode` cause (v4, v5
/// and v4.base64), the status message as text (v1-v3, channel.k8s.io and
/// base64.channel.k8s.io); a death by SIGKILL is 128+9, as runc reports it.
async fn every_protocol_reports_exit_codes(pod: &mut StreamPod) {
    let cases: [(&[&str], i32); 2] = [
        (&["sh", "-c", "echo out; exit 7"], 7),
        (&["sh", "-c", "echo out; kill -9 $$"], 137),
    ];
    for protocol in SPDY_PROTOCOLS {
        for (cmd, code) in cases {
            let what = format!("SPDY {protocol} {cmd:?}");
            let url = pod.exec_url(cmd, false, false).await;
            let spdy = SpdyCommand::start_with(&url, &[protocol], false, true, true, false).await;
            assert_eq!(spdy.protocol, protocol, "{what}");
            let (out, status) = if protocol == "channel.k8s.io" {
                let (out, _, status) = spdy.finish_v1().await;
                let status = status
                    .unwrap_or_else(|| panic!("{what}: stdout ended before the error stream"));
                (out, status)
            } else {
                let (out, _, status) = spdy.finish().await;
                (out, status)
            };
            assert_eq!(out, b"out\n", "{what}");
            let got = match protocol {
                "v4.channel.k8s.io" => exit_code(&status),
                _ => text_exit_code(&status),
            };
            assert_eq!(got, Some(code), "{what}");
        }
    }
    let json = [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
    ];
    let text = ["channel.k8s.io", "base64.channel.k8s.io"];
    for protocol in json.into_iter().chain(text) {
        for (cmd, code) in cases {
            let what = format!("WebSocket {protocol} {cmd:?}");
            let url = pod.exec_url(cmd, false, false).await;
            let ws = WsCommand::start(&url, protocol).await;
            assert_eq!(ws.protocol, protocol, "{what}");
            let got = ws.finish().await;
            assert_eq!(
                got.get(&1).map(Vec::as_slice),
                Some(&b"out\n"[..]),
                "{what}"
            );
            let status = got.get(&3).map(Vec::as_slice).unwrap_or_default();
            let got = match json.contains(&protocol) {
                true => exit_code(status),
                false => text_exit_code(status),
            };
            assert_eq!(got, Some(code), "{what}");
        }
    }
}

/// kubectl exec (stdin through cat, exit code 7) and port-forward.
async fn kubectl_checks(pod: &StreamPod, kubectl: &std::path::Path) {
    let api = FakeApiServer::start(
        pod.cri.clone(),
        Target {
            name: "stream".into(),
            container_name: "echo".into(),
            pod_id: pod.pod.clone(),
            container_id: pod.container.clone(),
        },
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let config = api.kubeconfig(home.path());
    let command = |args: &[&str]| {
        let mut c = tokio::process::Command::new(kubectl);
        c.args(args)
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECONFIG", &config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };

    let mut cat = command(&["exec", "-i", "stream", "-c", "echo", "--", "cat"])
        .spawn()
        .unwrap();
    let data = noise(256 * 1024);
    let mut stdin = cat.stdin.take().unwrap();
    let input = data.clone();
    tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        // Dropping stdin is EOF, which kubectl passes on.
    });
    let out = tokio::time::timeout(Duration::from_secs(60), cat.wait_with_output())
        .await
        .expect("kubectl exec cat finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl exec cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "kubectl exec cat: output differs");

    let seven = command(&[
        "exec",
        "stream",
        "-c",
        "echo",
        "--",
        "sh",
        "-c",
        "echo hi; exit 7",
    ])
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&seven.stderr);
    assert_eq!(seven.status.code(), Some(7), "{stderr}");
    assert_eq!(seven.stdout, b"hi\n");
    assert!(
        stderr.contains("command terminated with exit code 7"),
        "{stderr}"
    );

    let mut forward = command(&["port-forward", "stream", &format!(":{HTTP_PORT}")])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(forward.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("kubectl port-forward starts")
        .unwrap()
        .unwrap_or_default();
    // "Forwarding from 127.0.0.1:NNNNN -> 8080"
    let local: u16 = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("kubectl port-forward said {line:?}"));
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut page = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut page))
            .await
            .expect("the page through kubectl port-forward")
            .unwrap();
        assert!(page.contains(PAGE), "{page:?}");
    }
    let _ = forward.kill().await;
}
