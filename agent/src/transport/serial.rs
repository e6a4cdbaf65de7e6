//! The agent's end of a virtio-serial port, cut into sessions.
//!
//! The port is opened once for the agent's life. Closing and reopening it
//! per connection fails with EBUSY while any process forked from the agent
//! still holds the descriptor (libcontainer forks a container's init, which
//! keeps every descriptor until it execs: a Created container holds it).
//!
//! Each session registers its own duplicate of the descriptor with the
//! reactor: tokio keeps a hang-up as a final state of a registration, and
//! the port hangs up between every two runtime connections.
//!
//! A port carries bytes, not connections: what one runtime connection left
//! unread must not reach the next. Each session starts with the runtime's
//! `SERIAL_HELLO <nonce>` line and the agent's `SERIAL_READY <nonce>` line
//! (the runtime discards everything before it), and ends when the host side
//! closes: reads then see end-of-file and writes fail, so nothing an ended
//! session still wanted to write is held back for the next runtime.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use podvisor_proto::{SERIAL_HELLO, SERIAL_LINE_MAX, SERIAL_READY};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often a port whose host side is closed is looked at again: the port
/// polls as hung up until the runtime connects, so there is no edge to wait
/// for.
const HOST_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A virtio-serial port, open non-blocking.
pub struct SerialPort {
    fd: OwnedFd,
}

impl SerialPort {
    pub fn open(path: &Path) -> io::Result<SerialPort> {
        let path = resolve(path)?;
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: open just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SerialPort { fd })
    }

    /// A fresh reactor registration of the port, for one session.
    fn register(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let fd = self.fd.try_clone()?;
        // SAFETY: the AsyncFd owns this duplicate, so it stays open for as
        // long as it is registered.
        unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
    }

    /// Waits for a runtime to connect and say hello, answers it, and
    /// returns the session. `ended` is dropped with the session.
    pub async fn accept(&self, ended: tokio::sync::oneshot::Sender<()>) -> io::Result<Session> {
        loop {
            while !host_connected(self.fd.as_fd())? {
                tokio::time::sleep(HOST_POLL_INTERVAL).await;
            }
            let fd = self.register()?;
            let Some(nonce) = read_hello(&fd).await? else {
                continue; // the runtime left before saying hello
            };
            match write_all(&fd, format!("\n{SERIAL_READY} {nonce}\n").as_bytes()).await {
                Ok(()) => {
                    tracing::info!(%nonce, "runtime connected over the serial port");
                    return Ok(Session {
                        fd,
                        ended: false,
                        _ended: ended,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether the runtime's side is open (the port polls as hung up when it
/// is not).
fn host_connected(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO)?;
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    Ok(!revents.contains(PollFlags::POLLHUP))
}

/// One read; `Ok(None)` when nothing is there now.
fn read_now(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match nix::unistd::read(fd.get_ref().as_raw_fd(), buf) {
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard
            .try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from))
        {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) if !host_connected(fd.get_ref().as_fd())? => return Err(host_gone()),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Reads until a hello line; `None` if the host side closed first. When
/// several hellos are queued (a runtime that gave up and dialled again)
/// the latest is the one still waiting.
async fn read_hello(fd: &AsyncFd<OwnedFd>) -> io::Result<Option<String>> {
    let mut scanner = HelloScanner::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = read(fd, &mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        scanner.feed(&buf[..n]);
        if scanner.latest.is_some() {
            while let Some(n) = read_now(fd, &mut buf)? {
                if n == 0 {
                    return Ok(None);
                }
                scanner.feed(&buf[..n]);
            }
            return Ok(scanner.latest.take());
        }
    }
}

fn host_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the runtime closed the serial port",
    )
}

/// Finds hello lines in a byte stream that may hold anything else.
#[derive(Default)]
struct HelloScanner {
    line: Vec<u8>,
    /// The current line outgrew any hello: skip to its end.
    overlong: bool,
    latest: Option<String>,
}

impl HelloScanner {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                if !self.overlong {
                    if let Some(nonce) = parse_line(&self.line, SERIAL_HELLO) {
                        self.latest = Some(nonce);
                    }
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < SERIAL_LINE_MAX {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
    }
}

/// `KEYWORD <nonce>` with a well-formed nonce, or None.
fn parse_line(line: &[u8], keyword: &str) -> Option<String> {
    let rest = line.strip_prefix(keyword.as_bytes())?.strip_prefix(b" ")?;
    let valid = (1..=32).contains(&rest.len())
        && rest
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    valid.then(|| String::from_utf8_lossy(rest).into_owned())
}

/// One runtime connection over the port.
pub struct Session {
    fd: AsyncFd<OwnedFd>,
    /// The host side closed: reads see end-of-file, writes fail.
    ended: bool,
    _ended: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        tracing::info!("serial session ended");
    }
}

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = match this.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => {
                    // The port reads empty only when the host side closed.
                    tracing::info!("the runtime closed the serial port");
                    this.ended = true;
                    return Poll::Ready(Ok(()));
                }
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

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(host_gone()));
        }
        loop {
            let mut guard = match this.fd.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                // A port whose host side closed never becomes writable for
                // this session: end it rather than wait for the next one.
                Err(_would_block) => match host_connected(this.fd.get_ref().as_fd()) {
                    Ok(true) => continue,
                    Ok(false) => {
                        tracing::info!(
                            "the runtime closed the serial port while output was pending"
                        );
                        this.ended = true;
                        return Poll::Ready(Err(host_gone()));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                },
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

/// `/dev/virtio-ports/NAME` is a udev-made link, and the guest has no udev:
/// find the port whose sysfs `name` matches and use its /dev node.
fn resolve(path: &Path) -> io::Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<String> {
        let mut s = HelloScanner::default();
        for c in chunks {
            s.feed(c);
        }
        s.latest
    }

    #[test]
    fn finds_a_hello_after_what_an_earlier_connection_left() {
        // An HTTP/2 preface and a frame header, then the hello on its own
        // line (the runtime sends a newline first).
        let stale = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
        assert_eq!(
            scan(&[stale, b"\nPODVISOR-HELLO 1f", b"a0\n"]),
            Some("1fa0".into())
        );
    }

    #[test]
    fn takes_the_latest_of_several_hellos() {
        assert_eq!(
            scan(&[b"\nPODVISOR-HELLO aa\n\nPODVISOR-HELLO bb\n"]),
            Some("bb".into())
        );
    }

    #[test]
    fn refuses_malformed_and_unfinished_hellos() {
        assert_eq!(scan(&[b"\nPODVISOR-HELLO aa"]), None, "no newline yet");
        assert_eq!(scan(&[b"\nPODVISOR-HELLO XYZ\n"]), None, "not hex");
        assert_eq!(scan(&[b"\nPODVISOR-HELLO \n"]), None, "empty nonce");
        assert_eq!(
            scan(&[b"\nPODVISOR-READY aa\n"]),
            None,
            "the agent's own line"
        );
        assert_eq!(
            scan(&[b"garbagePODVISOR-HELLO aa\n"]),
            None,
            "not at a line start"
        );
        let long = [b'a'; 100];
        assert_eq!(
            scan(&[b"\nPODVISOR-HELLO ", &long, b"\n"]),
            None,
            "an overlong line is skipped whole"
        );
        assert_eq!(
            scan(&[b"\nPODVISOR-HELLO ", &long, b"\nPODVISOR-HELLO 0c\n"]),
            Some("0c".into()),
            "and the next line is read"
        );
    }
}
