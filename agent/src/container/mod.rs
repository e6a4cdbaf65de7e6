//! Containers of the pod: create, start, exec, signal, wait, delete, stats.
//!
//! libcontainer (youki) does the OCI work: namespaces, cgroups, mounts,
//! capabilities, rlimits, seccomp. This module owns what surrounds it: the
//! rootfs, stdio, exit statuses (through the [`Reaper`]) and the registry.

mod cgroup;
mod console;
mod exec_seccomp;
mod layer_usage;
mod podns;
mod rootfs;
mod signal;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as OciContainer;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, LinuxSeccomp, Process as OciProcess};
use tokio::sync::watch;

use crate::error::{AgentError, Result};
use crate::reaper::{self, ExitReceiver, Reaper};
use crate::stdio::{self, ChildStdio, ProcessIo};
use crate::volume::{self, Volumes};
use cgroup::Cgroup;
pub use cgroup::{detect_version, CgroupVersion, Usage};
use console::ConsoleSocket;
use exec_seccomp::SeccompExecutor;
use podns::PodPidNamespace;
use rootfs::RootfsMount;
pub use spec::{RlimitCeiling, SandboxFiles};

/// Output of an exec'd process may outlive it in its descendants; after the
/// process exits they get this long before readers see end of file.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How long a forced delete waits for the container's processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Bundles, upper layers and libcontainer's state live under here.
    pub state_dir: PathBuf,
    /// Parent of each container's cgroup unless its spec names one.
    pub cgroups_parent: String,
    pub rlimit_ceiling: RlimitCeiling,
    /// Where a privileged container's devices come from: the guest's /dev.
    /// None in host test mode, which refuses privileged containers rather
    /// than hand out the host's devices.
    pub devices: Option<PathBuf>,
}

/// The final word on how a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    pub code: i32,
    pub signal: i32,
    pub finished_at: SystemTime,
    pub oom_killed: bool,
}

/// A process the agent started: a container's main process or an exec.
pub struct Process {
    pub pid: Pid,
    pub io: ProcessIo,
    exit: watch::Receiver<Option<ProcessExit>>,
}

impl Process {
    pub fn exit(&self) -> Option<ProcessExit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> ProcessExit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The monitor is gone without a status: report a kill.
                return ProcessExit {
                    code: 137,
                    signal: libc::SIGKILL,
                    finished_at: SystemTime::now(),
                    oom_killed: false,
                };
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
}

pub struct Container {
    pub id: String,
    bundle: PathBuf,
    rootfs: RootfsMount,
    cgroup: Cgroup,
    /// The container's own process spec, inherited by execs.
    process_spec: OciProcess,
    pub created_at: SystemTime,
    started_at: Mutex<Option<SystemTime>>,
    pub main: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// NFS volumes mounted for this container, unmounted on delete.
    volumes: Mutex<Volumes>,
    /// Lives in the pod's PID namespace, and holds it while not deleted.
    in_pod_pid_namespace: bool,
    /// The container's filter, loaded by its execs too.
    seccomp: Option<LinuxSeccomp>,
}

impl Container {
    pub fn state(&self) -> State {
        if self.main.exit().is_some() {
            State::Exited
        } else if self.started_at().is_some() {
            State::Running
        } else {
            State::Created
        }
    }

    pub fn started_at(&self) -> Option<SystemTime> {
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The main process for an empty `exec_id`, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.main.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Forgets an exec that has exited, with its buffered output: a runtime
    /// that ran a probe every few seconds would otherwise fill the guest.
    pub fn release_exec(&self, exec_id: &str) -> Result<()> {
        let mut execs = lock(&self.execs);
        let process = execs
            .get(exec_id)
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })?;
        if process.exit().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {exec_id:?} of container {:?} is still running",
                self.id
            )));
        }
        execs.remove(exec_id);
        Ok(())
    }

    pub fn usage(&self) -> Result<Usage> {
        self.cgroup.usage()
    }

    /// The writable layer's size; walks the layer, so call from blocking
    /// code.
    pub fn layer_usage(&self) -> layer_usage::LayerUsage {
        layer_usage::measure(&self.bundle.join("upper"))
    }
}

