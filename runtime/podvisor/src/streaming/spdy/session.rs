//! The server side of one SPDY/3.1 session: the client opens streams
//! (SYN_STREAM, odd ids), we reply to each at once, and both sides send
//! data until FIN or RST_STREAM.
//!
//! Flow control: the Kubernetes clients (spdystream) neither send
//! WINDOW_UPDATE nor honour it, so we send data without waiting for window
//! credit and rely on TCP for back-pressure; we still grant credit for
//! what we receive, for peers that do count. A stream whose reader is slow
//! stalls the session's reader, as it does in those clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, Frame, FrameError, FLAG_FIN, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM};
use super::headers::{HeaderError, Headers, Packer, Unpacker};

/// Streams a client may have open at once.
const MAX_STREAMS: usize = 1024;
/// Data frames buffered per stream before the session's reader waits.
const STREAM_QUEUE: usize = 16;
/// Largest data frame we send.
const MAX_DATA: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Headers(#[from] HeaderError),
    #[error("the session is closed")]
    Closed,
    #[error("session i/o: {0}")]
    Io(#[from] std::io::Error),
}

enum Out {
    Frame(Frame),
    Reply { stream: u32 },
    Shutdown,
}

/// A stream the client opened: its headers, what it sends us, and our way
/// back to it.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Ends at the client's FIN or RST_STREAM.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    reset: Arc<AtomicBool>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` in frames of at most 64 KiB.
    pub async fn write(&self, mut data: Bytes) -> Result<(), SessionError> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            self.send(chunk, false).await?;
        }
        Ok(())
    }

    /// Our half of the stream ends (an empty data frame with FIN).
    pub async fn finish(&self) -> Result<(), SessionError> {
        self.send(Bytes::new(), true).await
    }

    async fn send(&self, data: Bytes, fin: bool) -> Result<(), SessionError> {
        if self.reset.load(Ordering::Relaxed) {
            return Err(SessionError::Closed);
        }
        let frame = Frame::Data {
            stream: self.id,
            fin,
            data,
        };
        self.out
            .send(Out::Frame(frame))
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Abandons the stream (RST_STREAM CANCEL).
    pub async fn reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
        let frame = Frame::RstStream {
            stream: self.id,
            status: frame::RST_CANCEL,
        };
        let _ = self.out.send(Out::Frame(frame)).await;
    }
}

/// How long a closed session waits for the client to hang up.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Our handle on a running session.
#[derive(Clone)]
pub struct Session {
    out: mpsc::Sender<Out>,
    reader: tokio::task::AbortHandle,
}

impl Session {
    /// GOAWAY, then our write side closes once everything queued is out;
    /// a client that does not hang up is cut off after a while.
    pub async fn close(&self) {
        let goaway = Frame::GoAway {
            last_stream: 0,
            status: 0,
        };
        let _ = self.out.send(Out::Frame(goaway)).await;
        let _ = self.out.send(Out::Shutdown).await;
        let reader = self.reader.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            reader.abort();
        });
    }
}

/// Starts serving `io`; new streams arrive on the receiver, which ends
/// when the client goes away.
pub fn serve<IO>(io: IO) -> Result<(Session, mpsc::Receiver<Stream>), SessionError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (new_tx, new_rx) = mpsc::channel(64);
    let packer = Packer::new()?;
    tokio::spawn(async move {
        if let Err(e) = write_loop(writer, out_rx, packer).await {
            tracing::debug!(%e, "SPDY session writer ended");
        }
    });
    let out = out_tx.clone();
    let reader = tokio::spawn(async move {
        if let Err(e) = read_loop(reader, out, new_tx).await {
            tracing::debug!(%e, "SPDY session reader ended");
        }
    })
    .abort_handle();
    Ok((
        Session {
            out: out_tx,
            reader,
        },
        new_rx,
    ))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Out>,
    mut packer: Packer,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::with_capacity(MAX_DATA + 64);
    while let Some(first) = rx.recv().await {
        // Batch whatever else is queued into one write.
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => frame::encode(&f, &mut buf),
                Out::Reply { stream } => {
                    let block = packer.pack(&Headers::default())?;
                    frame::encode(
                        &Frame::SynReply {
                            stream,
                            fin: false,
                            block,
                        },
                        &mut buf,
                    );
                }
                Out::Shutdown => {
                    io.write_all(&buf).await?;
                    io.flush().await?;
                    io.shutdown().await?;
                    return Ok(());
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        io.write_all(&buf).await?;
        io.flush().await?;
        buf.clear();
    }
    Ok(())
}

struct Open {
    data: mpsc::Sender<Bytes>,
    reset: Arc<AtomicBool>,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    out: mpsc::Sender<Out>,
    new_streams: mpsc::Sender<Stream>,
) -> Result<(), SessionError> {
    let mut unpacker = Unpacker::new();
    let mut open: HashMap<u32, Open> = HashMap::new();
    let mut last_id = 0u32;
    let mut buf = BytesMut::with_capacity(128 * 1024);
    let send = |f: Frame| {
        let out = out.clone();
        async move {
            out.send(Out::Frame(f))
                .await
                .map_err(|_| SessionError::Closed)
        }
    };
    loop {
        let frame = loop {
            if let Some(f) = frame::decode(&mut buf)? {
                break f;
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                flags,
                block,
                ..
            } => {
                // The header stream must be inflated even for a refused
                // stream, or the next block will not decode.
                let headers = unpacker.unpack(&block)?;
                if stream % 2 == 0 || stream <= last_id {
                    send(Frame::RstStream {
                        stream,
                        status: RST_PROTOCOL_ERROR,
                    })
                    .await?;
                    continue;
                }
                last_id = stream;
                if open.len() >= MAX_STREAMS {
                    send(Frame::RstStream {
                        stream,
                        status: RST_REFUSED_STREAM,
                    })
                    .await?;
                    continue;
                }
                out.send(Out::Reply { stream })
                    .await
                    .map_err(|_| SessionError::Closed)?;
                let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
                let reset = Arc::new(AtomicBool::new(false));
                if flags & FLAG_FIN == 0 {
                    open.insert(
                        stream,
                        Open {
                            data: data_tx,
                            reset: reset.clone(),
                        },
                    );
                }
                let s = Stream {
                    id: stream,
                    headers,
                    rx: data_rx,
                    tx: StreamWriter {
                        id: stream,
                        out: out.clone(),
                        reset,
                    },
                };
                if new_streams.send(s).await.is_err() {
                    return Ok(());
                }
            }
            Frame::Data { stream, fin, data } => {
                // A DATA frame's length field is 24 bits: this always fits.
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                if let Some(o) = open.get(&stream) {
                    if !data.is_empty() {
                        // A consumer that went away just loses its data.
                        let _ = o.data.send(data).await;
                    }
                }
                if len > 0 {
                    send(Frame::WindowUpdate { stream, delta: len }).await?;
                    send(Frame::WindowUpdate {
                        stream: 0,
                        delta: len,
                    })
                    .await?;
                }
                if fin {
                    open.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(o) = open.remove(&stream) {
                    o.reset.store(true, Ordering::Relaxed);
                }
            }
            Frame::Headers { block, .. } | Frame::SynReply { block, .. } => {
                // Nothing to act on, but the zlib stream must advance.
                unpacker.unpack(&block)?;
            }
            // Client pings have odd ids; answer them. Ours we never send.
            Frame::Ping { id } if id % 2 == 1 => send(Frame::Ping { id }).await?,
            Frame::GoAway { .. } => return Ok(()),
            Frame::Ping { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
}
