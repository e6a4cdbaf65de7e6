//! The agent's log writer: straight `write(2)` calls on stderr.
//!
//! libcontainer forks a container's processes from this multi-threaded
//! agent and logs in them before they exec. std's `Stderr` takes a lock on
//! every write; a fork while another thread held it would leave the child
//! blocked on that lock forever (and the agent waiting on the child). A
//! raw write per formatted event takes no lock.

use std::io::{self, Write};
use std::os::fd::AsFd;

/// Writes each buffer to fd 2 with as many `write(2)` calls as it takes.
pub struct RawStderr;

impl Write for RawStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(io::stderr().as_fd(), buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                result => return result.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
