//! Runs the `podvisor` daemon with a private configuration and talks CRI to
//! it over its unix socket, as crictl and kubelet do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use podvisor::volume::share::mounts_under;
use podvisor::volume::share::unmount_tree;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Cri = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;

/// The daemon binary built next to the test binaries (target/*/podvisor),
/// or `PODVISOR_DAEMON` when set (a target directory shared by several
/// trees may hold another tree's build).
pub fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PODVISOR_DAEMON") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // A bin (a benchmark) sits next to the daemon; a test one level down.
    if let Some(beside) = exe.parent().map(|d| d.join("podvisor")) {
        if beside.is_file() {
            return beside;
        }
    }
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("podvisor");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p podvisor` (cargo nextest run --workspace does)",
        bin.display()
    );
    bin
}

/// A gRPC channel to a CRI server on a unix socket (any runtime's: podvisor,
/// containerd, CRI-O). Both RuntimeService and ImageService clients can be
/// built on it.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://podvisor")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// CRI's ImageService on the same socket.
pub async fn connect_images(socket: &Path) -> Result<Images, tonic::transport::Error> {
    Ok(ImageServiceClient::new(channel(socket).await?))
}

/// A daemon with its own socket, state and run directories.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub run_dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Writes a config (qemu backend, directories of its own) and starts.
    pub async fn start() -> (Daemon, Cri) {
        // No CPU quota: TCG boots are slow enough without a quarter of a
        // CPU (the policy tests turn it on).
        Self::start_with("[sandbox]\nstop_grace_secs = 2\ncpu_quota = false\n").await
    }

    /// Like [`Daemon::start`], with `extra` TOML sections appended.
    pub async fn start_with(extra: &str) -> (Daemon, Cri) {
        let dir = tempfile::Builder::new()
            .prefix("podvisor-daemon-")
            .tempdir()
            .unwrap();
        // Short: VM sockets live under it.
        let run_dir = PathBuf::from(format!("/run/pvt-{}", std::process::id()));
        let socket = dir.path().join("cri.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n\n[hypervisor]\nbackend = \"qemu\"\nboot_timeout_secs = 90\n\n{}",
                socket.display(),
                dir.path().join("state").display(),
                run_dir.display(),
                extra
            ),
        )
        .unwrap();
        let mut daemon = Daemon {
            child: None,
            dir,
            run_dir,
            config,
            socket,
        };
        let client = daemon.restart().await;
        (daemon, client)
    }

    /// (Re)starts the daemon process and waits until it answers Version.
    pub async fn restart(&mut self) -> Cri {
        let child = Command::new(daemon_binary())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn podvisor");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = connect(&self.socket).await {
                if c.version(k8s_cri::v1::VersionRequest::default())
                    .await
                    .is_ok()
                {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "podvisor did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the daemon the hard way (its pods keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops the daemon; its exit status once it has
    /// ended (its pods keep running).
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the daemon");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("podvisor did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Processes whose command line mentions the daemon's run directory
    /// (qemu, virtiofsd): none may outlive their pods.
    pub fn vm_processes(&self) -> Vec<String> {
        let needle = self.run_dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // Whatever a failed test left: kill its VMs and remove the run dir.
        let needle = self.run_dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        // Pod shares hold bind mounts (image layers, host paths): unmount
        // them before the temporary directory is deleted through them.
        unmount_tree(self.dir.path());
    }
}
