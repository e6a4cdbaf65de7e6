//! The runtime's side of the agent API: a gRPC channel over the byte stream
//! a VM offers (a unix socket, or hybrid vsock), and the wait for the agent
//! of a booting VM to answer.

use std::path::Path;
use std::time::{Duration, Instant};

use podvisor_proto::agent_client::AgentClient;
use podvisor_proto::{GetGuestInfoRequest, GuestInfo, SERIAL_HELLO, SERIAL_LINE_MAX, SERIAL_READY};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::hypervisor::{AgentDialer, Vm, VmError};

pub type Agent = AgentClient<Channel>;

/// How long one serial handshake may wait for the agent's answer before
/// the connection is dropped and dialled again. An agent answers at once;
/// no answer means the hello went to a session that was ending (or the
/// guest is still booting), and a new connection starts a new session.
const SERIAL_ATTEMPT: Duration = Duration::from_secs(5);

/// How many bytes of what earlier connections left in the port a handshake
/// reads past before it gives up.
const SERIAL_STALE_MAX: usize = 4 << 20;

/// How long a reconnect may take before calls fail.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Opens one byte stream to the agent, trying for at most `patience`.
pub async fn dial(dialer: &AgentDialer, patience: Duration) -> std::io::Result<UnixStream> {
    let attempt = async {
        match dialer {
            AgentDialer::Unix(path) => UnixStream::connect(path).await,
            AgentDialer::Serial(path) => dial_serial(path, patience).await,
            AgentDialer::HybridVsock { socket, port } => dial_hybrid_vsock(socket, *port).await,
        }
    };
    tokio::time::timeout(patience, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the agent did not answer within {patience:?}"),
            ))
        })
}

async fn dial_hybrid_vsock(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
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

/// Connects to a virtio-serial chardev and opens a session with the hello
/// handshake, dialling again when an attempt gets no answer.
async fn dial_serial(path: &Path, patience: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + patience;
    loop {
        let stream = UnixStream::connect(path).await?;
        let attempt = SERIAL_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(attempt, serial_handshake(stream)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e),
            // No answer, or the VM closed the socket: a new connection.
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the agent did not answer the serial handshake within {patience:?}"),
                ))
            }
        }
    }
}

async fn serial_handshake(mut stream: UnixStream) -> std::io::Result<UnixStream> {
    let nonce = serial_nonce()?;
    // The leading newline ends whatever partial line is in the port.
    stream
        .write_all(format!("\n{SERIAL_HELLO} {nonce}\n").as_bytes())
        .await?;
    let expected = format!("{SERIAL_READY} {nonce}");
    // A byte at a time: what follows the answer is gRPC.
    let mut reader = BufReader::with_capacity(1, stream);
    let mut line = Vec::with_capacity(SERIAL_LINE_MAX);
    let mut read = 0usize;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(SERIAL_LINE_MAX as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.strip_suffix(b"\n") == Some(expected.as_bytes()) {
            return Ok(reader.into_inner());
        }
        read += n;
        if read > SERIAL_STALE_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no handshake answer in the first {SERIAL_STALE_MAX} bytes from the agent"),
            ));
        }
    }
}

/// A fresh nonce per connection, so no answer to an earlier hello passes.
fn serial_nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A client whose channel redials through `dialer` whenever it reconnects.
pub async fn connect(dialer: &AgentDialer) -> Result<Agent, tonic::transport::Error> {
    connect_within(dialer, CONNECT_PATIENCE).await
}

/// As [`connect`], the first dial waiting at most `patience`.
async fn connect_within(
    dialer: &AgentDialer,
    patience: Duration,
) -> Result<Agent, tonic::transport::Error> {
    let first = std::sync::atomic::AtomicBool::new(true);
    let dialer = dialer.clone();
    let first = std::sync::Arc::new(first);
    let channel = Endpoint::from_static("http://podvisor-agent")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            let patience = if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                patience
            } else {
                CONNECT_PATIENCE
            };
            async move {
                dial(&dialer, patience)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
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
        // The first dial may take the whole boot: what the runtime sends
        // stays buffered until the guest opens its end.
        let attempt = async {
            let mut agent = connect_within(&vm.dialer, remaining).await.ok()?;
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
