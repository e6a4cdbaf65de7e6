//! Pod sandboxes: one VM per pod, its virtio-fs share, its record on disk.
//!
//! A sandbox is Ready from a successful RunPodSandbox until it is stopped or
//! its VM dies; then NotReady until removed. Records survive the daemon: on
//! start it re-attaches to the VMs still running and marks the rest
//! NotReady.

mod record;
pub mod sysctl;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use podvisor_proto::{DnsConfig, SetupSandboxRequest, SharedMount};

use crate::agent_client::{self, Agent, AgentTimeouts};
use crate::config::Config;
use crate::events::{Event, EventBus, EventKind};
use crate::hypervisor::cgroup::{CgroupError, VmCgroup};
use crate::hypervisor::{self, Hypervisor, Supervised, Vm, VmConfig, VmError};
use crate::ids::{now_ns, random_id};
use crate::network::{hostport, HostPort, NetworkError, NetworkManager};
use crate::volume::share::{self, PodShare};
use crate::volume::virtiofsd::Virtiofsd;
pub use record::{PodMetadata, SandboxRecord, SandboxState};

/// The share's tag, and where the agent mounts it in the guest.
pub const SHARE_TAG: &str = "podvisor";
pub const GUEST_SHARE_DIR: &str = "/run/podvisor/share";
/// The CFS period of a pod VM's CPU quota.
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox id prefix {0:?} matches more than one sandbox")]
    Ambiguous(String),
    #[error("pod sandbox {name:?} in namespace {namespace:?} (uid {uid:?}, attempt {attempt}) already exists as {id}")]
    AlreadyExists {
        name: String,
        namespace: String,
        uid: String,
        attempt: u32,
        id: String,
    },
    #[error("host port {port} is already held by pod {holder:?} (sandbox {holder_id}); it is free again once that pod is stopped")]
    HostPortTaken {
        port: HostPort,
        /// `namespace/name` of the pod holding it.
        holder: String,
        holder_id: String,
    },
    #[error("starting the pod VM: {0}")]
    Vm(#[from] VmError),
    #[error("setting up the pod inside its VM: {0}")]
    Agent(String),
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    #[error("limiting the pod VM's CPU: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("sharing files with the pod VM: {0}")]
    Share(#[from] share::ShareError),
    #[error("pod sandbox state: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// What RunPodSandbox asks for, already validated by the CRI layer.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub metadata: PodMetadata,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// CPU time the VM may use per 100 ms, in µs (a fractional vCPU).
    pub cpu_quota_us: Option<u64>,
    /// The RuntimeClass handler, already checked by the CRI layer.
    pub runtime_handler: String,
    /// Written in the VM at setup (see `sysctl`).
    pub sysctls: BTreeMap<String, String>,
    /// Validated, pairwise distinct host ports (mode vm).
    pub host_ports: Vec<HostPort>,
}

/// The live parts of a pod; absent once stopped.
#[derive(Default)]
struct Live {
    vm: Option<Vm>,
    fs: Option<Virtiofsd>,
    agent: Option<Agent>,
}

pub struct Pod {
    record: Mutex<SandboxRecord>,
    live: tokio::sync::Mutex<Live>,
    /// Set while a stop is under way, so the VM's exit is not a failure.
    stopping: AtomicBool,
    agent_timeouts: AgentTimeouts,
}

impl Pod {
    pub fn record(&self) -> SandboxRecord {
        self.lock_record().clone()
    }

    fn lock_record(&self) -> MutexGuard<'_, SandboxRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> String {
        self.lock_record().id.clone()
    }

    fn update(&self, change: impl FnOnce(&mut SandboxRecord)) -> std::io::Result<()> {
        let mut record = self.lock_record();
        change(&mut record);
        record.save()
    }

    /// The pod's virtio-fs share on the host.
    pub fn share(&self) -> PodShare {
        let record = self.lock_record();
        let share = PodShare::new(record.share_dir(), GUEST_SHARE_DIR);
        match record.virtiofsd_pid {
            // virtiofsd's sandbox makes the served directory its root.
            Some(pid) => share.served_by(pid, "/"),
            None => share,
        }
    }

    /// Drops the agent connection, so the next call dials again (after a
    /// broken stream).
    pub async fn forget_agent(&self) {
        self.live.lock().await.agent = None;
    }

    /// A client for the pod's agent. The connection is made by the first
    /// call (after a daemon restart the old one is gone), not here: nothing
    /// waits on the guest under the pod's lock.
    pub async fn agent(&self) -> Result<Agent> {
        let mut live = self.live.lock().await;
        if let Some(agent) = &live.agent {
            return Ok(agent.clone());
        }
        let dialer = self.lock_record().dialer.clone();
        let dialer =
            dialer.ok_or_else(|| SandboxError::Agent("the pod VM is not running".into()))?;
        let agent = agent_client::connect(&dialer, self.agent_timeouts);
        live.agent = Some(agent.clone());
        Ok(agent)
    }

    /// How long the runtime waits on this pod's agent.
    pub fn agent_timeouts(&self) -> AgentTimeouts {
        self.agent_timeouts
    }
}

