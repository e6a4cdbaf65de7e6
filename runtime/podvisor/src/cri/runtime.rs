//! CRI RuntimeService: pod sandboxes, their containers, runtime status.
//! Exec, Attach and PortForward answer URLs on the streaming server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::container::{ContainerManager, ContainerRecord, ContainerState};
use crate::events::EventBus;
use crate::network::hostport::{self, HostPort, HostPortError, Protocol};
use crate::network::PodCidrChange;
use crate::sandbox::{PodMetadata, RunRequest, SandboxManager, SandboxRecord, SandboxState};

/// The CRI API version this runtime speaks.
pub const CRI_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "podvisor";

pub struct Runtime {
    pub config: Arc<Config>,
    pub sandboxes: Arc<SandboxManager>,
    pub containers: Arc<ContainerManager>,
    pub streaming: Arc<crate::streaming::StreamingServer>,
    /// GetContainerEvents' subscribers; closed when the daemon stops.
    pub events: Arc<EventBus>,
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn unsorted(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn metadata_of(r: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: r.metadata.name.clone(),
        uid: r.metadata.uid.clone(),
        namespace: r.metadata.namespace.clone(),
        attempt: r.metadata.attempt,
    }
}

pub(crate) fn state_of(r: &SandboxRecord) -> cri::PodSandboxState {
    match r.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

/// Checks a RunPodSandbox config, lets policy admit and size it, and turns
/// it into a sandbox request.
fn run_request(req: cri::RunPodSandboxRequest, defaults: &Config) -> Result<RunRequest, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is missing"))?;
    let m = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config.metadata is missing"))?;
    for (field, value) in [
        ("name", &m.name),
        ("namespace", &m.namespace),
        ("uid", &m.uid),
    ] {
        if value.is_empty() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: config.metadata.{field} is empty"
            )));
        }
    }
    super::bounds::pod(&config)
        .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?;
    super::handler::check(&req.runtime_handler)?;
    let admission = defaults.policy.admit_pod(&config)?;
    let linux = config.linux.clone().unwrap_or_default();
    let sysctls = crate::sandbox::sysctl::validate(&linux.sysctls)
        .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?;
    let security = linux.security_context.as_ref();
    crate::container::spec::check_run_as_group(None, security)
        .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?;
    // A pod-level Localhost profile that cannot be read fails now, not at
    // its first container.
    if let Some(crate::container::seccomp::Profile::Localhost(path)) =
        crate::container::seccomp::sandbox_profile(security)
            .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?
    {
        crate::container::seccomp::load_localhost(&path, &[])
            .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?;
    }
    // Admission refused host ports unless the mode forwards them.
    let host_ports = host_ports(&config.port_mappings)?;
    let size = admission.size;
    let mut annotations = sorted(&config.annotations);
    for (key, value) in admission.annotations() {
        annotations.insert(key.to_string(), value);
    }
    // A whole number of vCPUs needs no quota: the VM cannot use more.
    let fractional = size.cpu_quota_percent < size.vcpus * 100;
    Ok(RunRequest {
        metadata: PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        },
        labels: sorted(&config.labels),
        annotations,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| podvisor_proto::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        vcpus: size.vcpus,
        memory_mib: u32::try_from(size.memory_mib).unwrap_or(u32::MAX),
        cpu_quota_us: (defaults.sandbox.cpu_quota && fractional).then(|| size.cpu_quota_us()),
        runtime_handler: req.runtime_handler,
        sysctls,
        host_ports,
    })
}

/// PodSandboxStatus's `status`, as GetContainerEvents sends it too.
pub(crate) fn pod_status(
    r: &SandboxRecord,
    ip: Option<std::net::Ipv4Addr>,
) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata_of(r)),
        state: state_of(r) as i32,
        created_at: r.created_at_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: vec![],
        }),
        linux: None,
        labels: unsorted(&r.labels),
        annotations: unsorted(&r.annotations),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// The port mappings with a host port, validated. Those without one only
