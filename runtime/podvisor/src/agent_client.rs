//! The runtime's side of the agent API: a gRPC channel over the byte stream
//! a VM offers (a unix socket, or hybrid vsock), and the wait for the agent
//! of a booting VM to answer.

use std::time::{Duration, Instant};

use podvisor_proto::agent_client::AgentClient;
use podvisor_proto::{GetGuestInfoRequest, GuestInfo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::hypervisor::{AgentDialer, Vm, VmError};

pub type Agent = AgentClient<Channel>;

/// Opens one byte stream to the agent.
pub async fn dial(dialer: &AgentDialer) -> std::io::Result<UnixStream> {
    match dialer {
        AgentDialer::Unix(path) => UnixStream::connect(path).await,
        AgentDialer::HybridVsock { socket, port } => {
            let mut stream = UnixStream::connect(socket).await?;
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await?;
            // Read the reply a byte at a time: what follows it is gRPC.
            let mut reader = BufReader::with_capacity(1, stream);
            let mut reply = String::new();
            reader.read_line(&mut reply).await?;
            if !reply.starts_with("OK ") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("vsock port {port}: {}", reply.trim()),
                ));
            }
            Ok(reader.into_inner())
        }
    }
}

/// A client whose channel redials through `dialer` whenever it reconnects.
pub async fn connect(dialer: &AgentDialer) -> Result<Agent, tonic::transport::Error> {
    let dialer = dialer.clone();
    let channel = Endpoint::from_static("http://podvisor-agent")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move { dial(&dialer).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}

/// Waits until the agent of a booting VM answers, the VM dies, or the
/// timeout passes; the errors carry the tail of the guest console.
pub async fn wait_ready(vm: &Vm, timeout: Duration) -> Result<(Agent, GuestInfo), VmError> {
    let deadline = Instant::now() + timeout;
    let died = |exit: crate::hypervisor::Exit| VmError::DiedDuringBoot {
        id: vm.id.clone(),
        exit: exit.to_string(),
        console: vm.console_tail(2048),
    };
    loop {
        if let Some(exit) = vm.process.exited() {
            return Err(died(exit));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(VmError::AgentTimeout {
                id: vm.id.clone(),
                timeout,
                console: vm.console_tail(2048),
            });
        }
        // One attempt may wait for the whole boot: the stream stays
        // buffered until the guest opens its end, and reconnecting would
        // leave half a handshake in it.
        let attempt = async {
            let mut agent = connect(&vm.dialer).await.ok()?;
            let info = agent.get_guest_info(GetGuestInfoRequest {}).await.ok()?;
            Some((agent, info.into_inner()))
        };
        tokio::select! {
            ready = tokio::time::timeout(remaining, attempt) => {
                if let Ok(Some(ready)) = ready {
                    return Ok(ready);
                }
            }
            exit = vm.process.wait() => return Err(died(exit)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
