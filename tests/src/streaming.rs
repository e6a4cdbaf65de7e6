//! A client for the CRI streaming URLs that speaks what kubectl and crictl
//! speak: the HTTP upgrade, SPDY/3.1 streams named by `streamType` (the
//! remote-command and port-forward protocols), and the WebSocket channel
//! protocol. SPDY framing and header compression come from podvisor's
//! codec; everything session-level here is the client's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use podvisor::streaming::spdy::frame::{self, Frame};
use podvisor::streaming::spdy::headers::{Headers, Packer, Unpacker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `http://host:port/path` split up.
fn parse_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: only http:// here"));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_string(), format!("/{path}"))
}

/// The status line and headers of an HTTP response.
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends an upgrade request to `url`; returns the answer and, on 101, the
/// connection with whatever arrived after the head.
pub async fn upgrade(
    url: &str,
    method: &str,
    upgrade: &str,
    protocols: &[&str],
) -> (Head, TcpStream, BytesMut) {
    let (host, path) = parse_url(url);
    let mut socket = TcpStream::connect(&host).await.expect("connect");
    socket.set_nodelay(true).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    socket.write_all(req.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let _ = buf.split_to(end + 4);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (Head { status, headers }, socket, buf)
}

/// The HTTP status a plain upgrade attempt at `url` gets.
pub async fn status_of(url: &str) -> u16 {
    upgrade(url, "POST", "SPDY/3.1", &["v4.channel.k8s.io"])
        .await
        .0
        .status
}

type Routes = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Bytes>>>>;

/// The client side of a SPDY session: streams with odd ids.
pub struct SpdyConn {
    writer: Arc<tokio::sync::Mutex<(OwnedWriteHalf, Packer)>>,
    routes: Routes,
    next_id: AtomicU32,
}

impl SpdyConn {
    pub fn new(socket: TcpStream, leftover: BytesMut) -> SpdyConn {
        let (mut read, write) = socket.into_split();
        let routes: Routes = Arc::default();
        let r = routes.clone();
        tokio::spawn(async move {
            let mut unpacker = Unpacker::new();
            let mut buf = leftover;
            loop {
                let f = match frame::decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => match read.read_buf(&mut buf).await {
                        Ok(n) if n > 0 => continue,
                        _ => break,
                    },
                    Err(e) => panic!("server sent a bad frame: {e}"),
                };
                match f {
                    Frame::Data { stream, fin, data } => {
                        let mut routes = r.lock().unwrap();
                        if let Some(tx) = routes.get(&stream) {
                            if !data.is_empty() {
                                let _ = tx.send(data);
                            }
                        }
                        if fin {
                            routes.remove(&stream);
                        }
                    }
                    Frame::SynReply { block, .. } | Frame::Headers { block, .. } => {
                        unpacker.unpack(&block).expect("server header block");
                    }
                    Frame::RstStream { stream, .. } => {
                        r.lock().unwrap().remove(&stream);
                    }
                    Frame::GoAway { .. } => break,
                    _ => {}
                }
            }
            // Everything still open ends with the session.
            r.lock().unwrap().clear();
        });
        SpdyConn {
            writer: Arc::new(tokio::sync::Mutex::new((write, Packer::new().unwrap()))),
            routes,
            next_id: AtomicU32::new(1),
        }
    }

    /// Opens a stream; the receiver yields what the server sends on it
    /// and ends at its FIN.
    pub async fn open(&self, headers: Headers) -> (u32, mpsc::UnboundedReceiver<Bytes>) {
        let id = self.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.lock().unwrap().insert(id, tx);
        let mut w = self.writer.lock().await;
        let block = w.1.pack(&headers).unwrap();
        let mut out = BytesMut::new();
        frame::encode(
            &Frame::SynStream {
                stream: id,
                associated: 0,
                priority: 0,
                flags: 0,
                block,
            },
            &mut out,
        );
        w.0.write_all(&out).await.unwrap();
        (id, rx)
    }

    pub async fn send(&self, stream: u32, data: &[u8], fin: bool) {
        let mut out = BytesMut::new();
        for (i, chunk) in data.chunks(32 * 1024).enumerate() {
            let last = (i + 1) * 32 * 1024 >= data.len();
            frame::encode(
                &Frame::Data {
                    stream,
                    fin: fin && last,
                    data: Bytes::copy_from_slice(chunk),
                },
                &mut out,
            );
        }
        if data.is_empty() {
            frame::encode(
                &Frame::Data {
                    stream,
                    fin,
                    data: Bytes::new(),
                },
                &mut out,
            );
        }
        let mut w = self.writer.lock().await;
        let _ = w.0.write_all(&out).await;
    }
}

