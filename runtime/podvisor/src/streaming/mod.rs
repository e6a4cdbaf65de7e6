//! The CRI streaming server: Exec, Attach and PortForward answer a URL on
//! it; kubelet's proxy or crictl then upgrades an HTTP connection there to
//! SPDY/3.1 or WebSocket and speaks the Kubernetes remote-command or
//! port-forward protocol. The processes and sockets live in the pod's VM
//! and are reached through its agent.
//!
//! Each URL carries a single-use token that expires after
//! `streaming.token_ttl_secs`; an unknown, used or expired token gets 404.

pub mod config;
mod exec_spdy;
pub(crate) mod exec_ws;
mod http;
mod portforward;
pub mod remotecommand;
pub mod spdy;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::StreamingConfig;
pub use remotecommand::StreamOptions;
pub use tokens::TokenError;

use crate::container::ContainerManager;
use crate::sandbox::SandboxManager;

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming.address {0:?} is not host:port")]
    Address(String),
    #[error("binding the streaming server to {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming TLS: {0}")]
    Tls(String),
}

/// What a token stands for.
#[derive(Clone, Debug)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StreamOptions,
    },
    Attach {
        container_id: String,
        opts: StreamOptions,
    },
    PortForward {
        sandbox_id: String,
    },
}

impl Request {
    fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

pub struct StreamingServer {
    base_url: String,
    local_addr: SocketAddr,
    tokens: tokens::Tokens<Request>,
    containers: Arc<ContainerManager>,
    sandboxes: Arc<SandboxManager>,
}

impl StreamingServer {
    /// Binds and starts serving in the background.
    pub async fn start(
        config: &StreamingConfig,
        containers: Arc<ContainerManager>,
        sandboxes: Arc<SandboxManager>,
    ) -> Result<Arc<StreamingServer>, StreamingError> {
        let address: SocketAddr = tokio::net::lookup_host(&config.address)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| StreamingError::Address(config.address.clone()))?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| StreamingError::Bind {
                address: config.address.clone(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind {
                address: config.address.clone(),
                source,
            })?;
        let tls = http::tls_acceptor(config)?;
        // Clients need an address they can reach; "any" is not one.
        let mut shown = local_addr;
        if shown.ip().is_unspecified() {
            shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(StreamingServer {
            base_url: format!("{scheme}://{shown}"),
            local_addr,
            tokens: tokens::Tokens::new(Duration::from_secs(config.token_ttl_secs)),
            containers,
            sandboxes,
        });
        tracing::info!(url = %server.base_url, "serving exec, attach and port-forward streams");
        tokio::spawn(http::accept_loop(listener, tls, server.clone()));
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A single-use URL for `request`.
    pub fn url_for(&self, request: Request) -> Result<String, TokenError> {
        let path = request.path();
        let token = self.tokens.issue(request)?;
        Ok(format!("{}/{path}/{token}", self.base_url))
    }
}
