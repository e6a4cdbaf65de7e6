//! Exec and Attach over SPDY: the client opens one stream per channel,
//! named by its `streamType` header (error, stdin, stdout, stderr, resize).
//!
//! Versions, as negotiated in `X-Stream-Protocol-Version`: they share the
//! framing and differ in what the server does with it. v3 adds the resize
//! stream; v4 writes a JSON `Status` (with the exit code) on the error
//! stream where v1-v3 write its message as plain text. v1 is what a
//! client that offers no version speaks.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::remotecommand::{status_json, status_text, ClientIo, Outcome, Output, SizeDecoder};
use super::remotecommand::{StreamOptions, TermSize};
use super::spdy::{self, Stream, StreamWriter};

/// Ours, most preferred first.
pub const PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client has to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    /// "" is what a client that negotiated nothing speaks.
    pub fn of(protocol: &str) -> Option<Version> {
        Some(match protocol {
            "" | "channel.k8s.io" => Version::V1,
            "v2.channel.k8s.io" => Version::V2,
            "v3.channel.k8s.io" => Version::V3,
            "v4.channel.k8s.io" => Version::V4,
            _ => return None,
        })
    }
}

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, opts: StreamOptions, version: Version) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!(opts.tty && version >= Version::V3) || self.resize.is_some())
    }

    fn take(&mut self, stream: Stream) {
        let slot = match stream.headers.get("streamtype").unwrap_or("") {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            other => {
                tracing::debug!(stream_type = other, "ignoring an unknown stream");
                return;
            }
        };
        *slot = Some(stream);
    }
}

/// Serves one upgraded connection: gathers the streams, runs the command
/// through `run`, and reports how it ended.
pub async fn serve<IO, F, Fut>(io: IO, version: Version, opts: StreamOptions, run: F)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    F: FnOnce(ClientIo) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (session, mut incoming) = match spdy::serve(io) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%e, "starting a SPDY session");
            return;
        }
    };
    let mut streams = Streams::default();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !streams.complete(opts, version) {
            match incoming.recv().await {
                Some(s) => streams.take(s),
                None => return false,
            }
        }
        true
    })
    .await;
    if gathered != Ok(true) {
        tracing::debug!("the client did not open its streams");
        session.close().await;
        return;
    }
    let error = streams.error.take().map(|s| s.tx);
    let stdout = streams.stdout.take().map(|s| s.tx);
    let stderr = streams.stderr.take().map(|s| s.tx);

    let (out_tx, out_rx) = mpsc::channel(16);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    // The session's end (the client hung up) ends the writer, which tells
    // the command the client is gone.
    tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            tracing::debug!(id = s.id, "ignoring a stream opened late");
        }
        let _ = gone_tx.send(());
    });
    let writer = tokio::spawn(write_output(out_rx, stdout, stderr, gone_rx));
    let io = ClientIo {
        stdin: streams.stdin.take().map(|s| s.rx),
        resize: streams.resize.take().map(|s| sizes(s.rx)),
        output: out_tx,
    };
    let outcome = run(io).await;
    let outputs = writer.await.ok().flatten();
    // The status goes out before stdout and stderr end: a v1 client stops
    // at their end and reports the error stream only if it ended first.
    if let Some(error) = error {
        let message = if version >= Version::V4 {
            status_json(&outcome)
        } else {
            status_text(&outcome)
        };
        if !message.is_empty() {
            let _ = error.write(Bytes::from(message)).await;
        }
        let _ = error.finish().await;
    }
    for w in outputs.into_iter().flat_map(|(o, e)| [o, e]).flatten() {
        let _ = w.finish().await;
    }
    session.close().await;
}

/// Output to the client's streams until the command's side is done; gives
/// the streams back for their FIN, or None when the client is gone.
async fn write_output(
    mut rx: mpsc::Receiver<Output>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    mut gone: tokio::sync::oneshot::Receiver<()>,
) -> Option<(Option<StreamWriter>, Option<StreamWriter>)> {
    loop {
        let output = tokio::select! {
            o = rx.recv() => o,
            _ = &mut gone => return None,
        };
        let sent = match output {
            None => break,
            Some(Output::Stdout(data)) => match &stdout {
                Some(w) => w.write(data).await,
                None => Ok(()),
            },
            Some(Output::Stderr(data)) => match &stderr {
                Some(w) => w.write(data).await,
                None => Ok(()),
            },
        };
        if sent.is_err() {
            return None;
        }
    }
    Some((stdout, stderr))
}

/// Resize stream bytes to sizes.
pub fn sizes(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (tx, out) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut decoder = SizeDecoder::default();
        while let Some(data) = rx.recv().await {
            for size in decoder.push(&data) {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    out
}