/// Everything a stream's receiver yields until its end.
pub async fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(b) = rx.recv().await {
        all.extend_from_slice(&b);
    }
    all
}

/// Reads until `want` appears in what was read (kept in `seen`).
pub async fn read_until(rx: &mut mpsc::UnboundedReceiver<Bytes>, seen: &mut Vec<u8>, want: &str) {
    while !String::from_utf8_lossy(seen).contains(want) {
        match rx.recv().await {
            Some(b) => seen.extend_from_slice(&b),
            None => panic!(
                "stream ended before {want:?}; got {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

/// An exec or attach over SPDY with the streams client-go opens.
pub struct SpdyCommand {
    pub conn: SpdyConn,
    pub protocol: String,
    pub error: mpsc::UnboundedReceiver<Bytes>,
    pub stdout: Option<mpsc::UnboundedReceiver<Bytes>>,
    pub stderr: Option<mpsc::UnboundedReceiver<Bytes>>,
    stdin: Option<u32>,
    resize: Option<u32>,
}

/// Every remote-command version over SPDY, newest first, as kubectl offers
/// them.
pub const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

impl SpdyCommand {
    pub async fn start(
        url: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> SpdyCommand {
        Self::start_with(url, &SPDY_PROTOCOLS, stdin, stdout, stderr, tty).await
    }

    /// Offers only `offered`; opens the streams client-go opens for the
    /// version the server picks (a resize stream from v3 on).
    pub async fn start_with(
        url: &str,
        offered: &[&str],
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> SpdyCommand {
        let (head, socket, rest) = upgrade(url, "POST", "SPDY/3.1", offered).await;
        assert_eq!(head.status, 101, "upgrade refused");
        assert!(head
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1")));
        let protocol = head
            .get("X-Stream-Protocol-Version")
            .unwrap_or("")
            .to_string();
        let conn = SpdyConn::new(socket, rest);
        let typed = |t: &str| Headers::default().with("streamType", t);
        let (_, error) = conn.open(typed("error")).await;
        let stdin = match stdin {
            true => Some(conn.open(typed("stdin")).await.0),
            false => None,
        };
        let stdout = match stdout {
            true => Some(conn.open(typed("stdout")).await.1),
            false => None,
        };
        let stderr = match stderr && !tty {
            true => Some(conn.open(typed("stderr")).await.1),
            false => None,
        };
        let has_resize = !matches!(
            protocol.as_str(),
            "v2.channel.k8s.io" | "channel.k8s.io" | ""
        );
        let resize = match tty && has_resize {
            true => Some(conn.open(typed("resize")).await.0),
            false => None,
        };
        SpdyCommand {
            conn,
            protocol,
            error,
            stdout,
            stderr,
            stdin,
            resize,
        }
    }

    pub async fn write(&self, data: &[u8]) {
        self.conn
            .send(self.stdin.expect("stdin"), data, false)
            .await;
    }

    pub async fn close_stdin(&self) {
        self.conn.send(self.stdin.expect("stdin"), &[], true).await;
    }

    pub async fn resize(&self, width: u16, height: u16) {
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}");
        self.conn
            .send(self.resize.expect("resize"), json.as_bytes(), false)
            .await;
    }

    /// Stdout, stderr and the error stream, each read to its end.
    pub async fn finish(mut self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let out = async {
            match self.stdout.as_mut() {
                Some(rx) => drain(rx).await,
                None => Vec::new(),
            }
        };
        let err = async {
            match self.stderr.as_mut() {
                Some(rx) => drain(rx).await,
                None => Vec::new(),
            }
        };
        let (out, err) = tokio::join!(out, err);
        let status = drain(&mut self.error).await;
        (out, err, status)
    }
}

impl SpdyCommand {
    /// What a v1 client (client-go's `channel.k8s.io`) gets: it stops when
    /// stdout and stderr end and reports the error stream only if that had
    /// already ended. Stdout, stderr, and the error stream if complete by
    /// then (frames are handled here in the order they arrive).
    pub async fn finish_v1(mut self) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
        let out = async {
            match self.stdout.as_mut() {
                Some(rx) => drain(rx).await,
                None => Vec::new(),
            }
        };
        let err = async {
            match self.stderr.as_mut() {
                Some(rx) => drain(rx).await,
                None => Vec::new(),
            }
        };
        let (out, err) = tokio::join!(out, err);
        let mut status = Vec::new();
        loop {
            match self.error.try_recv() {
                Ok(b) => status.extend_from_slice(&b),
                Err(mpsc::error::TryRecvError::Disconnected) => return (out, err, Some(status)),
                Err(mpsc::error::TryRecvError::Empty) => return (out, err, None),
            }
        }
    }
}

/// What kubectl makes of the error stream: None for success, Some(code)
/// for "command terminated with exit code N".
pub fn exit_code(status: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(status)));
    match v["status"].as_str() {
        Some("Success") => None,
        Some("Failure") => {
            assert_eq!(v["reason"], "NonZeroExitCode", "{v}");
            let causes = v["details"]["causes"].as_array().expect("causes");
            let cause = causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .expect("an ExitCode cause");
            Some(cause["message"].as_str().unwrap().parse().unwrap())
        }
        _ => panic!("unknown status {v}"),
    }
}

/// The message v1-v3 put on the error stream for a non-zero exit (the
/// `Status` message of v4): its code; None for an empty stream (success).
pub fn text_exit_code(status: &[u8]) -> Option<i32> {
    if status.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(status);
    let code = text
        .strip_prefix("command terminated with non-zero exit code: exit status ")
        .and_then(|c| c.parse().ok());
    Some(code.unwrap_or_else(|| panic!("not an exit status: {text:?}")))
}

/// A WebSocket exec or attach (client-go's v5 framing).
pub struct WsCommand {
    pub protocol: String,
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
}

impl WsCommand {
    pub async fn start(url: &str, protocols: &str) -> WsCommand {
        let (host, path) = parse_url(url);
        let socket = TcpStream::connect(&host).await.unwrap();
        let mut req = format!("ws://{host}{path}").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        let (ws, resp) = tokio_tungstenite::client_async(req, socket)
            .await
            .expect("WebSocket upgrade");
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        WsCommand { protocol, ws }
    }

    fn base64(&self) -> bool {
        self.protocol.contains("base64")
    }

    /// Data on `channel`: binary, or in the base64 dialects text (the
    /// channel as a digit, then the data in base64).
    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let message = if self.base64() {
            let mut text = char::from(b'0' + channel).to_string();
            text.push_str(&BASE64.encode(data));
            Message::text(text)
        } else {
            let mut m = vec![channel];
            m.extend_from_slice(data);
            Message::binary(m)
        };
        self.ws.send(message).await.unwrap();
    }

    /// v5: channel 255 closes stdin.
    pub async fn close_stdin(&mut self) {
        self.ws.send(Message::binary(vec![255, 0])).await.unwrap();
    }

    /// Output per channel until the server closes.
    pub async fn finish(mut self) -> HashMap<u8, Vec<u8>> {
        let base64 = self.base64();
        let mut got: HashMap<u8, Vec<u8>> = HashMap::new();
        while let Some(Ok(m)) = self.ws.next().await {
            match m {
                Message::Binary(b) if !b.is_empty() && !base64 => {
                    got.entry(b[0]).or_default().extend_from_slice(&b[1..]);
                }
                Message::Text(t) if !t.is_empty() && base64 => {
                    let channel = t.as_bytes()[0] - b'0';
                    let data = BASE64
                        .decode(&t.as_bytes()[1..])
                        .unwrap_or_else(|e| panic!("channel {channel}: bad base64 {t:?}: {e}"));
                    got.entry(channel).or_default().extend_from_slice(&data);
                }
                Message::Binary(_) | Message::Text(_) => {
                    panic!("{}: a message of the other dialect: {m:?}", self.protocol)
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        got
    }
}

/// Forwards one connection over a port-forward session: sends `request`,
/// half-closes, and returns (data received, error stream text).
pub async fn forward_once(
    conn: &SpdyConn,
    port: u16,
    request_id: u32,
    request: &[u8],
) -> (Vec<u8>, String) {
    let headers = |t: &str| {
        Headers::default()
            .with("streamType", t)
            .with("port", &port.to_string())
            .with("requestID", &request_id.to_string())
    };
    let (error_id, mut error) = conn.open(headers("error")).await;
    // client-go does not write on the error stream.
    conn.send(error_id, &[], true).await;
    let (data_id, mut data) = conn.open(headers("data")).await;
    conn.send(data_id, request, true).await;
    let (body, err) = tokio::join!(drain(&mut data), drain(&mut error));
    (body, String::from_utf8_lossy(&err).into_owned())
}

/// A port-forward session.
pub async fn port_forward(url: &str) -> SpdyConn {
    let (head, socket, rest) = upgrade(url, "POST", "SPDY/3.1", &["portforward.k8s.io"]).await;
    assert_eq!(head.status, 101, "port-forward upgrade refused");
    assert_eq!(
        head.get("X-Stream-Protocol-Version"),
        Some("portforward.k8s.io")
    );
    SpdyConn::new(socket, rest)
}

/// One pod VM with one busybox container for streaming tests and the
/// benchmark: `httpd` on the pod's 127.0.0.1:8080 serving
/// [`PAGE`], and `cat` as the main process (stdin open) echoing stdin.
pub struct StreamPod {
    pub daemon: crate::daemon::Daemon,
    pub cri: crate::daemon::Cri,
    pub pod: String,
    pub container: String,
    pub log: std::path::PathBuf,
    _registry: crate::registry::LocalRegistry,
    _logs: tempfile::TempDir,
}

pub const PAGE: &str = "podvisor-streaming-page";
pub const HTTP_PORT: u16 = 8080;

/// The guest image to boot: `PODVISOR_GUEST_DIR` (an image with an agent
/// under development) or the installed one.
fn guest_config() -> String {
    match std::env::var("PODVISOR_GUEST_DIR") {
        Ok(dir) => format!(
            "[hypervisor.guest]\nkernel = \"{dir}/vmlinux\"\ninitramfs = \"{dir}/initramfs.img\"\n\n"
        ),
        Err(_) => String::new(),
    }
}

impl StreamPod {
    /// Registry, daemon (with `extra` config), image, pod, container.
    pub async fn start(extra: &str) -> StreamPod {
        use k8s_cri::v1 as cri;
        let registry = crate::registry::LocalRegistry::start();
        registry
            .push(
                "stream/busybox",
                "1.0",
                &crate::registry::busybox_image("", "/"),
            )
            .await;
        let image = format!("{}/stream/busybox:1.0", registry.addr());
        let config = format!(
            "{}[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n\n{extra}",
            guest_config()
        );
        let (daemon, mut cri) = crate::daemon::Daemon::start_with(&config).await;
        let mut images = crate::daemon::connect_images(&daemon.socket).await.unwrap();
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
        let logs = tempfile::tempdir().unwrap();
        let sandbox = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "stream".into(),
                uid: "uid-stream".into(),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            hostname: "stream".into(),
            log_directory: logs.path().to_string_lossy().into_owned(),
            ..Default::default()
        };
        let pod = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let script = format!(
            "mkdir -p /tmp/www && echo {PAGE} > /tmp/www/index.html && \
             httpd -p 127.0.0.1:{HTTP_PORT} -h /tmp/www && echo ready && exec cat"
        );
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "echo".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image,
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script],
            log_path: "echo.log".into(),
            stdin: true,
            ..Default::default()
        };
        let container = cri
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        cri.start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .expect("StartContainer");
        let log = logs.path().join("echo.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdout F ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the container did not get ready: {:?}",
                std::fs::read_to_string(&log)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        StreamPod {
            daemon,
            cri,
            pod,
            container,
            log,
            _registry: registry,
            _logs: logs,
        }
    }

    pub async fn exec_url(&mut self, cmd: &[&str], stdin: bool, tty: bool) -> String {
        self.cri
            .exec(k8s_cri::v1::ExecRequest {
                container_id: self.container.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .expect("Exec")
            .into_inner()
            .url
    }

    pub async fn attach_url(&mut self, stdin: bool) -> String {
        self.cri
            .attach(k8s_cri::v1::AttachRequest {
                container_id: self.container.clone(),
                stdin,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .expect("Attach")
            .into_inner()
            .url
    }

    pub async fn port_forward_url(&mut self) -> String {
        self.cri
            .port_forward(k8s_cri::v1::PortForwardRequest {
                pod_sandbox_id: self.pod.clone(),
                port: vec![HTTP_PORT.into()],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url
    }

    /// Stops and removes the pod.
    pub async fn remove(mut self) {
        use k8s_cri::v1 as cri;
        self.cri
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: self.pod.clone(),
            })
            .await
            .expect("StopPodSandbox");
        self.cri
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: self.pod.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }
}

/// Reproducible bytes that do not compress.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32).to_le_bytes()[0]
        })
        .collect()
}
