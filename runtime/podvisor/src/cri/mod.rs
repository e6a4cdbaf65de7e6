//! The CRI v1 gRPC services kubelet and crictl talk to: request
//! validation, and the mapping of module errors onto gRPC codes.

pub mod runtime;

use tonic::Status;

use crate::sandbox::SandboxError;

impl From<SandboxError> for Status {
    fn from(err: SandboxError) -> Status {
        let message = err.to_string();
        match err {
            SandboxError::InvalidArgument(_) | SandboxError::Ambiguous(_) => {
                Status::invalid_argument(message)
            }
            SandboxError::NotFound(_) => Status::not_found(message),
            SandboxError::AlreadyExists { .. } => Status::already_exists(message),
            SandboxError::Vm(_) | SandboxError::Agent(_) | SandboxError::Io(_) => {
                Status::internal(message)
            }
        }
    }
}
