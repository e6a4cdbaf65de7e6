//! The gRPC service: translates requests into container and sandbox calls.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use podvisor_proto::agent_server::Agent;
use podvisor_proto::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::container::{self, ContainerManager, CreateRequest, ExecRequest, ProcessExit};
use crate::output::{self, Read};
use crate::{info, sandbox, Mode};

/// Grace period before SIGKILL when Shutdown does not give one.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct AgentService {
    pub containers: Arc<ContainerManager>,
    pub mode: Mode,
    pub state_dir: PathBuf,
    /// Told once the agent should power off (guest) or exit (host).
    pub shutdown: tokio::sync::mpsc::Sender<()>,
}

fn exit_proto(exit: ProcessExit) -> podvisor_proto::ProcessExit {
    podvisor_proto::ProcessExit {
        exit_code: exit.code,
        signal: exit.signal,
        finished_at: Some(exit.finished_at.into()),
        oom_killed: exit.oom_killed,
    }
}

fn container_info(c: &container::Container) -> ContainerInfo {
    let state = match c.state() {
        container::State::Created => ContainerState::Created,
        container::State::Running => ContainerState::Running,
        container::State::Exited => ContainerState::Exited,
    };
    ContainerInfo {
        container_id: c.id.clone(),
        state: state as i32,
        pid: c.main.pid.as_raw() as u32,
        created_at: Some(c.created_at.into()),
        started_at: c.started_at().map(Into::into),
        exit: c.main.exit().map(exit_proto),
    }
}

fn stream_of(s: output::Stream) -> OutputStream {
    match s {
        output::Stream::Stdout => OutputStream::Stdout,
        output::Stream::Stderr => OutputStream::Stderr,
    }
}

