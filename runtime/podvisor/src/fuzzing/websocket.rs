//! Exec/Attach over WebSocket: the client's raw bytes (frames of any kind,
//! masked or not, fragmented, control frames) into the real server loop,
//! with a command that echoes stdin and counts resizes.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::streaming::exec_ws::{self, Dialect, PROTOCOLS};
use crate::streaming::remotecommand::{ClientIo, Outcome, Output, StreamOptions};

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
}

/// First byte: the subprotocol (low 3 bits, "" included) and which
/// streams the client asked for (high bits); the rest is the wire.
pub fn websocket_remotecommand(data: &[u8]) {
    let Some((&sel, wire)) = data.split_first() else {
        return;
    };
    let protocol = PROTOCOLS.get(usize::from(sel & 7)).copied().unwrap_or("");
    let dialect = Dialect::of(protocol).expect("every listed protocol has a dialect");
    let opts = StreamOptions::new(
        sel & 0x10 != 0,
        sel & 0x20 != 0,
        sel & 0x40 != 0,
        sel & 0x80 != 0,
    );
    let wire = wire.to_vec();
    RUNTIME.with(|rt| {
        let Some(rt) = rt else {
            return;
        };
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let client = tokio::spawn(async move {
                let (mut rx, mut tx) = tokio::io::split(client);
                let _ = tx.write_all(&wire).await;
                let _ = tx.shutdown().await;
                let mut sink = Vec::new();
                let _ = rx.read_to_end(&mut sink).await;
            });
            let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
            exec_ws::serve(ws, dialect, opts, echo).await;
            let _ = client.await;
        });
    });
}

/// A stand-in for the process: stdin back out on stdout until the client
/// closes it; the exit code is the number of resizes seen.
async fn echo(mut io: ClientIo) -> Outcome {
    let mut resizes = 0;
    loop {
        tokio::select! {
            data = async { io.stdin.as_mut()?.recv().await }, if io.stdin.is_some() => match data {
                Some(d) => {
                    let _ = io.output.send(Output::Stdout(Bytes::copy_from_slice(&d))).await;
                }
                None => io.stdin = None,
            },
            size = async { io.resize.as_mut()?.recv().await }, if io.resize.is_some() => match size {
                Some(_) => resizes += 1,
                None => io.resize = None,
            },
            else => break,
        }
    }
    Outcome::Exited(resizes)
}
