//! Runs podvisor-agent in host test mode and talks to it over a unix socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podvisor::agent_client::{AgentDialer, AgentTimeouts};
use podvisor_proto::*;
use serde_json::json;
use tempfile::TempDir;

/// The runtime's agent client, deadlines included.
pub type Client = podvisor::agent_client::Agent;

/// A gRPC client for a unix socket, made as the runtime makes it; it
/// connects on its first call.
pub fn connect_unix(path: &Path) -> Client {
    podvisor::agent_client::connect(
        &AgentDialer::Unix(path.to_path_buf()),
        AgentTimeouts::default(),
    )
}

/// An agent process in host test mode with its own state dir and cgroup.
pub struct HostAgent {
    child: Child,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_parent: String,
    pub rootfs: PathBuf,
    pub client: Client,
}

impl HostAgent {
    /// Starts the agent binary and waits until it answers Health.
    pub async fn start(bin: &Path) -> HostAgent {
        let dir = tempfile::Builder::new()
            .prefix("podvisor-agent-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let state_dir = dir.path().join("state");
        let rootfs = crate::rootfs::busybox_rootfs(&dir.path().join("rootfs"));
        let cgroup_parent = format!("/podvisor-test-{}", std::process::id());
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn podvisor-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let mut c = connect_unix(&socket);
            if c.health(HealthRequest {}).await.is_ok() {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        HostAgent {
            child,
            dir,
            socket,
            state_dir,
            cgroup_parent,
            rootfs,
            client,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mounts the agent holds under its state dir (in its own namespace).
    pub fn mounts_under_state(&self) -> Vec<String> {
        let info =
            fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap_or_default();
        let state = self.state_dir.to_string_lossy().into_owned();
        info.lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|mount_point| mount_point.starts_with(&state))
            .map(str::to_string)
            .collect()
    }

    /// Container cgroups left under the test's parent, in any hierarchy.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut parents = vec![Path::new("/sys/fs/cgroup").join(rel)];
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            parents.extend(entries.flatten().map(|e| e.path().join(rel)));
        }
        parents
            .into_iter()
            .filter_map(|p| fs::read_dir(p).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Live children of the agent (zombies included).
    pub fn children(&self) -> Vec<u32> {
        let agent = self.pid().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let after_comm = &s[s.rfind(')')? + 2..];
                        after_comm
                            .split_whitespace()
                            .nth(1)
                            .map(|ppid| ppid == agent)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Asserts the agent holds no container: no mount, cgroup or child.
    pub fn assert_nothing_left(&self, context: &str) {
        assert_eq!(
            self.mounts_under_state(),
            Vec::<String>::new(),
            "{context}: mounts left"
        );
        assert_eq!(
            self.cgroups_left(),
            Vec::<PathBuf>::new(),
            "{context}: cgroups left"
        );
        assert_eq!(
            self.children(),
            Vec::<u32>::new(),
            "{context}: processes left"
        );
        let containers = self.state_dir.join("containers");
        let bundles: Vec<_> = fs::read_dir(&containers)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(bundles, Vec::<PathBuf>::new(), "{context}: bundles left");
    }

    pub fn rootfs_request(&self) -> Rootfs {
        Rootfs {
            lower_dirs: vec![self.rootfs.to_string_lossy().into_owned()],
            writable_in_place: false,
        }
    }

    /// Creates a container from `spec`, without starting it.
    pub async fn create(
        &mut self,
        id: &str,
        spec: serde_json::Value,
        stdin: bool,
        tty: bool,
    ) -> Result<u32, tonic::Status> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            rootfs: Some(self.rootfs_request()),
            stdin,
            tty,
            ..Default::default()
        };
        self.client
            .create_container(req)
            .await
            .map(|r| r.into_inner().pid)
    }

    /// Creates and starts a container running `args`.
    pub async fn run(&mut self, id: &str, args: &[&str]) -> u32 {
        let pid = self
            .create(id, spec(args), false, false)
            .await
            .expect("create");
        self.client
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("start");
        pid
    }

    pub async fn wait(&mut self, id: &str, exec_id: &str) -> ProcessExit {
        let req = WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        tokio::time::timeout(Duration::from_secs(30), self.client.wait_process(req))
            .await
            .expect("process did not exit within 30 s")
            .expect("wait")
            .into_inner()
    }

    /// All output of a process until it closes: (stream, text) per chunk.
    pub async fn output(&mut self, id: &str, exec_id: &str) -> Vec<(OutputStream, String)> {
        let req = ReadOutputRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            from_offset: 0,
            live: false,
        };
        let mut stream = self
            .client
            .read_output(req)
            .await
            .expect("read_output")
            .into_inner();
        let mut chunks = Vec::new();
        let read = async {
            while let Some(chunk) = stream.message().await.expect("output stream") {
                if chunk.eof {
                    break;
                }
                chunks.push((
                    chunk.stream(),
                    String::from_utf8_lossy(&chunk.data).into_owned(),
                ));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("output did not end within 30 s");
        chunks
    }

    /// Output of one stream, joined.
    pub async fn text(&mut self, id: &str, exec_id: &str, which: OutputStream) -> String {
        self.output(id, exec_id)
            .await
            .into_iter()
            .filter(|(s, _)| *s == which)
            .map(|(_, t)| t)
            .collect()
    }

    pub async fn delete(&mut self, id: &str) {
        self.client
            .delete_container(DeleteContainerRequest {
                container_id: id.into(),
                force: true,
            })
            .await
            .expect("delete");
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        // Hang up first, so the agent's graceful shutdown has no client to
        // wait for.
        self.client = connect_unix(Path::new("/nonexistent/closed.sock"));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // After a failed test containers' cgroups may remain: remove them
        // (empty once the agent is gone) before their parent.
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut parents = vec![Path::new("/sys/fs/cgroup").join(rel)];
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            parents.extend(entries.flatten().map(|e| e.path().join(rel)));
        }
        for parent in parents {
            if let Ok(children) = fs::read_dir(&parent) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = fs::remove_dir(child.path());
                }
            }
            let _ = fs::remove_dir(&parent);
        }
    }
}

/// A minimal OCI spec running `args` as root with a PATH.
pub fn spec(args: &[&str]) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "cwd": "/",
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "user": {"uid": 0, "gid": 0}
        },
        "hostname": "test-pod"
    })
}

/// An OCI `process` for an exec.
pub fn process(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "args": args,
        "cwd": "/",
        "user": {"uid": 0, "gid": 0}
    }))
    .unwrap()
}