pub struct SandboxManager {
    config: Arc<Config>,
    hypervisor: Arc<dyn Hypervisor>,
    network: Arc<NetworkManager>,
    events: Arc<EventBus>,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
}

impl SandboxManager {
    pub fn new(
        config: Arc<Config>,
        hypervisor: Arc<dyn Hypervisor>,
        network: Arc<NetworkManager>,
        events: Arc<EventBus>,
    ) -> Self {
        SandboxManager {
            config,
            hypervisor,
            network,
            events,
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn pods(&self) -> MutexGuard<'_, HashMap<String, Arc<Pod>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sandboxes_dir(&self) -> PathBuf {
        self.config.state_dir.join("sandboxes")
    }

    /// Finds a sandbox by id or unique id prefix, as crictl allows.
    pub fn get(&self, id: &str) -> Result<Arc<Pod>> {
        if id.is_empty() {
            return Err(SandboxError::InvalidArgument(
                "pod sandbox id is empty".into(),
            ));
        }
        let pods = self.pods();
        if let Some(pod) = pods.get(id) {
            return Ok(pod.clone());
        }
        let mut matches = pods.iter().filter(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, pod)), None) => Ok(pod.clone()),
            (Some(_), Some(_)) => Err(SandboxError::Ambiguous(id.to_string())),
            (None, _) => Err(SandboxError::NotFound(id.to_string())),
        }
    }

    /// The pod's address, while it has one.
    pub fn ip(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.network.lease(id).map(|n| n.ip)
    }

    pub fn network(&self) -> &NetworkManager {
        &self.network
    }

    pub fn list(&self) -> Vec<Arc<Pod>> {
        let mut pods: Vec<_> = self.pods().values().cloned().collect();
        pods.sort_by_key(|p| p.lock_record().created_at_ns);
        pods
    }

    /// Boots the pod's VM and sets it up. On failure nothing is left.
    pub async fn run(&self, req: RunRequest) -> Result<String> {
        let m = &req.metadata;
        let id = random_id()?;
        // Sockets live under a short run directory: unix socket paths are
        // limited to 107 bytes.
        let record = SandboxRecord {
            id: id.clone(),
            metadata: req.metadata.clone(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            created_at_ns: now_ns(),
            state: SandboxState::NotReady,
            reason: None,
            backend: self.hypervisor.name().to_string(),
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            cpu_quota_us: req.cpu_quota_us,
            vm_pid: None,
            virtiofsd_pid: None,
            dialer: None,
            dir: self.sandboxes_dir().join(&id),
            run_dir: self.config.run_dir.join("vms").join(&id[..16]),
            log_directory: req.log_directory.clone(),
            hostname: req.hostname.clone(),
            runtime_handler: req.runtime_handler.clone(),
            host_ports: req.host_ports.clone(),
        };
        let pod = Arc::new(Pod {
            record: Mutex::new(record.clone()),
            live: tokio::sync::Mutex::new(Live::default()),
            stopping: AtomicBool::new(false),
            agent_timeouts: self.config.agent,
        });
        {
            // Checked and claimed under one lock: two concurrent requests
            // for the same pod cannot both boot a VM.
            let mut pods = self.pods();
            if let Some(existing) = pods.values().find(|p| p.lock_record().metadata == *m) {
                return Err(SandboxError::AlreadyExists {
                    name: m.name.clone(),
                    namespace: m.namespace.clone(),
                    uid: m.uid.clone(),
                    attempt: m.attempt,
                    id: existing.id(),
                });
            }
            // Host ports are claimed under the same lock. The records are
            // the claims, so they hold across a daemon restart.
            let records: Vec<SandboxRecord> = pods.values().map(|p| p.record()).collect();
            let held = records.iter().map(|r| (r, r.host_ports.as_slice()));
            if let Some((port, holder)) = hostport::conflict(&req.host_ports, held) {
                return Err(SandboxError::HostPortTaken {
                    port,
                    holder: format!("{}/{}", holder.metadata.namespace, holder.metadata.name),
                    holder_id: holder.id.clone(),
                });
            }
            pods.insert(id.clone(), pod.clone());
        }
        match self.boot(&pod, &req).await {
            Ok(()) => {
                tracing::info!(%id, pod = %m.name, namespace = %m.namespace, "pod sandbox ready");
                // As for a container: the sandbox's id stands for it.
                for kind in [EventKind::Created, EventKind::Started] {
                    self.events.publish(Event::now(&id, &id, kind));
                }
                Ok(id)
            }
            Err(err) => {
                tracing::warn!(%id, %err, "pod sandbox failed to start; cleaning up");
                self.teardown(&pod).await;
                if let Err(e) = self.network.detach(&id).await {
                    tracing::warn!(%id, %e, "detaching the network of a failed pod");
                }
                self.pods().remove(&id);
                if pod.share().teardown().is_ok() {
                    let _ = std::fs::remove_dir_all(&record.dir);
                }
                let _ = std::fs::remove_dir_all(&record.run_dir);
                Err(err)
            }
        }
    }

    async fn boot(&self, pod: &Arc<Pod>, req: &RunRequest) -> Result<()> {
        let record = pod.record();
        std::fs::create_dir_all(&record.run_dir)?;
        // The pod's share holds the image's layers (setuid files of root
        // among them) and its volumes: no host user may reach into it.
        for dir in [self.sandboxes_dir(), record.dir.clone()] {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        pod.share().prepare()?;
        record.save()?;
        let mut live = pod.live.lock().await;
        let fs = Virtiofsd::start(
            &self.config.virtiofsd,
            &pod.share().served_dir(),
            &record.run_dir.join("fs.sock"),
            SHARE_TAG,
        )
        .await?;
        let fs_pid = fs.process.pid();
        live.fs = Some(fs);
        let net = self
            .network
            .attach_with_host_ports(&record.id, &record.host_ports)
            .await?;
        let vm_config = VmConfig {
            id: record.id.clone(),
            vcpus: record.vcpus,
            memory_mib: record.memory_mib,
            image: self.config.hypervisor.guest.clone(),
            kernel_args: vec![],
            tap: Some(net.tap_device()),
            share: live.fs.as_ref().map(|f| f.share.clone()),
            dir: record.run_dir.join("vm"),
            boot_timeout: self.config.hypervisor.boot_timeout(),
            agent_timeouts: self.config.agent,
        };
        let (vm, mut agent, _info) = hypervisor::boot(self.hypervisor.as_ref(), &vm_config).await?;
        let (interfaces, routes) = net.agent_setup();
        let setup = SetupSandboxRequest {
            hostname: req.hostname.clone(),
            dns: Some(self.network.dns(req.dns.as_ref())),
            interfaces,
            routes,
            host_time: Some(host_time()),
            sysctls: req.sysctls.clone().into_iter().collect(),
            mounts: vec![SharedMount {
                fstype: "virtiofs".into(),
                source: SHARE_TAG.into(),
                target: GUEST_SHARE_DIR.into(),
                options: vec![],
                // The host decides, mount by mount, where the guest may
                // write (virtiofsd answers EROFS elsewhere). Read-only
                // here, the guest's submounts of host paths would inherit
                // it and writable volumes could not be written.
                readonly: false,
            }],
            ..Default::default()
        };
        let vm_pid = vm.process.pid();
        let dialer = vm.dialer.clone();
        live.vm = Some(vm);
        if let Some(quota) = record.cpu_quota_us {
            let cgroup = VmCgroup::create(&record.id, quota, CPU_PERIOD_US)?;
            cgroup.add(vm_pid)?;
        }
        agent
            .setup_sandbox(setup)
            .await
            .map_err(|s| SandboxError::Agent(s.message().to_string()))?;
        live.agent = Some(agent);
        pod.update(|r| {
            r.state = SandboxState::Ready;
            r.vm_pid = Some(vm_pid);
            r.virtiofsd_pid = Some(fs_pid);
            r.dialer = Some(dialer);
        })?;
        drop(live);
        self.watch_vm(pod.clone()).await;
        Ok(())
    }

    fn publish(&self, id: &str, kind: EventKind) {
        self.events.publish(Event::now(id, id, kind));
    }

    /// Marks the pod NotReady when its VM dies without being asked to.
    async fn watch_vm(&self, pod: Arc<Pod>) {
        let events = self.events.clone();
        let exit = {
            let live = pod.live.lock().await;
            match &live.vm {
                Some(vm) => vm.process.exit_receiver(),
                None => return,
            }
        };
        tokio::spawn(async move {
            let exit = hypervisor::process::wait_exit(exit).await;
            if pod.stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!(id = %pod.id(), %exit, "pod VM exited unexpectedly");
            let _ = pod.update(|r| {
                r.state = SandboxState::NotReady;
                r.reason = Some(format!("the pod VM exited unexpectedly ({exit})"));
                r.vm_pid = None;
            });
            let id = pod.id();
            events.publish(Event::now(&id, &id, EventKind::Stopped));
            let mut live = pod.live.lock().await;
            live.agent = None;
            if let Some(fs) = live.fs.take() {
                fs.stop().await;
            }
            if let Err(e) = pod.share().teardown() {
                tracing::warn!(id = %pod.id(), %e, "unmounting the pod share");
            }
        });
    }

    /// Stops the VM and virtiofsd; keeps the record (NotReady).
    async fn teardown(&self, pod: &Pod) {
        pod.stopping.store(true, Ordering::SeqCst);
        let grace = Duration::from_secs(self.config.sandbox.stop_grace_secs);
        let started = std::time::Instant::now();
        let mut live = pod.live.lock().await;
        let had_vm = live.vm.is_some();
        if let Some(vm) = live.vm.take() {
            match live.agent.take() {
                Some(mut agent) => {
                    hypervisor::stop_pod(&vm, &mut agent, grace).await;
                }
                None => {
                    vm.process.terminate(Duration::from_secs(2)).await;
                }
            }
        }
        let vm_ms = started.elapsed().as_millis();
        live.agent = None;
        if let Some(fs) = live.fs.take() {
            fs.stop().await;
        }
        if had_vm {
            let total_ms = started.elapsed().as_millis();
            tracing::info!(id = %pod.id(), vm_ms, total_ms, "pod VM stopped");
        }
        if let Ok(cgroup) = VmCgroup::locate(&pod.id()) {
            cgroup.remove();
        }
    }

    /// Stops the pod (idempotent): containers get their grace period, then
    /// the VM ends.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let pod = self.get(id)?;
        if pod.live.lock().await.agent.is_none() {
            // After a daemon restart the live parts are re-attached lazily.
            let _ = pod.agent().await;
        }
        self.teardown(&pod).await;
        let was_ready = pod.record().state == SandboxState::Ready;
        pod.update(|r| {
            r.state = SandboxState::NotReady;
            r.vm_pid = None;
            r.virtiofsd_pid = None;
            r.dialer = None;
        })?;
        pod.share().teardown()?;
        // The VM is gone: its tap, route and rules go, and its address and
        // host ports are free again.
        self.network.detach(&pod.id()).await?;
        if !pod.record().host_ports.is_empty() {
            pod.update(|r| r.host_ports.clear())?;
        }
        tracing::info!(id = %pod.id(), "pod sandbox stopped");
        if was_ready {
            self.publish(&pod.id(), EventKind::Stopped);
        }
        Ok(())
    }

    /// Removes the pod and everything it had (idempotent: an unknown id
    /// is not an error, as the CRI asks).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let pod = match self.get(id) {
            Ok(pod) => pod,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&pod.id()).await?;
        let record = pod.record();
        // The share must hold no mounts before its directory goes, or the
        // removal would reach into kubelet's volumes.
        pod.share().teardown()?;
        std::fs::remove_dir_all(&record.run_dir).or_else(ignore_missing)?;
        std::fs::remove_dir_all(&record.dir).or_else(ignore_missing)?;
        // Told while the pod is still known: the message carries its status.
        self.publish(&record.id, EventKind::Deleted);
        self.pods().remove(&record.id);
        tracing::info!(id = %record.id, "pod sandbox removed");
        Ok(())
    }

    /// Loads the records left by an earlier daemon and re-attaches to the
    /// VMs that are still running.
    pub async fn recover(&self) -> Result<()> {
        let dir = self.sandboxes_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries.flatten() {
            let record = match SandboxRecord::load(&entry.path()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), %e, "skipping an unreadable sandbox record");
                    continue;
                }
            };
            let pod = Arc::new(Pod {
                record: Mutex::new(record.clone()),
                live: tokio::sync::Mutex::new(Live::default()),
                stopping: AtomicBool::new(false),
                agent_timeouts: self.config.agent,
            });
            let vm = record
                .vm_pid
                .filter(|pid| runs_in(*pid, &record.run_dir))
                .and_then(|pid| Supervised::attach(pid).ok());
            let fs = record
                .virtiofsd_pid
                .filter(|pid| runs_in(*pid, &record.run_dir))
                .and_then(|pid| Supervised::attach(pid).ok());
            match (record.state, vm, record.dialer.clone()) {
                (SandboxState::Ready, Some(process), Some(dialer)) => {
                    let vm_dir = record.run_dir.join("vm");
                    let mut live = pod.live.lock().await;
                    live.vm = Some(Vm {
                        id: record.id.clone(),
                        backend: self.hypervisor.name(),
                        process,
                        dialer,
                        console_log: vm_dir.join("console.log"),
                        dir: vm_dir,
                    });
                    live.fs = fs.map(|process| Virtiofsd {
                        share: hypervisor::FsShare {
                            socket: record.run_dir.join("fs.sock"),
                            tag: SHARE_TAG.into(),
                        },
                        process,
                    });
                    drop(live);
                    self.watch_vm(pod.clone()).await;
                    tracing::info!(id = %record.id, "re-attached to a running pod VM");
                }
                (SandboxState::Ready, _, _) => {
                    pod.update(|r| {
                        r.state = SandboxState::NotReady;
                        r.reason = Some("the pod VM is gone (found after a daemon restart)".into());
                        r.vm_pid = None;
                        r.virtiofsd_pid = None;
                    })?;
                    if let Some(fs) = fs {
                        fs.terminate(Duration::from_secs(2)).await;
                    }
                    tracing::warn!(id = %record.id, "pod VM gone; sandbox marked NotReady");
                }
                (SandboxState::NotReady, _, _) => {}
            }
            self.pods().insert(record.id.clone(), pod);
        }
        Ok(())
    }
}

fn host_time() -> podvisor_proto::Timestamp {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    podvisor_proto::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// True when `pid` is a process of this sandbox (its command line names the
/// sandbox's run directory), not an unrelated process that reused the pid.
fn runs_in(pid: u32, run_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = run_dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
}
