//! PortForward over SPDY (`portforward.k8s.io`): for every connection the
//! client forwards, it opens an error stream and a data stream, both with
//! headers `port` and `requestID`. We pair them, open the port on the pod's
//! loopback through the agent (over the VM channel, not the pod network),
//! and copy bytes; a failure is written as text on the error stream. Many
//! connections, to one or several ports, share one session. The client
//! may half-close (its FIN reaches the pod as a TCP half-close); when the
//! pod's side ends, the connection is over and both streams end.

use std::collections::HashMap;

use bytes::Bytes;
use podvisor_proto::PortForwardFrame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::spdy::{self, Stream};
use crate::agent_client::Agent;

pub const PROTOCOL: &str = "portforward.k8s.io";

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// The pairing key. Old clients send no `requestID`; their pairs use
/// consecutive stream ids (error first), so derive one from the id.
fn request_id(stream: &Stream) -> String {
    if let Some(id) = stream.headers.get("requestid") {
        return id.to_string();
    }
    match stream.headers.get("streamtype") {
        Some("data") => stream.id.saturating_sub(2).to_string(),
        _ => stream.id.to_string(),
    }
}

/// Serves one upgraded connection for the pod whose agent is `agent`.
pub async fn serve<IO>(io: IO, pod_id: String, agent: Agent)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) = match spdy::serve(io) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%e, "starting a SPDY session");
            return;
        }
    };
    let mut pending: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let key = request_id(&stream);
        let pair = pending.entry(key.clone()).or_default();
        match stream.headers.get("streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                tracing::debug!(stream_type = ?other, "ignoring an unknown port-forward stream");
                stream.tx.reset().await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pending.remove(&key)
            {
                tokio::spawn(forward(error, data, pod_id.clone(), agent.clone()));
            }
        }
    }
    session.close().await;
}

/// One forwarded connection.
async fn forward(error: Stream, data: Stream, pod_id: String, mut agent: Agent) {
    let port = data
        .headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        let header = data.headers.get("port").unwrap_or("").to_string();
        fail(&error, &data, format!("invalid port {header:?}")).await;
        return;
    };
    let Stream {
        rx: mut from_client,
        tx: to_client,
        ..
    } = data;
    let (frames_tx, frames_rx) = mpsc::channel(16);
    let _ = frames_tx
        .send(PortForwardFrame {
            port: port.into(),
            ..Default::default()
        })
        .await;
    // Client to pod; the client's FIN becomes our eof frame.
    let upstream = tokio::spawn(async move {
        while let Some(bytes) = from_client.recv().await {
            let frame = PortForwardFrame {
                data: bytes.to_vec(),
                ..Default::default()
            };
            if frames_tx.send(frame).await.is_err() {
                return;
            }
        }
        let eof = PortForwardFrame {
            eof: true,
            ..Default::default()
        };
        let _ = frames_tx.send(eof).await;
    });
    let call = agent
        .port_forward(tokio_stream::wrappers::ReceiverStream::new(frames_rx))
        .await;
    let mut replies = match call {
        Ok(r) => r.into_inner(),
        Err(s) => {
            upstream.abort();
            let message = format!(
                "error forwarding port {port} to pod {pod_id}: {}",
                s.message()
            );
            let _ = error.tx.write(Bytes::from(message)).await;
            let _ = error.tx.finish().await;
            let _ = to_client.finish().await;
            return;
        }
    };
    // Pod to client, until the pod's side ends.
    let mut problem = None;
    loop {
        match replies.message().await {
            Ok(Some(frame)) => {
                if !frame.data.is_empty() && to_client.write(frame.data.into()).await.is_err() {
                    // The client reset the stream: dropping the call
                    // resets the pod's connection.
                    break;
                }
                if frame.eof {
                    // The pod's side is done: so is the connection, as in
                    // kubelet (clients wait for the error stream to end
                    // before they close their side).
                    let _ = to_client.finish().await;
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                problem = Some(format!(
                    "error forwarding port {port} to pod {pod_id}: {}",
                    s.message()
                ));
                let _ = to_client.finish().await;
                break;
            }
        }
    }
    // Dropping the call resets what is left of the pod's connection.
    upstream.abort();
    drop(replies);
    if let Some(message) = problem {
        let _ = error.tx.write(Bytes::from(message)).await;
    }
    let _ = error.tx.finish().await;
}

async fn fail(error: &Stream, data: &Stream, message: String) {
    let _ = error.tx.write(Bytes::from(message)).await;
    let _ = error.tx.finish().await;
    let _ = data.tx.finish().await;
}