pub struct CreateRequest {
    pub id: String,
    pub spec_json: Vec<u8>,
    pub rootfs: podvisor_proto::Rootfs,
    pub stdin: bool,
    pub tty: bool,
    /// Network file systems to mount before the container is built.
    pub volumes: Vec<podvisor_proto::SharedMount>,
    pub volume_timeout: Duration,
    pub pid_namespace: PidNamespace,
}

/// Where a container's processes live (proto `PidNamespace`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PidNamespace {
    /// A namespace of its own.
    #[default]
    Container,
    /// The pod's shared namespace.
    Pod,
    /// The namespace of this container of the pod.
    Target(String),
}

pub struct ExecRequest {
    pub container_id: String,
    pub exec_id: String,
    pub process_json: Vec<u8>,
    pub stdin: bool,
    pub tty: bool,
}

pub struct ContainerManager {
    config: ManagerConfig,
    reaper: Reaper,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or deleted, so concurrent calls cannot race.
    busy: Mutex<HashSet<String>>,
    sandbox_files: Mutex<SandboxFiles>,
    pod_pid: Arc<Mutex<PodPidNamespace>>,
}

/// Releases an id reserved in `busy` when dropped.
struct Reservation<'a> {
    manager: &'a ContainerManager,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.manager.busy).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// libcontainer's ids become directory names; keep them to a safe alphabet.