type OutputChunks = Pin<Box<dyn Stream<Item = Result<OutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn get_guest_info(
        &self,
        _: Request<GetGuestInfoRequest>,
    ) -> Result<Response<GuestInfo>, Status> {
        Ok(Response::new(info::guest_info(self.mode)))
    }

    #[tracing::instrument(skip_all)]
    async fn setup_sandbox(
        &self,
        req: Request<SetupSandboxRequest>,
    ) -> Result<Response<SetupSandboxResponse>, Status> {
        if let Some(t) = &req.get_ref().host_time {
            crate::clock::set_from_host(t, self.mode);
        }
        let files = sandbox::setup(req.get_ref(), &self.state_dir, self.mode)?;
        self.containers.set_sandbox_files(files);
        Ok(Response::new(SetupSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let container = self
            .containers
            .create(CreateRequest {
                id: req.container_id,
                spec_json: req.oci_spec_json,
                rootfs: req.rootfs.unwrap_or_default(),
                stdin: req.stdin,
                tty: req.tty,
                volumes: req.volumes,
                volume_timeout: match req.volume_timeout_ms {
                    0 => crate::volume::DEFAULT_TIMEOUT,
                    ms => Duration::from_millis(ms.into()),
                },
                pid_namespace: match podvisor_proto::PidNamespace::try_from(req.pid_namespace) {
                    Ok(podvisor_proto::PidNamespace::Container) => {
                        container::PidNamespace::Container
                    }
                    Ok(podvisor_proto::PidNamespace::Pod) => container::PidNamespace::Pod,
                    Ok(podvisor_proto::PidNamespace::Target) => {
                        container::PidNamespace::Target(req.pid_namespace_target)
                    }
                    Err(_) => {
                        return Err(Status::invalid_argument(format!(
                            "pid_namespace {} is not a known PidNamespace",
                            req.pid_namespace
                        )))
                    }
                },
            })
            .await?;
        Ok(Response::new(CreateContainerResponse {
            pid: container.main.pid.as_raw() as u32,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.containers.start(&req.get_ref().container_id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id, exec = %req.get_ref().exec_id))]
    async fn signal_process(
        &self,
        req: Request<SignalProcessRequest>,
    ) -> Result<Response<SignalProcessResponse>, Status> {
        let r = req.get_ref();
        self.containers
            .signal(&r.container_id, &r.exec_id, r.signal, r.all)
            .await?;
        Ok(Response::new(SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        req: Request<WaitProcessRequest>,
    ) -> Result<Response<podvisor_proto::ProcessExit>, Status> {
        let r = req.get_ref();
        let process = self.containers.get(&r.container_id)?.process(&r.exec_id)?;
        Ok(Response::new(exit_proto(process.wait().await)))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn delete_container(
        &self,
        req: Request<DeleteContainerRequest>,
    ) -> Result<Response<DeleteContainerResponse>, Status> {
        let r = req.get_ref();
        self.containers.delete(&r.container_id, r.force).await?;
        Ok(Response::new(DeleteContainerResponse {}))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self
            .containers
            .list()
            .iter()
            .map(|c| container_info(c))
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerInfo>, Status> {
        let c = self.containers.get(&req.get_ref().container_id)?;
        Ok(Response::new(container_info(&c)))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id, exec = %req.get_ref().exec_id))]
    async fn exec_process(
        &self,
        req: Request<ExecProcessRequest>,
    ) -> Result<Response<ExecProcessResponse>, Status> {
        let r = req.into_inner();
        let process = self
            .containers
            .exec(ExecRequest {
                container_id: r.container_id,
                exec_id: r.exec_id,
                process_json: r.oci_process_json,
                stdin: r.stdin,
                tty: r.tty,
            })
            .await?;
        Ok(Response::new(ExecProcessResponse {
            pid: process.pid.as_raw() as u32,
        }))
    }

    async fn release_process(
        &self,
        req: Request<ReleaseProcessRequest>,
    ) -> Result<Response<ReleaseProcessResponse>, Status> {
        let r = req.get_ref();
        self.containers
            .get(&r.container_id)?
            .release_exec(&r.exec_id)?;
        Ok(Response::new(ReleaseProcessResponse {}))
    }

    type ReadOutputStream = OutputChunks;

    async fn read_output(
        &self,
        req: Request<ReadOutputRequest>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let r = req.into_inner();
        let process = self.containers.get(&r.container_id)?.process(&r.exec_id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let log = process.io.output.clone();
            let mut offset = if r.live { log.end() } else { r.from_offset };
            loop {
                let next = async {
                    if r.live {
                        log.observe(offset).await
                    } else {
                        log.read(offset).await
                    }
                };
                let message = tokio::select! {
                    read = next => read,
                    // Stop reading for a client that went away.
                    _ = tx.closed() => return,
                };
                match message {
                    Read::Data {
                        chunks,
                        mut dropped,
                    } => {
                        for c in chunks {
                            offset = c.offset + c.data.len() as u64;
                            let chunk = OutputChunk {
                                stream: stream_of(c.stream) as i32,
                                data: c.data,
                                timestamp: Some(c.at.into()),
                                offset: c.offset,
                                dropped_bytes: std::mem::take(&mut dropped),
                                eof: false,
                            };
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Read::Eof => {
                        let _ = tx
                            .send(Ok(OutputChunk {
                                offset,
                                eof: true,
                                ..Default::default()
                            }))
                            .await;
                        return;
                    }
                    Read::Pending => unreachable!("read() waits for data"),
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write_stdin(
        &self,
        req: Request<WriteStdinRequest>,
    ) -> Result<Response<WriteStdinResponse>, Status> {
        let r = req.get_ref();
        let process = self.containers.get(&r.container_id)?.process(&r.exec_id)?;
        let written = process.io.write_stdin(&r.data).await?;
        Ok(Response::new(WriteStdinResponse {
            written: u32::try_from(written).unwrap_or(u32::MAX),
        }))
    }

    async fn close_stdin(
        &self,
        req: Request<CloseStdinRequest>,
    ) -> Result<Response<CloseStdinResponse>, Status> {
        let r = req.get_ref();
        let process = self.containers.get(&r.container_id)?.process(&r.exec_id)?;
        process.io.close_stdin().await?;
        Ok(Response::new(CloseStdinResponse {}))
    }

    async fn resize_tty(
        &self,
        req: Request<ResizeTtyRequest>,
    ) -> Result<Response<ResizeTtyResponse>, Status> {
        let r = req.get_ref();
        let rows =
            u16::try_from(r.rows).map_err(|_| Status::invalid_argument("rows exceeds 65535"))?;
        let cols = u16::try_from(r.columns)
            .map_err(|_| Status::invalid_argument("columns exceeds 65535"))?;
        let process = self.containers.get(&r.container_id)?.process(&r.exec_id)?;
        process.io.resize(rows, cols)?;
        Ok(Response::new(ResizeTtyResponse {}))
    }

    type PortForwardStream = crate::portforward::Frames;

    #[tracing::instrument(skip_all)]
    async fn port_forward(
        &self,
        req: Request<tonic::Streaming<PortForwardFrame>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let frames = crate::portforward::open(req.into_inner()).await?;
        Ok(Response::new(frames))
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let c = self.containers.get(&req.get_ref().container_id)?;
        let usage = c.usage()?;
        let layer = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.layer_usage())
                .await
                .unwrap_or_default()
        };
        Ok(Response::new(ContainerStatsResponse {
            writable_layer_bytes: layer.bytes,
            writable_layer_inodes: layer.inodes,
            writable_layer_capacity_bytes: layer.capacity_bytes,
            timestamp: Some(std::time::SystemTime::now().into()),
            cpu_usage_ns: usage.cpu_ns,
            memory_usage_bytes: usage.memory_bytes,
            memory_working_set_bytes: usage.working_set_bytes,
            memory_rss_bytes: usage.rss_bytes,
            pids: usage.pids,
            oom_kills: usage.oom_kills,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let r = req.get_ref();
        self.containers
            .update_resources(&r.container_id, &r.oci_resources_json)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let grace = match req.get_ref().grace_period_ms {
            0 => DEFAULT_SHUTDOWN_GRACE,
            ms => Duration::from_millis(ms.into()),
        };
        self.containers.stop_all(grace).await;
        // The reply goes out before the guest powers off.
        let _ = self.shutdown.try_send(());
        Ok(Response::new(ShutdownResponse {}))
    }
}
