//! Buffered stdout/stderr of one process, readable from an offset.
//!
//! The runtime may disconnect (daemon restart) while a container keeps
//! writing, so output is held here until it has been delivered. Readers get
//! chunks from any offset still retained. When `capacity` bytes are waiting
//! undelivered the pumps stop reading, so a container with nobody reading
//! blocks on its pipe as it would on any pipe, instead of losing output.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug)]
pub struct Chunk {
    pub stream: Stream,
    pub offset: u64,
    pub at: SystemTime,
    pub data: Vec<u8>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// What a reader gets for its offset.
#[derive(Debug)]
pub enum Read {
    /// Chunks from the requested offset on; `dropped` bytes before the first
    /// were no longer retained.
    Data { chunks: Vec<Chunk>, dropped: u64 },
    /// Everything was read and the process closed its output.
    Eof,
    /// Nothing new yet.
    Pending,
}

struct State {
    chunks: VecDeque<Chunk>,
    /// Offset just past the last byte appended.
    end: u64,
    /// Highest offset any reader has been handed.
    delivered: u64,
    /// Writers still open (stdout, stderr or the pty).
    open_writers: usize,
}

pub struct OutputLog {
    state: Mutex<State>,
    /// Undelivered bytes at which the pumps pause.
    capacity: u64,
    /// Delivered bytes kept for readers that reconnect and re-read.
    retain: u64,
    data_ready: Notify,
    space_ready: Notify,
}

pub const DEFAULT_CAPACITY: u64 = 1 << 20;
pub const DEFAULT_RETAIN: u64 = 256 << 10;

impl OutputLog {
    pub fn new(writers: usize) -> Self {
        Self::with_limits(writers, DEFAULT_CAPACITY, DEFAULT_RETAIN)
    }

    pub fn with_limits(writers: usize, capacity: u64, retain: u64) -> Self {
        OutputLog {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                end: 0,
                delivered: 0,
                open_writers: writers,
            }),
            capacity,
            retain,
            data_ready: Notify::new(),
            space_ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends bytes read from the process.
    pub fn append(&self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut st = self.lock();
        let offset = st.end;
        st.end += data.len() as u64;
        st.chunks.push_back(Chunk {
            stream,
            offset,
            at: SystemTime::now(),
            data: data.to_vec(),
        });
        Self::trim(&mut st, self.retain);
        drop(st);
        self.data_ready.notify_waiters();
    }

    /// Drops delivered chunks beyond the retention window.
    fn trim(st: &mut State, retain: u64) {
        let keep_from = st.delivered.saturating_sub(retain);
        while st.chunks.front().is_some_and(|c| c.end() <= keep_from) {
            st.chunks.pop_front();
        }
    }

    /// Waits until the pump may read more (undelivered bytes under capacity).
    pub async fn wait_for_space(&self) {
        loop {
            let notified = self.space_ready.notified();
            {
                let st = self.lock();
                if st.end - st.delivered < self.capacity {
                    return;
                }
            }
            notified.await;
        }
    }

    /// One writer (pipe or pty) reached end of file.
    pub fn close_writer(&self) {
        let mut st = self.lock();
        st.open_writers = st.open_writers.saturating_sub(1);
        drop(st);
        self.data_ready.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().open_writers == 0
    }

    /// Offset just past the last byte appended so far.
    pub fn end(&self) -> u64 {
        self.lock().end
    }

    /// Returns what is available at `from` without waiting.
    #[cfg(test)]
    pub fn read_from(&self, from: u64) -> Read {
        self.read_inner(from, true)
    }

    /// `deliver`: what is returned counts as delivered (frees capacity,
    /// starts retention); an attached observer reads without it.
    fn read_inner(&self, from: u64, deliver: bool) -> Read {
        let mut st = self.lock();
        let oldest = st.chunks.front().map_or(st.end, |c| c.offset);
        let (from, dropped) = if from < oldest {
            (oldest, oldest - from)
        } else {
            (from.min(st.end), 0)
        };
        let mut chunks = Vec::new();
        for c in st.chunks.iter().filter(|c| c.end() > from) {
            // `from` is inside this chunk, so the skip is at most its length.
            let skip = usize::try_from(from.saturating_sub(c.offset)).expect("within a chunk");
            chunks.push(Chunk {
                stream: c.stream,
                offset: c.offset + skip as u64,
                at: c.at,
                data: c.data[skip..].to_vec(),
            });
        }
        if chunks.is_empty() {
            if st.open_writers == 0 {
                return Read::Eof;
            }
            return Read::Pending;
        }
        if deliver && st.end > st.delivered {
            st.delivered = st.end;
            Self::trim(&mut st, self.retain);
            self.space_ready.notify_waiters();
        }
        Read::Data { chunks, dropped }
    }

    /// Waits for data at `from`, end of file, or returns at once if either is
    /// already there.
    pub async fn read(&self, from: u64) -> Read {
        self.wait_read(from, true).await
    }

    /// Like [`OutputLog::read`] for an observer: nothing it gets counts as
    /// delivered.
    pub async fn observe(&self, from: u64) -> Read {
        self.wait_read(from, false).await
    }

    async fn wait_read(&self, from: u64, deliver: bool) -> Read {
        loop {
            let notified = self.data_ready.notified();
            match self.read_inner(from, deliver) {
                Read::Pending => notified.await,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(r: Read) -> (Vec<Chunk>, u64) {
        match r {
            Read::Data { chunks, dropped } => (chunks, dropped),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn reads_resume_from_any_retained_offset() {
        let log = OutputLog::new(1);
        log.append(Stream::Stdout, b"hello ");
        log.append(Stream::Stderr, b"world");
        let (chunks, dropped) = data(log.read_from(0));
        assert_eq!(dropped, 0);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].stream, Stream::Stderr);
        let (chunks, _) = data(log.read_from(8));
        assert_eq!(chunks[0].data, b"rld");
        assert_eq!(chunks[0].offset, 8);
        assert!(matches!(log.read_from(11), Read::Pending));
        log.close_writer();
        assert!(matches!(log.read_from(11), Read::Eof));
    }

    #[test]
    fn delivered_bytes_beyond_retention_are_reported_dropped() {
        let log = OutputLog::with_limits(1, 1 << 20, 4);
        log.append(Stream::Stdout, b"0123");
        log.append(Stream::Stdout, b"4567");
        data(log.read_from(0));
        log.append(Stream::Stdout, b"89");
        let (chunks, dropped) = data(log.read_from(0));
        assert_eq!(dropped, 4);
        assert_eq!(chunks[0].offset, 4);
    }

    #[test]
    fn observers_neither_free_capacity_nor_trim() {
        let log = OutputLog::with_limits(1, 4, 0);
        log.append(Stream::Stdout, b"full");
        assert_eq!(log.end(), 4);
        match log.read_inner(0, false) {
            Read::Data { chunks, .. } => assert_eq!(chunks[0].data, b"full"),
            other => panic!("expected data, got {other:?}"),
        }
        // The ordinary reader still gets everything from 0.
        let (chunks, dropped) = data(log.read_from(0));
        assert_eq!((chunks[0].data.as_slice(), dropped), (&b"full"[..], 0));
    }

    #[tokio::test]
    async fn pump_waits_while_undelivered_output_is_at_capacity() {
        let log = std::sync::Arc::new(OutputLog::with_limits(1, 4, 0));
        log.append(Stream::Stdout, b"full");
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_for_space().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "pump must pause at capacity");
        data(log.read_from(0));
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("delivery frees space")
            .unwrap();
    }
}
