//! CRI RuntimeService: pod sandboxes and runtime status. Container calls
//! are answered Unimplemented until the container layer lands.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::sandbox::{PodMetadata, RunRequest, SandboxManager, SandboxRecord, SandboxState};

/// The CRI API version this runtime speaks.
pub const CRI_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "podvisor";

pub struct Runtime {
    pub config: Arc<Config>,
    pub sandboxes: Arc<SandboxManager>,
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn unsorted(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn metadata_of(r: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: r.metadata.name.clone(),
        uid: r.metadata.uid.clone(),
        namespace: r.metadata.namespace.clone(),
        attempt: r.metadata.attempt,
    }
}

fn state_of(r: &SandboxRecord) -> cri::PodSandboxState {
    match r.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

/// Checks a RunPodSandbox config and turns it into a sandbox request.
fn run_request(
    config: Option<cri::PodSandboxConfig>,
    defaults: &Config,
) -> Result<RunRequest, Status> {
    let config =
        config.ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is missing"))?;
    let m = config
        .metadata
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
    Ok(RunRequest {
        metadata: PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        },
        labels: sorted(&config.labels),
        annotations: sorted(&config.annotations),
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| podvisor_proto::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        vcpus: defaults.sandbox.vcpus,
        memory_mib: defaults.sandbox.memory_mib,
    })
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
        let run = run_request(req.into_inner().config, &self.config)?;
        tracing::Span::current().record(
            "pod",
            format!("{}/{}", run.metadata.namespace, run.metadata.name),
        );
        let id = self.sandboxes.run(run).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.sandboxes.stop(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.sandboxes.remove(&req.get_ref().pod_sandbox_id).await?;
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
                "vmPid": r.vm_pid,
                "virtiofsdPid": r.virtiofsd_pid,
                "runDir": r.run_dir,
                "reason": r.reason,
            });
            info.insert("info".to_string(), json.to_string());
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: r.id.clone(),
                metadata: Some(metadata_of(&r)),
                state: state_of(&r) as i32,
                created_at: r.created_at_ns,
                network: Some(cri::PodSandboxNetworkStatus::default()),
                linux: None,
                labels: unsorted(&r.labels),
                annotations: unsorted(&r.annotations),
                runtime_handler: String::new(),
            }),
            info,
            containers_statuses: vec![],
            timestamp: 0,
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
                runtime_handler: String::new(),
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
        let network = condition("NetworkReady", true, "", "");
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info: HashMap::new(),
            runtime_handlers: vec![],
            features: None,
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

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR kubelet sends is not used: podvisor allocates pod
        // addresses from its own configured subnets.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn create_container(
        &self,
        _: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        unimplemented("CreateContainer")
    }

    async fn start_container(
        &self,
        _: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        unimplemented("StartContainer")
    }

    async fn stop_container(
        &self,
        _: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        unimplemented("StopContainer")
    }

    async fn remove_container(
        &self,
        _: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        unimplemented("RemoveContainer")
    }

    async fn container_status(
        &self,
        _: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        unimplemented("ContainerStatus")
    }

    async fn update_container_resources(
        &self,
        _: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        unimplemented("UpdateContainerResources")
    }

    async fn reopen_container_log(
        &self,
        _: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        unimplemented("ReopenContainerLog")
    }

    async fn exec_sync(
        &self,
        _: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        unimplemented("ExecSync")
    }

    async fn exec(
        &self,
        _: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        unimplemented("Exec")
    }

    async fn attach(
        &self,
        _: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        unimplemented("Attach")
    }

    async fn port_forward(
        &self,
        _: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        unimplemented("PortForward")
    }

    async fn container_stats(
        &self,
        _: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        unimplemented("ContainerStats")
    }

    async fn pod_sandbox_stats(
        &self,
        _: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        unimplemented("PodSandboxStats")
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
        unimplemented("ListMetricDescriptors")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        unimplemented("ListPodSandboxMetrics")
    }

    async fn list_containers(
        &self,
        _: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        // No container layer yet, so there are none (kubelet polls this).
        Ok(Response::new(cri::ListContainersResponse {
            containers: vec![],
        }))
    }

    async fn list_container_stats(
        &self,
        _: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: vec![],
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        _: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxStatsResponse {
            stats: vec![],
        }))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        unimplemented("GetContainerEvents")
    }
}