fn validate_id(kind: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "{kind} {id:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

impl ContainerManager {
    pub fn new(config: ManagerConfig, reaper: Reaper) -> Result<Self> {
        for dir in [config.state_dir.join("containers"), Self::oci_root(&config)] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(ContainerManager {
            config,
            reaper,
            containers: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            sandbox_files: Mutex::new(SandboxFiles::default()),
            pod_pid: Arc::new(Mutex::new(PodPidNamespace::default())),
        })
    }

    fn oci_root(config: &ManagerConfig) -> PathBuf {
        config.state_dir.join("oci")
    }

    pub fn set_sandbox_files(&self, files: SandboxFiles) {
        *lock(&self.sandbox_files) = files;
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Container>> {
        let mut all: Vec<_> = lock(&self.containers).values().cloned().collect();
        all.sort_by_key(|c| c.created_at);
        all
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        if lock(&self.containers).contains_key(id) || !lock(&self.busy).insert(id.to_string()) {
            return Err(AgentError::ContainerExists(id.to_string()));
        }
        Ok(Reservation {
            manager: self,
            id: id.to_string(),
        })
    }

    pub async fn create(&self, req: CreateRequest) -> Result<Arc<Container>> {
        validate_id("container id", &req.id)?;
        let mut spec = spec::parse_spec(&req.spec_json)?;
        let _reservation = self.reserve(&req.id)?;

        let pid_ns = self.join_pid_namespace(&req.pid_namespace).await?;
        let bundle = self.config.state_dir.join("containers").join(&req.id);
        if let Err(e) = std::fs::create_dir_all(&bundle) {
            self.leave_pid_namespace(&pid_ns);
            return Err(AgentError::io("create bundle", e));
        }
        // Volumes first: a server that cannot be reached is the likeliest
        // failure, and the slowest.
        let mut volumes =
            match volume::mount_all(&self.reaper, &req.volumes, req.volume_timeout).await {
                Ok(v) => v,
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&bundle);
                    self.leave_pid_namespace(&pid_ns);
                    return Err(err);
                }
            };
        let rootfs = match rootfs::mount_rootfs(&bundle, &req.rootfs) {
            Ok(r) => r,
            Err(err) => {
                volumes.unmount();
                let _ = std::fs::remove_dir_all(&bundle);
                self.leave_pid_namespace(&pid_ns);
                return Err(err);
            }
        };
        match self
            .create_in_bundle(&req, &mut spec, &bundle, rootfs, &pid_ns)
            .await
        {
            Ok(container) => {
                *lock(&container.volumes) = volumes;
                lock(&self.containers).insert(req.id.clone(), container.clone());
                tracing::info!(id = %req.id, pid = container.main.pid.as_raw(), "container created");
                Ok(container)
            }
            Err((err, rootfs)) => {
                self.remove_leftovers(&req.id, &bundle, &rootfs, &spec)
                    .await;
                volumes.unmount();
                self.leave_pid_namespace(&pid_ns);
                Err(err)
            }
        }
    }

    async fn create_in_bundle(
        &self,
        req: &CreateRequest,
        spec: &mut oci_spec::runtime::Spec,
        bundle: &Path,
        rootfs: RootfsMount,
        pid_ns: &JoinedPidNamespace,
    ) -> std::result::Result<Arc<Container>, (AgentError, RootfsMount)> {
        let files = lock(&self.sandbox_files).clone();
        let prepared = spec::prepare_spec(
            spec,
            &spec::SpecContext {
                container_id: &req.id,
                rootfs: rootfs.path(),
                cgroups_parent: &self.config.cgroups_parent,
                sandbox_files: &files,
                tty: req.tty,
                ceiling: self.config.rlimit_ceiling,
                devices: self.config.devices.as_deref(),
                pid_namespace: pid_ns.path.as_deref(),
            },
        )
        .and_then(|()| {
            let cwd = spec
                .process()
                .as_ref()
                .map(|p| p.cwd().clone())
                .unwrap_or_default();
            spec::check_cwd(
                &cwd,
                spec.mounts().as_deref().unwrap_or_default(),
                rootfs.path(),
            )
        })
        .and_then(|()| {
            spec.save(bundle.join("config.json"))
                .map_err(|e| AgentError::runtime("write config.json", e))
        });
        if let Err(err) = prepared {
            return Err((err, rootfs));
        }

        let oci_root = Self::oci_root(&self.config);
        let id = req.id.clone();
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_default();
        let launch = Launch::prepare(bundle, "init", req.stdin, req.tty);
        let launch = match launch {
            Ok(l) => l,
            Err(e) => return Err((e, rootfs)),
        };
        let reaper = self.reaper.clone();
        let bundle_owned = bundle.to_path_buf();
        let built = launch
            .run(move |stdio, console| {
                let b = builder(id, oci_root, stdio, console)?;
                let guard = reaper.spawn_guard();
                let container = b
                    .as_init(&bundle_owned)
                    .with_systemd(false)
                    .with_detach(true)
                    .build()
                    .map_err(|e| AgentError::runtime("create container", e))?;
                let pid = container
                    .pid()
                    .ok_or_else(|| AgentError::runtime("create container", "no init pid"))?;
                Ok((pid, guard.register(pid)))
            })
            .await;
        let (pid, exit_rx, io) = match built {
            Ok(b) => b,
            Err(e) => return Err((e, rootfs)),
        };

        let cgroup = Cgroup::new(&cgroup_path);
        let main = spawn_monitor(pid, io, exit_rx, Some(cgroup.clone()));
        Ok(Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            rootfs,
            cgroup,
            process_spec: spec.process().clone().unwrap_or_default(),
            created_at: SystemTime::now(),
            started_at: Mutex::new(None),
            main,
            execs: Mutex::new(HashMap::new()),
            volumes: Mutex::new(Volumes::default()),
            in_pod_pid_namespace: pid_ns.pod,
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        }))
    }

    /// Undoes a create that failed part-way: libcontainer state, cgroup,
    /// rootfs mount and bundle.
    async fn remove_leftovers(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &RootfsMount,
        spec: &oci_spec::runtime::Spec,
    ) {
        let oci_dir = Self::oci_root(&self.config).join(id);
        let cgroup_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let result = tokio::task::spawn_blocking(move || {
            if let Ok(mut c) = OciContainer::load(oci_dir.clone()) {
                if let Err(e) = c.delete(true) {
                    tracing::warn!(%e, "cleaning up libcontainer state");
                }
            }
            let _ = std::fs::remove_dir_all(&oci_dir);
            if let Some(path) = cgroup_path {
                remove_cgroup_dirs(&path);
            }
        })
        .await;
        if result.is_err() {
            tracing::warn!(id, "cleanup task failed");
        }
        if let Err(e) = rootfs.unmount() {
            tracing::warn!(%e, "unmounting rootfs of failed container");
        }
        let _ = std::fs::remove_dir_all(bundle);
    }

    /// The PID namespace a new container joins, if not a new one of its
    /// own; a container joining the pod's counts as one more user of it.
    async fn join_pid_namespace(&self, wanted: &PidNamespace) -> Result<JoinedPidNamespace> {
        match wanted {
            PidNamespace::Container => Ok(JoinedPidNamespace::default()),
            PidNamespace::Pod => self.join_pod_pid_namespace().await,
            PidNamespace::Target(target) => {
                let container = self.get(target).map_err(|_| {
                    AgentError::InvalidArgument(format!(
                        "the target container {target:?} of the PID namespace does not exist"
                    ))
                })?;
                if container.state() == State::Exited {
                    return Err(AgentError::FailedPrecondition(format!(
                        "the target container {target:?} of the PID namespace has exited"
                    )));
                }
                if container.in_pod_pid_namespace {
                    // The same namespace, and one more user to keep it.
                    return self.join_pod_pid_namespace().await;
                }
                Ok(JoinedPidNamespace {
                    path: Some(podns::ns_path(container.main.pid)),
                    pod: false,
                })
            }
        }
    }

    async fn join_pod_pid_namespace(&self) -> Result<JoinedPidNamespace> {
        let reaper = self.reaper.clone();
        let pod_pid = self.pod_pid.clone();
        // Spawning waits for the reaper's gate, which a build may hold.
        let path = tokio::task::spawn_blocking(move || lock(&pod_pid).acquire(&reaper))
            .await
            .map_err(|e| AgentError::runtime("start the pod's PID namespace", e))??;
        Ok(JoinedPidNamespace {
            path: Some(path),
            pod: true,
        })
    }

    fn leave_pid_namespace(&self, joined: &JoinedPidNamespace) {
        if joined.pod {
            lock(&self.pod_pid).release();
        }
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let container = self.get(id)?;
        match container.state() {
            State::Created => {}
            State::Running => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is already running"
                )))
            }
            State::Exited => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} has exited"
                )))
            }
        }
        let oci_dir = Self::oci_root(&self.config).join(id);
        tokio::task::spawn_blocking(move || {
            OciContainer::load(oci_dir)
                .and_then(|mut c| c.start())
                .map_err(|e| AgentError::runtime("start container", e))
        })
        .await
        .map_err(|e| AgentError::runtime("start container", e))??;
        *lock(&container.started_at) = Some(SystemTime::now());
        tracing::info!(id, "container started");
        Ok(())
    }

    pub async fn exec(&self, req: ExecRequest) -> Result<Arc<Process>> {
        validate_id("exec id", &req.exec_id)?;
        let container = self.get(&req.container_id)?;
        if container.state() != State::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.container_id
            )));
        }
        let mut process = spec::parse_process(&req.process_json)?;
        spec::prepare_exec_process(
            &mut process,
            &container.process_spec,
            req.tty,
            self.config.rlimit_ceiling,
        )?;
        let executor = container.seccomp.clone().map(|seccomp| SeccompExecutor {
            temporary: exec_seccomp::grant_for_filter(&mut process),
            seccomp,
        });
        spec::check_cwd(process.cwd(), &[], container.rootfs.path())?;
        {
            let execs = lock(&container.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(AgentError::ExecExists {
                    container_id: req.container_id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
        }
        let process_file = container.bundle.join(format!("exec-{}.json", req.exec_id));
        let json =
            serde_json::to_vec(&process).map_err(|e| AgentError::runtime("encode process", e))?;
        std::fs::write(&process_file, json).map_err(|e| AgentError::io("write process.json", e))?;

        let oci_root = Self::oci_root(&self.config);
        let id = req.container_id.clone();
        let launch = Launch::prepare(&container.bundle, &req.exec_id, req.stdin, req.tty)?;
        let reaper = self.reaper.clone();
        let file = process_file.clone();
        let built = launch
            .run(move |stdio, console| {
                let mut b = builder(id, oci_root, stdio, console)?;
                if let Some(executor) = executor {
                    b = b.with_executor(executor);
                }
                let guard = reaper.spawn_guard();
                let pid = b
                    .as_tenant()
                    .with_process(Some(&file))
                    .with_detach(true)
                    .build()
                    .map_err(|e| AgentError::runtime("exec in container", e))?;
                Ok((pid, guard.register(pid)))
            })
            .await;
        let _ = std::fs::remove_file(&process_file);
        let (pid, exit_rx, io) = built?;
        let process = spawn_monitor(pid, io, exit_rx, None);
        lock(&container.execs).insert(req.exec_id.clone(), process.clone());
        tracing::info!(id = %req.container_id, exec_id = %req.exec_id, pid = pid.as_raw(), "exec started");
        Ok(process)
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let container = self.get(id)?;
        let signal = Signal::try_from(signal)
            .map_err(|_| AgentError::InvalidArgument(format!("{signal} is not a signal")))?;
        if all && exec_id.is_empty() {
            let oci_dir = Self::oci_root(&self.config).join(id);
            return tokio::task::spawn_blocking(move || {
                OciContainer::load(oci_dir)
                    .and_then(|mut c| c.kill(signal, true))
                    .map_err(|e| AgentError::runtime("signal container", e))
            })
            .await
            .map_err(|e| AgentError::runtime("signal container", e))?;
        }
        let process = container.process(exec_id)?;
        let reaper = self.reaper.clone();
        tokio::task::spawn_blocking(move || {
            let pid = process.pid;
            signal::deliver(pid, signal, move |send: &mut dyn FnMut()| {
                // While the gate is held the pid cannot be reaped and reused.
                let _guard = reaper.spawn_guard();
                let alive = process.exit().is_none();
                if alive {
                    send();
                }
                alive
            })
            .map_err(|e| AgentError::sys("kill", e))
        })
        .await
        .map_err(|e| AgentError::runtime("signal", e))?
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let container = self.get(id)?;
        if !lock(&self.busy).insert(id.to_string()) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is being created or deleted"
            )));
        }
        let _reservation = Reservation {
            manager: self,
            id: id.to_string(),
        };
        match container.state() {
            State::Exited => {}
            State::Running if !force => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is running; stop it first or delete with force"
                )))
            }
            State::Created | State::Running => {
                self.signal(id, "", libc::SIGKILL, true).await?;
                if tokio::time::timeout(KILL_TIMEOUT, container.main.wait())
                    .await
                    .is_err()
                {
                    return Err(AgentError::runtime(
                        "delete container",
                        "its processes did not die within 10 s of SIGKILL",
                    ));
                }
            }
        }
        let oci_dir = Self::oci_root(&self.config).join(id);
        tokio::task::spawn_blocking(move || {
            match OciContainer::load(oci_dir.clone()) {
                Ok(mut c) => c
                    .delete(true)
                    .map_err(|e| AgentError::runtime("delete container", e)),
                // Never fully created: nothing of libcontainer's to remove.
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&oci_dir);
                    Ok(())
                }
            }
        })
        .await
        .map_err(|e| AgentError::runtime("delete container", e))??;
        container.rootfs.unmount()?;
        lock(&container.volumes).unmount();
        std::fs::remove_dir_all(&container.bundle)
            .map_err(|e| AgentError::io("remove bundle", e))?;
        lock(&self.containers).remove(id);
        if container.in_pod_pid_namespace {
            lock(&self.pod_pid).release();
        }
        tracing::info!(id, "container deleted");
        Ok(())
    }

    pub fn update_resources(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let container = self.get(id)?;
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| AgentError::InvalidArgument(format!("malformed linux.resources: {e}")))?;
        if container.state() == State::Exited {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} has exited"
            )));
        }
        container.cgroup.update(&resources)
    }

    /// Kills every container: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let containers = self.list();
        for c in &containers {
            if c.state() != State::Exited {
                let _ = self.signal(&c.id, "", libc::SIGTERM, true).await;
            }
        }
        for c in &containers {
            if tokio::time::timeout(grace, c.main.wait()).await.is_err() {
                let _ = self.signal(&c.id, "", libc::SIGKILL, true).await;
            }
        }
        for c in &containers {
            if let Err(e) = self.delete(&c.id, true).await {
                tracing::warn!(id = %c.id, %e, "delete at shutdown");
            }
        }
    }
}

