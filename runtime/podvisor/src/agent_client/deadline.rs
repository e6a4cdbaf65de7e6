//! Per-call deadlines on the agent channel. A guest is not trusted to
//! answer: one that takes a call and never replies must not hold a CRI call,
//! or anything the caller locked, for longer than the deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tonic::body::Body;
use tonic::transport::Channel;

/// `[agent]`: how long the runtime waits on a pod's agent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentTimeouts {
    /// Seconds to open a connection (dial, and the handshake on a serial
    /// port) before the call that needed it fails.
    pub connect_timeout_secs: u64,
    /// Seconds for any call that answers once, from request to the end of
    /// the answer. The calls that last as long as what they follow (a
    /// process's exit, its output, a forwarded connection) have none.
    pub call_timeout_secs: u64,
    /// Seconds each pod's agent gets to answer a stats call; the node's
    /// other pods are answered meanwhile.
    pub stats_timeout_secs: u64,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        AgentTimeouts {
            connect_timeout_secs: 30,
            call_timeout_secs: 60,
            stats_timeout_secs: 5,
        }
    }
}

impl AgentTimeouts {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("call_timeout_secs", self.call_timeout_secs),
            ("stats_timeout_secs", self.stats_timeout_secs),
        ] {
            if value == 0 {
                return Err(format!("agent.{name} must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn call(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }

    pub fn stats(&self) -> Duration {
        Duration::from_secs(self.stats_timeout_secs)
    }
}

/// Calls that last as long as what they follow: a process (WaitProcess),
/// its output (ReadOutput), a forwarded connection (PortForward). Shutdown
/// waits out the containers' grace period, which its caller bounds.
const OPEN_ENDED: &[&str] = &["WaitProcess", "ReadOutput", "PortForward", "Shutdown"];

/// The agent channel with a deadline on every call that answers once.
#[derive(Clone, Debug)]
pub struct Deadlines {
    channel: Channel,
    call: Duration,
}

impl Deadlines {
    pub fn new(channel: Channel, call: Duration) -> Self {
        Deadlines { channel, call }
    }
}

fn expired(method: &str, after: Duration) -> tower::BoxError {
    Box::new(tonic::Status::deadline_exceeded(format!(
        "the pod's agent did not answer {method} within {after:?}"
    )))
}

impl tower::Service<http::Request<Body>> for Deadlines {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let response = self.channel.call(request);
        if OPEN_ENDED.contains(&method.as_str()) {
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        let after = self.call;
        let deadline = tokio::time::Instant::now() + after;
        Box::pin(async move {
            let response = tokio::time::timeout_at(deadline, response)
                .await
                .map_err(|_| expired(&method, after))??;
            // The deadline holds until the answer's last byte: headers
            // alone do not end a call.
            Ok(response.map(|body| {
                Body::new(DeadlineBody {
                    body,
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    method,
                    after,
                })
            }))
        })
    }
}

/// A response body that fails once the call's deadline passes.
struct DeadlineBody {
    body: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    method: String,
    after: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(expired(&self.method, self.after))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
