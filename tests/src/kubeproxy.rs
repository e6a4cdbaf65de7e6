//! A stand-in for the API server and kubelet in front of a CRI runtime, so
//! a real kubectl can drive exec and port-forward: it answers kubectl's pod
//! lookup, asks the runtime for a streaming URL (Exec/PortForward over
//! CRI, as kubelet does), and forwards the upgrade request and then the raw
//! connection there, as kubelet's proxy does.
//!
//! The kubectl used is Debian's `kubernetes-client` (1.20, SPDY via
//! client-go's spdystream), unpacked by `scripts/fetch-kubectl.sh`.

use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::Cri;

/// Where `scripts/fetch-kubectl.sh` unpacks it (or `PODVISOR_KUBECTL`).
pub fn kubectl() -> PathBuf {
    std::env::var_os("PODVISOR_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/podvisor/kubectl/usr/bin/kubectl"))
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pod kubectl sees: `name` in namespace default, one container.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub container_name: String,
    pub pod_id: String,
    pub container_id: String,
}

impl FakeApiServer {
    pub async fn start(cri: Cri, target: Target) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, cri.clone(), target.clone()));
            }
        });
        FakeApiServer { addr, task }
    }

    /// A kubeconfig naming this server, in `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    namespace: default\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str) -> Vec<(String, String)> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

async fn respond(socket: &mut TcpStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
}

async fn serve(mut socket: TcpStream, mut cri: Cri, target: Target) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let rest = buf.split_off(end + 4);
        buf = rest;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target_path = parts.next().unwrap_or("").to_string();
        let headers: Vec<String> = lines.map(str::to_string).collect();
        let path = target_path.split('?').next().unwrap_or("").to_string();
        let pod_path = format!("/api/v1/namespaces/default/pods/{}", target.name);
        // Discovery: kubectl resolves "pods" before anything else.
        let discovery = match path.as_str() {
            "/api" => Some(
                serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ),
            "/apis" => {
                Some(serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
            }
            "/api/v1" => Some(
                serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    {"name": "pods", "singularName": "", "namespaced": true, "kind": "Pod",
                     "verbs": ["get", "list"], "shortNames": ["po"]},
                    {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions",
                     "verbs": ["create", "get"]},
                    {"name": "pods/portforward", "singularName": "", "namespaced": true,
                     "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
                ]}),
            ),
            _ => None,
        };
        if let Some(body) = discovery {
            respond(&mut socket, "200 OK", &body.to_string()).await;
            continue;
        }
        if path == pod_path && method == "GET" {
            let pod = serde_json::json!({
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": target.name, "namespace": "default"},
                "spec": {"containers": [{"name": target.container_name, "image": "busybox"}]},
                "status": {"phase": "Running"},
            });
            respond(&mut socket, "200 OK", &pod.to_string()).await;
            continue;
        }
        let q = query(&target_path);
        let flag = |name: &str| q.iter().any(|(k, v)| k == name && v == "true");
        let url = if path == format!("{pod_path}/exec") {
            let cmd = q
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect();
            cri.exec(cri::ExecRequest {
                container_id: target.container_id.clone(),
                cmd,
                tty: flag("tty"),
                stdin: flag("stdin"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
            })
            .await
            .map(|r| r.into_inner().url)
        } else if path == format!("{pod_path}/portforward") {
            let ports = q
                .iter()
                .filter(|(k, _)| k == "ports")
                .filter_map(|(_, v)| v.parse().ok())
                .collect();
            cri.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: target.pod_id.clone(),
                port: ports,
            })
            .await
            .map(|r| r.into_inner().url)
        } else {
            let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            respond(&mut socket, "404 Not Found", status).await;
            continue;
        };
        let url = match url {
            Ok(u) => u,
            Err(e) => {
                respond(&mut socket, "500 Internal Server Error", &format!("{e}")).await;
                return;
            }
        };
        // kubelet's proxy: the same request to the runtime's URL, then
        // the raw upgraded connection both ways.
        let rest_of_url = url.strip_prefix("http://").unwrap_or(&url);
        let (host, upstream_path) = rest_of_url.split_once('/').unwrap_or((rest_of_url, ""));
        let Ok(mut upstream) = TcpStream::connect(host).await else {
            return;
        };
        let mut request = format!("{method} /{upstream_path} HTTP/1.1\r\nHost: {host}\r\n");
        for h in headers
            .iter()
            .filter(|h| !h.to_ascii_lowercase().starts_with("host:"))
        {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        if upstream.write_all(request.as_bytes()).await.is_err()
            || upstream.write_all(&buf).await.is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
        return;
    }
}
