//! Output of container processes: the log pump that turns a container's
//! output into its CRI log file, and ExecSync's collection of one exec's
//! output.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use podvisor_proto::{
    ExecProcessRequest, OutputChunk, OutputStream, ReadOutputRequest, ReleaseProcessRequest,
    SignalProcessRequest, WaitProcessRequest,
};

use super::{agent_err, Container, ContainerError, ContainerRecord, Result};
use crate::agent_client::Agent;
use crate::logs::Stream;
use crate::sandbox::{Pod, SandboxState};

/// How often the log offset is saved: a restarted daemon may write again
/// up to this much of the log, never lose it.
const OFFSET_SAVE_INTERVAL: Duration = Duration::from_secs(1);

fn chunk_time(chunk: &OutputChunk) -> SystemTime {
    chunk
        .timestamp
        .as_ref()
        .and_then(|t| {
            let d = Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            SystemTime::UNIX_EPOCH.checked_add(d)
        })
        .unwrap_or_else(SystemTime::now)
}

fn stream_of(chunk: &OutputChunk) -> Stream {
    if chunk.stream == OutputStream::Stderr as i32 {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

/// Copies the container's output into its CRI log until the output ends,
/// resuming from the saved offset after a lost connection or a restart.
pub(super) async fn pump_logs(container: Arc<Container>, pod: Arc<Pod>) {
    let id = container.id();
    loop {
        match pump_once(&container, &pod).await {
            Ok(()) => return,
            Err(e) => {
                if pod.record().state != SandboxState::Ready {
                    return;
                }
                tracing::debug!(%id, %e, "container output stream broke; resuming");
                pod.forget_agent().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn pump_once(container: &Container, pod: &Pod) -> std::result::Result<(), String> {
    let record = container.record();
    let mut agent = pod.agent().await.map_err(|e| e.to_string())?;
    let mut stream = agent
        .read_output(ReadOutputRequest {
            container_id: record.id.clone(),
            exec_id: String::new(),
            from_offset: record.log_offset,
            live: false,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut offset = record.log_offset;
    let mut saved_at = Instant::now();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
    {
        let mut log = container.log.lock().await;
        if chunk.eof {
            if let Some(log) = log.as_mut() {
                let _ = log.finish(SystemTime::now());
            }
            save_offset(container, chunk.offset.max(offset));
            return Ok(());
        }
        if chunk.dropped_bytes > 0 {
            tracing::warn!(id = %record.id, bytes = chunk.dropped_bytes, "container output overran the agent's buffer; log has a gap");
        }
        if let Some(log) = log.as_mut() {
            if let Err(e) = log.write(stream_of(&chunk), chunk_time(&chunk), &chunk.data) {
                tracing::warn!(id = %record.id, %e, "writing the container log");
            }
        }
        offset = chunk.offset + chunk.data.len() as u64;
        if saved_at.elapsed() >= OFFSET_SAVE_INTERVAL {
            save_offset(container, offset);
            saved_at = Instant::now();
        }
    }
    save_offset(container, offset);
    Err("the output stream ended without end of file".into())
}

fn save_offset(container: &Container, offset: u64) {
    if let Err(e) = container.update(|r| r.log_offset = offset) {
        tracing::warn!(%e, "saving the container log offset");
    }
}

/// How much of each stream ExecSync keeps: both together stay under the
/// 4 MiB a gRPC client takes by default (kubelet takes 16 MiB), and the
/// daemon must not hold whatever a guest prints. The rest is read and
/// dropped, so the command is never blocked on its output.
pub const EXEC_SYNC_STREAM_LIMIT: usize = 1536 << 10;

/// What ExecSync answers.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Runs `cmd` in the container as its own process would run (user, env,
/// cwd, limits), collects its output, and forgets it in the agent.
pub(super) async fn exec_sync(
    mut agent: Agent,
    record: &ContainerRecord,
    cmd: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExecOutput> {
    let exec_id = crate::ids::random_id()?[..16].to_string();
    let mut process = record.process.clone();
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(false);
    agent
        .exec_process(ExecProcessRequest {
            container_id: record.id.clone(),
            exec_id: exec_id.clone(),
            oci_process_json: serde_json::to_vec(&process).map_err(std::io::Error::other)?,
            stdin: false,
            tty: false,
        })
        .await
        .map_err(agent_err("starting the command in the container"))?;

    let run = collect(&mut agent, &record.id, &exec_id);
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => {
                let kill = SignalProcessRequest {
                    container_id: record.id.clone(),
                    exec_id: exec_id.clone(),
                    signal: libc::SIGKILL,
                    all: false,
                };
                let _ = agent.signal_process(kill).await;
                let _ = agent
                    .wait_process(WaitProcessRequest {
                        container_id: record.id.clone(),
                        exec_id: exec_id.clone(),
                    })
                    .await;
                Err(ContainerError::Timeout(format!(
                    "command {cmd:?} timed out after {limit:?}"
                )))
            }
        },
        None => run.await,
    };
    let release = ReleaseProcessRequest {
        container_id: record.id.clone(),
        exec_id,
    };
    if let Err(s) = agent.release_process(release).await {
        tracing::debug!(id = %record.id, error = %s.message(), "releasing an exec");
    }
    result
}

async fn collect(agent: &mut Agent, container_id: &str, exec_id: &str) -> Result<ExecOutput> {
    let mut stream = agent
        .read_output(ReadOutputRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            from_offset: 0,
            live: false,
        })
        .await
        .map_err(agent_err("reading the command's output"))?
        .into_inner();
    let mut out = ExecOutput::default();
    let mut dropped = [0usize; 2];
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(agent_err("reading the command's output"))?
    {
        if chunk.eof {
            break;
        }
        let (kept, dropped) = match stream_of(&chunk) {
            Stream::Stdout => (&mut out.stdout, &mut dropped[0]),
            Stream::Stderr => (&mut out.stderr, &mut dropped[1]),
        };
        let room = EXEC_SYNC_STREAM_LIMIT.saturating_sub(kept.len());
        let take = room.min(chunk.data.len());
        kept.extend_from_slice(&chunk.data[..take]);
        *dropped += chunk.data.len() - take;
    }
    for (name, n) in [("stdout", dropped[0]), ("stderr", dropped[1])] {
        if n > 0 {
            tracing::warn!(
                container = container_id,
                name,
                dropped = n,
                "ExecSync output truncated"
            );
            out.stderr.extend_from_slice(
                format!("\n[podvisor: {name} truncated after {EXEC_SYNC_STREAM_LIMIT} bytes; {n} bytes dropped]\n")
                    .as_bytes(),
            );
        }
    }
    let exit = agent
        .wait_process(WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        })
        .await
        .map_err(agent_err("waiting for the command"))?
        .into_inner();
    out.exit_code = exit.exit_code;
    Ok(out)
}
