//! Containers of pods: created from pulled images inside the pod's VM
//! through its agent, their records on disk, their CRI log files.
//!
//! The agent is the authority on a running container; the record is what
//! the daemon knows when the VM cannot be asked (after it died) and what a
//! restarted daemon starts from.

mod io;
mod record;
pub mod seccomp;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_cri::v1 as cri;
use podvisor_proto::{
    ContainerStatsRequest, ContainerStatsResponse, CreateContainerRequest, DeleteContainerRequest,
    PidNamespace, ProcessExit, Rootfs, SignalProcessRequest, StartContainerRequest,
    UpdateContainerResourcesRequest, WaitProcessRequest,
};
use tonic::Code;

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind};
pub use crate::ids::now_ns;
use crate::ids::random_id;
use crate::image::{ImageError, ImageService};
use crate::logs::{CriLog, LogPath, LogPathError};
use crate::policy::{admit_host_path, PolicyError};
use crate::sandbox::{Pod, SandboxError, SandboxManager, SandboxState};
use crate::volume::efs::{self, EfsError};
use crate::volume::host_path::HostPath;
use crate::volume::mode::{MountModeError, ReadOnly, VolumeMode};
use crate::volume::share::ShareError;
pub use io::{ExecOutput, EXEC_SYNC_STREAM_LIMIT};
pub use record::{ContainerRecord, ContainerState, ExitRecord, MountRecord};
use spec::{GuestMount, PidMode, SpecError, SpecInput};

