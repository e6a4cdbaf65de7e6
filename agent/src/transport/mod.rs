//! Where the agent listens: vsock, a virtio-serial port, or a unix socket.
//!
//! Each yields a stream of byte-stream connections for the gRPC server. A
//! virtio-serial port is one byte stream for the VM's lifetime, cut into
//! one session per runtime connection (see [`serial`]).

mod serial;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};
use tonic::transport::server::Connected;

/// A listen address: `vsock:PORT`, `serial:NAME` (or a /dev path) or
/// `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Vsock(u32),
    Serial(PathBuf),
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("endpoint {s:?} is not KIND:ADDRESS (vsock:1024, serial:NAME, unix:PATH)")
        })?;
        match kind {
            "vsock" => rest
                .parse()
                .map(Endpoint::Vsock)
                .map_err(|_| format!("vsock port {rest:?} is not a number")),
            "serial" if rest.starts_with('/') => Ok(Endpoint::Serial(rest.into())),
            "serial" if !rest.is_empty() => Ok(Endpoint::Serial(
                PathBuf::from("/dev/virtio-ports").join(rest),
            )),
            "unix" if rest.starts_with('/') => Ok(Endpoint::Unix(rest.into())),
            _ => Err(format!(
                "endpoint {s:?} is not vsock:PORT, serial:NAME or unix:/PATH"
            )),
        }
    }
}

/// One connection from the runtime.
pub enum Conn {
    Unix(UnixStream),
    Vsock(VsockStream),
    Serial(serial::Session),
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Vsock(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Serial(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Vsock(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Serial(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Vsock(s) => Pin::new(s).poll_flush(cx),
            Conn::Serial(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Vsock(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Serial(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The stream of connections the gRPC server serves.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<io::Result<Conn>>;

/// Listens on `endpoint` and returns the stream of connections.
pub async fn listen(endpoint: &Endpoint) -> io::Result<Incoming> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match endpoint {
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            tokio::spawn(async move {
                loop {
                    let conn = listener.accept().await.map(|(s, _)| Conn::Unix(s));
                    if !forward(&tx, conn).await {
                        return;
                    }
                }
            });
        }
        Endpoint::Vsock(port) => {
            let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, *port))?;
            tokio::spawn(async move {
                loop {
                    let conn = listener.accept().await.map(|(s, _)| Conn::Vsock(s));
                    if !forward(&tx, conn).await {
                        return;
                    }
                }
            });
        }
        Endpoint::Serial(path) => {
            let path = path.clone();
            tokio::spawn(async move {
                let port = loop {
                    match serial::SerialPort::open(&path) {
                        Ok(port) => break port,
                        Err(e) => {
                            if !forward(&tx, Err(e)).await {
                                return;
                            }
                        }
                    }
                };
                loop {
                    // One session at a time: the next hello is read once
                    // the server dropped this session.
                    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
                    let session = port.accept(ended_tx).await.map(Conn::Serial);
                    let accepted = session.is_ok();
                    if !forward(&tx, session).await {
                        return;
                    }
                    if accepted {
                        let _ = ended_rx.await;
                    }
                }
            });
        }
    }
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Hands a connection to the server; false once the server is gone.
async fn forward(tx: &tokio::sync::mpsc::Sender<io::Result<Conn>>, conn: io::Result<Conn>) -> bool {
    if let Err(e) = &conn {
        tracing::warn!(%e, "accepting a runtime connection failed; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tx.send(conn).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!("vsock:1024".parse(), Ok(Endpoint::Vsock(1024)));
        assert_eq!(
            "serial:podvisor.agent".parse(),
            Ok(Endpoint::Serial("/dev/virtio-ports/podvisor.agent".into()))
        );
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(Endpoint::Unix("/run/a.sock".into()))
        );
        for (text, why) in [
            (
                "unix:relative",
                "endpoint \"unix:relative\" is not vsock:PORT, serial:NAME or unix:/PATH",
            ),
            (
                "tcp:1",
                "endpoint \"tcp:1\" is not vsock:PORT, serial:NAME or unix:/PATH",
            ),
            ("vsock:x", "vsock port \"x\" is not a number"),
            ("1024", "endpoint \"1024\" is not KIND:ADDRESS"),
        ] {
            let err = text.parse::<Endpoint>().unwrap_err();
            assert!(err.starts_with(why), "{text}: {err}");
        }
    }
}