/// The PID namespace a container being created joins.
#[derive(Default)]
struct JoinedPidNamespace {
    path: Option<PathBuf>,
    /// The pod's: released when the container goes.
    pod: bool,
}

/// A libcontainer builder with the launch's stdio. Built on the blocking
/// thread that uses it: it is not `Send`.
fn builder(
    id: String,
    oci_root: PathBuf,
    stdio: Option<ChildStdio>,
    console: Option<PathBuf>,
) -> Result<ContainerBuilder> {
    let mut b = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(oci_root)
        .map_err(|e| AgentError::runtime("libcontainer", e))?
        .with_console_socket(console);
    if let Some(stdio) = stdio {
        b = b
            .with_stdin(stdio.stdin)
            .with_stdout(stdio.stdout)
            .with_stderr(stdio.stderr);
    }
    Ok(b)
}

/// The stdio plumbing of one launch, before and after libcontainer runs.
struct Launch {
    pipes: Option<(stdio::PipeSet, ChildStdio)>,
    console: Option<ConsoleSocket>,
    stdin: bool,
}

type Built = (Pid, ExitReceiver);

impl Launch {
    fn prepare(bundle: &Path, name: &str, stdin: bool, tty: bool) -> Result<Self> {
        if tty {
            // Not in the bundle: a unix socket path has at most 107 bytes,
            // and a bundle named by a 64-character id leaves no room.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let state_dir = bundle.parent().and_then(Path::parent).unwrap_or(bundle);
            let dir = state_dir.join("consoles");
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(name, n, "console socket");
            let console = ConsoleSocket::listen(&dir.join(format!("{n}.sock")))?;
            Ok(Launch {
                pipes: None,
                console: Some(console),
                stdin,
            })
        } else {
            Ok(Launch {
                pipes: Some(stdio::pipes(stdin)?),
                console: None,
                stdin,
            })
        }
    }

