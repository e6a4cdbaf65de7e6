//! Exec and Attach over WebSocket: every message starts with its channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize). The `base64`
//! variants send text messages: the channel as an ASCII digit, then the
//! data in base64. v4 and v5 put a JSON `Status` on the error channel
//! (older ones plain text); v5 adds channel 255, by which the client closes
//! one of its channels (stdin: end of file).

use std::future::Future;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::remotecommand::StreamOptions;
use super::remotecommand::{status_json, status_text, ClientIo, Outcome, Output, SizeDecoder};

/// Ours, most preferred first.
pub const PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialect {
    /// Text frames with base64 data.
    pub base64: bool,
    /// JSON Status on the error channel (v4, v5).
    pub status_json: bool,
    /// Channel 255 closes a channel (v5).
    pub close: bool,
}

impl Dialect {
    /// "" (no subprotocol) is the plain binary channel protocol.
    pub fn of(protocol: &str) -> Option<Dialect> {
        let (base64, status_json, close) = match protocol {
            "v5.channel.k8s.io" => (false, true, true),
            "v4.channel.k8s.io" => (false, true, false),
            "v4.base64.channel.k8s.io" => (true, true, false),
            "" | "channel.k8s.io" => (false, false, false),
            "base64.channel.k8s.io" => (true, false, false),
            _ => return None,
        };
        Some(Dialect {
            base64,
            status_json,
            close,
        })
    }

    fn message(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// (channel, data) of a client message; None for what carries none.
    fn parse(&self, message: Message) -> Option<(u8, Vec<u8>)> {
        match message {
            Message::Binary(b) if !self.base64 && !b.is_empty() => Some((b[0], b[1..].to_vec())),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let bytes = t.as_bytes();
                let channel = bytes[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&bytes[1..])
                    .ok()?;
                Some((channel, data))
            }
            // The close signal is binary even in base64 dialects.
            Message::Binary(b) if b.len() >= 2 && b[0] == CLOSE => Some((CLOSE, b[1..].to_vec())),
            _ => None,
        }
    }
}

/// Serves one upgraded connection.
pub async fn serve<IO, F, Fut>(
    ws: WebSocketStream<IO>,
    dialect: Dialect,
    opts: StreamOptions,
    run: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(ClientIo) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (mut sink, mut source) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        let mut resize = Some(resize_tx);
        let mut sizes = SizeDecoder::default();
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
            let Some((channel, data)) = dialect.parse(message) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin {
                        if tx.send(Bytes::from(data)).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    for size in sizes.push(&data) {
                        if let Some(tx) = &resize {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                CLOSE if dialect.close => match data.first() {
                    Some(&STDIN) => stdin = None,
                    Some(&RESIZE) => resize = None,
                    _ => {}
                },
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });

    // An empty message on the first output channel tells the client the
    // session is up.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    if sink.send(dialect.message(first, &[])).await.is_err() {
        reader.abort();
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let io = ClientIo {
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then_some(resize_rx),
        output: out_tx,
    };
    let command = run(io);
    tokio::pin!(command);
    let mut gone = false;
    // Output goes out as it comes, until the command is done.
    let outcome = loop {
        tokio::select! {
            outcome = &mut command => break Some(outcome),
            Some(output) = out_rx.recv() => {
                let message = match output {
                    Output::Stdout(d) => dialect.message(STDOUT, &d),
                    Output::Stderr(d) => dialect.message(STDERR, &d),
                };
                if sink.send(message).await.is_err() {
                    // The client is gone: the command sees its output closed.
                    out_rx.close();
                }
            }
            _ = &mut gone_rx, if !gone => {
                gone = true;
                out_rx.close();
            }
        }
    };
    // What the command queued before it finished still goes out.
    while let Ok(output) = out_rx.try_recv() {
        let message = match output {
            Output::Stdout(d) => dialect.message(STDOUT, &d),
            Output::Stderr(d) => dialect.message(STDERR, &d),
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
    if let Some(outcome) = outcome {
        let status = if dialect.status_json {
            status_json(&outcome)
        } else {
            status_text(&outcome)
        };
        if !status.is_empty() {
            let _ = sink.send(dialect.message(ERROR, &status)).await;
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
    // Give the client a moment to answer the close, then let go.
    let abort = reader.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_frame_as_specified() {
        let v5 = Dialect::of("v5.channel.k8s.io").unwrap();
        assert_eq!(
            v5.message(STDOUT, b"hi"),
            Message::binary(vec![1, b'h', b'i'])
        );
        assert_eq!(
            v5.parse(Message::binary(vec![CLOSE, STDIN])),
            Some((CLOSE, vec![STDIN]))
        );
        let b64 = Dialect::of("v4.base64.channel.k8s.io").unwrap();
        assert_eq!(b64.message(STDERR, b"hi"), Message::text("2aGk="));
        assert_eq!(
            b64.parse(Message::text("0aGk=")),
            Some((STDIN, b"hi".to_vec()))
        );
        assert_eq!(b64.parse(Message::text("0!!!")), None);
        assert!(Dialect::of("v9.channel.k8s.io").is_none());
        assert!(!Dialect::of("").unwrap().status_json);
    }
}