/// How long StopContainer waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("image {0:?} is not on this node; pull it first (PullImage)")]
    ImageNotPulled(String),
    #[error("container id prefix {0:?} matches more than one container")]
    Ambiguous(String),
    #[error(
        "container {name:?} (attempt {attempt}) already exists in pod sandbox {sandbox} as {id}"
    )]
    AlreadyExists {
        name: String,
        attempt: u32,
        sandbox: String,
        id: String,
    },
    #[error("pod sandbox {id} is not ready{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    SandboxNotReady { id: String, reason: Option<String> },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("building the container spec: {0}")]
    Spec(#[from] SpecError),
    #[error("sharing a path with the pod VM: {0}")]
    Share(#[from] ShareError),
    #[error(transparent)]
    MountMode(#[from] MountModeError),
    #[error("NFS volume: {0}")]
    Volume(#[from] EfsError),
    #[error(transparent)]
    LogPath(#[from] LogPathError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{what}: {}", status.message())]
    Agent {
        what: &'static str,
        status: tonic::Status,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("container state: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

fn agent_err(what: &'static str) -> impl FnOnce(tonic::Status) -> ContainerError {
    move |status| ContainerError::Agent { what, status }
}

/// One container: its record and its open log file.
pub struct Container {
    record: Mutex<ContainerRecord>,
    log: tokio::sync::Mutex<Option<CriLog>>,
    /// Start, stop and remove of one container do not interleave.
    op: tokio::sync::Mutex<()>,
    /// The log pump and exit waiter, ended on removal.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Container {
    fn new(record: ContainerRecord) -> Arc<Container> {
        Arc::new(Container {
            record: Mutex::new(record),
            log: tokio::sync::Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ContainerRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self) -> ContainerRecord {
        self.lock().clone()
    }

    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    fn update(&self, change: impl FnOnce(&mut ContainerRecord)) -> std::io::Result<()> {
        let mut record = self.lock();
        change(&mut record);
        record.save()
    }

    /// Records how the main process ended, once, and tells subscribers.
    fn record_exit(&self, mut exit: ExitRecord, events: &EventBus) {
        let mut record = self.lock();
        if record.exit.is_some() {
            return;
        }
        // Guest and host clocks are synced at boot, but not to the tick.
        exit.finished_at_ns = exit.finished_at_ns.max(record.started_at_ns);
        record.state = ContainerState::Exited;
        record.exit = Some(exit);
        if let Err(e) = record.save() {
            tracing::warn!(id = %record.id, %e, "saving the container's exit");
        }
        let event = Event::now(&record.id, &record.sandbox_id, EventKind::Stopped);
        drop(record);
        events.publish(event);
    }
}

/// How a container ended whose pod VM is gone.
fn pod_gone_exit(sandbox_reason: Option<String>) -> ExitRecord {
    let why = sandbox_reason.unwrap_or_else(|| "the pod sandbox was stopped".into());
    ExitRecord {
        code: 255,
        finished_at_ns: now_ns(),
        reason: "Error".into(),
        message: format!("the pod VM is gone: {why}"),
    }
}

fn exit_record(exit: &ProcessExit) -> ExitRecord {
    let finished_at_ns = exit
        .finished_at
        .as_ref()
        .map_or_else(now_ns, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
    let (reason, message) = if exit.oom_killed {
        (
            "OOMKilled",
            "the container's memory limit was reached".to_string(),
        )
    } else if exit.exit_code == 0 {
        ("Completed", String::new())
    } else if exit.signal != 0 {
        ("Error", format!("killed by signal {}", exit.signal))
    } else {
        ("Error", String::new())
    };
    ExitRecord {
        code: exit.exit_code,
        finished_at_ns,
        reason: reason.into(),
        message,
    }
}

pub struct ContainerManager {
    config: Arc<Config>,
    sandboxes: Arc<SandboxManager>,
    images: ImageService,
    events: Arc<EventBus>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Names (sandbox, name, attempt) being created: claimed before the
    /// slow part, so a name is never taken twice while creations of
    /// different containers (a slow NFS mount, a large image) overlap.
    creating: Mutex<HashSet<NameKey>>,
}

type NameKey = (String, String, u32);

/// Releases a claimed name when its creation ends, however it ends.
struct NameClaim<'a> {
    claims: &'a Mutex<HashSet<NameKey>>,
    key: NameKey,
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl ContainerManager {
    pub fn new(
        config: Arc<Config>,
        sandboxes: Arc<SandboxManager>,
        images: ImageService,
        events: Arc<EventBus>,
    ) -> Arc<Self> {
        Arc::new(ContainerManager {
            config,
            sandboxes,
            images,
            events,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// By id or unique id prefix, as crictl allows.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        if id.is_empty() {
            return Err(ContainerError::InvalidArgument(
                "container id is empty".into(),
            ));
        }
        let map = self.map();
        if let Some(c) = map.get(id) {
            return Ok(c.clone());
        }
        let mut found = map.iter().filter(|(k, _)| k.starts_with(id));
        match (found.next(), found.next()) {
            (Some((_, c)), None) => Ok(c.clone()),
            (Some(_), Some(_)) => Err(ContainerError::Ambiguous(id.into())),
            (None, _) => Err(ContainerError::NotFound(id.into())),
        }
    }

    /// Every container, oldest first, with its state brought up to date.
    pub fn list(&self) -> Vec<ContainerRecord> {
        let mut all: Vec<_> = self.map().values().cloned().collect();
        all.sort_by_key(|c| c.lock().created_at_ns);
        all.iter().map(|c| self.refresh(c)).collect()
    }

    /// The id of a container that uses image `image_id`, if any.
    pub fn user_of_image(&self, image_id: &str) -> Option<String> {
        self.map()
            .values()
            .find(|c| c.lock().image_id == image_id)
            .map(|c| c.id())
    }

    /// A container whose pod VM is gone cannot be running: it is Exited,
    /// with the pod's reason.
    fn refresh(&self, container: &Container) -> ContainerRecord {
        let record = container.record();
        if record.state == ContainerState::Exited {
            return record;
        }
        let Ok(pod) = self.sandboxes.get(&record.sandbox_id) else {
            return record;
        };
        let sandbox = pod.record();
        if sandbox.state == SandboxState::Ready {
            return record;
        }
        container.record_exit(pod_gone_exit(sandbox.reason), &self.events);
        container.record()
    }

    pub fn status(&self, id: &str) -> Result<ContainerRecord> {
        Ok(self.refresh(&*self.get(id)?))
    }

    fn ready_pod(&self, sandbox_id: &str) -> Result<Arc<Pod>> {
        let pod = self.sandboxes.get(sandbox_id)?;
        let record = pod.record();
        if record.state != SandboxState::Ready {
            return Err(ContainerError::SandboxNotReady {
                id: record.id,
                reason: record.reason,
            });
        }
        Ok(pod)
    }

    /// Creates a container; `sandbox_config` is the pod's config as the
    /// request carries it (kubelet always sends it).
    pub async fn create(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<&cri::PodSandboxConfig>,
    ) -> Result<String> {
        let meta = config.metadata.clone().ok_or_else(|| {
            ContainerError::InvalidArgument("CreateContainer: config.metadata is missing".into())
        })?;
        if meta.name.is_empty() {
            return Err(ContainerError::InvalidArgument(
                "CreateContainer: config.metadata.name is empty".into(),
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(ContainerError::InvalidArgument(
                "CreateContainer: config.image.image is empty".into(),
            ));
        }
        let pod = self.ready_pod(sandbox_id)?;
        let sandbox = pod.record();
        // Judged before anything is made: the daemon writes it as root.
        let log_path = match config.log_path.as_str() {
            "" => None,
            path => {
                let path = LogPath::new(&sandbox.log_directory, path)?;
                path.check_existing()?;
                Some(path)
            }
        };
        let _claim = self.claim_name(&sandbox.id, &meta.name, meta.attempt)?;
        let image = self.images.get(&image_name).map_err(|e| match e {
            ImageError::NotFound(_) => ContainerError::ImageNotPulled(image_name.clone()),
            e => e.into(),
        })?;
        let layers = self.images.layers_for(&image.id)?;

        let id = random_id()?;
        let share = pod.share();
        let result = self
            .create_in_vm(
                &pod,
                &id,
                (&config, sandbox_config),
                &image,
                &layers,
                &share,
            )
            .await;
        let (spec, mounts) = match result {
            Ok(v) => v,
            Err(e) => {
                share.release_container(&id);
                return Err(e);
            }
        };
        let log_path = log_path
            .map(|p| p.full().to_string_lossy().into_owned())
            .unwrap_or_default();
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: meta.name,
            attempt: meta.attempt,
            image: image_name,
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            mounts,
            log_path,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            process: spec["process"].clone(),
            stop_signal: signal_number(&image.config.stop_signal).unwrap_or(libc::SIGTERM),
            state: ContainerState::Created,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            exit: None,
            log_offset: 0,
            file: sandbox.dir.join("containers").join(format!("{id}.json")),
        };
        if let Err(e) = record.save() {
            self.delete_in_vm(&pod, &id).await;
            share.release_container(&id);
            return Err(e.into());
        }
        self.map().insert(id.clone(), Container::new(record));
        tracing::info!(%id, sandbox = %sandbox.id, image = %image.display_name(), "container created");
        self.events
            .publish(Event::now(&id, &sandbox.id, EventKind::Created));
        Ok(id)
    }

    /// Shares the layers and volumes and creates the container in the
    /// guest; returns the spec and the mounts as CRI reports them.
    async fn create_in_vm(
        &self,
        pod: &Pod,
        id: &str,
        (config, sandbox_config): (&cri::ContainerConfig, Option<&cri::PodSandboxConfig>),
        image: &crate::image::Image,
        layers: &[PathBuf],
        share: &crate::volume::share::PodShare,
    ) -> Result<(serde_json::Value, Vec<MountRecord>)> {
        // Every mount is judged before anything is shared.
        let modes = config
            .mounts
            .iter()
            .enumerate()
            .map(|(index, m)| VolumeMode::of(index, m))
            .collect::<Result<Vec<_>, _>>()?;
        // Each host path is opened once, judged where it really is, and
        // later mounted from that open file.
        let rules = self.config.policy.host_path_rules(
            &pod.record().metadata.uid,
            [&self.config.state_dir, &self.config.run_dir],
        );
        let mut host_paths = Vec::with_capacity(config.mounts.len());
        for (index, m) in config.mounts.iter().enumerate() {
            if m.host_path.is_empty() || m.container_path.is_empty() {
                return Err(ContainerError::InvalidArgument(format!(
                    "mount {index}: host_path and container_path are required"
                )));
            }
            let host = HostPath::open(Path::new(&m.host_path))?;
            admit_host_path(&rules, sandbox_config, config, index, host.resolved())?;
            host_paths.push(host);
        }
        let mut lower_dirs = Vec::with_capacity(layers.len());
        for layer in layers {
            lower_dirs.push(share.expose_layer(layer)?.to_string_lossy().into_owned());
        }
        let mut guest_mounts = Vec::new();
        let mut records = Vec::new();
        // EFS/NFS volumes are mounted by the agent, the rest shared.
        let planner = efs::Planner::new(&self.config.volumes.efs);
        let mut volumes = Vec::new();
        let mounts = config.mounts.iter().zip(modes).zip(&host_paths);
        for (index, ((m, mode), host)) in mounts.enumerate() {
            // The guest's bind is read-only where the guest must enforce
            // it: an NFS volume the agent mounts (nothing is below it), and
            // a recursively read-only share (the guest's submounts inherit
            // it). A share read-only at the top only is enforced by the
            // host (virtiofsd answers EROFS), so that the host's submounts
            // under it stay writable, as they are under a bind with `ro`.
            let (guest_path, guest_readonly) =
                match planner.plan(id, index, host.resolved(), m.readonly).await? {
                    Some(volume) => {
                        volumes.push(volume.mount);
                        (volume.guest_path, m.readonly)
                    }
                    None => (
                        share.expose_host_path(id, index, host, mode)?,
                        mode.readonly == ReadOnly::Recursive,
                    ),
                };
            guest_mounts.push(GuestMount {
                guest_path,
                container_path: m.container_path.clone(),
                readonly: guest_readonly,
                propagation: m.propagation,
            });
            records.push(MountRecord {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: m.propagation,
            });
        }
        let spec = spec::build(&SpecInput {
            config,
            image_name: image.display_name(),
            image: &image.config,
            layers,
            hostname: &pod.record().hostname,
            mounts: &guest_mounts,
            limits: &self.config.policy.limits,
            sandbox: sandbox_config,
        })?;
        let (pid_namespace, pid_namespace_target) = match spec::pid_mode(config, sandbox_config)? {
            PidMode::Container => (PidNamespace::Container, String::new()),
            PidMode::Pod => (PidNamespace::Pod, String::new()),
            PidMode::Target(target) => (PidNamespace::Target, self.pid_target(&pod.id(), &target)?),
        };
        let request = CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec_json: serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
            rootfs: Some(Rootfs {
                lower_dirs,
                writable_in_place: false,
            }),
            stdin: config.stdin,
            tty: config.tty,
            pid_namespace: pid_namespace as i32,
            pid_namespace_target,
            volume_timeout_ms: if volumes.is_empty() {
                0
            } else {
                planner.timeout_ms()
            },
            volumes,
        };
        let mut agent = pod.agent().await?;
        if !request.volumes.is_empty() {
            let protocol = agent
                .health(podvisor_proto::HealthRequest {})
                .await
                .map_err(agent_err("asking the pod's agent for its protocol"))?
                .into_inner()
                .protocol_version;
            if protocol < efs::MIN_AGENT_PROTOCOL {
                return Err(EfsError::AgentTooOld(protocol).into());
            }
        }
        agent
            .create_container(request)
            .await
            .map_err(agent_err("creating the container in the pod VM"))?;
        Ok((spec, records))
    }

    /// The id of the container whose PID namespace a TARGET container
    /// joins: created earlier in the same pod.
    fn pid_target(&self, sandbox_id: &str, target: &str) -> Result<String> {
        let not_found = || {
            ContainerError::NotFound(format!(
                "{target} (namespace_options.target_id) in pod sandbox {sandbox_id}"
            ))
        };
        let container = self.get(target).map_err(|_| not_found())?;
        let record = container.record();
        if record.sandbox_id != sandbox_id {
            return Err(not_found());
        }
        Ok(record.id)
    }

    async fn delete_in_vm(&self, pod: &Pod, id: &str) {
        if let Ok(mut agent) = pod.agent().await {
            let request = DeleteContainerRequest {
                container_id: id.to_string(),
                force: true,
            };
            if let Err(s) = agent.delete_container(request).await {
                if s.code() != Code::NotFound {
                    tracing::warn!(%id, error = %s.message(), "deleting the container in the pod VM");
                }
            }
        }
    }

    /// Claims a container name in a pod, or says who has it.
    fn claim_name(&self, sandbox: &str, name: &str, attempt: u32) -> Result<NameClaim<'_>> {
        let key = (sandbox.to_string(), name.to_string(), attempt);
        let mut claims = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.map().values().find_map(|c| {
            let r = c.lock();
            (r.sandbox_id == sandbox && r.name == name && r.attempt == attempt)
                .then(|| r.id.clone())
        });
        let taken_by = existing.or_else(|| {
            claims
                .contains(&key)
                .then(|| "(a container still being created)".to_string())
        });
        if let Some(id) = taken_by {
            return Err(ContainerError::AlreadyExists {
                name: name.to_string(),
                attempt,
                sandbox: sandbox.to_string(),
                id,
            });
        }
        claims.insert(key.clone());
        Ok(NameClaim {
            claims: &self.creating,
            key,
        })
    }

    pub async fn start(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = self.get(id)?;
        let _op = container.op.lock().await;
        let record = self.refresh(&container);
        if record.state != ContainerState::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}, not Created: only a created container can be started",
                record.id, record.state
            )));
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        if !record.log_path.is_empty() {
            let path =
                LogPath::from_full(&pod.record().log_directory, Path::new(&record.log_path))?;
            *container.log.lock().await = Some(CriLog::open(path)?);
        }
        let mut agent = pod.agent().await?;
        agent
            .start_container(StartContainerRequest {
                container_id: record.id.clone(),
            })
            .await
            .map_err(agent_err("starting the container in the pod VM"))?;
        container.update(|r| {
            r.state = ContainerState::Running;
            r.started_at_ns = now_ns();
        })?;
        self.watch(&container, &pod);
        tracing::info!(id = %record.id, "container started");
        self.events.publish(Event::now(
            &record.id,
            &record.sandbox_id,
            EventKind::Started,
        ));
        Ok(())
    }

    /// Starts the log pump and the exit waiter of a running container.
    fn watch(self: &Arc<Self>, container: &Arc<Container>, pod: &Arc<Pod>) {
        let pump = tokio::spawn(io::pump_logs(container.clone(), pod.clone()));
        let waiter = tokio::spawn(wait_exit(
            container.clone(),
            pod.clone(),
            self.events.clone(),
        ));
        container
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([pump, waiter]);
    }

    /// Signals the main process, waits up to `timeout`, then kills every
    /// process of the container. An
    /// unknown or already exited container is not an error: kubelet
    /// retries stops and expects them to be idempotent.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let container = match self.get(id) {
            Ok(c) => c,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = container.op.lock().await;
        self.stop_locked(&container, timeout).await
    }

    async fn stop_locked(&self, container: &Container, timeout: Duration) -> Result<()> {
        let record = self.refresh(container);
        if record.state == ContainerState::Exited {
            return Ok(());
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        let mut agent = pod.agent().await?;
        if record.state == ContainerState::Created {
            // Never started: nothing to signal; it ends when removed.
            container.record_exit(
                ExitRecord {
                    code: 0,
                    finished_at_ns: now_ns(),
                    reason: "Error".into(),
                    message: "stopped before it was started".into(),
                },
                &self.events,
            );
            return Ok(());
        }
        let wait = |agent: &mut crate::agent_client::Agent| {
            let mut agent = agent.clone();
            let id = record.id.clone();
            async move {
                agent
                    .wait_process(WaitProcessRequest {
                        container_id: id,
                        exec_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner())
            }
        };
        if !timeout.is_zero() {
            let signal = SignalProcessRequest {
                container_id: record.id.clone(),
                exec_id: String::new(),
                signal: record.stop_signal,
                all: false,
            };
            agent
                .signal_process(signal)
                .await
                .map_err(agent_err("signalling the container"))?;
            if let Ok(Ok(exit)) = tokio::time::timeout(timeout, wait(&mut agent)).await {
                container.record_exit(exit_record(&exit), &self.events);
                return Ok(());
            }
        }
        let kill = SignalProcessRequest {
            container_id: record.id.clone(),
            exec_id: String::new(),
            signal: libc::SIGKILL,
            all: true,
        };
        agent
            .signal_process(kill)
            .await
            .map_err(agent_err("killing the container"))?;
        match tokio::time::timeout(KILL_WAIT, wait(&mut agent)).await {
            Ok(Ok(exit)) => {
                container.record_exit(exit_record(&exit), &self.events);
                Ok(())
            }
            Ok(Err(s)) => Err(agent_err("waiting for the container to end")(s)),
            Err(_) => Err(ContainerError::Timeout(format!(
                "container {} did not end within {KILL_WAIT:?} of SIGKILL",
                record.id
            ))),
        }
    }

    /// Removes the container (killing it if it runs) and everything it had.
    /// An unknown id is not an error: CRI's RemoveContainer is idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let container = match self.get(id) {
            Ok(c) => c,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = container.op.lock().await;
        let record = self.refresh(&container);
        if let Ok(pod) = self.sandboxes.get(&record.sandbox_id) {
            if pod.record().state == SandboxState::Ready {
                self.delete_in_vm(&pod, &record.id).await;
            }
            pod.share().release_container(&record.id);
        }
        for task in container
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        if let Some(mut log) = container.log.lock().await.take() {
            let _ = log.finish(SystemTime::now());
        }
        match std::fs::remove_file(&record.file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.map().remove(&record.id);
        tracing::info!(id = %record.id, "container removed");
        self.events.publish(Event::now(
            &record.id,
            &record.sandbox_id,
            EventKind::Deleted,
        ));
        Ok(())
    }

    /// StopPodSandbox: every container of the pod gets `grace`, at once.
    pub async fn stop_all_in(&self, sandbox_id: &str, grace: Duration) {
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|c| c.lock().sandbox_id == sandbox_id)
            .map(|c| c.id())
            .collect();
        let stops = ids.iter().map(|id| self.stop(id, grace));
        for (id, result) in ids.iter().zip(futures_util::future::join_all(stops).await) {
            if let Err(e) = result {
                tracing::warn!(%id, %e, "stopping a container of a stopping pod");
            }
        }
    }

    /// RemovePodSandbox: the pod's containers go first.
    pub async fn remove_all_in(&self, sandbox_id: &str) -> Result<()> {
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|c| c.lock().sandbox_id == sandbox_id)
            .map(|c| c.id())
            .collect();
        for id in ids {
            self.remove(&id).await?;
        }
        Ok(())
    }

    /// The pod's containers as recorded, oldest first, without asking
    /// whether the pod still runs (for event messages, which are built
    /// while state changes).
    pub fn records_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        let mut records: Vec<ContainerRecord> = self
            .map()
            .values()
            .map(|c| c.record())
            .filter(|r| r.sandbox_id == sandbox_id)
            .collect();
        records.sort_by_key(|r| r.created_at_ns);
        records
    }

    pub fn of_sandbox(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.list()
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
            .collect()
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(ContainerError::InvalidArgument(
                "ExecSync: cmd is empty".into(),
            ));
        }
        let container = self.get(id)?;
        let record = self.refresh(&container);
        if record.state != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                record.id, record.state
            )));
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        let agent = pod.agent().await?;
        io::exec_sync(agent, &record, cmd, timeout).await
    }

    /// A running container's record and its pod's agent: what the
    /// streaming calls (exec, attach) start from.
    pub async fn running_with_agent(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, crate::agent_client::Agent)> {
        let container = self.get(id)?;
        let record = self.refresh(&container);
        if record.state != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                record.id, record.state
            )));
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        let agent = pod.agent().await?;
        Ok((record, agent))
    }

    pub async fn stats(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, Option<ContainerStatsResponse>)> {
        let container = self.get(id)?;
        let record = self.refresh(&container);
        if record.state != ContainerState::Running {
            return Ok((record, None));
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        let mut agent = pod.agent().await?;
        let after = pod.agent_timeouts().stats();
        let asked = agent.container_stats(ContainerStatsRequest {
            container_id: record.id.clone(),
        });
        // A pod whose agent is slow is listed without usage rather than
        // holding up the node's other pods.
        let Ok(answer) = tokio::time::timeout(after, asked).await else {
            tracing::warn!(id = %record.id, ?after, "the pod's agent did not answer a stats call in time");
            return Ok((record, None));
        };
        let stats = answer
            .map_err(agent_err("reading the container's stats"))?
            .into_inner();
        Ok((record, Some(stats)))
    }

    pub async fn update_resources(
        &self,
        id: &str,
        resources: &cri::LinuxContainerResources,
    ) -> Result<()> {
        let container = self.get(id)?;
        let record = self.refresh(&container);
        if record.state == ContainerState::Exited {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} has exited",
                record.id
            )));
        }
        let pod = self.ready_pod(&record.sandbox_id)?;
        let mut agent = pod.agent().await?;
        let json = spec::update_resources(resources);
        agent
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: record.id.clone(),
                oci_resources_json: serde_json::to_vec(&json).map_err(std::io::Error::other)?,
            })
            .await
            .map_err(agent_err("updating the container's resources"))?;
        Ok(())
    }

    /// kubelet rotated the log file away: write a new one.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let container = self.get(id)?;
        let record = self.refresh(&container);
        if record.state != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        if let Some(log) = container.log.lock().await.as_mut() {
            log.reopen()?;
        }
        Ok(())
    }

    /// Loads the records of every known sandbox and resumes watching the
    /// containers that still run.
    pub async fn recover(self: &Arc<Self>) {
        for pod in self.sandboxes.list() {
            let sandbox = pod.record();
            let dir = sandbox.dir.join("containers");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let record = match ContainerRecord::load(&path) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), %e, "skipping an unreadable container record");
                        continue;
                    }
                };
                let container = Container::new(record.clone());
                self.map().insert(record.id.clone(), container.clone());
                let record = self.refresh(&container);
                if record.state == ContainerState::Running {
                    if !record.log_path.is_empty() {
                        let path =
                            LogPath::from_full(&sandbox.log_directory, Path::new(&record.log_path));
                        match path.and_then(CriLog::open) {
                            Ok(log) => *container.log.lock().await = Some(log),
                            Err(e) => tracing::warn!(id = %record.id, %e, "reopening the log"),
                        }
                    }
                    self.watch(&container, &pod);
                    tracing::info!(id = %record.id, "resumed a running container");
                }
            }
        }
    }
}