    /// Runs `build` on a blocking thread and wires the process's stdio.
    async fn run<F>(self, build: F) -> Result<(Pid, ExitReceiver, ProcessIo)>
    where
        F: FnOnce(Option<ChildStdio>, Option<PathBuf>) -> Result<Built> + Send + 'static,
    {
        let (agent_side, child_side) = match self.pipes {
            Some((a, c)) => (Some(a), Some(c)),
            None => (None, None),
        };
        let console_path = self.console.as_ref().map(|c| c.path().to_path_buf());
        let built = tokio::task::spawn_blocking(move || build(child_side, console_path))
            .await
            .map_err(|e| AgentError::runtime("launch", e))?;
        let (pid, exit_rx) = match built {
            Ok(b) => b,
            Err(e) => {
                if let Some(console) = self.console {
                    tokio::task::spawn_blocking(move || console.abandon())
                        .await
                        .ok();
                }
                return Err(e);
            }
        };
        let io = match (agent_side, self.console) {
            (Some(pipes), _) => ProcessIo::from_pipes(pipes)?,
            (None, Some(console)) => {
                let master = tokio::task::spawn_blocking(move || console.receive())
                    .await
                    .map_err(|e| AgentError::runtime("console", e))??;
                ProcessIo::from_pty(master, self.stdin)?
            }
            (None, None) => unreachable!("a launch has pipes or a console"),
        };
        Ok((pid, exit_rx, io))
    }
}

