//! Receives a container's pty master over the OCI console socket: libcontainer
//! creates the pty inside the container and sends the master to us.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::error::{AgentError, Result};

/// A listening console socket; [`ConsoleSocket::receive`] yields the master.
pub struct ConsoleSocket {
    path: PathBuf,
    receiver: JoinHandle<std::io::Result<OwnedFd>>,
}

/// How long to wait for libcontainer to connect once the build returned.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl ConsoleSocket {
    pub fn listen(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).map_err(|e| AgentError::io("bind console socket", e))?;
        let receiver = std::thread::spawn(move || receive_master(listener));
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            receiver,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the master; call after the container build succeeded.
    pub fn receive(self) -> Result<OwnedFd> {
        let result = self
            .receiver
            .join()
            .map_err(|_| AgentError::runtime("console socket", "receiver thread panicked"))?;
        let _ = std::fs::remove_file(&self.path);
        result.map_err(|e| AgentError::io("receive pty master", e))
    }

    /// Abandons the socket after a failed build.
    pub fn abandon(self) {
        // Unblock the receiver if libcontainer never connected.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = self.receiver.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_master(listener: UnixListener) -> std::io::Result<OwnedFd> {
    let fd = PollFd::new(std::os::fd::AsFd::as_fd(&listener), PollFlags::POLLIN);
    let timeout = PollTimeout::try_from(RECEIVE_TIMEOUT).unwrap_or(PollTimeout::MAX);
    if poll(&mut [fd], timeout)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the container never connected to its console socket",
        ));
    }
    let (stream, _) = listener.accept()?;
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&raw) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "console socket message carried no descriptor",
    ))
}
