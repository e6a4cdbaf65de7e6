//! PortForward: one TCP connection to a port on the guest's loopback (the
//! pod's network namespace is the VM's), its bytes carried in gRPC frames.
//!
//! Each direction ends on its own: the runtime's `eof` frame (or the end of
//! its request stream) half-closes the socket's write side, and the socket's
//! end of file becomes our `eof` frame. The response stream ends once both
//! directions are done, so a server that keeps reading after it stopped
//! writing still gets everything.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use podvisor_proto::PortForwardFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

pub type Frames = Pin<Box<dyn Stream<Item = Result<PortForwardFrame, Status>> + Send>>;

/// Bytes per frame towards the runtime.
const CHUNK: usize = 64 * 1024;

/// Reads the first frame, connects, and starts copying.
pub async fn open(mut inbound: Streaming<PortForwardFrame>) -> Result<Frames, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("port forward: no frame naming the port"))?;
    let port = u16::try_from(first.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!("port forward: invalid port {}", first.port))
        })?;
    let socket = connect(port).await?;
    tracing::debug!(port, "port forward connected");
    let (reader, writer) = socket.into_split();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let up = upstream(first, inbound, writer);
        let down = downstream(reader, &tx);
        // Both directions finish before `tx` drops and our stream ends.
        tokio::join!(up, down);
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// 127.0.0.1 first, then ::1: a server may listen on either loopback.
async fn connect(port: u16) -> Result<TcpStream, Status> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let first_err = match TcpStream::connect(v4).await {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match TcpStream::connect(v6).await {
        Ok(s) => Ok(s),
        Err(_) => Err(Status::unavailable(format!(
            "connecting to port {port} in the pod: {first_err}"
        ))),
    }
}

/// Runtime to socket: data frames are written in order; `eof` or the end of
/// the request stream half-closes; a broken call drops the socket.
async fn upstream(
    first: PortForwardFrame,
    mut inbound: Streaming<PortForwardFrame>,
    mut writer: OwnedWriteHalf,
) {
    let mut frame = first;
    loop {
        if !frame.data.is_empty() && writer.write_all(&frame.data).await.is_err() {
            return;
        }
        if frame.eof {
            break;
        }
        frame = match inbound.message().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(error = %status.message(), "port forward call broke");
                return;
            }
        };
    }
    let _ = writer.shutdown().await;
}

/// Socket to runtime, then one `eof` frame.
async fn downstream(
    mut reader: OwnedReadHalf,
    tx: &mpsc::Sender<Result<PortForwardFrame, Status>>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let frame = match reader.read(&mut buf).await {
            Ok(0) => PortForwardFrame {
                eof: true,
                ..Default::default()
            },
            Ok(n) => PortForwardFrame {
                data: buf[..n].to_vec(),
                ..Default::default()
            },
            Err(e) => {
                let _ = tx
                    .send(Err(Status::aborted(format!("reading from the port: {e}"))))
                    .await;
                return;
            }
        };
        let eof = frame.eof;
        if tx.send(Ok(frame)).await.is_err() || eof {
            return;
        }
    }
}