/// Wraps a started process and watches for its exit; a main process's exit
/// also records whether the OOM killer struck its cgroup.
fn spawn_monitor(
    pid: Pid,
    io: ProcessIo,
    exit_rx: ExitReceiver,
    cgroup: Option<Cgroup>,
) -> Arc<Process> {
    let (tx, rx) = watch::channel(None);
    let process = Arc::new(Process { pid, io, exit: rx });
    let watched = Arc::downgrade(&process);
    let oom_baseline = cgroup.as_ref().map_or(0, |c| c.oom_kills());
    tokio::spawn(async move {
        let exit = reaper::wait_exit(exit_rx).await;
        let Some(exit) = exit else { return };
        let oom_killed = cgroup
            .as_ref()
            .is_some_and(|c| c.oom_kills() > oom_baseline);
        let _ = tx.send(Some(ProcessExit {
            code: exit.code,
            signal: exit.signal,
            finished_at: exit.at,
            oom_killed,
        }));
        if let Some(process) = watched.upgrade() {
            process.io.finish_after_exit(OUTPUT_GRACE).await;
        }
    });
    process
}

/// Removes a cgroup's directories in every hierarchy (after a failed create,
/// when libcontainer left no state to delete it with).
fn remove_cgroup_dirs(path: &Path) {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join(rel)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            candidates.push(e.path().join(rel));
        }
    }
    for dir in candidates {
        if dir.is_dir() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