/// document the pod's ports: its own address reaches them anyway.
fn host_ports(mappings: &[cri::PortMapping]) -> Result<Vec<HostPort>, Status> {
    let invalid = |e: HostPortError| Status::invalid_argument(format!("RunPodSandbox: {e}"));
    let mut ports = Vec::new();
    for (index, m) in mappings.iter().enumerate() {
        if m.host_port == 0 {
            continue;
        }
        let protocol = match cri::Protocol::try_from(m.protocol) {
            Ok(cri::Protocol::Tcp) => Protocol::Tcp,
            Ok(cri::Protocol::Udp) => Protocol::Udp,
            Ok(cri::Protocol::Sctp) => Protocol::Sctp,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "RunPodSandbox: port mapping {index}: unknown protocol {} (TCP, UDP or SCTP)",
                    m.protocol
                )))
            }
        };
        ports.push(
            HostPort::new(index, protocol, &m.host_ip, m.host_port, m.container_port)
                .map_err(invalid)?,
        );
    }
    hostport::check_distinct(&ports).map_err(invalid)?;
    Ok(ports)
}

fn matches_filter(r: &SandboxRecord, filter: &cri::PodSandboxFilter) -> bool {
    (filter.id.is_empty() || r.id.starts_with(&filter.id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == state_of(r) as i32)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

fn container_state(r: &ContainerRecord) -> cri::ContainerState {
    match r.state {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }
}

fn container_matches(r: &ContainerRecord, filter: &cri::ContainerFilter) -> bool {
    (filter.id.is_empty() || r.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == container_state(r) as i32)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

pub(crate) fn container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    let exit = r.exit.clone().unwrap_or(crate::container::ExitRecord {
        code: 0,
        finished_at_ns: 0,
        reason: String::new(),
        message: String::new(),
    });
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        state: container_state(r) as i32,
        created_at: r.created_at_ns,
        started_at: r.started_at_ns,
        finished_at: exit.finished_at_ns,
        exit_code: exit.code,
        image: Some(cri::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        reason: exit.reason,
        message: exit.message,
        labels: unsorted(&r.labels),
        annotations: unsorted(&r.annotations),
        mounts: r
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.clone(),
        resources: None,
        image_id: r.image_id.clone(),
        user: None,
    }
}

fn u64_value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn container_attributes(r: &ContainerRecord) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: r.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: r.name.clone(),
            attempt: r.attempt,
        }),
        labels: unsorted(&r.labels),
        annotations: unsorted(&r.annotations),
    }
}

impl Runtime {
    async fn container_stats_of(&self, id: &str) -> Result<cri::ContainerStats, Status> {
        let (r, stats) = self.containers.stats(id).await?;
        let mut out = cri::ContainerStats {
            attributes: Some(container_attributes(&r)),
            ..Default::default()
        };
        if let Some(s) = stats {
            let at = s
                .timestamp
                .as_ref()
                .map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
            out.cpu = Some(cri::CpuUsage {
                timestamp: at,
                usage_core_nano_seconds: u64_value(s.cpu_usage_ns),
                usage_nano_cores: None,
            });
            out.memory = Some(cri::MemoryUsage {
                timestamp: at,
                working_set_bytes: u64_value(s.memory_working_set_bytes),
                usage_bytes: u64_value(s.memory_usage_bytes),
                rss_bytes: u64_value(s.memory_rss_bytes),
                ..Default::default()
            });
            out.writable_layer = Some(cri::FilesystemUsage {
                timestamp: at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: "/".into(),
                }),
                used_bytes: u64_value(s.writable_layer_bytes),
                inodes_used: u64_value(s.writable_layer_inodes),
            });
        }
        Ok(out)
    }

    /// A pod's usage is its containers' usage added up.
    async fn pod_stats_of(&self, r: &SandboxRecord) -> cri::PodSandboxStats {
        let records = self.containers.of_sandbox(&r.id);
        let asked = records.iter().map(|c| self.container_stats_of(&c.id));
        let containers: Vec<cri::ContainerStats> = futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| {
            containers.iter().filter_map(f).sum::<u64>()
        };
        let cpu = sum(&|s| {
            s.cpu
                .as_ref()?
                .usage_core_nano_seconds
                .as_ref()
                .map(|v| v.value)
        });
        let ws = sum(&|s| {
            s.memory
                .as_ref()?
                .working_set_bytes
                .as_ref()
                .map(|v| v.value)
        });
        let usage = sum(&|s| s.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value));
        let now = crate::ids::now_ns();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: r.id.clone(),
                metadata: Some(metadata_of(r)),
                labels: unsorted(&r.labels),
                annotations: unsorted(&r.annotations),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: u64_value(cpu),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: u64_value(ws),
                    usage_bytes: u64_value(usage),
                    ..Default::default()
                }),
                network: None,
                process: None,
                containers,
            }),
            windows: None,
        }
    }
}

