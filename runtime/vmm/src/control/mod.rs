//! Control API on a unix socket. One request per connection: the client
//! writes one line with a command and reads one line of JSON back.
//!
//! Commands: `status`, `pause`, `resume`, `shutdown [SECONDS]` (send the
//! guest Ctrl-Alt-Del; a guest that resets ends the VMM with 0, one that has
//! not after SECONDS (default 10) is stopped, also with 0), `kill` (stop at
//! once, exit 8), `counters`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `shutdown` waits for the guest by default.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: f64 = 10.0;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Pause,
    Resume,
    /// Graceful shutdown with this grace period.
    Shutdown(Duration),
    Kill,
    Counters,
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        let mut words = line.split_whitespace();
        let cmd = words.next()?;
        if cmd == "shutdown" {
            let secs = match words.next() {
                Some(w) => w
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)?,
                None => DEFAULT_SHUTDOWN_GRACE_SECS,
            };
            return Some(Request::Shutdown(Duration::from_secs_f64(secs.min(3600.0))));
        }
        if words.next().is_some() {
            return None;
        }
        match cmd {
            "status" => Some(Request::Status),
            "pause" => Some(Request::Pause),
            "resume" => Some(Request::Resume),
            "kill" => Some(Request::Kill),
            "counters" | "metrics" => Some(Request::Counters),
            _ => None,
        }
    }
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket, replacing a stale one left by a dead VMM.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts one pending client and reads its request. The client is
    /// expected to send right away; a slow one is dropped after a second.
    pub fn accept(&self) -> Option<(UnixStream, Option<Request>)> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let mut reader = BufReader::new(stream.try_clone().ok()?.take(256));
        let _ = reader.read_line(&mut line);
        Some((stream, Request::parse(&line)))
    }

    pub fn reply(mut stream: UnixStream, json: &str) {
        let _ = stream.write_all(json.as_bytes());
        let _ = stream.write_all(b"\n");
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends one request to a VMM's control socket and returns the reply line.
pub fn send_request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Request::parse("status\n"), Some(Request::Status));
        assert_eq!(Request::parse(" kill "), Some(Request::Kill));
        assert_eq!(Request::parse("metrics"), Some(Request::Counters));
        assert_eq!(Request::parse("reboot"), None);
        assert_eq!(
            Request::parse("shutdown 0.5"),
            Some(Request::Shutdown(Duration::from_millis(500)))
        );
        assert_eq!(
            Request::parse("shutdown"),
            Some(Request::Shutdown(Duration::from_secs(10)))
        );
        assert_eq!(Request::parse("shutdown soon"), None);
        assert_eq!(Request::parse("kill now"), None);
    }
}
