//! Where the agent listens: vsock, a virtio-serial port, or a unix socket.
//!
//! Each yields a stream of byte-stream connections for the gRPC server. A
//! virtio-serial port is one stream for the VM's lifetime: when the runtime
//! hangs up (or restarts), the port is reopened and served again.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
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
    Serial(SerialPort),
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
                loop {
                    // A serial port carries one connection at a time: the
                    // next open waits until the server dropped this one.
                    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
                    let conn =
                        SerialPort::open_when_connected(path.clone())
                            .await
                            .map(|mut port| {
                                port._closed = Some(closed_tx);
                                Conn::Serial(port)
                            });
                    let opened = conn.is_ok();
                    if !forward(&tx, conn).await {
                        return;
                    }
                    if opened {
                        let _ = closed_rx.await;
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

/// `/dev/virtio-ports/NAME` is a udev-made link, and the guest has no udev:
/// find the port whose sysfs `name` matches and use its /dev node.
fn resolve_serial_port(path: &std::path::Path) -> io::Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    for entry in std::fs::read_dir("/sys/class/virtio-ports")?.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name:?}"),
    ))
}

/// A virtio-serial port, opened non-blocking once the host side is open.
pub struct SerialPort {
    fd: AsyncFd<OwnedFd>,
    /// Dropped with the port, which tells the listener to reopen it.
    _closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SerialPort {
    async fn open_when_connected(path: PathBuf) -> io::Result<SerialPort> {
        let path = resolve_serial_port(&path)?;
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: open just returned this descriptor.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // While the host end is closed the port polls as hung up; wait for
        // it without spinning on end-of-file reads, and without holding a
        // thread (the runtime must be able to stop while nobody connects).
        loop {
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                PollFlags::POLLIN,
            )];
            poll(&mut fds, PollTimeout::ZERO)?;
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if !revents.contains(PollFlags::POLLHUP) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(SerialPort {
            // SAFETY: the AsyncFd owns the descriptor, so it stays open for
            // as long as it is registered.
            fd: unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?,
            _closed: None,
        })
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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
        assert!("unix:relative".parse::<Endpoint>().is_err());
        assert!("tcp:1".parse::<Endpoint>().is_err());
        assert!("vsock:x".parse::<Endpoint>().is_err());
    }
}