/// Waits for the main process to end and records how; rides out a lost
/// connection to the agent until the pod itself is gone, and then records
/// the container as ended with its pod.
async fn wait_exit(container: Arc<Container>, pod: Arc<Pod>, events: Arc<EventBus>) {
    let id = container.id();
    loop {
        let agent = pod.agent().await;
        let result = match agent {
            Ok(mut agent) => agent
                .wait_process(WaitProcessRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(exit) => {
                container.record_exit(exit_record(&exit), &events);
                tracing::info!(%id, code = exit.exit_code, "container exited");
                return;
            }
            Err(e) => {
                let sandbox = pod.record();
                if sandbox.state != SandboxState::Ready {
                    container.record_exit(pod_gone_exit(sandbox.reason), &events);
                    return;
                }
                tracing::debug!(%id, %e, "waiting for the container; retrying");
                pod.forget_agent().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `SIGTERM`, `TERM` or `15`, as an image's STOPSIGNAL may say.
fn signal_number(name: &str) -> Option<i32> {
    if name.is_empty() {
        return None;
    }
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_in_every_spelling() {
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("int"), Some(libc::SIGINT));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number(""), None);
        assert_eq!(signal_number("SIGNOPE"), None);
    }

    #[test]
    fn exit_reasons_follow_the_cri() {
        let exit = |code, signal, oom| ProcessExit {
            exit_code: code,
            signal,
            finished_at: None,
            oom_killed: oom,
        };
        assert_eq!(exit_record(&exit(0, 0, false)).reason, "Completed");
        assert_eq!(exit_record(&exit(3, 0, false)).reason, "Error");
        assert_eq!(exit_record(&exit(137, 9, true)).reason, "OOMKilled");
        assert!(exit_record(&exit(137, 9, false))
            .message
            .contains("signal 9"));
    }
}
