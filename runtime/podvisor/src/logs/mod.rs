//! Container logs in the CRI format kubelet reads:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`, one record
//! per line. A line longer than [`MAX_LINE`] is split into `P` (partial)
//! records and a final `F`; output that ends without a newline ends in F.

mod path;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

pub use path::{LogPath, LogPathError};

/// Longest line content in one record, as containerd's default.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Writes one container's log file; keeps each stream's unfinished line
/// until its newline arrives.
pub struct CriLog {
    path: LogPath,
    file: File,
    pending: [Vec<u8>; 2],
}

impl CriLog {
    pub fn open(path: LogPath) -> Result<CriLog, LogPathError> {
        Ok(CriLog {
            file: path.open()?,
            path,
            pending: [Vec::new(), Vec::new()],
        })
    }

    pub fn path(&self) -> PathBuf {
        self.path.full()
    }

    fn record(
        &mut self,
        stream: Stream,
        at: SystemTime,
        tag: char,
        content: &[u8],
    ) -> std::io::Result<()> {
        let ts = DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.push(b' ');
        line.push(tag as u8);
        line.push(b' ');
        line.extend_from_slice(content);
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Appends output of `stream` read at `at`.
    pub fn write(
        &mut self,
        stream: Stream,
        at: SystemTime,
        mut data: &[u8],
    ) -> std::io::Result<()> {
        while !data.is_empty() {
            let pending = &mut self.pending[stream.index()];
            let room = MAX_LINE - pending.len();
            match data.iter().take(room).position(|&b| b == b'\n') {
                Some(end) => {
                    pending.extend_from_slice(&data[..end]);
                    data = &data[end + 1..];
                    let line = std::mem::take(pending);
                    self.record(stream, at, 'F', &line)?;
                }
                None if data.len() >= room => {
                    pending.extend_from_slice(&data[..room]);
                    data = &data[room..];
                    let part = std::mem::take(pending);
                    self.record(stream, at, 'P', &part)?;
                }
                None => {
                    pending.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// The output ended: what is left of each stream's last line is written.
    pub fn finish(&mut self, at: SystemTime) -> std::io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream.index()]);
            if !rest.is_empty() {
                self.record(stream, at, 'F', &rest)?;
            }
        }
        self.file.flush()
    }

    /// ReopenContainerLog: kubelet rotated the file away; start a new one
    /// at the same path.
    pub fn reopen(&mut self) -> Result<(), LogPathError> {
        let path = self.path.full();
        self.file.flush().map_err(|source| LogPathError::Io {
            path: path.clone(),
            source,
        })?;
        self.file = self.path.open()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn open(dir: &tempfile::TempDir, rel: &str) -> (PathBuf, CriLog) {
        let path = LogPath::new(dir.path().to_str().unwrap(), rel).unwrap();
        (path.full(), CriLog::open(path).unwrap())
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(5)
    }

    #[test]
    fn writes_full_lines_per_stream_with_nanosecond_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut log) = open(&dir, "pod/c/0.log");
        log.write(Stream::Stdout, at(0), b"hel").unwrap();
        log.write(Stream::Stderr, at(1), b"oops\n").unwrap();
        log.write(Stream::Stdout, at(2), b"lo\nworld\n").unwrap();
        log.finish(at(3)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "1970-01-01T00:00:01.000000005Z stderr F oops\n\
             1970-01-01T00:00:02.000000005Z stdout F hello\n\
             1970-01-01T00:00:02.000000005Z stdout F world\n"
        );
    }

    #[test]
    fn long_lines_are_split_into_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut log) = open(&dir, "0.log");
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        log.write(Stream::Stdout, at(0), &long).unwrap();
        log.write(Stream::Stdout, at(0), b"tail without newline")
            .unwrap();
        log.finish(at(1)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F", "F"]);
        let lengths: Vec<usize> = text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap().len())
            .collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10, 20]);
    }

    #[test]
    fn reopen_starts_a_new_file_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut log) = open(&dir, "0.log");
        log.write(Stream::Stdout, at(0), b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, at(0), b"two\n").unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("stdout F two\n"));
        assert!(std::fs::read_to_string(dir.path().join("0.log.1"))
            .unwrap()
            .ends_with("stdout F one\n"));
    }

    #[test]
    fn reopen_refuses_a_symlink_put_where_the_rotated_file_was() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (path, mut log) = open(&dir, "0.log");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.log"), &path).unwrap();
        let err = log.reopen().unwrap_err();
        assert!(matches!(err, LogPathError::Symlink { .. }), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
