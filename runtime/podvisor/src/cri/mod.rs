//! The CRI v1 gRPC services kubelet and crictl talk to: request
//! validation, and the mapping of module errors onto gRPC codes.

pub mod authority;
pub mod bounds;
pub mod events;
pub mod handler;
pub mod image;
pub mod metrics;
pub mod runtime;

use tonic::Status;

use crate::container::ContainerError;
use crate::image::ImageError;
use crate::policy::PolicyError;
use crate::sandbox::SandboxError;
use crate::volume::efs::EfsError;

impl From<SandboxError> for Status {
    fn from(err: SandboxError) -> Status {
        let message = err.to_string();
        match err {
            SandboxError::InvalidArgument(_) | SandboxError::Ambiguous(_) => {
                Status::invalid_argument(message)
            }
            SandboxError::NotFound(_) => Status::not_found(message),
            SandboxError::AlreadyExists { .. } => Status::already_exists(message),
            // Free again once its holder stops: kubelet's retry may succeed.
            SandboxError::HostPortTaken { .. } => Status::failed_precondition(message),
            SandboxError::Network(e) if e.is_exhausted() => Status::resource_exhausted(message),
            SandboxError::Network(_) => Status::internal(message),
            SandboxError::Vm(_)
            | SandboxError::Agent(_)
            | SandboxError::Share(_)
            | SandboxError::Cgroup(_)
            | SandboxError::Io(_) => Status::internal(message),
        }
    }
}

impl From<PolicyError> for Status {
    fn from(err: PolicyError) -> Status {
        let message = err.to_string();
        match err {
            PolicyError::NoMatchingProfile { .. } | PolicyError::Forbidden { .. } => {
                Status::failed_precondition(message)
            }
            PolicyError::TooLarge { .. } => Status::resource_exhausted(message),
        }
    }
}

impl From<ImageError> for Status {
    fn from(err: ImageError) -> Status {
        let message = err.to_string();
        match err {
            ImageError::InvalidReference { .. } => Status::invalid_argument(message),
            ImageError::NotFound(_) | ImageError::NotInRegistry { .. } => {
                Status::not_found(message)
            }
            ImageError::Unreachable { .. } => Status::unavailable(message),
            ImageError::InUse { .. } => Status::failed_precondition(message),
            ImageError::Unauthorized { .. } | ImageError::Registry { .. } => {
                Status::unknown(message)
            }
            ImageError::Config(_) | ImageError::Io { .. } => Status::internal(message),
        }
    }
}

impl From<ContainerError> for Status {
    fn from(err: ContainerError) -> Status {
        let message = err.to_string();
        match err {
            ContainerError::Sandbox(e) => e.into(),
            ContainerError::Policy(e) => e.into(),
            ContainerError::Image(e) => e.into(),
            ContainerError::InvalidArgument(_)
            | ContainerError::Ambiguous(_)
            | ContainerError::Spec(_) => Status::invalid_argument(message),
            ContainerError::NotFound(_) | ContainerError::ImageNotPulled(_) => {
                Status::not_found(message)
            }
            ContainerError::AlreadyExists { .. } => Status::already_exists(message),
            ContainerError::SandboxNotReady { .. } | ContainerError::FailedPrecondition(_) => {
                Status::failed_precondition(message)
            }
            ContainerError::Share(crate::volume::share::ShareError::MissingHostPath(_)) => {
                Status::invalid_argument(message)
            }
            // The agent's own code says best what went wrong in the guest
            // (InvalidArgument for a bad spec, NotFound for a missing
            // binary...), with our context in front.
            ContainerError::Agent { status, .. } => Status::new(status.code(), message),
            ContainerError::Timeout(_) => Status::deadline_exceeded(message),
            ContainerError::Volume(e) => volume_status(&e, message),
            ContainerError::MountMode(e) if e.is_unsupported() => {
                Status::failed_precondition(message)
            }
            ContainerError::MountMode(_) => Status::invalid_argument(message),
            ContainerError::LogPath(e) if e.is_invalid_input() => Status::invalid_argument(message),
            ContainerError::LogPath(_) => Status::internal(message),
            ContainerError::Share(_) | ContainerError::Io(_) => Status::internal(message),
        }
    }
}

/// A malformed volumeHandle is the request's fault; what the node cannot
/// do (access points, missing config, old guest, unknown names) is a
/// precondition; unreadable kubelet files are ours.
fn volume_status(err: &EfsError, message: String) -> Status {
    match err {
        EfsError::BadHandle { .. } => Status::invalid_argument(message),
        EfsError::VolData { .. } => Status::internal(message),
        EfsError::AccessPoint { .. }
        | EfsError::NoRegion { .. }
        | EfsError::Resolve { .. }
        | EfsError::SubPath { .. }
        | EfsError::NfsVersion { .. }
        | EfsError::NfsSource { .. }
        | EfsError::AgentTooOld(_) => Status::failed_precondition(message),
    }
}
