//! The runtime's side of the agent API: a gRPC channel over the byte stream
//! a VM offers, with a deadline on every call that answers once.

mod deadline;
mod dial;

use std::time::Duration;

use podvisor_proto::agent_client::AgentClient;
use tonic::transport::{Endpoint, Uri};

pub use deadline::AgentTimeouts;
pub use dial::{dial, AgentDialer};

pub type Agent = AgentClient<deadline::Deadlines>;

/// HTTP/2 pings on an idle or busy channel: a guest that stops answering
/// them (frozen, or its agent wedged below gRPC) ends the connection, and
/// with it the calls that have no deadline of their own.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for the agent behind `dialer`. Nothing is dialled until the
/// first call, so whoever creates it holds no lock across guest I/O; each
/// reconnect dials again, within `timeouts.connect`.
pub fn connect(dialer: &AgentDialer, timeouts: AgentTimeouts) -> Agent {
    connect_within(dialer, timeouts, timeouts.connect())
}

/// As [`connect`], every dial waiting at most `patience` (a booting guest
/// opens its end of the agent's port only when its agent starts).
pub fn connect_within(dialer: &AgentDialer, timeouts: AgentTimeouts, patience: Duration) -> Agent {
    let dialer = dialer.clone();
    let channel = Endpoint::from_static("http://podvisor-agent")
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move {
                dial(&dialer, patience)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }));
    AgentClient::new(deadline::Deadlines::new(channel, timeouts.call()))
}