impl Runtime {
    /// A running container, for Exec and Attach.
    fn running(&self, id: &str) -> Result<ContainerRecord, Status> {
        let record = self.containers.status(id)?;
        if record.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is {:?}, not running",
                record.id, record.state
            )));
        }
        Ok(record)
    }

    fn streaming_url(&self, request: crate::streaming::Request) -> Result<String, Status> {
        self.streaming
            .url_for(request)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }
}

/// Runs a state-changing call to its end even when the client goes away.
/// tonic drops a handler's future when its client cancels (kubelet does at
/// its request timeout, crictl on ^C); a boot or teardown cut off half way
/// would leave a VM, tap or mount that no record names. The finished pod or
/// container is then there for the client's next List to find.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Status> {
    use tracing::Instrument;
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Status::internal(format!("the call's task ended abnormally: {e}")))
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented by podvisor yet"
    )))
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    #[tracing::instrument(skip_all, fields(pod = tracing::field::Empty))]
    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let run = run_request(req.into_inner(), &self.config)?;
        tracing::Span::current().record(
            "pod",
            format!("{}/{}", run.metadata.namespace, run.metadata.name),
        );
        let sandboxes = self.sandboxes.clone();
        let id = to_completion(async move { sandboxes.run(run).await }).await??;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let pod = match self.sandboxes.get(&req.get_ref().pod_sandbox_id) {
            Ok(pod) => pod,
            // Idempotent, as kubelet expects: stopping a removed pod is fine.
            Err(crate::sandbox::SandboxError::NotFound(_)) => {
                return Ok(Response::new(cri::StopPodSandboxResponse {}))
            }
            Err(e) => return Err(e.into()),
        };
        let grace = std::time::Duration::from_secs(self.config.sandbox.stop_grace_secs);
        let (containers, sandboxes) = (self.containers.clone(), self.sandboxes.clone());
        to_completion(async move {
            containers.stop_all_in(&pod.id(), grace).await;
            sandboxes.stop(&pod.id()).await
        })
        .await??;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let pod = match self.sandboxes.get(&req.get_ref().pod_sandbox_id) {
            Ok(pod) => pod,
            Err(crate::sandbox::SandboxError::NotFound(_)) => {
                return Ok(Response::new(cri::RemovePodSandboxResponse {}))
            }
            Err(e) => return Err(e.into()),
        };
        let (containers, sandboxes) = (self.containers.clone(), self.sandboxes.clone());
        to_completion(async move {
            containers.remove_all_in(&pod.id()).await?;
            sandboxes.remove(&pod.id()).await.map_err(Status::from)
        })
        .await??;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let r = self.sandboxes.get(&req.pod_sandbox_id)?.record();
        let mut info = HashMap::new();
        if req.verbose {
            let json = serde_json::json!({
                "backend": r.backend,
                "vcpus": r.vcpus,
                "memoryMiB": r.memory_mib,
                "cpuQuotaUs": r.cpu_quota_us,
                "vmPid": r.vm_pid,
                "virtiofsdPid": r.virtiofsd_pid,
                "runDir": r.run_dir,
                "reason": r.reason,
                "hostPorts": r.host_ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            info.insert("info".to_string(), json.to_string());
        }
        // With the containers and a timestamp, as kubelet's Evented PLEG
        // reads a pod's whole status from this one call.
        let containers_statuses = self
            .containers
            .of_sandbox(&r.id)
            .iter()
            .map(container_status)
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(pod_status(&r, self.sandboxes.ip(&r.id))),
            info,
            containers_statuses,
            timestamp: crate::ids::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let items = self
            .sandboxes
            .list()
            .iter()
            .map(|p| p.record())
            .filter(|r| matches_filter(r, &filter))
            .map(|r| cri::PodSandbox {
                id: r.id.clone(),
                metadata: Some(metadata_of(&r)),
                state: state_of(&r) as i32,
                created_at: r.created_at_ns,
                labels: unsorted(&r.labels),
                annotations: unsorted(&r.annotations),
                runtime_handler: r.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn status(
        &self,
        _: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let condition = |kind: &str, ok: bool, reason: &str, message: &str| cri::RuntimeCondition {
            r#type: kind.into(),
            status: ok,
            reason: reason.into(),
            message: message.into(),
        };
        let guest = &self.config.hypervisor.guest;
        let image_ready = guest.kernel.is_file() && guest.initramfs.is_file();
        let runtime = if image_ready {
            condition("RuntimeReady", true, "", "")
        } else {
            condition(
                "RuntimeReady",
                false,
                "GuestImageMissing",
                &format!(
                    "guest kernel {} or initramfs {} is missing; run scripts/build-guest.sh",
                    guest.kernel.display(),
                    guest.initramfs.display()
                ),
            )
        };
        // Each pod gets its own tap from the runtime, with no CNI to wait for.
        let network = match self.sandboxes.network().ready() {
            Ok(()) => condition("NetworkReady", true, "", ""),
            Err(why) => condition("NetworkReady", false, "PodNetworkUnavailable", &why),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info: HashMap::new(),
            runtime_handlers: super::handler::runtime_handlers(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    /// kubelet's pod CIDR becomes the primary pod subnet unless the config
    /// file sets `network.primary_cidr`.
    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let change = self
            .sandboxes
            .network()
            .set_pod_cidr(&pod_cidr)
            .await
            .map_err(|e| {
                let message = format!("UpdateRuntimeConfig: {e}");
                if e.is_invalid_input() {
                    Status::invalid_argument(message)
                } else {
                    Status::internal(message)
                }
            })?;
        if let PodCidrChange::Ignored { configured } = change {
            tracing::info!(%pod_cidr, %configured, "kubelet's pod CIDR ignored: network.primary_cidr is set in the config");
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    #[tracing::instrument(skip_all, fields(sandbox = %req.get_ref().pod_sandbox_id, container = tracing::field::Empty))]
    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer: config is missing"))?;
        super::bounds::container(&config)
            .map_err(|e| Status::invalid_argument(format!("CreateContainer: {e}")))?;
        if let Some(m) = &config.metadata {
            tracing::Span::current().record("container", m.name.as_str());
        }
        self.config
            .policy
            .admit_container(req.sandbox_config.as_ref(), &config)?;
        let containers = self.containers.clone();
        let id = to_completion(async move {
            containers
                .create(&req.pod_sandbox_id, config, req.sandbox_config.as_ref())
                .await
        })
        .await??;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let (containers, id) = (self.containers.clone(), req.into_inner().container_id);
        to_completion(async move { containers.start(&id).await }).await??;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
        let containers = self.containers.clone();
        to_completion(async move { containers.stop(&req.container_id, timeout).await }).await??;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let (containers, id) = (self.containers.clone(), req.into_inner().container_id);
        to_completion(async move { containers.remove(&id).await }).await??;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let r = self.containers.status(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            let json = serde_json::json!({
                "sandboxId": r.sandbox_id,
                "process": r.process,
                "logOffset": r.log_offset,
            });
            info.insert("info".to_string(), json.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&r)),
            info,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let resources = req.linux.unwrap_or_default();
        self.containers
            .update_resources(&req.container_id, &resources)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.containers
            .reopen_log(&req.get_ref().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let timeout = (req.timeout > 0).then(|| std::time::Duration::from_secs(req.timeout as u64));
        let out = self
            .containers
            .exec_sync(&req.container_id, req.cmd, timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = req.into_inner();
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(Status::invalid_argument("Exec: cmd is empty"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "Exec: one of stdin, stdout and stderr must be set",
            ));
        }
        let record = self.running(&req.container_id)?;
        let url = self.streaming_url(crate::streaming::Request::Exec {
            container_id: record.id,
            cmd: req.cmd,
            opts: crate::streaming::StreamOptions::new(req.stdin, req.stdout, req.stderr, req.tty),
        })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = req.into_inner();
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "Attach: one of stdin, stdout and stderr must be set",
            ));
        }
        let record = self.running(&req.container_id)?;
        let url = self.streaming_url(crate::streaming::Request::Attach {
            container_id: record.id,
            opts: crate::streaming::StreamOptions::new(req.stdin, req.stdout, req.stderr, req.tty),
        })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = req.into_inner();
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "PortForward: port {bad} is out of range"
            )));
        }
        let pod = self.sandboxes.get(&req.pod_sandbox_id)?.record();
        if pod.state != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let url =
            self.streaming_url(crate::streaming::Request::PortForward { sandbox_id: pod.id })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats = self.container_stats_of(&req.get_ref().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let pod = self.sandboxes.get(&req.get_ref().pod_sandbox_id)?;
        let stats = self.pod_stats_of(&pod.record()).await;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        unimplemented("CheckpointContainer")
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: super::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let mut pod_metrics = Vec::new();
        for pod in self.sandboxes.list() {
            let r = pod.record();
            let traffic = self.sandboxes.network().traffic(&r.id);
            let mut containers = Vec::new();
            for c in self.containers.of_sandbox(&r.id) {
                // A container that ended meanwhile has no usage to report.
                let usage = match self.containers.stats(&c.id).await {
                    Ok((_, usage)) => usage,
                    Err(e) => {
                        tracing::debug!(id = %c.id, %e, "container stats for metrics");
                        None
                    }
                };
                containers.push((c, usage));
            }
            pod_metrics.push(super::metrics::pod_metrics(&r, traffic, &containers));
        }
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .list()
            .iter()
            .filter(|r| container_matches(r, &filter))
            .map(|r| cri::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: Some(cri::ContainerMetadata {
                    name: r.name.clone(),
                    attempt: r.attempt,
                }),
                image: Some(cri::ImageSpec {
                    image: r.image.clone(),
                    ..Default::default()
                }),
                image_ref: r.image_ref.clone(),
                state: container_state(r) as i32,
                created_at: r.created_at_ns,
                labels: unsorted(&r.labels),
                annotations: unsorted(&r.annotations),
                image_id: r.image_id.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let wanted = self.containers.list().into_iter().filter(|r| {
            (filter.id.is_empty() || r.id.starts_with(&filter.id))
                && (filter.pod_sandbox_id.is_empty()
                    || r.sandbox_id.starts_with(&filter.pod_sandbox_id))
                && filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
        });
        // Every pod is asked at once, each within its stats deadline; a
        // container that ended meanwhile is simply left out.
        let asked: Vec<_> = wanted
            .map(|r| async move { self.container_stats_of(&r.id).await })
            .collect();
        let stats = futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let records: Vec<SandboxRecord> = self
            .sandboxes
            .list()
            .iter()
            .map(|pod| pod.record())
            .filter(|r| {
                (filter.id.is_empty() || r.id.starts_with(&filter.id))
                    && filter
                        .label_selector
                        .iter()
                        .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .collect();
        let stats =
            futures_util::future::join_all(records.iter().map(|r| self.pod_stats_of(r))).await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(Box::pin(self.events.subscribe())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(
        protocol: cri::Protocol,
        host_ip: &str,
        host: i32,
        container: i32,
    ) -> cri::PortMapping {
        cri::PortMapping {
            protocol: protocol as i32,
            container_port: container,
            host_port: host,
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn host_ports_keep_mappings_with_a_host_port() {
        let ports = host_ports(&[
            mapping(cri::Protocol::Tcp, "", 0, 8080),
            mapping(cri::Protocol::Tcp, "", 12000, 80),
            mapping(cri::Protocol::Udp, "0.0.0.0", 12000, 53),
            mapping(cri::Protocol::Sctp, "192.0.2.1", 9000, 9000),
        ])
        .unwrap();
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["12000/TCP", "12000/UDP", "192.0.2.1:9000/SCTP"]);
        assert_eq!(ports[0].container_port, 80);
    }

    #[test]
    fn bad_host_ports_are_invalid_arguments() {
        for (bad, says) in [
            (
                vec![mapping(cri::Protocol::Tcp, "", 70000, 80)],
                "port mapping 0: host_port 70000 is out of range",
            ),
            (
                vec![mapping(cri::Protocol::Tcp, "", 8080, 0)],
                "container_port 0 is out of range",
            ),
            (
                vec![mapping(cri::Protocol::Tcp, "fd00::1", 8080, 80)],
                "IPv4 addresses only",
            ),
            (
                vec![
                    mapping(cri::Protocol::Tcp, "", 8080, 80),
                    mapping(cri::Protocol::Tcp, "10.0.0.1", 8080, 81),
                ],
                "port mappings 0 and 1 both ask for host port 10.0.0.1:8080/TCP",
            ),
            (
                vec![cri::PortMapping {
                    protocol: 7,
                    host_port: 1,
                    container_port: 1,
                    host_ip: String::new(),
                }],
                "unknown protocol 7",
            ),
        ] {
            let err = host_ports(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(err.message().contains(says), "{says}: {}", err.message());
        }
    }
}
