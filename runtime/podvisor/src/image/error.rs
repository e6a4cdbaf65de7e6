//! The image service's errors. Each variant says which gRPC code the CRI
//! layer should answer with; messages name the image and what went wrong.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// gRPC InvalidArgument.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// A local lookup (status, remove, layers) found nothing. gRPC NotFound.
    #[error("image {0} not found")]
    NotFound(String),

    /// The registry has no such repository, tag, digest or platform.
    /// gRPC NotFound.
    #[error("pulling {reference}: {message}")]
    NotInRegistry { reference: String, message: String },

    /// The registry refused our credentials (or their absence).
    /// gRPC Unknown, keeping the message (kubelet shows it as is).
    #[error("pulling {reference}: unauthorized: {message}")]
    Unauthorized { reference: String, message: String },

    /// The registry could not be reached. gRPC Unavailable.
    #[error("pulling {reference}: {message}")]
    Unreachable { reference: String, message: String },

    /// Anything else the registry or its content got wrong: a server error,
    /// a digest mismatch, an unsupported manifest or layer, a layer that
    /// tries to escape its directory. gRPC Unknown.
    #[error("pulling {reference}: {message}")]
    Registry { reference: String, message: String },

    /// Removal refused: a container uses the image. gRPC FailedPrecondition.
    #[error("image {image} is used by container {container}")]
    InUse { image: String, container: String },

    /// The configuration is unusable (found when the service is created).
    #[error("image service configuration: {0}")]
    Config(String),

    /// Local storage failed. gRPC Internal.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> ImageError {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Adds the what-was-being-done context to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
