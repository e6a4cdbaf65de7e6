//! The stdio of one process: pipes or a pty on the agent's side, pumps that
//! move output into the process's [`OutputLog`], stdin writes and resizes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::AbortHandle;

use crate::error::{AgentError, Result};
use crate::output::{OutputLog, Stream};

/// The child's ends, handed to libcontainer for a process without a pty.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The agent's ends before the process exists.
pub struct PipeSet {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Makes the pipes for a process. Without `stdin` the child reads /dev/null.
pub fn pipes(stdin: bool) -> Result<(PipeSet, ChildStdio)> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys("pipe2", e));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (child_in, agent_in) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        let null = OpenOptions::new()
            .read(true)
            .open("/dev/null")
            .map_err(|e| AgentError::io("open /dev/null", e))?;
        (OwnedFd::from(null), None)
    };
    Ok((
        PipeSet {
            stdin: agent_in,
            stdout: out_r,
            stderr: err_r,
        },
        ChildStdio {
            stdin: child_in,
            stdout: out_w,
            stderr: err_w,
        },
    ))
}

enum StdinWriter {
    Pipe(pipe::Sender),
    Pty(Arc<PtyMaster>),
}

/// The agent's side of a running process's stdio.
pub struct ProcessIo {
    pub output: Arc<OutputLog>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    pty: Option<Arc<PtyMaster>>,
    pumps: Vec<AbortHandle>,
}

impl ProcessIo {
    /// Starts pumping a pipe set. Must run inside the tokio runtime.
    pub fn from_pipes(set: PipeSet) -> Result<Self> {
        let output = Arc::new(OutputLog::new(2));
        let receiver = |fd: OwnedFd| {
            pipe::Receiver::from_owned_fd(fd).map_err(|e| AgentError::io("register pipe", e))
        };
        let pumps = vec![
            spawn_pipe_pump(receiver(set.stdout)?, Stream::Stdout, output.clone()),
            spawn_pipe_pump(receiver(set.stderr)?, Stream::Stderr, output.clone()),
        ];
        let stdin = match set.stdin {
            Some(fd) => Some(StdinWriter::Pipe(
                pipe::Sender::from_owned_fd(fd).map_err(|e| AgentError::io("register pipe", e))?,
            )),
            None => None,
        };
        Ok(ProcessIo {
            output,
            stdin: tokio::sync::Mutex::new(stdin),
            pty: None,
            pumps,
        })
    }

    /// Starts pumping a pty master (stdout and stderr are one stream).
    pub fn from_pty(master: OwnedFd, stdin: bool) -> Result<Self> {
        let master = Arc::new(PtyMaster::new(master)?);
        let output = Arc::new(OutputLog::new(1));
        let pumps = vec![spawn_pty_pump(master.clone(), output.clone())];
        Ok(ProcessIo {
            output,
            stdin: tokio::sync::Mutex::new(stdin.then(|| StdinWriter::Pty(master.clone()))),
            pty: Some(master),
            pumps,
        })
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        let mut guard = self.stdin.lock().await;
        match guard.as_mut() {
            None => Err(AgentError::FailedPrecondition(
                "stdin is closed or was not requested".into(),
            )),
            Some(StdinWriter::Pipe(tx)) => {
                tx.write_all(data)
                    .await
                    .map_err(|e| AgentError::io("write stdin", e))?;
                Ok(data.len())
            }
            Some(StdinWriter::Pty(master)) => {
                master
                    .write_all(data)
                    .await
                    .map_err(|e| AgentError::io("write pty", e))?;
                Ok(data.len())
            }
        }
    }

    /// Delivers end of file: closes the pipe, or sends ^D on a pty.
    pub async fn close_stdin(&self) -> Result<()> {
        let mut guard = self.stdin.lock().await;
        if let Some(StdinWriter::Pty(master)) = guard.as_ref() {
            master
                .write_all(&[0x04])
                .await
                .map_err(|e| AgentError::io("write pty", e))?;
        }
        *guard = None;
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        match &self.pty {
            Some(master) => master.resize(rows, cols),
            None => Err(AgentError::FailedPrecondition(
                "the process has no terminal to resize".into(),
            )),
        }
    }

    /// Called when the process has exited: descendants that still hold its
    /// output open get `grace` to finish, then the output is closed so
    /// readers see end of file.
    pub async fn finish_after_exit(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.output.is_closed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.output.is_closed() {
            for pump in &self.pumps {
                if !pump.is_finished() {
                    pump.abort();
                    self.output.close_writer();
                }
            }
        }
        *self.stdin.lock().await = None;
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for pump in &self.pumps {
            pump.abort();
        }
    }
}

fn spawn_pipe_pump(mut rx: pipe::Receiver, stream: Stream, log: Arc<OutputLog>) -> AbortHandle {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            log.wait_for_space().await;
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => log.append(stream, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(%e, ?stream, "reading process output failed");
                    break;
                }
            }
        }
        log.close_writer();
    })
    .abort_handle()
}

fn spawn_pty_pump(master: Arc<PtyMaster>, log: Arc<OutputLog>) -> AbortHandle {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            log.wait_for_space().await;
            match master.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => log.append(Stream::Stdout, &buf[..n]),
                // EIO: every slave descriptor is closed, the pty's EOF.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    tracing::warn!(%e, "reading pty failed");
                    break;
                }
            }
        }
        log.close_writer();
    })
    .abort_handle()
}

/// The master side of a container's pty, non-blocking.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| AgentError::sys("fcntl", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| AgentError::sys("fcntl", e))?;
        Ok(PtyMaster {
            // SAFETY: the AsyncFd owns the descriptor, so it stays open for
            // as long as it is registered.
            fd: unsafe { AsyncFd::register(fd) }
                .map_err(|e| AgentError::io("register pty", e.into()))?,
        })
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return Err(AgentError::io("TIOCSWINSZ", io::Error::last_os_error()));
        }
        Ok(())
    }
}
