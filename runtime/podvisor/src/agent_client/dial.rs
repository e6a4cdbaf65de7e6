//! Opening one byte stream to an agent: a unix socket, a virtio-serial
//! chardev with the hello handshake, or Firecracker-style hybrid vsock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvisor_proto::{SERIAL_HELLO, SERIAL_LINE_MAX, SERIAL_READY};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How the runtime reaches the agent of a running VM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum AgentDialer {
    /// A unix socket whose stream is the agent's, as it is.
    Unix(PathBuf),
    /// qemu's virtio-serial chardev socket: one byte stream for the VM's
    /// life, each connection opened by the hello handshake of
    /// `podvisor_proto::SERIAL_HELLO`.
    Serial(PathBuf),
    /// Firecracker-style hybrid vsock: connect, send `CONNECT <port>\n`,
    /// read `OK <n>\n`, then the stream is the agent's.
    HybridVsock { socket: PathBuf, port: u32 },
}

/// How long one serial handshake may wait for the agent's answer before
/// the connection is dropped and dialled again. An agent answers at once;
/// no answer means the hello went to a session that was ending (or the
/// guest is still booting), and a new connection starts a new session.
const SERIAL_ATTEMPT: Duration = Duration::from_secs(5);

/// How many bytes of what earlier connections left in the port a handshake
/// reads past before it gives up.
const SERIAL_STALE_MAX: usize = 4 << 20;

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
