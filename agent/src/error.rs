//! The agent's error type and its mapping onto gRPC status codes.

use std::path::PathBuf;

use tonic::Status;

/// Everything that can go wrong while serving a runtime request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    #[error("process {exec_id:?} not found in container {container_id:?}")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("exec id {exec_id:?} already used in container {container_id:?}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("malformed OCI spec: {0}")]
    MalformedSpec(String),
    #[error("rootfs {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },
    /// libcontainer refused or failed; its message names the cause (for
    /// example a missing executable or working directory).
    #[error("{op}: {message}")]
    Runtime { op: String, message: String },
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// A volume's mount(2) failed; the message names the errno and server.
    #[error("{what}: {message}")]
    Mount { what: String, message: String },
    /// A volume's server did not answer within the request's bound.
    #[error("{what}: {message}")]
    MountTimeout { what: String, message: String },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            op: op.into(),
            source,
        }
    }

    pub fn sys(op: impl Into<String>, source: nix::Error) -> Self {
        AgentError::Sys {
            op: op.into(),
            source,
        }
    }

    pub fn runtime(op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        AgentError::Runtime {
            op: op.into(),
            message: err.to_string(),
        }
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let message = err.to_string();
        match err {
            AgentError::InvalidArgument(_) | AgentError::MalformedSpec(_) => {
                Status::invalid_argument(message)
            }
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => {
                Status::not_found(message)
            }
            AgentError::ContainerExists(_) | AgentError::ExecExists { .. } => {
                Status::already_exists(message)
            }
            AgentError::FailedPrecondition(_)
            | AgentError::Rootfs { .. }
            | AgentError::Mount { .. } => Status::failed_precondition(message),
            AgentError::MountTimeout { .. } => Status::deadline_exceeded(message),
            // A container that cannot be built from a well-formed request is
            // the caller's problem to fix (bad cwd, missing binary, ...).
            AgentError::Runtime { .. } => Status::failed_precondition(message),
            AgentError::Io { .. } | AgentError::Sys { .. } | AgentError::Cgroup(_) => {
                Status::internal(message)
            }
        }
    }
}
